"""Atlases from files: one low-magnification image (MRC or TIFF), or a montage of tiles stitched into one.

A montage comes as an MRC stack of tiles in row-major order with a grid
layout (rows, columns, overlap).  Tiles are placed at their nominal
positions, then each tile's offset to its left and upper neighbours is
measured by normalised cross-correlation of the overlapping strips near the
nominal offset (grids are periodic, so a global correlation is ambiguous), and all
positions are found together by least squares, so one bad overlap does not
shift the rest of the montage.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import CryoInputError

TIFF_SUFFIXES = (".tif", ".tiff")


def load_atlas(path: str | os.PathLike) -> tuple[np.ndarray, float | None]:
    """Read a 2D atlas; returns the image (float32) and its pixel size in Å (None if unknown)."""
    path = Path(path)
    if path.name.lower().endswith(TIFF_SUFFIXES):
        from skimage.io import imread

        try:
            image = imread(path)
        except Exception as exc:  # noqa: BLE001 - the TIFF reader raises many kinds
            raise CryoInputError(path, f"cannot be read as TIFF ({type(exc).__name__})") from None
        if image.ndim == 3 and image.shape[-1] in (3, 4):
            image = image[..., :3].mean(axis=-1)
        px = None
    else:
        from ..io.mrc import read_mrc

        image, info = read_mrc(path)
        px = info.pixel_size if info.pixel_size > 0 else None
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 3 and image.shape[0] == 1:
        image = image[0]
    if image.ndim != 2:
        raise CryoInputError(path, f"is not a single 2D atlas (shape {image.shape}); for a montage give --montage ROWS COLS")
    if not np.isfinite(image).all():
        raise CryoInputError(path, "atlas contains NaN or infinite values")
    return image, px


def stitch_montage(tiles: np.ndarray, rows: int, cols: int, overlap: float, refine: bool = True, name: str = "montage") -> np.ndarray:
    """Stitch (rows*cols, Y, X) tiles, row-major, into one atlas.

    Parameters
    ----------
    tiles : numpy.ndarray
        The tiles.
    rows, cols : int
        Grid layout.
    overlap : float
        Nominal overlap between neighbours as a fraction of the tile size.
    refine : bool
        Refine tile positions by cross-correlation of the overlaps.
    name : str
        For messages.

    Raises
    ------
    CryoInputError
        If the tile count does not fit the layout, or the overlap is outside [0, 0.5).
    """
    tiles = np.asarray(tiles, dtype=np.float32)
    if tiles.ndim != 3:
        raise CryoInputError(name, f"a montage is a stack of tiles, got shape {tiles.shape}")
    if rows * cols != len(tiles):
        raise CryoInputError(name, f"{len(tiles)} tiles do not fit a {rows} x {cols} layout ({rows * cols} tiles)")
    if not 0 <= overlap < 0.5:
        raise CryoInputError(name, f"overlap must be a fraction in [0, 0.5), got {overlap}")
    th, tw = tiles.shape[1:]
    step = np.array([th * (1 - overlap), tw * (1 - overlap)])
    nominal = np.array([[r * step[0], c * step[1]] for r in range(rows) for c in range(cols)])
    pos = nominal.copy()
    if refine and overlap > 0:
        oy, ox = max(4, int(th * overlap)), max(4, int(tw * overlap))
        eqs, rhs = [], []
        for r in range(rows):
            for c in range(cols):
                k = r * cols + c
                for (dr, dc) in ((0, 1), (1, 0)):
                    rr, cc = r + dr, c + dc
                    if rr >= rows or cc >= cols:
                        continue
                    j = rr * cols + cc
                    measured = _overlap_offset(tiles[k], tiles[j], (0, tw - ox) if dc else (th - oy, 0), ox if dc else oy, bool(dc))
                    expected = nominal[j] - nominal[k]
                    if np.any(np.abs(measured - expected) > 0.25 * np.array([th, tw])):
                        measured = expected  # implausible (e.g. a featureless overlap): keep nominal
                    eqs.append((j, k))
                    rhs.append(measured)
        n = len(tiles)
        A = np.zeros((len(eqs) + 1, n))
        for e, (j, k) in enumerate(eqs):
            A[e, j], A[e, k] = 1.0, -1.0
        A[-1, 0] = 1.0  # tile 0 stays at the origin
        b = np.vstack([np.asarray(rhs).reshape(-1, 2), [[0.0, 0.0]]])
        pos = np.linalg.lstsq(A, b, rcond=None)[0]
    pos -= pos.min(axis=0)
    out_h = int(np.ceil(pos[:, 0].max())) + th
    out_w = int(np.ceil(pos[:, 1].max())) + tw
    acc = np.zeros((out_h, out_w), np.float64)
    weight = np.zeros((out_h, out_w), np.float64)
    for tile, (y, x) in zip(tiles, np.round(pos).astype(int)):
        acc[y : y + th, x : x + tw] += tile
        weight[y : y + th, x : x + tw] += 1.0
    return (acc / np.maximum(weight, 1.0)).astype(np.float32)


def _overlap_offset(ref: np.ndarray, moving: np.ndarray, nominal: tuple[int, int], overlap: int, horizontal: bool) -> np.ndarray:
    """Where ``moving``'s origin lies in ``ref``'s pixels, searched near ``nominal``.

    Grids are periodic, so a global correlation is ambiguous by whole mesh
    cells; the search is limited to a third of the overlap around the
    nominal position, by normalised cross-correlation of the overlap strip.
    """
    from skimage.feature import match_template

    th, tw = ref.shape
    m = max(2, overlap // 3)
    ny, nx = nominal
    if horizontal:
        template = moving[m : th - m, m : overlap - m]
        x0 = max(0, nx - m)
        search = ref[:, x0:]
        ncc = match_template(search, template)
        r, c = np.unravel_index(int(np.argmax(ncc)), ncc.shape)
        return np.array([r - m, x0 + c - m], dtype=float)
    template = moving[m : overlap - m, m : tw - m]
    y0 = max(0, ny - m)
    search = ref[y0:, :]
    ncc = match_template(search, template)
    r, c = np.unravel_index(int(np.argmax(ncc)), ncc.shape)
    return np.array([y0 + r - m, c - m], dtype=float)


def load_montage(path: str | os.PathLike, rows: int, cols: int, overlap: float) -> tuple[np.ndarray, float | None]:
    """Read an MRC stack of tiles and stitch it (see :func:`stitch_montage`)."""
    from ..io.mrc import read_mrc

    tiles, info = read_mrc(path)
    if tiles.ndim == 2:
        tiles = tiles[None]
    return stitch_montage(np.asarray(tiles), rows, cols, overlap, name=str(path)), (info.pixel_size if info.pixel_size > 0 else None)
