"""Train the default square-scoring model that ships with napari-cryo, reproducibly.

What it sees: simulated 1024² grid atlases (napari_cryo.synthetic.atlas: 400 mesh at 0.5 µm/px, random
lattice rotation, ice thickness, cracks, empty squares, contamination, folded corners, the grid rim,
vignetting and noise), seeds 100 and up. The demo's atlas sample (seed 0) and the held-out atlases of
tests/test_squares_learning.py (seeds 41-43) are not among them. Nothing from a real atlas is used.

Labels are what a user would give: brightness and squareness as measured by the extraction, and the
simulator's true cracking, contamination and overall scores (0-4) in place of scores set by eye. The
squares the extraction finds are matched to the simulator's within 20 % of the pitch; unmatched ones
are left out.

The model is XCryoNet (primary branch plus cracking and contamination branches with attention) at 16
channels, so the file stays small (float32 weights, well under 1 MB). The held-out check scores the
complete squares of fresh atlases (seeds 900 and up) and reports the mean absolute error per score and
the Spearman correlation of the overall score with the truth.

Run:  python benchmarks/train_default_squares.py --out src/napari_cryo/squares/weights/default.pt
(add --overwrite to replace it). Defaults: 20 atlases, 30 epochs, one torch thread.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch
from scipy.spatial import cKDTree
from scipy.stats import spearmanr

from napari_cryo.squares.model import SCORES, SquareModel, XCryoNet
from napari_cryo.squares.pipeline import analyse_atlas
from napari_cryo.squares.training import SquareTrainConfig, predict, train_squares
from napari_cryo.synthetic.atlas import simulate_atlas


def labelled_squares(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Crops, user-like labels and true scores of the complete squares the extraction finds in one atlas."""
    atlas = simulate_atlas(seed=seed)
    found = analyse_atlas(atlas.image, f"atlas{seed}")
    keep = found.squares["complete"].to_numpy(bool)
    dist, idx = cKDTree(atlas.squares[["center_y", "center_x"]].to_numpy()).query(found.squares.loc[keep, ["center_y", "center_x"]].to_numpy())
    ok = dist < 0.2 * atlas.pitch
    truth = atlas.squares.iloc[idx[ok]][list(SCORES)].to_numpy(float)
    labels = found.auto_labels()[keep][ok]
    labels[:, 2:] = truth[:, 2:]  # cracking, contamination and overall: the scores a person gives
    return found.crops[keep][ok], labels, truth


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="model file to write")
    parser.add_argument("--atlases", type=int, default=20, help="training atlases (seeds 100, 101, ...)")
    parser.add_argument("--held-out", type=int, default=3, help="held-out atlases (seeds 900, 901, ...)")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    parts = [labelled_squares(100 + i) for i in range(args.atlases)]
    crops = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    t_data = time.perf_counter() - t0
    print(f"{len(crops)} squares from {args.atlases} atlases in {t_data:.0f} s", flush=True)
    model = SquareModel(XCryoNet(channels=args.channels), name="default squares (synthetic atlases)")
    config = SquareTrainConfig(epochs=args.epochs, batch_size=32, semi_supervised=False, seed=0)
    t1 = time.perf_counter()
    for event in train_squares(model, crops, labels, config):
        if type(event).__name__ == "EpochRecord":
            print(f"epoch {event.epoch}: loss {event.train_loss:.3f} ({event.seconds:.0f} s)", flush=True)
    t_train = time.perf_counter() - t1
    held = [labelled_squares(900 + i) for i in range(args.held_out)]
    test_crops = np.concatenate([h[0] for h in held])
    truth = np.concatenate([h[2] for h in held])
    pred = predict(model, test_crops)["scores"]
    mae = {s: float(np.abs(pred[:, j] - truth[:, j]).mean()) for j, s in enumerate(SCORES)}
    rho = float(spearmanr(pred[:, -1], truth[:, -1]).statistic)
    model.history[-1]["held_out"] = {"squares": int(len(truth)), "mae": mae, "spearman_overall": rho, "atlas_seeds": [900 + i for i in range(args.held_out)]}
    model.history[-1]["training_atlas_seeds"] = [100 + i for i in range(args.atlases)]
    model.save(args.out, overwrite=args.overwrite)
    print(f"trained in {t_train:.0f} s on {len(crops)} squares; held out ({len(truth)} squares): "
          + ", ".join(f"{k} MAE {v:.2f}" for k, v in mae.items()) + f"; Spearman overall {rho:.3f}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
