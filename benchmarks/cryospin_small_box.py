"""cryoSPIN at a chosen working box and budget: does it find poses, and after how many epochs?

Uses a data set written by ``bench_reconstruction.py`` (its ``particles.star`` and
``ground_truth.star``), Fourier-cropped to ``--box`` (the amortized phase runs at
the smaller box that holds its band, see ``amortized_box``).  The amortized phase
runs until half the budget (no switch on a plateau), then per-particle poses until
the end.  Prints, at every intermediate map, the wall time, the epoch, the
median rotation error after the best global alignment and the SCF of the poses.

Run: python -u benchmarks/cryospin_small_box.py /work/bench_recon/tcr3_64_10000 [--box 32] [--minutes 40] [--shared-radius 0.3]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import starfile
import torch

from napari_cryo.geometry import euler_to_matrix
from napari_cryo.reconstruction.data import ParticleData
from napari_cryo.reconstruction.poses import rotation_errors
from napari_cryo.reconstruction.reconstruct import MapUpdate, ReconstructionSettings, reconstruct
from napari_cryo.tasks import drain


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", type=Path, help="folder with particles.star and ground_truth.star")
    parser.add_argument("--box", type=int, default=32)
    parser.add_argument("--minutes", type=float, default=40.0)
    parser.add_argument("--shared-radius", type=float, default=0.3, help="cycles/pixel of the working box (0.3 at 32 px = 0.15 at 64 px)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    data = ParticleData(args.dataset / "particles.star", box=args.box)
    gt = starfile.read(args.dataset / "ground_truth.star")["particles"]
    truth = euler_to_matrix(gt[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy())
    settings = ReconstructionSettings(method="cryospin", max_minutes=args.minutes, shared_radius=args.shared_radius,
                                      patience=10_000, map_minutes=args.minutes / 6)
    start = time.perf_counter()

    def report(item) -> None:
        if isinstance(item, MapUpdate):
            errors = rotation_errors(item.rotations, truth)
            print(f"{(time.perf_counter() - start) / 60:5.1f} min  {item.label:26s} median error {errors.median:6.1f}°  SCF {item.coverage.scf:.2f}", flush=True)

    result, _ = drain(reconstruct(data, settings, device="cpu"), report)
    errors = rotation_errors(result.rotations, truth)
    print(f"final: median error {errors.median:.1f}°, half maps {result.resolution:.1f} Å, {result.coverage.describe()}")


if __name__ == "__main__":
    main()
