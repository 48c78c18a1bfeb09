"""Files -> napari layer data, and layer data -> files.

Pure functions returning ``(data, kwargs, layer_type)`` tuples: no viewer,
no Qt.  The npe2 reader and writer hooks and the command line are thin
wrappers around them, and the tests call them directly.

Conventions (see docs/user-guide/conventions.md): arrays ZYX (YX, NYX);
``scale`` = voxel size in Å; ``units`` angstrom; ``translate`` = position of
the first voxel in Å; Points in the image's pixel coordinates, with the
image's scale, and per-point values in ``features``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from .. import layer_meta as meta
from ..layer_meta import LayerData
from ..errors import CryoInputError
from ..geometry import particle_axes
from .mrc import MrcInfo, check_finite_sample, contrast_limits_for, read_mrc, sample_planes
from .particles import ParticleStack, optics_groups
from .star import EULER_COLUMNS, CoordinateSet, particle_table, read_coordinates, read_star


#: Files naming more micrographs/tomograms than this open as one Points layer
#: with the name as a feature; fewer open as one layer each.
MAX_SPLIT_LAYERS = 32

_AXIS_LABELS = {
    "image": ("y", "x"),
    "volume": ("z", "y", "x"),
    "stack": ("image", "y", "x"),
    "volume-stack": ("volume", "z", "y", "x"),
}


def _spatial_scale(info: MrcInfo) -> tuple[tuple[float, ...], bool]:
    """Voxel sizes for the spatial axes; (1, 1, 1) when the header has no cell."""
    vz, vy, vx = info.voxel_size
    known = vx > 0 and vy > 0 and (vz > 0 or info.kind in ("image", "stack"))
    if not known:
        vz = vy = vx = 1.0
    if info.kind in ("stack", "image"):
        return (vy, vx), known
    return (vz, vy, vx), known


def mrc_layer_data(path: str | os.PathLike, name: str | None = None) -> list[LayerData]:
    """Open an MRC file as one Image layer.

    Uncompressed files stay memory-mapped; display limits and the NaN check
    use a sample of a few planes, so opening costs the same for any size.

    Raises
    ------
    CryoInputError
        For unreadable, truncated, complex or NaN-holding files.
    """
    data, info = read_mrc(path)
    sample = sample_planes(data)
    check_finite_sample(sample, info.path)
    if info.compressed is not None:  # read whole anyway: check it all
        check_finite_sample(np.asarray(data), info.path)
    spatial, known = _spatial_scale(info)
    extra = data.ndim - len(spatial)
    scale = (1.0,) * extra + tuple(spatial)
    ndim_sp = len(spatial)
    origin = info.origin[-ndim_sp:] if known else (0.0,) * ndim_sp
    translate = (0.0,) * extra + tuple(float(o) for o in origin)
    units = ("pixel",) * extra + ("angstrom",) * ndim_sp
    metadata = {
        meta.SOURCE_PATH: str(info.path),
        "mrc_kind": info.kind,
        meta.PIXEL_SIZE: float(spatial[-1]) if known else None,
        meta.PIXEL_SIZE_KNOWN: known,
        "mrc_header": info.header,
        "mrc_labels": info.labels,
        meta.NOTES: [] if known else ["the header has no voxel size (cell is zero): shown in pixels, scale 1"],
    }
    kwargs = {
        "name": name or _stem(info.path),
        "scale": scale,
        "translate": translate,
        "units": units,
        "axis_labels": _AXIS_LABELS[info.kind],
        "contrast_limits": contrast_limits_for(sample),
        "colormap": "gray",
        "metadata": metadata,
    }
    return [(data, kwargs, "image")]


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".gz", ".bz2"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    return Path(name).stem


def points_layer_data(cs: CoordinateSet, name: str, source: Path, optics: pd.DataFrame | None) -> list[LayerData]:
    """Points (and, with Euler angles, orientation Vectors) for one coordinate set."""
    px = cs.pixel_size if cs.pixel_size is not None else 1.0
    ndim = cs.ndim
    scale = (px,) * ndim
    features = cs.features.copy()
    for column in features.columns:
        if features[column].dtype == object:
            numeric = pd.to_numeric(features[column], errors="coerce")
            if numeric.notna().all():
                features[column] = numeric
    metadata = {
        meta.SOURCE_PATH: str(source),
        meta.PIXEL_SIZE: cs.pixel_size,
        meta.PIXEL_SIZE_KNOWN: cs.pixel_size is not None,
        meta.MICROGRAPH_NAME: cs.name,
        meta.STAR_OPTICS: optics,
        meta.NOTES: cs.notes + ([] if cs.pixel_size is not None else ["the file gives no pixel size: shown in pixels, scale 1"]),
    }
    size = 10 if ndim == 2 else 8
    kwargs = {
        "name": name,
        "scale": scale,
        "units": ("angstrom",) * ndim,
        "axis_labels": ("z", "y", "x")[-ndim:],
        "features": features,
        "metadata": metadata,
        "size": size,
        "face_color": "transparent",
        "border_color": "yellow",
        "border_width": 0.15,
    }
    layers: list[LayerData] = [(cs.points, kwargs, "points")]
    angles = cs.euler_angles()
    if angles is not None and len(cs.points):
        axes_xyz = particle_axes(angles)
        length = 2.0 * size
        direction = axes_xyz[:, ::-1][:, -ndim:] * length  # XYZ -> ZYX, drop Z in 2D
        vectors = np.stack([cs.points, direction], axis=1)
        vkwargs = {
            "name": f"{name} orientations",
            "scale": scale,
            "units": ("angstrom",) * ndim,
            "axis_labels": ("z", "y", "x")[-ndim:],
            "edge_color": "cyan",
            "edge_width": 1.0,
            "visible": ndim == 3,
            "features": features[list(EULER_COLUMNS)].reset_index(drop=True),
            "metadata": {meta.SOURCE_PATH: str(source), "convention": "RELION ZYZ: reference Z axis = A @ (0,0,1)"},
        }
        layers.append((vectors, vkwargs, "vectors"))
    return layers


def star_layer_data(path: str | os.PathLike) -> list[LayerData]:
    """Open a STAR file: the particle stack(s) if it names images that can be
    found, else its coordinates as Points layers.

    Raises
    ------
    CryoInputError
        If the file holds neither coordinates nor images, has bad values,
        or names stacks that do not exist and has no coordinates to show.
    """
    path = Path(path)
    blocks = read_star(path)
    pt = particle_table(path, blocks)
    notes: list[str] = []
    if "rlnImageName" in pt.table.columns:
        try:
            return particle_stack_layer_data(path, pt)
        except CryoInputError as exc:
            if "rlnCoordinateX" not in pt.table.columns and "rlnCenteredCoordinateXAngst" not in pt.table.columns:
                raise
            notes.append(f"particle images not opened: {exc.problem}")
    sets = read_coordinates(path, blocks)
    stem = path.stem
    optics = pt.optics
    if len(sets) > MAX_SPLIT_LAYERS:
        cs = _merge_sets(sets)
        group = next((c for c in ("rlnTomoName", "rlnMicrographName") if c in cs.features.columns), "name")
        cs.notes += notes + [f"{len(sets)} micrographs/tomograms in one layer; each pick's is in the feature {group}"]
        return points_layer_data(cs, stem, path, optics)
    layers: list[LayerData] = []
    for cs in sets:
        cs.notes = notes + cs.notes
        name = stem if cs.name is None or len(sets) == 1 else f"{stem} [{_stem(Path(cs.name))}]"
        layers += points_layer_data(cs, name, path, optics)
    return layers


def _merge_sets(sets: list[CoordinateSet]) -> CoordinateSet:
    features = pd.concat([cs.features for cs in sets], ignore_index=True)
    pixel = next((cs.pixel_size for cs in sets if cs.pixel_size is not None), None)
    return CoordinateSet(
        name=None,
        points=np.concatenate([cs.points for cs in sets]),
        features=features,
        pixel_size=pixel,
        notes=list(sets[0].notes),
    )


def particle_stack_layer_data(path: Path, pt=None) -> list[LayerData]:
    """The particle images of a STAR file as lazy Image layers (one per pixel/box size)."""
    pt = particle_table(path) if pt is None else pt
    layers: list[LayerData] = []
    groups = optics_groups(pt)
    for k, rows in enumerate(groups):
        stack = ParticleStack(path, pt, rows)
        px = stack.pixel_size
        data = stack.as_dask()
        sample = stack.read(np.unique(np.linspace(0, len(stack) - 1, min(len(stack), 16)).astype(int)))
        check_finite_sample(sample, path)
        scale = (1.0, px or 1.0, px or 1.0)
        name = path.stem if len(groups) == 1 else f"{path.stem} [group {k + 1}]"
        metadata = {
            meta.SOURCE_PATH: str(path),
            "mrc_kind": "stack",
            meta.PIXEL_SIZE: px,
            meta.PIXEL_SIZE_KNOWN: px is not None,
            "star_table": stack.table(),
            meta.STAR_OPTICS: pt.optics,
            "star_rows": rows,
            "stack_paths": [str(p) for p in stack.stack_paths],
        }
        kwargs = {
            "name": name,
            "scale": scale,
            "units": ("pixel", "angstrom", "angstrom"),
            "axis_labels": ("particle", "y", "x"),
            "contrast_limits": contrast_limits_for(sample),
            "colormap": "gray",
            "metadata": metadata,
        }
        layers.append((data, kwargs, "image"))
    return layers
