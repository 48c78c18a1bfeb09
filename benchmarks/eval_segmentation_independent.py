"""Tomogram segmentation on tomograms napari-cryo never generated: Dice and centreline accuracy (#31 item 1).

The sets come from ``benchmarks/external_sim_cylindra.py`` (or anything with the same layout): a folder with
``train_*.mrc`` and ``test_*.mrc`` tomograms, beside each ``<name><labels-suffix>.mrc`` (integer ground truth,
``--label-value`` marks the feature) and, for filaments, ``<name>_axes.json`` (``{"axes": [{"points_zyx":
[[z, y, x], ...]}, ...]}`` in voxels).  Nothing is trained on the test tomograms.

What it does, through the documented command line only, with the defaults of the day:

1. paints ``--slices`` Z slices of each train tomogram from its ground truth, spread evenly over the slices
   where the feature is present (every feature voxel of those slices painted 1, the rest of the volume 0 = not
   painted), as a user would;
2. ``napari-cryo segment train TRAIN... --labels PAINTED... --feature NAME=1 --out model.scnm`` (anything in
   ``--train-args`` is appended), timed;
3. ``napari-cryo segment apply model.scnm TEST... --out seg/``, timed;
4. per test tomogram: Dice at probability 0.5 and at the model's stored threshold, the best Dice over
   thresholds 0.05-0.95 (an oracle, for diagnosis only), and for filaments the centreline: the thresholded
   segmentation skeletonised in 3D (``skimage.morphology.skeletonize``), the median and 90th-percentile distance
   (Å) from skeleton voxels to the true axes, the fraction of skeleton voxels within ``--near-nm`` of an axis,
   and completeness, the fraction of the true axis length inside the volume that lies within ``--near-nm`` of
   the skeleton; the same again ("cleaned") after dropping connected components smaller than
   ``--min-component-nm3``, which tells specks of false positive apart from a displaced or broken centreline.

Run (from the repository root, in napari-cryo's environment):

    nice -n 10 .venv/bin/python benchmarks/eval_segmentation_independent.py /work/evaldata/cylindra \\
        [--feature microtubule] [--labels-suffix _labels] [--train-args "--epochs 10"] [--label NAME]

Results: a markdown table on stdout and ``--json`` (default benchmarks/results/segmentation_cylindra.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import mrcfile
import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree
from skimage.morphology import skeletonize

ROOT = Path(__file__).resolve().parents[1]
THRESHOLDS = np.round(np.arange(0.05, 0.951, 0.05), 2)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("folder", type=Path, help="folder with train_*.mrc, test_*.mrc and their ground truth")
    p.add_argument("--feature", default="microtubule", help="feature name given to segment train (default microtubule)")
    p.add_argument("--label-value", type=int, default=1, help="value of the feature in the ground-truth volumes")
    p.add_argument("--labels-suffix", default="_labels", help="ground truth is <name><suffix>.mrc (default _labels)")
    p.add_argument("--axes-suffix", default="_axes.json", help="filament axes <name><suffix> (skipped when absent)")
    p.add_argument("--train-glob", default="train_*.mrc")
    p.add_argument("--test-glob", default="test_*.mrc")
    p.add_argument("--slices", type=int, default=12, help="painted Z slices per train tomogram (default 12)")
    p.add_argument("--near-nm", type=float, default=5.0, help="distance for completeness, nm (default 5)")
    p.add_argument("--min-component-nm3", type=float, default=12000.0,
                   help="the 'cleaned' centreline figures drop connected components smaller than this (nm^3; default "
                        "12000, about 25 nm of a 12.5 nm-radius tube), as a user would drop specks")
    p.add_argument("--train-args", default="", help="extra arguments appended to 'segment train', e.g. \"--epochs 10\"")
    p.add_argument("--apply-args", default="", help="extra arguments appended to 'segment apply'")
    p.add_argument("--work", type=Path, default=None, help="working folder (default <folder>/runs/<label>)")
    p.add_argument("--label", default="defaults", help="name of this run in the results")
    p.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/segmentation_cylindra.json")
    p.add_argument("--reuse-model", action="store_true", help="skip training when <work>/model.scnm exists")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------------------------- files


def read_volume(path: Path) -> tuple[np.ndarray, float]:
    """Data (ZYX) and voxel size in Å (X's) of an MRC file."""
    with mrcfile.open(path, permissive=True) as m:
        return np.asarray(m.data), float(m.voxel_size.x)


def write_labels(path: Path, labels: np.ndarray, voxel: float) -> None:
    with mrcfile.new(path, overwrite=True) as m:
        m.set_data(labels.astype(np.uint8))
        m.voxel_size = voxel


def tomograms(folder: Path, pattern: str, suffix: str) -> list[Path]:
    """The tomograms matching ``pattern``, without their ground-truth or segmentation files."""
    return sorted(p for p in folder.glob(pattern) if not p.stem.endswith(suffix) and "__" not in p.stem)


def read_axes(path: Path) -> list[np.ndarray] | None:
    """Filament axes (voxels, ZYX) from ``<name>_axes.json``; None when there is no such file."""
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    return [np.asarray(a["points_zyx"], dtype=float) for a in data["axes"]]


# ----------------------------------------------------------------------------------------------- painting


def painted_slices(truth: np.ndarray, n: int) -> np.ndarray:
    """``n`` Z indices spread evenly over the slices where the feature is present."""
    present = np.flatnonzero(truth.any(axis=(1, 2)))
    if len(present) == 0:
        return present
    picks = np.linspace(0, len(present) - 1, min(n, len(present))).round().astype(int)
    return np.unique(present[picks])


def paint(truth: np.ndarray, slices: np.ndarray, value: int = 1) -> np.ndarray:
    """A label volume painted ``value`` on the feature in ``slices`` only, 0 (not painted) elsewhere."""
    out = np.zeros(truth.shape, np.uint8)
    out[slices] = truth[slices].astype(np.uint8) * value
    return out


# ----------------------------------------------------------------------------------------------- metrics


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    denom = pred.sum() + truth.sum()
    return float(2 * np.logical_and(pred, truth).sum() / denom) if denom else 1.0


def densify(poly: np.ndarray, step: float) -> np.ndarray:
    """Points along a polyline at most ``step`` apart (same units as the polyline)."""
    out = [poly[:1]]
    for a, b in zip(poly[:-1], poly[1:]):
        k = max(int(np.ceil(np.linalg.norm(b - a) / step)), 1)
        out.append(a + (b - a) * np.linspace(0, 1, k + 1)[1:, None])
    return np.concatenate(out)


def centreline_metrics(mask: np.ndarray, axes: list[np.ndarray], voxel: float, near_nm: float) -> dict:
    """Skeleton of ``mask`` against the true axes (voxels, ZYX): distances in Å and completeness."""
    skel = np.argwhere(skeletonize(mask.astype(bool)))
    shape = np.array(mask.shape)
    # Only the part of each axis inside the volume can be found; sample it every 0.25 voxel.
    pts = np.concatenate([densify(a, 0.25) for a in axes])
    inside = np.all((pts >= -0.5) & (pts <= shape - 0.5), axis=1)
    axis_pts = pts[inside]
    near = near_nm * 10 / voxel
    out = {"skeleton_voxels": int(len(skel)), "axis_length_inside_nm": round(float(inside.sum() * 0.25 * voxel / 10), 1)}
    if len(skel) == 0:
        return {**out, "median_A": None, "p90_A": None, "skeleton_near_fraction": None, "completeness": 0.0}
    d_skel, _ = cKDTree(densify_all(axes)).query(skel)
    d_axis, _ = cKDTree(skel).query(axis_pts)
    return {
        **out,
        "median_A": round(float(np.median(d_skel) * voxel), 1),
        "p90_A": round(float(np.percentile(d_skel, 90) * voxel), 1),
        "skeleton_near_fraction": round(float(np.mean(d_skel <= near)), 3),
        "completeness": round(float(np.mean(d_axis <= near)), 3),
    }


def drop_small(mask: np.ndarray, min_voxels: float) -> np.ndarray:
    """``mask`` without its 26-connected components smaller than ``min_voxels``."""
    lab, n = ndimage.label(mask, structure=np.ones((3, 3, 3)))
    if n == 0:
        return mask
    sizes = np.bincount(lab.ravel())
    keep = sizes >= min_voxels
    keep[0] = False
    return keep[lab]


def densify_all(axes: list[np.ndarray]) -> np.ndarray:
    """All axes (whole length, also outside the volume) sampled every 0.1 voxel."""
    return np.concatenate([densify(a, 0.1) for a in axes])


def model_metadata(path: Path) -> dict:
    """The stored metadata of a ``.scnm`` model (through napari-cryo's loader)."""
    from napari_cryo.segmentation.model import SegmentationModel

    model = SegmentationModel.load(path)
    meta = model.metadata() if hasattr(model, "metadata") else {}
    return {k: meta.get(k) for k in ("architecture", "threshold", "logit_offset", "pixel_size", "box_size", "context", "epochs",
                                     "final_loss", "n_parameters", "training") if k in meta}


# ----------------------------------------------------------------------------------------------- running


LOADS: list[dict] = []  # the machine's load around each command: wall times on a shared machine depend on it


def run(cmd: list[str], log: Path) -> float:
    """Run a command (output to ``log``), fail loudly; returns its wall time in seconds."""
    print("$ " + shlex.join(cmd), flush=True)
    load_before = os.getloadavg()[0]
    t0 = time.time()
    with open(log, "w") as fh:
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT)
    seconds = time.time() - t0
    LOADS.append({"command": " ".join(cmd[1:3]), "load_1min_before": round(load_before, 2), "load_5min_after": round(os.getloadavg()[1], 2)})
    if proc.returncode != 0:
        sys.exit(f"command failed (exit {proc.returncode}); see {log}:\n" + log.read_text()[-3000:])
    return seconds


