"""Micrographs and their picks from files, matched by name.

Pick files name micrographs by path (``rlnMicrographName``) and those paths
rarely match where the micrographs are now, so picks are matched to
micrographs by file stem (name without directory and extension).  A
directory of pick files is matched by the stem each file name starts with
(``mic001_autopick.star``, ``mic001_picks.star``, ``mic001.star`` all belong
to ``mic001.mrc``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import CryoInputError
from ..io.images import is_plain_image, plain_image_shape, read_plain_image
from ..io.mrc import read_mrc
from ..io.names import file_stem
from ..io.star import read_coordinates


@dataclass
class Micrograph:
    """A 2D micrograph in memory with its pixel size."""

    path: Path
    image: np.ndarray
    pixel_size: float

    @property
    def stem(self) -> str:
        """The name used to match pick files."""
        return stem_of(self.path)


@dataclass
class MatchedPicks:
    """Picks per micrograph stem (original YX pixels), with what could not be used."""

    by_stem: dict[str, np.ndarray]
    warnings: list[str] = field(default_factory=list)


def stem_of(name: str | os.PathLike) -> str:
    """File name without directory and extensions (see :func:`napari_cryo.io.names.file_stem`)."""
    return file_stem(name)


def _open_micrograph(path: Path, pixel_size: float | None, header_only: bool = False) -> tuple[np.ndarray | None, float]:
    """The (memory-mapped) 2D image and its pixel size, checked from the header (TIFF, PNG, JPEG: read whole)."""
    if is_plain_image(path):
        if pixel_size is None:
            raise CryoInputError(path, "has no pixel size (TIFF, PNG and JPEG files carry none); give one with --pixel-size")
        if header_only:
            plain_image_shape(path)
            return None, float(pixel_size)
        return read_plain_image(path), float(pixel_size)
    data, info = read_mrc(path)
    if data.ndim == 3 and data.shape[0] == 1:
        data = data[0]
    if data.ndim != 2:
        raise CryoInputError(path, f"is not a single micrograph (shape {data.shape}); give 2D images")
    px = pixel_size if pixel_size is not None else (info.pixel_size if info.pixel_size > 0 else None)
    if px is None:
        raise CryoInputError(path, "has no pixel size in its header; give one with --pixel-size")
    return data, float(px)


def check_micrographs(paths: Iterable[str | os.PathLike], pixel_size: float | None = None) -> None:
    """Check every micrograph of a batch from its header (readable, 2D, a pixel size) before any is processed.

    Raises
    ------
    CryoInputError
        Naming the first file that :func:`load_micrograph` would refuse from its header.
    """
    for path in paths:
        _open_micrograph(Path(path), pixel_size, header_only=True)


def load_micrograph(path: str | os.PathLike, pixel_size: float | None = None) -> Micrograph:
    """Read one 2D micrograph (MRC, TIFF, PNG or JPEG); ``pixel_size`` overrides (or supplies) the header's.

    Raises
    ------
    CryoInputError
        If the file is not a single 2D image or has no pixel size.
    """
    path = Path(path)
    data, px = _open_micrograph(path, pixel_size)
    image = np.asarray(data, dtype=np.float32)
    if not np.isfinite(image).all():
        raise CryoInputError(path, "micrograph contains NaN or infinite values")
    if float(np.ptp(image)) == 0.0:
        raise CryoInputError(path, "micrograph is empty (all pixels have the same value)")
    return Micrograph(path, image, px)


def _pick_files(spec: Path) -> list[Path]:
    if spec.is_dir():
        files = sorted(spec.glob("*.star"))
        if not files:
            raise CryoInputError(spec, "directory holds no .star files")
        return files
    if not spec.exists():
        raise CryoInputError(spec, "file not found")
    return [spec]


def match_picks(spec: str | os.PathLike, micrographs: list[Micrograph], what: str = "picks") -> MatchedPicks:
    """Read picks from a STAR file or a directory of them and assign them to micrographs.

    Picks outside their micrograph are dropped with a warning; picks for
    micrographs that were not given are ignored with a warning.

    Raises
    ------
    CryoInputError
        If no pick can be assigned to any of the micrographs, or a file
        without micrograph names cannot be assigned unambiguously.
    """
    spec = Path(spec)
    stems = {m.stem: m for m in micrographs}
    out: dict[str, list[np.ndarray]] = {}
    warnings: list[str] = []
    unmatched: dict[str, int] = {}
    for file in _pick_files(spec):
        sets = read_coordinates(file)
        for cs in sets:
            if cs.ndim != 2:
                raise CryoInputError(file, "holds 3D coordinates; 2D picking needs rlnCoordinateX/Y only")
            if cs.name is not None:
                key = stem_of(cs.name)
            elif spec.is_dir():
                key = next((s for s in sorted(stems, key=len, reverse=True) if stem_of(file).startswith(s)), stem_of(file))
            elif len(micrographs) == 1:
                key = micrographs[0].stem
            else:
                raise CryoInputError(file, "names no micrograph (rlnMicrographName) and several micrographs were given")
            if key not in stems:
                unmatched[key] = unmatched.get(key, 0) + len(cs.points)
                continue
            out.setdefault(key, []).append(cs.points)
    if unmatched:
        total = sum(unmatched.values())
        first = next(iter(unmatched))
        more = f" and {len(unmatched) - 1} more" if len(unmatched) > 1 else ""
        warnings.append(f"{spec}: {total} {what} name micrograph(s) that were not given ({first}{more}); they are ignored")
    result: dict[str, np.ndarray] = {}
    for key, parts in out.items():
        pts = np.concatenate(parts)
        h, w = stems[key].image.shape
        inside = (pts[:, 0] >= -0.5) & (pts[:, 0] <= h - 0.5) & (pts[:, 1] >= -0.5) & (pts[:, 1] <= w - 0.5)
        if not inside.all():
            warnings.append(f"{spec}: {int((~inside).sum())} {what} lie outside {stems[key].path.name} ({w}x{h}) and are ignored")
        result[key] = pts[inside]
    if not result:
        raise CryoInputError(spec, f"none of its {what} belong to the given micrographs (matched by file name)")
    return MatchedPicks(result, warnings)
