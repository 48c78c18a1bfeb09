"""Summarise an MRC or STAR file: shape, dtype, pixel size, origin, axis order, particles, blocks.

The file is first checked the way the napari reader checks it (the same
functions run), so ``info`` fails, with the reader's one-line message and
exit status 2, exactly on the files napari would refuse to open.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import CryoInputError
from ..io.mrc import MODE_DTYPES, MRC_SUFFIXES, read_header
from ..io.star import (
    COORD_PIXEL_SIZE_COLUMNS,
    EULER_COLUMNS,
    IMAGE_PIXEL_SIZE_COLUMNS,
    ParticleTable,
    particle_table,
    read_star,
)

HELP = "header summary of an MRC or STAR file"

_AXIS = {1: "X", 2: "Y", 3: "Z"}


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="an MRC-family file (.mrc .mrcs .map .rec .st .ali, .gz/.bz2) or a STAR file")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")


def reader_notes(path: Path) -> list[str]:
    """Open ``path`` as the napari reader does and return what it had to assume.

    STAR files that the reader declines (pipelines, postprocess and
    optimiser files hold nothing to show) are not opened.

    Raises
    ------
    CryoInputError
        Where the reader raises it, with the same message.
    """
    from .. import layer_meta
    from ..io._reader import get_star_reader
    from ..io.layers import mrc_layer_data, star_layer_data

    if path.name.lower().endswith(".star"):
        if get_star_reader(str(path)) is None:
            return []
        layers = star_layer_data(path)
    else:
        layers = mrc_layer_data(path)
    notes = (note for _, kwargs, _ in layers for note in kwargs.get("metadata", {}).get(layer_meta.NOTES, []))
    return list(dict.fromkeys(notes))


def mrc_summary(path: Path) -> dict[str, Any]:
    """Header summary of an MRC file as a dict of plain values."""
    info = read_header(path)
    order = info.axis_order
    dtype = MODE_DTYPES.get(info.mode)
    axes = {"image": "Y, X", "volume": "Z, Y, X", "stack": "N, Y, X", "volume-stack": "N, Z, Y, X"}[info.kind]
    return {
        "file": str(path),
        "format": "MRC",
        "kind": info.kind,
        "shape": list(info.shape),
        "axes": axes,
        "mode": info.mode,
        "dtype": "4-bit (mode 101)" if dtype is None else str(dtype),
        "byte_order": "big-endian" if info.big_endian else "little-endian",
        "compressed": info.compressed,
        "voxel_size_A": {"z": info.voxel_size[0], "y": info.voxel_size[1], "x": info.voxel_size[2]},
        "pixel_size_known": info.pixel_size > 0,
        "origin_A": {"z": info.origin[0], "y": info.origin[1], "x": info.origin[2]},
        "nstart": {"z": info.nstart[0], "y": info.nstart[1], "x": info.nstart[2]},
        "axis_order": {"mapc": order[0], "mapr": order[1], "maps": order[2],
                       "meaning": f"columns={_AXIS[order[0]]}, rows={_AXIS[order[1]]}, sections={_AXIS[order[2]]}"},
        "space_group": info.ispg,
        "extended_header_bytes": info.nsymbt,
        "extended_header_type": info.exttyp,
        "stats": info.stats,
        "labels": info.labels,
    }


def _pixel(pt: ParticleTable, columns: tuple[str, ...]) -> list[float] | None:
    px = pt.pixel_size(columns)
    if px is None:
        return None
    return sorted({round(float(v), 6) for v in px.dropna()})


def star_summary(path: Path) -> dict[str, Any]:
    """Summary of a STAR file: blocks, layout, particles, pixel sizes, micrographs."""
    blocks = read_star(path)
    out: dict[str, Any] = {"file": str(path), "format": "STAR", "blocks": []}
    for name, block in blocks.items():
        if isinstance(block, pd.DataFrame):
            out["blocks"].append({"name": f"data_{name}", "loop": True, "rows": len(block), "columns": list(block.columns)})
        else:
            out["blocks"].append({"name": f"data_{name}", "loop": False, "fields": list(block)})
    try:
        pt = particle_table(path, blocks)
    except CryoInputError:
        out["contents"] = "no particles or coordinates (e.g. a pipeline, postprocess or optimiser file)"
        return out
    t = pt.table
    out["layout"] = "RELION 3.1+ (optics block + particles)" if pt.version == "3.1+" else "RELION 3.0 (one block)"
    out["particle_block"] = f"data_{pt.block_name}"
    out["particles"] = len(t)
    if "rlnCoordinateX" in t.columns:
        out["coordinates"] = "3D (rlnCoordinateX/Y/Z, pixels)" if "rlnCoordinateZ" in t.columns else "2D (rlnCoordinateX/Y, pixels)"
    elif "rlnCenteredCoordinateXAngst" in t.columns:
        out["coordinates"] = "3D centred, Å (RELION 5)"
    else:
        out["coordinates"] = None
    out["pixel_size_coordinates_A"] = _pixel(pt, COORD_PIXEL_SIZE_COLUMNS)
    out["pixel_size_images_A"] = _pixel(pt, IMAGE_PIXEL_SIZE_COLUMNS)
    out["optics_groups"] = len(pt.optics) if pt.optics is not None else None
    for column in ("rlnTomoName", "rlnMicrographName"):
        if column in t.columns:
            out["micrographs_or_tomograms"] = {"column": column, "count": int(t[column].nunique())}
            break
    out["euler_angles"] = all(c in t.columns for c in EULER_COLUMNS)
    if "rlnImageName" in t.columns:
        stacks = t["rlnImageName"].astype(str).str.split("@", n=1).str[-1]
        out["image_stacks"] = int(stacks.nunique())
    return out


def _format(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}={_format(v)}" for k, v in value.items())
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list):
        return ", ".join(_format(v) for v in value) if value else "-"
    return "-" if value is None else str(value)


def print_summary(summary: dict[str, Any]) -> None:
    """Print a summary as aligned 'key  value' lines."""
    for key, value in summary.items():
        if key == "blocks":
            for b in value:
                what = f"{b['rows']} rows, {len(b['columns'])} columns" if b["loop"] else f"{len(b['fields'])} fields"
                print(f"{'block':<28}{b['name']} ({what})")
            continue
        print(f"{key.replace('_', ' '):<28}{_format(value)}")


def main(args: argparse.Namespace) -> int:
    path = Path(args.file)
    if not path.exists():
        raise CryoInputError(path, "file not found")
    name = path.name.lower()
    if not name.endswith((".star", *MRC_SUFFIXES)):
        raise CryoInputError(path, "unknown file type (expected an MRC-family or .star file)")
    notes = reader_notes(path)
    summary = star_summary(path) if name.endswith(".star") else mrc_summary(path)
    if notes:
        summary["reader_notes"] = notes
    if args.json:
        print(json.dumps(summary, indent=2, default=lambda o: o.item() if isinstance(o, np.generic) else str(o)))
    else:
        print_summary(summary)
    return 0
