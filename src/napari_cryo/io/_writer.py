"""npe2 writer hooks: layer data -> MRC or RELION STAR, atomically.

napari has already asked the user about replacing an existing file when it
calls a writer, so these hooks overwrite; the command line does not.
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


def _mrc_name(path: str, is_stack: bool) -> Path:
    """Add an MRC suffix when the name has none (never replace part of the name)."""
    p = Path(path)
    if not p.name.lower().endswith((".mrc", ".mrcs", ".map", ".rec", ".st", ".ali")):
        p = p.with_name(p.name + (".mrcs" if is_stack else ".mrc"))
    return p


def _spatial(meta: dict[str, Any], ndim: int, is_stack: bool) -> tuple[tuple[float, ...], tuple[float, ...]]:
    scale = tuple(float(s) for s in meta.get("scale", (1.0,) * ndim))
    translate = tuple(float(t) for t in meta.get("translate", (0.0,) * ndim))
    n_sp = 2 if (is_stack or ndim == 2) else 3
    return scale[-n_sp:], translate[-n_sp:]


def _write_array(path: str, data: Any, meta: dict[str, Any], labels: bool) -> list[str]:
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
    out = _mrc_name(path, is_stack and ndim == 3)
    write_mrc(out, data, voxel, origin, is_stack=is_stack and ndim == 3, labels=labels, overwrite=True)
    return [str(out)]


def write_image_mrc(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """Write an Image layer to MRC (float32) with voxel size and origin from scale/translate."""
    return _write_array(path, data, meta, labels=False)


def write_labels_mrc(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """Write a Labels layer to MRC in the smallest integer mode that holds its values."""
    return _write_array(path, data, meta, labels=True)


def _write_points(path: str, data: Any, meta: dict[str, Any], layout: str) -> list[str]:
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
    out = Path(path)
    if not out.name.lower().endswith(".star"):
        out = out.with_name(out.name + ".star")
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
