"""Particle stacks referenced by a STAR file (``rlnImageName`` = ``N@stack.mrcs``).

A :class:`ParticleStack` resolves every referenced stack once, memory-maps
it, and reads particles on demand, so neither opening nor iterating over a
100k-particle data set holds more than the images asked for.  It is shared
by the napari reader (as a lazy dask array) and by the reconstruction code
(as a streaming source).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import CryoInputError
from .mrc import MrcInfo, read_header, read_mrc
from .star import IMAGE_PIXEL_SIZE_COLUMNS, ParticleTable, particle_table


def parse_image_names(names: pd.Series, star_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Split ``N@path`` names into 0-based indices and stack paths.

    A name without ``@`` is a single image: index 0 of that file.
    """
    if names.empty:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=object)
    if names.isna().any():
        row = int(np.flatnonzero(names.isna().to_numpy())[0])
        raise CryoInputError(star_path, f"rlnImageName is missing in row {row + 1}")
    text = names.astype(str).str.strip()
    has_at = text.str.contains("@", regex=False)
    parts = text.str.split("@", n=1, expand=True)
    if parts.shape[1] == 1:
        parts[1] = None
    index_txt = parts[0].where(has_at, "1")
    stacks = parts[1].where(has_at, text)
    index = pd.to_numeric(index_txt, errors="coerce")
    if index.isna().any():
        row = int(np.flatnonzero(index.isna().to_numpy())[0])
        raise CryoInputError(star_path, f"rlnImageName {text.iloc[row]!r} in row {row + 1} is not of the form N@stack")
    if (index < 1).any():
        row = int(np.flatnonzero((index < 1).to_numpy())[0])
        raise CryoInputError(star_path, f"rlnImageName {text.iloc[row]!r} in row {row + 1}: image numbers start at 1")
    return index.to_numpy(dtype=np.int64) - 1, stacks.to_numpy(dtype=object)


def resolve_stack_path(name: str, star_path: Path) -> Path | None:
    """Find a stack named in a STAR file.

    Tried in order: the path as written (absolute, or relative to the
    working directory), relative to the STAR file's directory and to up to
    three of its parents (RELION writes paths relative to the project
    directory), then the bare file name beside the STAR file.
    """
    stored = Path(name)
    candidates = [stored] if stored.is_absolute() else [Path.cwd() / stored]
    if not stored.is_absolute():
        base = star_path.resolve().parent
        candidates += [base / stored] + [parent / stored for parent in list(base.parents)[:3]]
    candidates.append(star_path.resolve().parent / stored.name)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    return None


