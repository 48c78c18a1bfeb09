"""Train the generic picking model that ships with napari-cryo, reproducibly.

What it sees (napari_cryo.synthetic.picking_world draws each micrograph's conditions):

- molecules built from real atomic models — the protein chains in the PDB files shipped by the
  MDAnalysisTests package on PyPI, assembled into rings, dihedral stacks, cages, filaments and
  hetero-complexes — and pseudo-atomic blobs, 80 to 400 Å across, one to three kinds per micrograph;
- raw pixel sizes 0.5 to 8 Å, per-particle SNR 0.02 to 0.5 (raw, dose-weighted), denoised-looking
  micrographs (high SNR, low-passed), and clean ones; defocus 0.5 to 3.5 µm;
- coloured detector noise (1/f power and high-frequency roll-off spanning the spectra of the real
  micrographs in the project's test data), ice-thickness gradients;
- 3 to 45 % of the ice area covered by particles, touching ones included;
- carbon edges and hole rims, ice contamination and gold beads, all labelled junk;
- black or white particles; 8-bit and JPEG exports; arbitrary count scaling.

Models kept aside for evaluation (see eval_picking_independent.py) are excluded: 6msm, 5a7u, 4E43,
1hvr, 5KIH, 6QYR.  Nothing from EMPIAR-10028 or any real micrograph is used.

Every particle is labelled, so the loss is plain cross-entropy.  The default threshold is the one with the best F1
on 40 fresh micrographs drawn the same way from another seed.  The weights are stored as float16
(about 0.6 MB); a JSON record of every micrograph's conditions is written to
benchmarks/results/generic_picker_training_seed<seed>.json.gz.  A checkpoint is written every epoch; running the script again resumes.

Setup:  pip download MDAnalysisTests==2.11.0 --no-deps --no-binary :all: -d /tmp/mda
Run:    python benchmarks/train_generic_picker.py --pdb-archive /tmp/mda/mdanalysistests-2.11.0.tar.gz
The shipped model was trained in two stages, the second on fresh data from the first's weights, then its
threshold set:
        ... --micrographs 600 --epochs 40 --seed 11 --out stage1.pt
        ... --micrographs 800 --epochs 60 --lr 5e-4 --seed 12 --init stage1.pt --out stage2.pt
        ... --seed 12 --calibrate-only stage2.pt --out generic.pt
The first stage ran on an earlier draft of picking_world (gold beads up to 150 Å, contamination 1.5-3.5
diameters, an SNR floor of 0.3 in working pixels): those made particle look-alikes junk, which the second
stage's data undo.  The best validation epoch of each stage is kept (epoch 25 of 60 in the second).
"""

from __future__ import annotations

import argparse
import gzip
import json
import multiprocessing as mp
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from napari_cryo.picking.evaluate import score_picks
from napari_cryo.picking.labels import prepare_training_micrograph
from napari_cryo.picking.model import PickerModel
from napari_cryo.picking.picks import pick_micrograph
from napari_cryo.picking.preprocess import working_pixel_size
from napari_cryo.picking.training import TrainConfig, train
from napari_cryo.synthetic.atomic_models import pdb_models_in_archive
from napari_cryo.synthetic.picking_world import random_conditions, simulate_conditions
from napari_cryo.tasks import run_with_tqdm
from napari_cryo.training_loop import EpochRecord

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "src" / "napari_cryo" / "picking" / "weights" / "generic.pt"
RECORD = ROOT / "benchmarks" / "results" / "generic_picker_training_seed{seed}.json.gz"
#: Kept aside for evaluation: the generic model never sees these shapes.
EVALUATION_MODELS = ("6msm", "5a7u", "4e43", "1hvr", "5kih", "6qyr")

_CHAINS: list[np.ndarray] = []
#: random_conditions options of this run (a later stage may favour low SNR).
_WORLD: dict = {}


def _init(archive: str, world: dict | None = None) -> None:
    global _CHAINS, _WORLD
    _CHAINS = [xyz for _, xyz in pdb_models_in_archive(archive, exclude=EVALUATION_MODELS)]
    _WORLD = dict(world or {})


def _one(args: tuple[int, int]):
    """Simulate and prepare micrograph ``i`` (in a worker process)."""
    i, seed = args
    rng = np.random.default_rng([seed, i])
    cond = random_conditions(rng, **_WORLD)
    image, mic, shapes = simulate_conditions(cond, _CHAINS, seed=seed * 100003 + i)
    wpx = working_pixel_size(cond.diameter, cond.sim_pixel_size)
    prepared = prepare_training_micrograph(
        image, cond.sim_pixel_size, wpx, mic.picks, junk_mask=mic.junk_mask > 0, complete=True, name=f"sim{i}"
    )
    record = cond.as_dict() | {"shapes": shapes, "particles": int(len(mic.picks)), "measured_particle_snr": float(mic.particle_snr)}
    return prepared, record


def training_set(n: int, seed: int, archive: str, workers: int, world: dict | None = None):
    """Simulated, fully labelled training micrographs and the record of their conditions."""
    with mp.get_context("forkserver").Pool(workers, initializer=_init, initargs=(archive, world)) as pool:
        results = pool.map(_one, [(i, seed) for i in range(n)], chunksize=4)
    return [r[0] for r in results], [r[1] for r in results]


def _kind(description: str) -> str:
    """'C5 ring' -> 'ring', 'D3' -> 'dihedral', '4-chain complex' -> 'complex'."""
    if description[:1] == "D" and description[1:].isdigit():
        return "dihedral"
    return description.split(" ")[-1]


