"""Surfaces of segmentations: marching cubes, Wavefront OBJ files, napari data.

A :class:`Mesh` holds vertices ZYX in Å, like the rest of napari-cryo's
arrays, with triangles wound counter-clockwise seen from outside when the
vertices are read as XYZ: that is the order in OBJ files and in napari's
renderer, so normals from the right-hand rule point out of the object.
(In the ZYX array itself the same cross product points inward.)
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from skimage.measure import marching_cubes

from ..errors import CryoInputError
from ..io.atomic import atomic_path

_FULL = np.ones((3, 3, 3), dtype=bool)  # 26-connectivity


@dataclass(eq=False)  # arrays have no single truth value
class Mesh:
    """A triangle mesh in Å.

    Attributes
    ----------
    vertices : numpy.ndarray
        (V, 3) float32 ZYX positions in Å: voxel index times pixel size,
        plus ``origin``.
    faces : numpy.ndarray
        (F, 3) int32 vertex indices, outward counter-clockwise in XYZ.
    values : numpy.ndarray
        (V,) float32 index (1, 2, ...) of the connected surface each vertex
        is on, numbered in vertex order; a hollow object has two surfaces.
        It can colour separate objects in napari and is recomputed from the
        faces when an OBJ file is read.
    pixel_size : float
        Voxel size in Å of the volume the mesh came from.
    origin : numpy.ndarray
        (3,) ZYX position in Å of voxel (0, 0, 0).
    """

    vertices: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), dtype=np.float32))
    faces: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), dtype=np.int32))
    values: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))
    pixel_size: float = 1.0
    origin: np.ndarray = field(default_factory=lambda: np.zeros(3))

    def __post_init__(self) -> None:
        self.vertices = np.asarray(self.vertices, dtype=np.float32).reshape(-1, 3)
        self.faces = np.asarray(self.faces, dtype=np.int32).reshape(-1, 3)
        self.values = np.asarray(self.values, dtype=np.float32).reshape(-1)
        self.origin = np.asarray(self.origin, dtype=float).reshape(3)

    def area(self) -> float:
        """Total surface area in Å^2."""
        v = self.vertices.astype(np.float64)
        a, b, c = v[self.faces[:, 0]], v[self.faces[:, 1]], v[self.faces[:, 2]]
        return float(0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1).sum())


def surface_index(n_vertices: int, faces: np.ndarray) -> np.ndarray:
    """Index (1, 2, ...) of the connected surface of each vertex, as float32.

    Surfaces are numbered in order of their first vertex.

    Parameters
    ----------
    n_vertices : int
        Number of vertices.
    faces : numpy.ndarray
        (F, 3) vertex indices.

    Returns
    -------
    numpy.ndarray
        (V,) float32.
    """
    if n_vertices == 0:
        return np.zeros(0, dtype=np.float32)
    faces = np.asarray(faces, dtype=np.int64).reshape(-1, 3)
    rows = faces.ravel()
    cols = np.roll(faces, 1, axis=1).ravel()
    graph = coo_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(n_vertices, n_vertices))
    _, index = connected_components(graph, directed=False)
    return (index + 1).astype(np.float32)


def mesh_from_volume(
    volume: np.ndarray,
    level: float,
    pixel_size: float,
    min_volume: float = 0.0,
    step: int = 1,
    origin: Sequence[float] | None = None,
) -> Mesh:
    """Marching-cubes surface of ``volume >= level``.

    Connected components (26-connectivity) smaller than ``min_volume`` are
    removed first.  The volume is padded by one voxel below the level, so
    objects cut by the box edge get closed surfaces there.

    Parameters
    ----------
    volume : numpy.ndarray
        (Z, Y, X) values, e.g. a prediction.
    level : float
        The iso-level; voxels >= level are inside.
    pixel_size : float
        Voxel size in Å.
    min_volume : float
        Components with fewer than ``min_volume / pixel_size**3`` voxels are
        dropped.
    step : int
        Marching-cubes step in voxels: larger is coarser and faster.
    origin : sequence of float, optional
        ZYX position in Å of voxel (0, 0, 0); default zeros.

    Returns
    -------
    Mesh
        Empty (no vertices, no faces) when nothing is above the level.

    Raises
    ------
    CryoInputError
        If the volume is not 3-D or a parameter is out of range.
    """
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise CryoInputError(None, f"a volume for a mesh must be 3-D, got shape {volume.shape}")
    level, pixel_size, min_volume = float(level), float(pixel_size), float(min_volume)
    if not math.isfinite(level):
        raise CryoInputError(None, f"mesh level must be finite, got {level}")
    if not (math.isfinite(pixel_size) and pixel_size > 0):
        raise CryoInputError(None, f"pixel size must be positive, got {pixel_size}")
    if not (math.isfinite(min_volume) and min_volume >= 0):
        raise CryoInputError(None, f"minimum volume must not be negative, got {min_volume} Å^3")
    if int(step) != step or step < 1:
        raise CryoInputError(None, f"mesh step must be a positive whole number, got {step}")
    origin = np.zeros(3) if origin is None else np.asarray(origin, dtype=float).reshape(3)
    empty = Mesh(pixel_size=pixel_size, origin=origin)

    # For probabilities the natural outside value is 0; a level at or below
    # 0 needs something lower.
    outside = 0.0 if level > 0 else level - 1.0
    padded = np.full(tuple(s + 2 for s in volume.shape), outside, dtype=np.float32)
    padded[1:-1, 1:-1, 1:-1] = volume
    padded[np.isnan(padded)] = outside
    inside = padded >= level
    if min_volume > 0:
        labels, n = ndimage.label(inside, structure=_FULL)
        small = np.bincount(labels.ravel(), minlength=n + 1) * pixel_size**3 < min_volume
        small[0] = False
        # Voxels of a dropped component are not 26-adjacent to kept ones, so
        # lowering them leaves every kept surface unchanged.
        padded[small[labels]] = outside
        inside = padded >= level
        del labels
    if not inside.any():
        return empty
    del inside

    try:
        vertices, faces, _, _ = marching_cubes(
            padded, level, spacing=(pixel_size,) * 3, step_size=int(step), allow_degenerate=False
        )
    except (ValueError, RuntimeError):
        # A coarse step can miss every object: no surface.
        return empty
    if len(faces) == 0:
        return empty
    vertices = vertices - pixel_size + origin  # undo the one-voxel pad
    return Mesh(
        vertices=vertices,
        faces=faces,
        values=surface_index(len(vertices), faces),
        pixel_size=pixel_size,
        origin=origin,
    )


def write_obj(path: str | os.PathLike, mesh: Mesh, overwrite: bool = False) -> Path:
    """Write a mesh as a Wavefront OBJ file in Å, atomically.

    Vertices are written XYZ (``v x y z``), faces 1-based (``f a b c``) and
    wound outward.  Comment lines record the pixel size and origin so that
    :func:`read_obj` restores them.

    Parameters
    ----------
    path : str or os.PathLike
        Output ``.obj`` file.
    mesh : Mesh
        The mesh.
    overwrite : bool
        Whether an existing file may be replaced.

    Returns
    -------
    pathlib.Path
        The file written.

    Raises
    ------
    CryoInputError
        If the file exists and ``overwrite`` is false, or cannot be written.
    """
    with atomic_path(path, overwrite=overwrite) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            f.write("# napari-cryo surface mesh, coordinates in Å (angstrom), vertices x y z\n")
            f.write(f"# pixel_size {mesh.pixel_size!r}\n")
            f.write("# origin_xyz {!r} {!r} {!r}\n".format(*(float(o) for o in mesh.origin[::-1])))
            np.savetxt(f, mesh.vertices[:, ::-1].astype(np.float64), fmt="v %.4f %.4f %.4f")
            np.savetxt(f, mesh.faces.astype(np.int64) + 1, fmt="f %d %d %d")
    return Path(path)


def read_obj(path: str | os.PathLike) -> Mesh:
    """Read a Wavefront OBJ file as a mesh in Å.

    Vertex positions (``v``) and faces (``f``; ``a/b/c`` forms, negative
    indices and polygons, split into triangle fans) are read; other records
    are ignored.  The pixel size and origin come from the comments written
    by :func:`write_obj` (1 Å and zeros otherwise).

    Parameters
    ----------
    path : str or os.PathLike
        The ``.obj`` file.

    Returns
    -------
    Mesh

    Raises
    ------
    CryoInputError
        Naming the file (and line) when it cannot be read or is malformed.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CryoInputError(path, "does not exist") from None
    except UnicodeDecodeError:
        raise CryoInputError(path, "is not a text OBJ file") from None
    except OSError as exc:
        raise CryoInputError(path, f"cannot be read ({exc.strerror})") from None

    vertices: list[list[float]] = []
    faces: list[list[int]] = []
    pixel_size, origin_xyz = 1.0, [0.0, 0.0, 0.0]
    for number, line in enumerate(text.splitlines(), start=1):
        words = line.split()
        if not words:
            continue
        try:
            if words[0] == "v":
                if len(words) < 4:
                    raise ValueError("a vertex needs x, y and z")
                vertices.append([float(w) for w in words[1:4]])
            elif words[0] == "f":
                if len(words) < 4:
                    raise ValueError("a face needs at least 3 vertices")
                corners = []
                for word in words[1:]:
                    index = int(word.split("/")[0])
                    # OBJ indices are 1-based; negative ones count back from the last vertex.
                    index = index - 1 if index > 0 else len(vertices) + index
                    if not 0 <= index < len(vertices):
                        raise ValueError(f"face refers to vertex {word}, which is not defined before it")
                    corners.append(index)
                faces.extend([corners[0], corners[k], corners[k + 1]] for k in range(1, len(corners) - 1))
            elif words[:2] == ["#", "pixel_size"] and len(words) == 3:
                pixel_size = float(words[2])
            elif words[:2] == ["#", "origin_xyz"] and len(words) == 5:
                origin_xyz = [float(w) for w in words[2:5]]
        except ValueError as exc:
            raise CryoInputError(path, f"line {number} is not valid OBJ ({exc})") from None
    if not (math.isfinite(pixel_size) and pixel_size > 0):
        raise CryoInputError(path, f"pixel size must be positive, got {pixel_size}")
    xyz = np.array(vertices, dtype=np.float64).reshape(-1, 3)
    if not np.isfinite(xyz).all():
        raise CryoInputError(path, "has vertices that are not finite numbers")
    tri = np.array(faces, dtype=np.int64).reshape(-1, 3)
    return Mesh(
        vertices=xyz[:, ::-1],
        faces=tri,
        values=surface_index(len(xyz), tri),
        pixel_size=pixel_size,
        origin=np.asarray(origin_xyz)[::-1],
    )


def surface_layer_data(mesh: Mesh) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Data for a napari Surface layer shown over the mesh's tomogram.

    Vertices are returned in voxel units of the source volume (ZYX, origin
    removed), so the layer takes the image layer's transform:
    ``scale=(pixel_size,) * 3`` and ``translate=origin``.

    Parameters
    ----------
    mesh : Mesh
        The mesh.

    Returns
    -------
    tuple of numpy.ndarray
        ``(vertices, faces, values)``: (V, 3) float32 ZYX voxel positions,
        (F, 3) int32 faces and (V,) float32 values.
    """
    vertices = ((mesh.vertices - mesh.origin) / mesh.pixel_size).astype(np.float32)
    return vertices, mesh.faces, mesh.values
