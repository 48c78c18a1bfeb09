"""Why cryoAI finds no poses: the amortized phase with one encoder head against seven, and with either decoder.

Uses a data set written by ``bench_reconstruction.py`` (its ``particles.star`` and
``ground_truth.star``).  Each variant runs only the amortized phase (no switch to
per-particle poses) for ``--minutes``, on images Fourier-cropped to the amortized
box as in a real run, and every ``--every`` minutes records the median rotation
error of the poses the encoder gave (after the best global rotation and hand), the
length of the mean viewing direction (0 for directions spread over the sphere, 1
when every particle is seen from one side) and the SCF of the poses.

Variants:

* ``cryoai``: as shipped (one head, FourierNet decoder, loss symmetrised over the in-plane π turn);
* ``cryoai-voxel``: the same with cryoSPIN's voxel decoder, which is swapped in after the run is built;
* ``cryospin-1``: cryoSPIN (voxel decoder, plain loss) with one head;
* ``cryospin``: cryoSPIN as shipped (7 heads).

Run: python -u benchmarks/amortized_heads.py /work/bench_recon/tcr3_64_10000 [--minutes 6] [--every 1]
     [--variants cryoai cryoai-voxel cryospin-1 cryospin] [--no-write]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import starfile
import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_io import write_section  # noqa: E402

from napari_cryo.geometry import euler_to_matrix  # noqa: E402
from napari_cryo.reconstruction import encoder_run  # noqa: E402
from napari_cryo.reconstruction import reconstruct as rec  # noqa: E402
from napari_cryo.reconstruction.data import ParticleData  # noqa: E402
from napari_cryo.reconstruction.models import VoxelVolume  # noqa: E402
from napari_cryo.reconstruction.poses import rotation_errors  # noqa: E402

VARIANTS = {
    "cryoai": ("cryoai", 1, False, "1, FourierNet, symmetrised loss (cryoAI as shipped)"),
    "cryoai-voxel": ("cryoai", 1, True, "1, voxel decoder, symmetrised loss"),
    "cryospin-1": ("cryospin", 1, False, "1, voxel decoder, plain loss"),
    "cryospin": ("cryospin", 7, False, "7, voxel decoder, plain loss (cryoSPIN as shipped)"),
}


@contextlib.contextmanager
def voxel_decoder(enabled: bool):
    """Give runs built inside this block cryoSPIN's voxel decoder (and its learning rate), whatever the method."""
    if not enabled:
        yield
        return
    build = encoder_run.EncoderRun.__init__

    def patched(self, data, settings, device):
        build(self, data, settings, device)
        start = encoder_run.random_start(self.box, self.shared_band, self.mask.cpu(), settings.seed)
        self.decoder = VoxelVolume(self.box, start).to(device)
        self.opt_decoder = torch.optim.Adam(self.decoder.parameters(), lr=settings.volume_lr)

    encoder_run.EncoderRun.__init__ = patched
    try:
        yield
    finally:
        encoder_run.EncoderRun.__init__ = build


def run_variant(name: str, data: ParticleData, truth: np.ndarray, minutes: float, every: float) -> tuple[list[dict], float]:
    """The rows recorded at every map, and the mean seconds per epoch."""
    method, heads, voxel, _ = VARIANTS[name]
    # Budget and forced switch far beyond the time measured: the run stays amortized.
    settings = rec.ReconstructionSettings(method=method, heads=heads, max_minutes=4 * minutes, switch_after=3 * minutes,
                                          patience=10_000, map_minutes=every)
    rows: list[dict] = []
    epochs: list[float] = []
    with voxel_decoder(voxel):
        gen = rec.reconstruct(data, settings, None, device="cpu")
        start = time.perf_counter()
        for item in gen:
            if isinstance(item, rec.MapUpdate):
                errors = rotation_errors(item.rotations, truth)
                mean_dir = float(np.linalg.norm(item.rotations[:, 2, :].mean(axis=0)))
                row = {"t": time.perf_counter() - start, "label": item.label, "median": errors.median,
                       "mean_dir": mean_dir, "scf": item.coverage.scf}
                rows.append(row)
                print(name, {k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
            elif isinstance(item, dict):
                epochs.append(item["elapsed_s"])
            if time.perf_counter() - start > minutes * 60:
                gen.close()
                break
    per_epoch = float(np.diff([0.0] + epochs).mean()) if epochs else float("nan")
    return rows, per_epoch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", type=Path, help="folder with particles.star and ground_truth.star")
    parser.add_argument("--minutes", type=float, default=6.0)
    parser.add_argument("--every", type=float, default=1.0, help="minutes between measurements")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    data = ParticleData(args.dataset / "particles.star")
    gt = starfile.read(args.dataset / "ground_truth.star")["particles"]
    truth = euler_to_matrix(gt[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy())
    results = {name: run_variant(name, data, truth, args.minutes, args.every) for name in args.variants}
    if args.no_write:
        return
    machine = f"{platform.machine()}, {torch.get_num_threads()} torch threads on {os.cpu_count()} cores, torch {torch.__version__}"
    lines = [
        f"`python -u benchmarks/amortized_heads.py {args.dataset.name} --minutes {args.minutes:g} --every {args.every:g}` on {machine}.",
        "",
        f"The 1BD2 data set of the ab initio benchmark ({len(data)} particles, 64 px, SNR 0.1); the amortized phase only, "
        f"on images Fourier-cropped to 32 px, batches of 32, for {args.minutes:g} minutes per variant, one after the other. "
        "*|mean direction|* is the length of the mean viewing direction: about 0.01 for 10,000 uniform directions, "
        "1 when every particle is seen from the same side.",
        "",
        "| variant | heads, decoder, loss | s per epoch | wall time (min) | epoch | median rotation error (°) | |mean direction| | SCF |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, (rows, per_epoch) in results.items():
        for r in rows:
            lines.append(f"| {name} | {VARIANTS[name][3]} | {per_epoch:.0f} | {r['t'] / 60:.1f} | {r['label'].split()[-1]} "
                         f"| {r['median']:.1f} | {r['mean_dir']:.2f} | {r['scf']:.2f} |")
    write_section("Amortized phase: one encoder head against seven (1BD2)", "\n".join(lines))


if __name__ == "__main__":
    main()