class ParticleStack:
    """Lazy access to the particle images of a STAR file.

    Parameters
    ----------
    star_path : str or os.PathLike
        The particle STAR file.
    table : ParticleTable, optional
        The already-parsed table; read from ``star_path`` if omitted.
    rows : sequence of int, optional
        Restrict to these rows of the table (e.g. one optics group).

    Raises
    ------
    CryoInputError
        If the file has no ``rlnImageName``, a stack is missing, an image
        number is past the end of its stack, or the images differ in size.
    """

    def __init__(
        self,
        star_path: str | os.PathLike,
        table: ParticleTable | None = None,
        rows: Sequence[int] | None = None,
    ) -> None:
        self.star_path = Path(star_path)
        self.particles = table if table is not None else particle_table(self.star_path)
        df = self.particles.table
        if "rlnImageName" not in df.columns:
            raise CryoInputError(self.star_path, "has no rlnImageName column, so no particle images")
        self.rows = np.arange(len(df)) if rows is None else np.asarray(rows, dtype=np.int64)
        if len(self.rows) == 0:
            raise CryoInputError(self.star_path, "has no particle rows (empty loop), so no particle images")
        index, names = parse_image_names(df["rlnImageName"].iloc[self.rows], self.star_path)
        self.index = index
        unique = list(dict.fromkeys(names))
        self._paths: list[Path] = []
        self._infos: list[MrcInfo] = []
        missing = []
        for name in unique:
            resolved = resolve_stack_path(name, self.star_path)
            if resolved is None:
                missing.append(name)
                continue
            self._paths.append(resolved)
            self._infos.append(read_header(resolved))
        if missing:
            more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
            raise CryoInputError(self.star_path, f"referenced stack {missing[0]!r} not found{more}")
        lookup = {name: i for i, name in enumerate(unique)}
        self.stack_id = np.fromiter((lookup[n] for n in names), dtype=np.int64, count=len(names))
        shapes = {info.shape[-2:] for info in self._infos}
        if len(shapes) > 1:
            raise CryoInputError(self.star_path, f"referenced stacks have different image sizes: {sorted(shapes)}")
        self.image_shape: tuple[int, int] = shapes.pop()
        counts = np.array([info.shape[0] if info.kind in ("stack", "volume") else 1 for info in self._infos])
        over = self.index >= counts[self.stack_id]
        if over.any():
            i = int(np.flatnonzero(over)[0])
            raise CryoInputError(
                self.star_path,
                f"image {self.index[i] + 1} of {self._paths[self.stack_id[i]].name} requested, the stack has {counts[self.stack_id[i]]}",
            )
        self._arrays: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def stack_paths(self) -> list[Path]:
        """The resolved stack files."""
        return list(self._paths)

    @property
    def pixel_size(self) -> float | None:
        """Image pixel size in Å: from the STAR file, else from the first stack header."""
        px = self.particles.pixel_size(IMAGE_PIXEL_SIZE_COLUMNS)
        if px is not None:
            values = px.iloc[self.rows].to_numpy()
            if np.isfinite(values[0]) and values[0] > 0:
                return float(values[0])
        header_px = self._infos[0].pixel_size
        return float(header_px) if header_px > 0 else None

    @property
    def dtype(self) -> np.dtype:
        """Data type of the images as read."""
        return np.dtype(np.float32)

    def _array(self, stack: int) -> np.ndarray:
        arr = self._arrays.get(stack)
        if arr is None:
            arr, _ = read_mrc(self._paths[stack])
            if arr.ndim == 2:
                arr = arr[None]
            self._arrays[stack] = arr
        return arr

    def read(self, which: Sequence[int] | slice | np.ndarray) -> np.ndarray:
        """Read particles by position (0..len-1) as float32, shape (n, Y, X)."""
        positions = np.arange(len(self))[which] if isinstance(which, slice) else np.asarray(which, dtype=np.int64)
        out = np.empty((len(positions), *self.image_shape), dtype=np.float32)
        for j, p in enumerate(positions):
            out[j] = self._array(int(self.stack_id[p]))[int(self.index[p])]
        return out

    def __getitem__(self, i: int) -> np.ndarray:
        return self.read([i])[0]

    def table(self) -> pd.DataFrame:
        """The STAR rows of these particles."""
        return self.particles.table.iloc[self.rows].reset_index(drop=True)

    def as_dask(self, chunk: int = 64):
        """A lazy (N, Y, X) float32 dask array reading ``chunk`` particles at a time."""
        import dask.array as da

        n = len(self)
        chunks = (tuple(min(chunk, n - s) for s in range(0, n, chunk)), (self.image_shape[0],), (self.image_shape[1],))

        def load(block_info=None):
            start, stop = block_info[None]["array-location"][0]
            return self.read(np.arange(start, stop))

        return da.map_blocks(load, chunks=chunks, dtype=np.float32, meta=np.empty((0, 0, 0), np.float32))


def optics_groups(pt: ParticleTable) -> list[np.ndarray]:
    """Row indices per image-geometry group (pixel size and box size).

    Particles that share pixel and box size go in one group, so each can be
    one napari layer with one scale.
    """
    px = pt.pixel_size(IMAGE_PIXEL_SIZE_COLUMNS)
    size = pt.optics_column("rlnImageSize")
    key = pd.DataFrame(
        {
            "px": px.round(6) if px is not None else 0.0,
            "size": pd.to_numeric(size, errors="coerce") if size is not None else 0,
        },
        index=pt.table.index,
    ).fillna(0)
    groups = key.groupby(["px", "size"], sort=False).indices
    return [np.sort(np.asarray(v)) for v in groups.values()]
