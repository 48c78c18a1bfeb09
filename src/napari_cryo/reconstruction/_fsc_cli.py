"""Fourier shell correlation of two maps: resolution at 0.5 and 0.143, optionally after superposing them.

``napari-cryo fsc MAP1 MAP2 [--align] [--mask MRC] [--plot PNG] [--json]``.
With ``--align`` the second map is first rotated, mirrored if that fits
better, and translated onto the first (:func:`.fsc.align_maps`), as an ab
initio map must be before it can be compared with a reference.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from ..errors import CryoInputError

HELP = "FSC of two maps (optionally superposed first): resolution at 0.5 and 0.143"


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("map1", help="reference map (MRC)")
    parser.add_argument("map2", help="map to compare (MRC), same box")
    parser.add_argument("--align", action="store_true", help="superpose MAP2 on MAP1 first: global rotation search, both hands, translation")
    parser.add_argument("--mask", metavar="MRC", help="mask applied to both maps (same box)")
    parser.add_argument("--plot", metavar="PNG", help="save the FSC curve as a PNG")
    parser.add_argument("--pixel-size", type=float, help="pixel size in Å when the headers have none")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --plot file")


def _read(path: Path) -> tuple[np.ndarray, float]:
    from ..io.mrc import read_mrc

    data, info = read_mrc(path)
    if info.kind != "volume" or len(set(info.shape)) != 1:
        raise CryoInputError(path, f"is not a cubic 3D map (it is a {info.kind} of shape {'x'.join(map(str, info.shape))})")
    volume = np.array(data, dtype=np.float32)
    if not np.isfinite(volume).all():
        raise CryoInputError(path, "contains NaN or infinite values")
    return volume, info.pixel_size


def compare_maps(path1: str | Path, path2: str | Path, align: bool = False, mask: str | Path | None = None, pixel_size: float | None = None) -> dict:
    """Read two maps (and a mask), superpose them if asked, and compute their FSC.

    Returns
    -------
    dict
        ``curve`` (FscCurve), ``alignment`` (Alignment or None) and a
        ``summary`` of plain values.

    Raises
    ------
    CryoInputError
        For unreadable maps, different boxes or pixel sizes, or no pixel size.
    """
    from .fsc import align_maps, fsc

    path1, path2 = Path(path1), Path(path2)
    map1, px1 = _read(path1)
    map2, px2 = _read(path2)
    if map1.shape != map2.shape:
        raise CryoInputError(path2, f"box {'x'.join(map(str, map2.shape))} differs from {path1.name}'s {'x'.join(map(str, map1.shape))}")
    if pixel_size is not None:
        if not pixel_size > 0:
            raise CryoInputError(None, f"--pixel-size must be positive, got {pixel_size}")
        px = float(pixel_size)
    else:
        if px1 > 0 and px2 > 0 and abs(px1 - px2) > 0.01 * px1:
            raise CryoInputError(path2, f"pixel size {px2:.4g} Å differs from {path1.name}'s {px1:.4g} Å")
        px = px1 if px1 > 0 else px2
        if not px > 0:
            raise CryoInputError(path1, "neither map has a pixel size in its header; give --pixel-size")
    mask_data = None
    if mask is not None:
        mask_data, _ = _read(Path(mask))
        if mask_data.shape != map1.shape:
            raise CryoInputError(mask, f"box {'x'.join(map(str, mask_data.shape))} differs from the maps' {'x'.join(map(str, map1.shape))}")
    alignment = None
    if align:
        if map1.shape[0] % 2:
            raise CryoInputError(path1, f"--align needs an even box, this one is {map1.shape[0]}")
        alignment = align_maps(map1, map2, px)
        map2 = alignment.aligned
    curve = fsc(map1, map2, px, mask=mask_data)
    summary: dict = {"map1": str(path1), "map2": str(path2), "box": int(map1.shape[0]), "pixel_size": px}
    for threshold in (0.5, 0.143):
        summary[f"resolution_{threshold:g}_A"] = curve.resolution(threshold)
        summary[f"resolution_{threshold:g}_px"] = curve.resolution_px(threshold)
    if alignment is not None:
        from ..geometry import matrix_to_euler

        summary["alignment"] = {
            "rotation": alignment.rotation.tolist(),
            "rotation_euler_deg": matrix_to_euler(alignment.rotation).tolist(),
            "angle_deg": alignment.angle,
            "axis": alignment.axis.tolist(),
            "mirrored": alignment.flipped,
            "shift_A": alignment.shift_angst.tolist(),
            "correlation": alignment.score,
        }
    summary["fsc"] = curve.as_dict()
    return {"curve": curve, "alignment": alignment, "summary": summary}


def _fmt_res(value: float, unit: str) -> str:
    return "none (below the threshold from the start)" if not np.isfinite(value) else f"{value:.2f} {unit}"


def main(args: argparse.Namespace) -> int:
    if args.plot:  # the one file written: checked before the maps are read (the output-folder policy)
        from ..io.atomic import check_outputs, check_writable

        check_outputs([args.plot], overwrite=args.overwrite)
        check_writable(args.plot, args.overwrite)
    result = compare_maps(args.map1, args.map2, align=args.align, mask=args.mask, pixel_size=args.pixel_size)
    curve, alignment, summary = result["curve"], result["alignment"], result["summary"]
    if args.plot:
        from ..plots import save_figure
        from .fsc import plot_fsc

        label = f"{Path(args.map1).name} vs {Path(args.map2).name}" + (" (superposed)" if alignment is not None else "")
        save_figure(plot_fsc({label: curve}), args.plot, overwrite=args.overwrite)
        summary["plot"] = str(args.plot)
    if args.json:
        print(json.dumps(summary, indent=2, default=float))
        return 0
    if alignment is not None:
        ax = ", ".join(f"{v:.3f}" for v in alignment.axis)
        shift = ", ".join(f"{v:.2f}" for v in alignment.shift_angst)
        print(f"{'superposed':<12}rotation {alignment.angle:.1f}° about ({ax}), "
              f"{'mirrored (other hand)' if alignment.flipped else 'same hand'}, shift ({shift}) Å, correlation {alignment.score:.3f}")
    for threshold in (0.5, 0.143):
        res = curve.resolution(threshold)
        nyq = " (Nyquist: never below)" if curve.crossing(threshold) is None else ""
        print(f"{'FSC ' + format(threshold, 'g'):<12}{_fmt_res(res, 'Å')} ({_fmt_res(curve.resolution_px(threshold), 'px')}){nyq}")
    if args.plot:
        print(f"{'plot':<12}{args.plot}")
    return 0
