"""How good must a first map be? A global search of some particles against a given map, scored against the truth.

Searches ``--n`` particles of a simulated set (``particles.star``, ``ground_truth.star``) against MAP over the whole
rotation grid (15°) and origins within a tenth of the box (what the global search after cryoSPIN's first map
does), and prints the median rotation error after the best global rotation and hand, and the share within 10°.
``--low-pass RES`` first cuts MAP at RES pixels (e.g. the true map cut at the resolution a first map reached);
``--radius`` sets the band compared (pixels of frequency; several values run in turn).

Run: python -u benchmarks/probe_global_search.py DATA MAP [--low-pass 8.5] [--radius 12 8] [--n 1500]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import starfile
import torch

from napari_cryo.geometry import euler_to_matrix
from napari_cryo.io.mrc import read_mrc
from napari_cryo.reconstruction.data import ParticleData
from napari_cryo.reconstruction.poses import rotation_errors
from napari_cryo.reconstruction.search import SearchSettings, global_search
from napari_cryo.tasks import drain


def low_pass(volume: np.ndarray, res_px: float) -> np.ndarray:
    """``volume`` with every frequency beyond ``box / res_px`` cycles removed (a hard spherical cut)."""
    box = volume.shape[0]
    k = np.fft.fftfreq(box) * box
    kz, ky, kx = np.meshgrid(k, k, k, indexing="ij")
    keep = np.sqrt(kz**2 + ky**2 + kx**2) <= box / res_px
    return np.real(np.fft.ifftn(np.fft.fftn(volume) * keep)).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("map", type=Path)
    parser.add_argument("--low-pass", type=float, default=0.0, help="cut the map at this resolution, pixels (0: as it is)")
    parser.add_argument("--radius", type=float, nargs="+", default=[12.0], help="band compared, pixels of frequency")
    parser.add_argument("--n", type=int, default=1500, help="particles searched (a seeded random choice)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    data = ParticleData(args.data / "particles.star")
    box = data.box or data.original_box
    volume = np.array(read_mrc(args.map)[0], dtype=np.float32)
    if args.low_pass > 0:
        volume = low_pass(volume, args.low_pass)
    truth_table = starfile.read(args.data / "ground_truth.star")["particles"]
    truth = euler_to_matrix(truth_table[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy())
    rows = np.sort(np.random.default_rng(0).choice(len(data), min(args.n, len(data)), replace=False))
    for radius in args.radius:
        search = SearchSettings(coarse_degrees=15.0, fine_degrees=3.75, max_shift=0.1 * box, shift_step=box / (3 * radius))
        rot, _, _ = drain(global_search(data, volume, radius, search, rows=rows))[0]
        errors = rotation_errors(rot, truth[rows])
        print(json.dumps({"map": str(args.map), "low_pass_px": args.low_pass, "radius": radius, "median_deg": round(errors.median, 1),
                          "within10": round(float((errors.errors < 10).mean()), 3)}), flush=True)


if __name__ == "__main__":
    main()
