"""Interactions on degraded ground truth: do robust interactions hold when the membrane is found in fragments?

No model is trained.  For each tomogram of a folder laid out as ``eval_segmentation_workflow.py`` makes it, the
predictions are built from its labels and then degraded:

* membrane: 0.9 on the labelled membrane, with 60-85 % of it cut away by random 12-voxel balls, plus 300-800 false
  specks (balls of radius 1-2.5 voxels) anywhere;
* particle: 0.9 on the labelled particles, plus a 0.7 response along the membrane next to each bound particle
  (a particle model that also fires on the membrane beside it);
* carbon: 0.9 on the labelled carbon.

Then the workflow of issue #31 ('membrane avoids carbon 10 nm', 'particle avoids membrane 10 nm',
'particle colocalizes membrane 30 nm') is applied in robust or plain mode, particles are picked (threshold 0.5,
minimum volume a sixth of a particle, minimum spacing 0.8 of its diameter) and scored as in
``eval_segmentation_workflow.py``.  Seeds come from the tomogram names, so runs repeat exactly.

Run: python benchmarks/eval_interactions_degraded.py /work/evaldata/ownsim_hard [--mode plain]
"""

from __future__ import annotations

import argparse
import json
import zlib
from pathlib import Path

import numpy as np

from eval_segmentation_workflow import pick_scores, read
from napari_cryo.segmentation.interactions import InteractionGraph, apply_interactions, parse_interaction
from napari_cryo.segmentation.particles import PickSettings, pick_particles

RULES = ["membrane avoids carbon radius=10", "particle avoids membrane radius=10", "particle colocalizes membrane radius=30"]


def _balls(mask: np.ndarray, centres: np.ndarray, radii: np.ndarray, value: bool) -> None:
    """Set ``mask`` to ``value`` in balls (in place)."""
    for c, r in zip(centres, radii):
        reach = int(np.ceil(r))
        box = tuple(slice(max(0, int(x) - reach), min(n, int(x) + reach + 1)) for x, n in zip(c, mask.shape))
        zz, yy, xx = np.ogrid[box]
        mask[box][(zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 <= r * r] = value


def degraded_predictions(labels: np.ndarray, truth: dict, rng: np.random.Generator) -> tuple[dict[str, np.ndarray], dict]:
    """Membrane, particle and carbon predictions made from ``labels`` and degraded (see the module docstring)."""
    membrane = labels == 1
    missing = rng.uniform(0.6, 0.85)
    kept = membrane.copy()
    points = np.argwhere(membrane)
    while kept.sum() > (1 - missing) * membrane.sum():
        _balls(kept, points[rng.integers(len(points))][None], np.array([12.0]), False)
    n_specks = int(rng.integers(300, 801))
    specks = np.zeros(labels.shape, bool)
    _balls(specks, rng.uniform([0, 0, 0], labels.shape, size=(n_specks, 3)).astype(int), rng.uniform(1, 2.5, n_specks), True)
    near_bound = np.zeros(labels.shape, bool)
    for c, bound in zip(np.asarray(truth["zyx"]), truth["bound"]):
        if bound:
            near_bound[tuple(slice(max(0, int(x) - 14), int(x) + 15) for x in c)] = True
    particle = np.where(labels == 3, 0.9, 0.0).astype(np.float32)
    particle[membrane & near_bound] = np.maximum(particle[membrane & near_bound], 0.7)
    predictions = {
        "membrane": np.where(kept | specks, 0.9, 0.0).astype(np.float32),
        "carbon": np.where(labels == 2, 0.9, 0.0).astype(np.float32),
        "particle": particle,
    }
    return predictions, {"membrane_missing": round(float(missing), 3), "specks": n_specks}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder", type=Path)
    p.add_argument("--mode", choices=["robust", "plain"], default="robust")
    p.add_argument("--pixel-size", type=float, default=10.0)
    args = p.parse_args(argv)
    graph = InteractionGraph([parse_interaction(f"{rule} mode={args.mode}") for rule in RULES])
    rows = []
    for path in sorted(args.folder.glob("t*_[0-9][0-9].mrc")):
        labels = read(path.with_name(f"{path.stem}_labels.mrc"))
        truth = json.loads(path.with_name(f"{path.stem}_particles.json").read_text())
        predictions, damage = degraded_predictions(labels, truth, np.random.default_rng(zlib.crc32(path.stem.encode())))
        out = apply_interactions(predictions, graph, args.pixel_size)
        d = truth["diameter_A"]
        picks = pick_particles(out["particle"], args.pixel_size,
                               PickSettings(threshold=0.5, min_volume=np.pi / 6 * d**3 / 6, min_spacing=0.8 * d))
        row = {"tomogram": path.stem, **damage, **pick_scores(picks.coordinates, truth, args.pixel_size)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    free = sum(r["free_picked"] for r in rows) / max(1, sum(r["n_free"] for r in rows))
    print(json.dumps({"mode": args.mode, "tomograms": len(rows), "free_picked": round(free, 3),
                      "bound_f1": round(float(np.mean([r["bound_f1"] for r in rows])), 3)}))


if __name__ == "__main__":
    main()
