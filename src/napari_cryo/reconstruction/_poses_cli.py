"""Compare estimated particle poses with the truth: rotation and shift errors after the best global alignment.

``napari-cryo compare-poses EST.star GT.star [--json]``.  Particles are
matched by ``rlnImageName`` (the image number and the stack's file name, so
the same stack named by different paths still matches).  Ab initio poses
are defined only up to a global rotation and the hand, so both are fitted
first (:func:`.poses.rotation_errors`); origins, when both files have them,
are compared after fitting the global translation of the map
(:func:`.poses.shift_errors`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import CryoInputError

HELP = "rotation and shift errors of estimated poses against the truth (after global alignment)"


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("estimated", help="STAR file with the estimated poses")
    parser.add_argument("truth", help="STAR file with the true poses (e.g. ground_truth.star from 'simulate particles')")
    parser.add_argument("--no-align", action="store_true", help="compare as given, without fitting a global rotation, hand and translation")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def _image_key(name: str) -> str:
    """``'12@dir/stack.mrcs'`` -> ``'12@stack.mrcs'``: the stack's directory does not matter."""
    name = str(name).strip()
    if "@" in name:
        index, stack = name.split("@", 1)
        try:
            return f"{int(index)}@{Path(stack).name}"
        except ValueError:
            pass
    return Path(name).name


def _numbers(table: pd.DataFrame, columns: list[str], path: Path) -> np.ndarray:
    values = table[columns].apply(pd.to_numeric, errors="coerce")
    bad = values.isna().any(axis=1).to_numpy()
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise CryoInputError(path, f"row {row + 1} has a missing or non-numeric value in {', '.join(columns)}")
    return values.to_numpy(dtype=np.float64)


def read_poses(path: str | Path) -> pd.DataFrame:
    """Rotations and origins (Å) of a particle STAR file, indexed by image key.

    Returns
    -------
    pandas.DataFrame
        Index: image key; columns ``matrix`` (3x3 arrays) and, when the file
        has origins with a pixel size, ``origin_x``/``origin_y`` in Å.

    Raises
    ------
    CryoInputError
        Without image names or angles, with bad values or repeated images.
    """
    from ..geometry import euler_to_matrix
    from ..io.star import EULER_COLUMNS, IMAGE_PIXEL_SIZE_COLUMNS, ORIGIN_ANGST, ORIGIN_PIXELS, particle_table

    path = Path(path)
    pt = particle_table(path)
    table = pt.table
    if "rlnImageName" not in table.columns:
        raise CryoInputError(path, "has no rlnImageName column to match particles by")
    missing = [c for c in EULER_COLUMNS if c not in table.columns]
    if missing:
        raise CryoInputError(path, f"has no particle angles (missing {', '.join(missing)})")
    if len(table) == 0:
        raise CryoInputError(path, "has no particles")
    keys = table["rlnImageName"].map(_image_key)
    repeated = keys[keys.duplicated()]
    if len(repeated):
        raise CryoInputError(path, f"image {table['rlnImageName'][repeated.index[0]]} appears more than once")
    matrices = euler_to_matrix(_numbers(table, list(EULER_COLUMNS), path))
    out = pd.DataFrame({"matrix": list(matrices)}, index=pd.Index(keys.to_numpy(), name="image"))
    if all(c in table.columns for c in ORIGIN_ANGST[:2]):
        origins = _numbers(table, list(ORIGIN_ANGST[:2]), path)
    elif all(c in table.columns for c in ORIGIN_PIXELS[:2]):
        px = pt.pixel_size(IMAGE_PIXEL_SIZE_COLUMNS)
        origins = None
        if px is not None and np.isfinite(px.to_numpy()).all() and (px.to_numpy() > 0).all():
            origins = _numbers(table, list(ORIGIN_PIXELS[:2]), path) * px.to_numpy()[:, None]
    else:
        origins = None
    if origins is not None:
        out["origin_x"], out["origin_y"] = origins[:, 0], origins[:, 1]
    return out


def compare(estimated: str | Path, truth: str | Path, align: bool = True) -> dict:
    """Match two STAR files by image and compare their poses.

    Returns
    -------
    dict
        ``rotations`` (PoseComparison), ``shifts`` (ShiftComparison or None)
        and a ``summary`` of plain values.
    """
    from .poses import rotation_errors, shift_errors

    est_path, tru_path = Path(estimated), Path(truth)
    est, tru = read_poses(est_path), read_poses(tru_path)
    common = est.index.intersection(tru.index)
    if len(common) == 0:
        raise CryoInputError(est_path, f"has no image in common with {tru_path.name} (particles are matched by rlnImageName)")
    e, t = est.loc[common], tru.loc[common]
    est_rot, tru_rot = np.stack(e["matrix"].to_list()), np.stack(t["matrix"].to_list())
    rotations = rotation_errors(est_rot, tru_rot, align=align)
    summary: dict = {
        "estimated": str(est_path),
        "truth": str(tru_path),
        "matched": int(len(common)),
        "only_in_estimated": int(len(est) - len(common)),
        "only_in_truth": int(len(tru) - len(common)),
        "rotation": rotations.as_dict(),
    }
    shifts = None
    if "origin_x" in e.columns and "origin_x" in t.columns:
        shifts = shift_errors(e[["origin_x", "origin_y"]].to_numpy(), t[["origin_x", "origin_y"]].to_numpy(), est_rot, align=align)
        summary["shift"] = {
            "mean_error_A": shifts.mean,
            "median_error_A": shifts.median,
            "map_translation_A": shifts.translation.tolist(),
        }
    return {"rotations": rotations, "shifts": shifts, "summary": summary}


def main(args: argparse.Namespace) -> int:
    result = compare(args.estimated, args.truth, align=not args.no_align)
    rot, shifts, summary = result["rotations"], result["shifts"], result["summary"]
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    extra = ""
    if summary["only_in_estimated"] or summary["only_in_truth"]:
        extra = f" ({summary['only_in_estimated']} only in {Path(args.estimated).name}, {summary['only_in_truth']} only in {Path(args.truth).name})"
    print(f"{'particles':<18}{summary['matched']} matched by rlnImageName{extra}")
    if not args.no_align:
        hand = "mirrored (the estimate has the other hand)" if rot.mirrored else "same"
        print(f"{'hand':<18}{hand}; median error with the other hand {rot.other_hand_median:.1f}°")
        if rot.other_hand_fraction >= 0.05:
            print(f"{'hand mixture':<18}{100 * rot.other_hand_fraction:.0f} % of the particles follow the other hand "
                  "(the map grew from two seeds of opposite hands)")
        euler = ", ".join(f"{v:.1f}" for v in summary["rotation"]["global_rotation_euler_deg"])
        print(f"{'global rotation':<18}rot, tilt, psi = {euler}°")
    print(f"{'rotation error':<18}mean {rot.mean:.2f}°, median {rot.median:.2f}°; "
          f"{100 * rot.fraction_within(5):.0f} % within 5°, {100 * rot.fraction_within(15):.0f} % within 15°")
    if shifts is not None:
        moved = ", ".join(f"{v:.2f}" for v in shifts.translation)
        after = f" (after moving the map by ({moved}) Å)" if not args.no_align else ""
        print(f"{'shift error':<18}mean {shifts.mean:.2f} Å, median {shifts.median:.2f} Å{after}")
    return 0
