"""npe2 writer hooks: layer data -> MRC or RELION STAR, atomically.

A hook writes exactly the path napari gives it.  napari (npe2) adds the
extension to a name typed without one, and its save dialog has asked the
user about replacing that very file, so the hook replaces it; a path without
one of the format's extensions is refused, never completed to another name
that nobody asked about.  The command line does not replace files unasked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .. import layer_meta as keys
from ..errors import CryoInputError
from .mrc import write_mrc
from .star import write_coordinates

#: Extensions the MRC hooks write (uncompressed: the writer does not compress).
MRC_EXTENSIONS = (".mrc", ".mrcs", ".map", ".rec", ".st", ".ali")
STAR_EXTENSIONS = (".star",)


def _exact_path(path: str, extensions: tuple[str, ...], what: str) -> Path:
    """The path to write, as given; refused unless it ends with one of ``extensions``.

    Raises
    ------
    CryoInputError
        Naming the path, when its extension is not one of the format's.
    """
    out = Path(path)
    if not out.name.lower().endswith(extensions):
        raise CryoInputError(out, f"has no {what} extension ({', '.join(extensions)}); nothing was written")
    return out


def _spatial(meta: dict[str, Any], ndim: int, is_stack: bool) -> tuple[tuple[float, ...], tuple[float, ...]]:
    scale = tuple(float(s) for s in meta.get("scale", (1.0,) * ndim))
    translate = tuple(float(t) for t in meta.get("translate", (0.0,) * ndim))
    n_sp = 2 if (is_stack or ndim == 2) else 3
    return scale[-n_sp:], translate[-n_sp:]


def _write_array(path: str, data: Any, meta: dict[str, Any], labels: bool) -> list[str]:
    out = _exact_path(path, MRC_EXTENSIONS, "MRC")
    if meta.get("rgb"):
        raise CryoInputError(path, "RGB images cannot be written as MRC")
    if meta.get("multiscale"):
        data = data[0]
    ndim = len(data.shape)
    kind = (meta.get("metadata") or {}).get("mrc_kind")
    is_stack = kind == "stack" or str(path).lower().endswith(".mrcs")
    if ndim not in (2, 3):
        raise CryoInputError(path, f"MRC holds 2D or 3D data; this layer is {ndim}D")
    voxel, origin = _spatial(meta, ndim, is_stack)
    write_mrc(out, data, voxel, origin, is_stack=is_stack and ndim == 3, labels=labels, overwrite=True)
    return [str(out)]


def write_image_mrc(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """Write an Image layer to MRC (float32) with voxel size and origin from scale/translate."""
    return _write_array(path, data, meta, labels=False)


def write_labels_mrc(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """Write a Labels layer to MRC in the smallest integer mode that holds its values."""
    return _write_array(path, data, meta, labels=True)


def _write_points(path: str, data: Any, meta: dict[str, Any], layout: str) -> list[str]:
    out = _exact_path(path, STAR_EXTENSIONS, "STAR")
    points = np.asarray(data, dtype=float)
    if points.ndim != 2 or points.shape[1] not in (2, 3):
        raise CryoInputError(path, f"only 2D or 3D points can be written to STAR, got shape {points.shape}")
    scale = np.asarray(meta.get("scale", (1.0,) * points.shape[1]), dtype=float)[-points.shape[1] :]
    if not np.allclose(scale, scale[-1], rtol=1e-6):
        raise CryoInputError(path, f"STAR files have one pixel size; this layer's scale is {tuple(scale)}")
    metadata = meta.get("metadata") or {}
    pixel = float(scale[-1]) if metadata.get(keys.PIXEL_SIZE_KNOWN, True) else None
    features = meta.get("features")
    if features is not None and not isinstance(features, pd.DataFrame):
        features = pd.DataFrame(features)
    optics = metadata.get(keys.STAR_OPTICS) if isinstance(metadata.get(keys.STAR_OPTICS), pd.DataFrame) else None
    write_coordinates(
        out,
        points,
        features,
        pixel,
        layout=layout,
        micrograph_name=metadata.get(keys.MICROGRAPH_NAME),
        optics=optics,
        overwrite=True,
    )
    return [str(out)]


def write_points_star31(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """Write a Points layer as a RELION 3.1+ coordinate file (optics + particles)."""
    return _write_points(path, data, meta, "3.1")


def write_points_star30(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """Write a Points layer as a RELION 3.0 coordinate file (one block)."""
    return _write_points(path, data, meta, "3.0")