def summarise(records: list[dict]) -> dict:
    """Ranges and counts of what the model saw, for the model file's history."""
    def span(key: str) -> list[float]:
        values = [r[key] for r in records]
        return [round(float(min(values)), 4), round(float(max(values)), 4)]

    return {
        "micrographs": len(records),
        "particles": int(sum(r["particles"] for r in records)),
        "diameter_A": span("diameter"),
        "pixel_size_A": span("pixel_size"),
        "particle_snr": span("particle_snr"),
        "coverage": span("coverage"),
        "denoised": int(sum(r["denoise_sigma"] > 0 for r in records)),
        "white_particles": int(sum(r["white_particles"] for r in records)),
        "eight_bit": int(sum(r["eight_bit"] for r in records)),
        "jpeg": int(sum(r["jpeg_quality"] > 0 for r in records)),
        "with_carbon": int(sum(r["carbon"] > 0 for r in records)),
        "with_gold": int(sum(r["gold"] > 0 for r in records)),
        "shapes": dict(Counter(_kind(s) for r in records for s in r["shapes"])),
        "source_models": "MDAnalysisTests 2.11.0 PDB files, minus " + ", ".join(EVALUATION_MODELS),
    }


def _calibration_case(args: tuple[int, int]):
    """A fresh simulated micrograph (never trained on) with its truth, for the threshold."""
    i, seed = args
    rng = np.random.default_rng([seed, i])
    cond = random_conditions(rng)
    image, mic, _ = simulate_conditions(cond, _CHAINS, seed=seed * 100003 + i)
    return image, cond.sim_pixel_size, cond.diameter, mic.picks, mic.junk_mask > 0


def calibrate_threshold(model: PickerModel, archive: str, n: int, seed: int, workers: int) -> tuple[float, float]:
    """The particle-probability threshold with the best F1 on fresh simulated micrographs (and that F1).

    The micrographs are drawn like the training set, from another seed, so the
    default threshold is chosen on data the model never saw and on no real data.
    """
    with mp.get_context("forkserver").Pool(workers, initializer=_init, initargs=(archive,)) as pool:
        cases = pool.map(_calibration_case, [(i, seed) for i in range(n)])
    picks, scores, truth = [], [], []
    for image, pixel, diameter, true_yx, _junk in cases:
        result = pick_micrograph(model, image, pixel, diameter)
        yx, sc = result.picks(threshold=0.02)
        # Scores are compared in units of each micrograph's own diameter.
        picks.append(yx / (diameter / pixel))
        scores.append(sc)
        truth.append(np.asarray(true_yx) / (diameter / pixel))
    best = score_picks(picks, scores, truth, 0.25)
    return float(best.threshold), float(best.f1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pdb-archive", required=True, help="the MDAnalysisTests sdist (.tar.gz)")
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    parser.add_argument("--micrographs", type=int, default=600)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--init", help="start from this model file's weights (a second stage on fresh data)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--raw-fraction", type=float, default=0.65, help="share of raw (not denoised) micrographs")
    parser.add_argument("--raw-snr", type=float, nargs=2, default=(0.02, 0.5), help="per-particle SNR range of raw micrographs")
    parser.add_argument("--calibration", type=int, default=40, help="fresh micrographs that set the default threshold")
    parser.add_argument("--calibrate-only", metavar="MODEL", help="only set MODEL's default threshold (rewrites --out)")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    if args.calibrate_only:
        model = PickerModel.load(args.calibrate_only)
        model.threshold, f1 = calibrate_threshold(model, args.pdb_archive, args.calibration, args.seed + 1000, args.workers)
        model.history[-1]["threshold_calibration"] = {"micrographs": args.calibration, "seed": args.seed + 1000, "best_f1": round(f1, 4)}
        model.save(args.out, overwrite=True, half=True)
        print(f"threshold {model.threshold:.3f} (F1 {f1:.3f} on {args.calibration} fresh micrographs); wrote {args.out}")
        return
    world = {"raw_fraction": args.raw_fraction, "raw_snr": tuple(args.raw_snr)}
    data, records = training_set(args.micrographs, args.seed, args.pdb_archive, args.workers, world)
    summary = summarise(records) | {"world": world}
    record = Path(str(RECORD).format(seed=args.seed))
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_bytes(gzip.compress(json.dumps({"summary": summary, "micrographs": records}).encode()))
    print(f"simulated {len(data)} micrographs in {time.perf_counter() - t0:.0f} s: {json.dumps(summary)}")
    model = PickerModel.new(name="generic", seed=args.seed)
    if args.init:
        start = PickerModel.load(args.init)
        model.net.load_state_dict(start.net.state_dict())
        model.history = list(start.history)
    # A fixed number of epochs on a cosine schedule; the best validation epoch is kept.
    config = TrainConfig.fixed(
        args.epochs, steps_per_epoch=args.steps, batch_size=args.batch, lr=args.lr, val_fraction=0.05, pu_weight=0.0, seed=args.seed
    )
    out = Path(args.out)
    model = run_with_tqdm(
        train(model, data, config, checkpoint=out.with_name(out.name + ".ckpt")),
        "training generic picker",
        on_value=lambda v: print(json.dumps(v.as_dict()), flush=True) if isinstance(v, EpochRecord) else None,
    )
    model.history[-1]["data"] = summary
    model.threshold, f1 = calibrate_threshold(model, args.pdb_archive, args.calibration, args.seed + 1000, args.workers)
    model.history[-1]["threshold_calibration"] = {"micrographs": args.calibration, "seed": args.seed + 1000, "best_f1": round(f1, 4)}
    print(f"default threshold {model.threshold:.3f} (best F1 {f1:.3f} on {args.calibration} fresh simulated micrographs)")
    model.save(out, overwrite=True, half=True)
    out.with_name(out.name + ".ckpt").unlink(missing_ok=True)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB) after {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
