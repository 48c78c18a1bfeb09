"""Microtubule segmentation on real cryo-ET: train on one real crop, segment another (#31 item 2).

Inputs: ``shared/testdata/real/13pf_MT.mrc`` and ``14pf_MT.mrc`` (real tomogram crops from cylindra 1.2.0's tests,
10.52 Å voxels in the header, bright protein) and their approximate axes as cylindra's tests place them
(``shared/testdata/README.md``, ZYX in nm). The axes lie in one Z plane and run mostly along Y. They cover
only part of each crop, while the microtubule crosses the whole crop, so for painting (and for the
"whole crop" figures) the first and last segments are extended in a straight line to the crop's edges.

1. Paint ``--slices`` Z slices of 13pf_MT, spread evenly over the slices the tube crosses: every voxel within
   ``--radius`` nm (the microtubule's outer radius) of the axis is 1, the rest of a painted slice 0 (background),
   the other slices unpainted (0), as a user would paint it.
2. ``napari-cryo segment train 13pf_MT.mrc --labels painted.mrc --feature microtubule=1 --out model.scnm``
   (defaults; ``--train-args`` appended), then ``napari-cryo segment apply model.scnm 14pf_MT.mrc --out seg/``.
3. The segmentation of 14pf_MT thresholded at 0.5 (and at the model's stored threshold when it differs),
   skeletonised in 3D: median and 90th-percentile distance (Å) of skeleton voxels to 14pf_MT's axis, the
   fraction within ``--near-nm``, and completeness (fraction of the axis within ``--near-nm`` of the skeleton).
   "given segment" uses the axis as given (skeleton voxels whose nearest axis point falls beyond its ends are
   left out); "whole crop" uses the extended axis. A Dice against a tube of ``--radius`` around the extended
   axis is printed too: an approximate reference, the axes being approximate hand placements. "cleaned"
   repeats the centreline figures after dropping connected components under ``--min-component-nm3``.

Also prints, for both crops, the contrast-to-noise of the wall ((mean 9-13 nm from the axis - mean 20-35 nm)
/ std 20-35 nm), the measure ``external_sim_cylindra.py`` reports for its simulated tomograms.

Run (from the repository root, in napari-cryo's environment):

    nice -n 10 .venv/bin/python benchmarks/real_microtubule_check.py [--train-args "..."] [--label NAME]

Result: one line on stdout and ``--json`` (default benchmarks/results/real_microtubule.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree
from skimage.morphology import skeletonize

sys.path.insert(0, str(Path(__file__).parent))
from eval_segmentation_independent import (  # noqa: E402
    LOADS, cli, densify, dice, drop_small, git_state, model_metadata, read_volume, run, write_labels,
)

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared/testdata/real"
NM_PER_UNIT = 1.052  # the README's axes: voxel index x 1.052 = nm
# Approximate axes from shared/testdata/README.md (ZYX, nm), as cylindra's tests place them.
AXES_NM = {
    "13pf_MT": [(18.97, 190.0, 28.99), (18.97, 107.8, 51.48)],
    "14pf_MT": [(21.97, 123.1, 32.98), (21.97, 83.3, 40.5), (21.97, 17.6, 64.96)],
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=REAL, help="folder with 13pf_MT.mrc and 14pf_MT.mrc")
    p.add_argument("--slices", type=int, default=12, help="painted Z slices of 13pf_MT (default 12)")
    p.add_argument("--radius", type=float, default=12.5, help="painted radius around the axis, nm (default 12.5)")
    p.add_argument("--near-nm", type=float, default=5.0)
    p.add_argument("--min-component-nm3", type=float, default=12000.0,
                   help="'cleaned' figures drop connected components smaller than this (nm^3, default 12000)")
    p.add_argument("--train-args", default="", help="extra arguments appended to 'segment train'")
    p.add_argument("--work", type=Path, default=Path("/work/evaldata/real_mt"))
    p.add_argument("--label", default="defaults")
    p.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/real_microtubule.json")
    return p.parse_args(argv)


def axis_voxels(name: str) -> np.ndarray:
    """The README's axis of a crop in voxels (ZYX)."""
    return np.asarray(AXES_NM[name], float) / NM_PER_UNIT