def cli() -> str:
    """The ``napari-cryo`` entry point of this environment."""
    exe = Path(sys.executable).parent / "napari-cryo"
    return str(exe) if exe.exists() else "napari-cryo"


def git_state() -> dict:
    def git(*a: str) -> str:
        return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return {"commit": git("rev-parse", "--short", "HEAD"), "dirty_segmentation_files": git("status", "--porcelain", "--", "src/napari_cryo/segmentation").splitlines()}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    folder = args.folder
    train = tomograms(folder, args.train_glob, args.labels_suffix)
    test = tomograms(folder, args.test_glob, args.labels_suffix)
    if not train or not test:
        sys.exit(f"{folder}: need {args.train_glob} and {args.test_glob} tomograms (found {len(train)} and {len(test)})")
    work = args.work or folder / "runs" / args.label
    (work / "painted").mkdir(parents=True, exist_ok=True)
    seg_dir = work / "seg"
    model = work / "model.scnm"

    painted, paint_info = [], {}
    for tomo in train:
        truth, voxel = read_volume(folder / f"{tomo.stem}{args.labels_suffix}.mrc")
        truth = truth == args.label_value
        slices = painted_slices(truth, args.slices)
        target = work / "painted" / f"{tomo.stem}_painted.mrc"
        write_labels(target, paint(truth, slices), voxel)
        painted.append(target)
        paint_info[tomo.stem] = [int(z) for z in slices]

    train_cmd = [cli(), "segment", "train", *map(str, train), "--labels", *map(str, painted),
                 "--feature", f"{args.feature}=1", "--out", str(model), *shlex.split(args.train_args)]
    if args.reuse_model and model.exists():
        train_seconds = None
        print(f"reusing {model}")
    else:
        if not args.reuse_model:
            train_cmd.append("--overwrite")
        train_seconds = run(train_cmd, work / "train.log")
        print(f"training: {train_seconds / 60:.1f} min", flush=True)
    apply_cmd = [cli(), "segment", "apply", str(model), *map(str, test), "--out", str(seg_dir), "--overwrite",
                 *shlex.split(args.apply_args)]
    apply_seconds = run(apply_cmd, work / "apply.log")
    meta = model_metadata(model)
    stored = meta.get("threshold")

    rows = []
    for tomo in test:
        truth, voxel = read_volume(folder / f"{tomo.stem}{args.labels_suffix}.mrc")
        truth = truth == args.label_value
        found = sorted(seg_dir.glob(f"{tomo.stem}__*.mrc"))
        if len(found) != 1:
            sys.exit(f"{seg_dir}: expected one segmentation of {tomo.stem}, found {[p.name for p in found]}")
        prob, _ = read_volume(found[0])
        prob = prob.astype(np.float32)
        dices = {float(t): dice(prob >= t, truth) for t in THRESHOLDS}
        best_t = max(dices, key=dices.get)
        row = {"tomogram": tomo.stem, "dice_0.5": round(dice(prob >= 0.5, truth), 4),
               "stored_threshold": stored, "dice_stored": None if stored is None else round(dice(prob >= stored, truth), 4),
               "best_dice": round(dices[best_t], 4), "best_threshold": best_t, "truth_fraction": round(float(truth.mean()), 4),
               "predicted_fraction_0.5": round(float((prob >= 0.5).mean()), 4)}
        axes = read_axes(folder / f"{tomo.stem}{args.axes_suffix}")
        if axes is not None:
            row["centreline_0.5"] = centreline_metrics(prob >= 0.5, axes, voxel, args.near_nm)
            min_vox = args.min_component_nm3 / (voxel / 10) ** 3
            row["centreline_0.5_cleaned"] = centreline_metrics(drop_small(prob >= 0.5, min_vox), axes, voxel, args.near_nm)
            if stored is not None and abs(stored - 0.5) > 1e-6:
                row["centreline_stored"] = centreline_metrics(prob >= stored, axes, voxel, args.near_nm)
        rows.append(row)
        print(f"{tomo.stem}: Dice {row['dice_0.5']:.3f}" + (f", centreline median {row['centreline_0.5']['median_A']} Å" if axes else ""), flush=True)

    def mean(key, sub=None):
        vals = [(r[sub] or {}).get(key) if sub else r.get(key) for r in rows if (not sub or sub in r)]
        vals = [v for v in vals if v is not None]
        return round(float(np.mean(vals)), 4) if vals else None

    summary = {"dice_0.5": mean("dice_0.5"), "dice_stored": mean("dice_stored"), "best_dice": mean("best_dice"),
               "median_A": mean("median_A", "centreline_0.5"), "p90_A": mean("p90_A", "centreline_0.5"),
               "completeness": mean("completeness", "centreline_0.5"),
               "skeleton_near_fraction": mean("skeleton_near_fraction", "centreline_0.5"),
               "cleaned_median_A": mean("median_A", "centreline_0.5_cleaned"), "cleaned_p90_A": mean("p90_A", "centreline_0.5_cleaned"),
               "cleaned_completeness": mean("completeness", "centreline_0.5_cleaned")}
    result = {
        "label": args.label, "folder": str(folder), "feature": args.feature, "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.node()}, {os.cpu_count()} cores (shared), {platform.processor() or platform.machine()}",
        "git": git_state(), "train": [t.stem for t in train], "test": [t.stem for t in test],
        "painted_slices": paint_info, "train_command": shlex.join(train_cmd), "apply_command": shlex.join(apply_cmd),
        "train_seconds": None if train_seconds is None else round(train_seconds, 1), "apply_seconds": round(apply_seconds, 1),
        "machine_load": LOADS, "model": meta, "near_nm": args.near_nm, "per_tomogram": rows, "mean": summary,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(args.json.read_text()) if args.json.is_file() else {}
    runs = previous.get("runs", {}) if isinstance(previous, dict) else {}
    runs[args.label] = result
    args.json.write_text(json.dumps({"runs": runs}, indent=1))

    print()
    t = meta.get("training") or {}
    epochs = f"{t.get('epochs', meta.get('epochs'))} epochs" + (f", stopped: {t['stopped']}" if t.get("stopped") else "")
    print(f"### {args.feature} on {folder.name} ({args.label}): training {'-' if train_seconds is None else f'{train_seconds / 60:.1f} min'} ({epochs}), "
          f"apply {apply_seconds:.0f} s for {len(test)} tomograms; stored threshold {stored}")
    print()
    print("| tomogram | Dice@0.5 | Dice@stored | best Dice (t) | skeleton median Å | p90 Å | skeleton within "
          f"{args.near_nm:g} nm | completeness ({args.near_nm:g} nm) | cleaned: median Å | p90 Å | completeness |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    mean_row = {"tomogram": "**mean**", **summary,
                "centreline_0.5": {k: summary[k] for k in ("median_A", "p90_A", "completeness", "skeleton_near_fraction")},
                "centreline_0.5_cleaned": {k: summary["cleaned_" + k] for k in ("median_A", "p90_A", "completeness")}}
    for r in rows + [mean_row]:
        c = r.get("centreline_0.5") or {}
        k = r.get("centreline_0.5_cleaned") or {}
        best = f"{r['best_dice']:.3f} ({r['best_threshold']})" if "best_threshold" in r else f"{r['best_dice']:.3f}"
        print(f"| {r['tomogram']} | {_f(r['dice_0.5'])} | {_f(r.get('dice_stored'))} | {best} | {_f(c.get('median_A'), 1)} | "
              f"{_f(c.get('p90_A'), 1)} | {_f(c.get('skeleton_near_fraction'))} | {_f(c.get('completeness'))} | "
              f"{_f(k.get('median_A'), 1)} | {_f(k.get('p90_A'), 1)} | {_f(k.get('completeness'))} |")
    print(f"\nresults: {args.json} (run '{args.label}')")
    return 0


def _f(v, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


if __name__ == "__main__":
    sys.exit(main())
