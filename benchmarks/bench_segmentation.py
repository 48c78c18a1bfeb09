"""Tomogram segmentation benchmark: Dice per feature and architecture, interactions for picking, speed.

Simulated tomograms (napari_cryo.synthetic.tomogram) with exact ground truth: vesicle membranes, a carbon film with
an edge, particles bound ~20 nm outside membranes and free particles of the same size elsewhere, filaments, a +-60 deg
missing wedge and low SNR.  Models are trained from a few fully painted slices of the training tomograms and scored
on other tomograms.

* Dice of every feature (threshold 0.5) for each architecture, with training time and inference throughput.
* Picking particles from the 'particle' segmentation of the default architecture, without and with the interactions
  'membrane avoids carbon' and 'particle colocalizes with membrane': the fraction of free-particle picks removed and
  of membrane-bound picks kept (a pick matches a true particle within its radius).
* The time the default model takes to segment a 512 x 512 x 200 tomogram.

* The time a group of three default models (with interactions) takes to segment a 512 x 512 x 200 tomogram.

Models train with the default recipe (early stopping, 150 s budget per feature) unless ``--epochs N`` asks for
exactly N epochs.

Run: python -u benchmarks/bench_segmentation.py [--architectures vgg unet ...] [--epochs N] [--slices 6]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.spatial import cKDTree

sys.path.insert(0, str(Path(__file__).parent))
from bench_io import write_section  # noqa: E402

from napari_cryo.segmentation import architectures  # noqa: E402
from napari_cryo.segmentation.dataset import AnnotatedTomogram, BoxSettings  # noqa: E402
from napari_cryo.segmentation.features import make_features  # noqa: E402
from napari_cryo.segmentation.inference import predict_volume  # noqa: E402
from napari_cryo.segmentation.interactions import Interaction, InteractionGraph, apply_interactions  # noqa: E402
from napari_cryo.segmentation.particles import PickSettings, pick_particles  # noqa: E402
from napari_cryo.segmentation.training import DEFAULT_CONTEXT, TrainSettings, train_feature  # noqa: E402
from napari_cryo.synthetic.tomogram import FEATURES, simulate_tomogram  # noqa: E402
from napari_cryo.tasks import drain  # noqa: E402

SHAPE = (96, 256, 256)
PIXEL = 10.0
PARTICLE_DIAMETER = 200.0


def make_tomogram(seed: int, shape=SHAPE, snr: float = 0.5):
    return simulate_tomogram(shape=shape, pixel_size=PIXEL, n_vesicles=3, n_bound=14, n_free=14, n_filaments=2,
                             particle_diameter=PARTICLE_DIAMETER, membrane_distance=200.0, snr=snr, seed=seed)


def painted(t, n_slices: int) -> AnnotatedTomogram:
    """Fully paint ``n_slices`` slices from the ground truth, as a user paints by hand.

    A user paints where the features are: the slice showing most of each feature is painted, and the rest of the
    ``n_slices`` are spread evenly through the volume.
    """
    nz = t.labels.shape[0]
    chosen = {int(np.argmax([(t.labels[z] == v).sum() for z in range(nz)])) for v in FEATURES.values()}
    for z in np.linspace(8, nz - 9, n_slices).round().astype(int):
        if len(chosen) >= n_slices:
            break
        if all(abs(z - c) > 4 for c in chosen):
            chosen.add(int(z))
    labels = np.zeros_like(t.labels)
    for z in sorted(chosen):
        labels[z] = t.labels[z]
    return AnnotatedTomogram(t.volume, labels, t.pixel_size, "training tomogram")


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    inter = np.count_nonzero(pred & truth)
    return 2.0 * inter / max(1, np.count_nonzero(pred) + np.count_nonzero(truth))


def match(picks: np.ndarray, truth: np.ndarray, radius_px: float) -> np.ndarray:
    """For each true particle, whether a pick lies within ``radius_px``."""
    if len(picks) == 0:
        return np.zeros(len(truth), bool)
    d, _ = cKDTree(picks).query(truth)
    return d <= radius_px


def pick_stats(prob: np.ndarray, t, min_volume: float) -> dict:
    picked = pick_particles(prob, PIXEL, PickSettings(threshold=0.5, min_volume=min_volume, min_spacing=PARTICLE_DIAMETER * 0.8))
    found = match(picked.coordinates, t.particles, PARTICLE_DIAMETER / 2 / PIXEL)
    # Picks near no true particle are false positives.
    if len(picked.coordinates):
        d, _ = cKDTree(t.particles).query(picked.coordinates)
        false = int(np.count_nonzero(d > PARTICLE_DIAMETER / 2 / PIXEL))
    else:
        false = 0
    return {"bound": int(found[t.membrane_bound].sum()), "free": int(found[~t.membrane_bound].sum()), "false": false,
            "n_bound": int(t.membrane_bound.sum()), "n_free": int((~t.membrane_bound).sum())}


def time_big_group() -> float:
    """Seconds for a group of three default models, with interactions, on a 512x512x200 tomogram."""
    from napari_cryo.segmentation.group import ModelGroup
    from napari_cryo.segmentation.model import SegmentationModel

    big = make_tomogram(300, shape=(200, 512, 512))
    models = [SegmentationModel.new(architectures.DEFAULT, name, pixel_size=PIXEL, context=DEFAULT_CONTEXT) for name in ("membrane", "carbon", "particle")]
    graph = InteractionGraph([Interaction("membrane", "carbon", "avoid", 0.5, 10.0), Interaction("particle", "membrane", "colocalize", 0.5, 30.0)], set(), set())
    t0 = time.perf_counter()
    drain(ModelGroup(models, graph).apply(big.volume, PIXEL))
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--architectures", nargs="+", default=list(architectures.available()))
    parser.add_argument("--epochs", type=int, default=None, help="exactly this many epochs (default: the default recipe's early stopping)")
    parser.add_argument("--slices", type=int, default=6, help="painted slices per training tomogram")
    parser.add_argument("--train", type=int, default=2, help="training tomograms")
    parser.add_argument("--test", type=int, default=2, help="test tomograms")
    parser.add_argument("--big", action=argparse.BooleanOptionalAction, default=True, help="time a 512x512x200 tomogram")
    parser.add_argument("--big-only", action="store_true", help="only time the 512x512x200 tomogram (untrained default model: same compute)")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    machine = f"{platform.machine()}, {torch.get_num_threads()} torch threads on {os.cpu_count()} cores, torch {torch.__version__}"
    print(machine, flush=True)

    if args.big_only:
        big_s = time_big_group()
        print(f"512x512x200, group of 3 {architectures.DEFAULT} models with interactions: {big_s:.1f} s", flush=True)
        if not args.no_write:
            write_section(
                "Tomogram segmentation: 512x512x200",
                f"`python benchmarks/bench_segmentation.py --big-only` on {machine}: a group of three default models ({architectures.DEFAULT}, "
                f"{DEFAULT_CONTEXT} slices of context) with two interactions segments a 512x512x200 tomogram in {big_s:.0f} s (target: under 120 s). "
                "The weights do not change the compute, so untrained models of the same architecture are timed.",
            )
        return

    train = [make_tomogram(100 + i) for i in range(args.train)]
    test = [make_tomogram(200 + i) for i in range(args.test)]
    data = [painted(t, args.slices) for t in train]
    features = make_features(FEATURES)  # membrane=1, carbon=2, particle=3, filament=4 as in the simulation
    assert [(f.name, f.value) for f in features] == list(FEATURES.items())
    settings = TrainSettings() if args.epochs is None else TrainSettings.fixed(args.epochs, boxes=BoxSettings(context=DEFAULT_CONTEXT))
    test_voxels = sum(t.volume.size for t in test)

    rows, results = [], {}
    for arch in args.architectures:
        models, train_s = {}, {}
        for f in features:
            t0 = time.perf_counter()
            models[f.name] = drain(train_feature(data, f, arch, settings))[0]
            train_s[f.name] = time.perf_counter() - t0
            print(f"{arch} {f.name}: trained in {train_s[f.name]:.0f} s, loss {models[f.name].final_loss:.3f}", flush=True)
        t0 = time.perf_counter()
        preds = [drain(predict_volume(list(models.values()), t.volume, PIXEL))[0] for t in test]
        infer_s = time.perf_counter() - t0
        scores = {f.name: float(np.mean([dice(p[f.name] >= 0.5, t.labels == f.value) for p, t in zip(preds, test)])) for f in features}
        rate = test_voxels * len(features) / infer_s
        print(f"{arch}: dice {scores}, {rate / 1e6:.2f} M voxel-models/s", flush=True)
        results[arch] = {"models": models, "preds": preds}
        rows.append((arch, scores, sum(train_s.values()) / len(features), rate))

    # Interactions, with the default architecture (or the first one run).
    arch = architectures.DEFAULT if architectures.DEFAULT in results else args.architectures[0]
    graph = InteractionGraph(
        [Interaction("membrane", "carbon", "avoid", 0.5, 10.0), Interaction("particle", "membrane", "colocalize", 0.5, 25.0)], set(), set()
    )
    min_volume = 0.15 * np.pi / 6 * PARTICLE_DIAMETER**3  # a sixth of a particle: drop specks
    without = {"bound": 0, "free": 0, "false": 0, "n_bound": 0, "n_free": 0}
    with_int = dict(without)
    for p, t in zip(results[arch]["preds"], test):
        a = pick_stats(p["particle"], t, min_volume)
        b = pick_stats(apply_interactions(p, graph, PIXEL)["particle"], t, min_volume)
        for k in without:
            without[k] += a[k]
            with_int[k] += b[k]
    removed_free = 1.0 - with_int["free"] / max(1, without["free"])
    kept_bound = with_int["bound"] / max(1, without["bound"])
    print(f"picking without {without}, with {with_int}: free removed {removed_free:.2f}, bound kept {kept_bound:.2f}", flush=True)

    big_s = None
    if args.big:
        big_s = time_big_group()
        print(f"512x512x200, group of 3 {architectures.DEFAULT} models: {big_s:.1f} s", flush=True)

    if args.no_write:
        return
    names = [f.name for f in features]
    lines = [
        f"`python -u benchmarks/bench_segmentation.py{'' if args.epochs is None else f' --epochs {args.epochs}'} --slices {args.slices}` on {machine}.",
        "",
        f"Simulated tomograms of {SHAPE[2]}x{SHAPE[1]}x{SHAPE[0]} voxels at {PIXEL:g} Å (SNR 0.5 after a ±60° missing wedge): "
        f"{args.train} for training, {args.slices} fully painted slices each; {args.test} others for testing. "
        "One model per feature, box 64, "
        + ("the default recipe (augmentation, 5 slices of context, early stopping on a fifth of the painted slices, 150 s budget, calibration)" if args.epochs is None
           else f"exactly {args.epochs} epochs")
        + ", batch 32, 24 positive boxes per painted slice, 1.3 negatives per positive. Dice at threshold 0.5 over the whole test volumes; "
        "throughput counts voxels times models, slice by slice in tiles with 0.2 overlap.",
        "",
        "| architecture | " + " | ".join(f"Dice {n}" for n in names) + " | training s/feature | inference voxels/s |",
        "|---" * (len(names) + 3) + "|",
    ]
    for arch_name, scores, train_s, rate in rows:
        lines.append(f"| {arch_name} | " + " | ".join(f"{scores[n]:.3f}" for n in names) + f" | {train_s:.0f} | {rate / 1e6:.2f} M |")
    lines += [
        "",
        f"Picking particles from the `particle` segmentation ({arch}; threshold 0.5, minimum volume "
        f"{min_volume / 1e3:.0f} nm³, minimum spacing {PARTICLE_DIAMETER * 0.8:.0f} Å; a pick matches a true particle within "
        f"{PARTICLE_DIAMETER / 2:.0f} Å), over the test tomograms ({without['n_bound']} membrane-bound and {without['n_free']} free particles):",
        "",
        "| | bound particles found | free particles found | picks on no particle |",
        "|---|---|---|---|",
        f"| no interactions | {without['bound']} | {without['free']} | {without['false']} |",
        f"| membrane avoids carbon (10 nm), particle colocalizes with membrane (25 nm) | {with_int['bound']} | {with_int['free']} | {with_int['false']} |",
        "",
        f"The interactions remove {100 * removed_free:.0f} % of the free-particle picks and keep {100 * kept_bound:.0f} % of the "
        "membrane-bound ones (targets: at least 80 % and 90 %).",
    ]
    if big_s is not None:
        lines += ["", f"Segmenting a 512x512x200 tomogram with a group of three default models and two interactions takes {big_s:.0f} s on this machine (target: under 120 s)."]
    lines += ["", "No GPU was available to this benchmark's runs; the GPU column is left out rather than guessed."]
    write_section("Tomogram segmentation", "\n".join(lines))


if __name__ == "__main__":
    main()