def extend_to_edges(poly: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The polyline with its first and last segments prolonged in a straight line to the crop's faces."""
    def reach(p: np.ndarray, d: np.ndarray) -> np.ndarray:
        d = d / np.linalg.norm(d)
        steps = [((0 if d[i] < 0 else shape[i] - 1) - p[i]) / d[i] for i in range(3) if abs(d[i]) > 1e-9]
        return p + d * max(min(steps), 0.0)
    return np.vstack([reach(poly[0], poly[0] - poly[1]), poly, reach(poly[-1], poly[-1] - poly[-2])])


def distance_to(poly: np.ndarray, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Per voxel: distance (voxels) to the polyline and the index of the nearest densified point."""
    pts = densify(poly, 0.1)
    grid = np.indices(shape).reshape(3, -1).T
    d, i = cKDTree(pts).query(grid)
    return d.reshape(shape), i.reshape(shape)


def tube(poly: np.ndarray, shape: tuple[int, ...], radius_vox: float) -> np.ndarray:
    return distance_to(poly, shape)[0] <= radius_vox


def wall_cnr(vol: np.ndarray, dist_nm: np.ndarray) -> float:
    wall = (dist_nm >= 9) & (dist_nm < 13)
    ring = (dist_nm >= 20) & (dist_nm < 35)
    return float((vol[wall].mean() - vol[ring].mean()) / vol[ring].std())


def centreline(mask: np.ndarray, given: np.ndarray, extended: np.ndarray, voxel: float, near_nm: float) -> dict:
    """Skeleton of ``mask`` against the given axis segment and the extended one (voxels in, Å out)."""
    skel = np.argwhere(skeletonize(mask.astype(bool)))
    near = near_nm * 10 / voxel
    ext_pts = densify(extended, 0.1)
    # Densified points of the extended axis that belong to the given part: nearer than 0.06 voxel to it.
    on_given = cKDTree(densify(given, 0.05)).query(ext_pts)[0] < 0.06
    out: dict = {"skeleton_voxels": int(len(skel))}
    if len(skel) == 0:
        return {**out, "given": None, "whole": None}
    d, idx = cKDTree(ext_pts).query(skel)
    result = {}
    for part, sel in (("given", on_given[idx]), ("whole", np.ones(len(skel), bool))):
        axis_pts = ext_pts[on_given] if part == "given" else ext_pts
        inside = np.all((axis_pts >= -0.5) & (axis_pts <= np.array(mask.shape) - 0.5), axis=1)
        cover = cKDTree(skel).query(axis_pts[inside])[0]
        ds = d[sel]
        result[part] = {
            "skeleton_voxels": int(sel.sum()),
            "median_A": None if len(ds) == 0 else round(float(np.median(ds) * voxel), 1),
            "p90_A": None if len(ds) == 0 else round(float(np.percentile(ds, 90) * voxel), 1),
            "skeleton_near_fraction": None if len(ds) == 0 else round(float(np.mean(ds <= near)), 3),
            "completeness": round(float(np.mean(cover <= near)), 3),
            "axis_length_nm": round(float(inside.sum() * 0.1 * voxel / 10), 1),
        }
    return {**out, **result}


def _epochs(meta: dict) -> str:
    """Epochs run and why training stopped, when the model records it."""
    t = meta.get("training") or {}
    return f"{t.get('epochs', meta.get('epochs'))} epochs" + (f", stopped: {t['stopped']}" if t.get("stopped") else "")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = args.work / args.label
    work.mkdir(parents=True, exist_ok=True)
    src, dst = args.data / "13pf_MT.mrc", args.data / "14pf_MT.mrc"
    vol_a, vox_a = read_volume(src)
    vol_b, vox_b = read_volume(dst)
    info = {}
    for name, vol, vox in (("13pf_MT", vol_a, vox_a), ("14pf_MT", vol_b, vox_b)):
        ax = axis_voxels(name)
        direction = ax[-1] - ax[0]
        ext = extend_to_edges(ax, vol.shape)
        dist_nm = distance_to(ext, vol.shape)[0] * vox / 10
        info[name] = {"shape_zyx": list(vol.shape), "dtype": str(vol.dtype), "voxel_A_header": vox,
                      "axis_direction_zyx": np.round(direction / np.linalg.norm(direction), 3).tolist(),
                      "axis_given_vox": np.round(ax, 2).tolist(), "axis_extended_vox": np.round(ext, 2).tolist(),
                      "wall_cnr": round(wall_cnr(vol.astype(np.float32), dist_nm), 3)}
        print(f"{name}: {vol.shape} {vol.dtype}, header voxel {vox:.2f} Å, axis direction ZYX {info[name]['axis_direction_zyx']}, "
              f"wall CNR {info[name]['wall_cnr']:.2f}")
    pixel_args = [] if vox_a > 1.5 and vox_b > 1.5 else ["--pixel-size", "10.52"]  # 1 Å = the MRC default: no size stored

    # Paint 13pf_MT.
    ext_a = extend_to_edges(axis_voxels("13pf_MT"), vol_a.shape)
    truth_a = tube(ext_a, vol_a.shape, args.radius * 10 / vox_a)
    present = np.flatnonzero(truth_a.any(axis=(1, 2)))
    slices = np.unique(present[np.linspace(0, len(present) - 1, min(args.slices, len(present))).round().astype(int)])
    painted = np.zeros(vol_a.shape, np.uint8)
    painted[slices] = truth_a[slices]
    painted_path = work / "13pf_MT_painted.mrc"
    write_labels(painted_path, painted, vox_a)

    model = work / "model.scnm"
    train_cmd = [cli(), "segment", "train", str(src), "--labels", str(painted_path), "--feature", "microtubule=1",
                 "--out", str(model), "--overwrite", *pixel_args, *shlex.split(args.train_args)]
    train_seconds = run(train_cmd, work / "train.log")
    seg_dir = work / "seg"
    apply_cmd = [cli(), "segment", "apply", str(model), str(dst), "--out", str(seg_dir), "--overwrite", *pixel_args]
    apply_seconds = run(apply_cmd, work / "apply.log")
    found = sorted(seg_dir.glob("14pf_MT__*.mrc"))
    if len(found) != 1:
        sys.exit(f"{seg_dir}: expected one segmentation of 14pf_MT, found {[p.name for p in found]}")
    prob = read_volume(found[0])[0].astype(np.float32)
    meta = model_metadata(model)
    stored = meta.get("threshold")

    given_b = axis_voxels("14pf_MT")
    ext_b = extend_to_edges(given_b, vol_b.shape)
    tube_b = tube(ext_b, vol_b.shape, args.radius * 10 / vox_b)
    thresholds = [0.5] + ([stored] if stored is not None and abs(stored - 0.5) > 1e-6 else [])
    per_threshold = {}
    for t in thresholds:
        mask = prob >= t
        cleaned = drop_small(mask, args.min_component_nm3 / (vox_b / 10) ** 3)
        per_threshold[str(t)] = {"tube_dice": round(dice(mask, tube_b), 4), "predicted_fraction": round(float(mask.mean()), 4),
                                 **centreline(mask, given_b, ext_b, vox_b, args.near_nm),
                                 "cleaned": centreline(cleaned, given_b, ext_b, vox_b, args.near_nm)}

    result = {
        "label": args.label, "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.node()}, {os.cpu_count()} cores (shared)", "git": git_state(), "crops": info,
        "painted_slices": [int(z) for z in slices], "painted_radius_nm": args.radius,
        "train_command": shlex.join(train_cmd), "apply_command": shlex.join(apply_cmd),
        "train_seconds": round(train_seconds, 1), "apply_seconds": round(apply_seconds, 1), "machine_load": LOADS, "model": meta,
        "near_nm": args.near_nm, "thresholds": per_threshold,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(args.json.read_text()) if args.json.is_file() else {}
    runs = previous.get("runs", {}) if isinstance(previous, dict) else {}
    runs[args.label] = result
    args.json.write_text(json.dumps({"runs": runs}, indent=1))

    r = per_threshold["0.5"]
    g, w, c = r.get("given") or {}, r.get("whole") or {}, (r.get("cleaned") or {}).get("whole") or {}
    print(f"real MT ({args.label}): train 13pf ({len(slices)} painted slices) -> 14pf, threshold 0.5: centreline median "
          f"{g.get('median_A')} Å, p90 {g.get('p90_A')} Å, completeness {g.get('completeness')} (given axis; whole crop: "
          f"{w.get('median_A')} / {w.get('p90_A')} Å, {w.get('completeness')}; whole crop cleaned: {c.get('median_A')} / "
          f"{c.get('p90_A')} Å, {c.get('completeness')}), tube Dice {r['tube_dice']:.3f}; "
          f"training {train_seconds / 60:.1f} min ({_epochs(meta)}), apply {apply_seconds:.0f} s; stored threshold {stored}")
    for t, v in per_threshold.items():
        if t != "0.5":
            print(f"  at stored threshold {t}: median {v['given'] and v['given']['median_A']} Å, p90 {v['given'] and v['given']['p90_A']} Å, "
                  f"completeness {v['given'] and v['given']['completeness']}, tube Dice {v['tube_dice']:.3f}")
    print(f"results: {args.json} (run '{args.label}')")
    return 0


if __name__ == "__main__":
    sys.exit(main())
