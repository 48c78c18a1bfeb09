"""Tomograms, label volumes and segmentations on disk.

Segmentations are written as ``<tomogram>__<feature>.mrc`` (float32
probabilities, the tomogram's pixel size and origin kept) so that they
overlay the tomogram in napari or any MRC viewer.  A feature's title comes
from a model file that may have been made anywhere: it keeps its text for
display, and its file-name form (:func:`safe_file_stem`) can never leave the
output folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import CryoInputError
from ..io.mrc import read_mrc, write_mrc
from ..io.names import file_stem, safe_file_stem


@dataclass
class Volume:
    """A (Z, Y, X) volume from an MRC file, memory-mapped where possible."""

    data: np.ndarray
    pixel_size: float
    origin: tuple[float, float, float]
    path: Path


def load_volume(path: str | os.PathLike, pixel_size: float | None = None, what: str = "tomogram") -> Volume:
    """Open a 3D MRC file.

    Parameters
    ----------
    path : path
        The file.
    pixel_size : float, optional
        Å per voxel, overriding the header (needed when it has none).
    what : str
        What the file should be, for messages.

    Raises
    ------
    CryoInputError
        If it is not a 3D volume or has no pixel size.
    """
    data, info = read_mrc(path)
    if data.ndim != 3 or info.kind not in ("volume", "stack"):
        raise CryoInputError(path, f"is not a {what} (a 3D volume); it holds a {info.kind} of shape {tuple(data.shape)}")
    size = float(pixel_size) if pixel_size else float(info.voxel_size[-1])
    if size <= 0:
        raise CryoInputError(path, "has no pixel size in its header; give it with --pixel-size")
    return Volume(data, size, tuple(float(o) for o in info.origin), Path(path))


def load_labels(path: str | os.PathLike, shape: tuple[int, ...], tomogram: str | os.PathLike) -> np.ndarray:
    """Read a painted label volume and check it matches its tomogram."""
    data, _ = read_mrc(path)
    if tuple(data.shape) != tuple(shape):
        raise CryoInputError(path, f"labels have shape {tuple(data.shape)} but the tomogram {Path(tomogram).name} has {tuple(shape)}")
    labels = np.asarray(data)
    if labels.dtype.kind == "f":
        if not np.all(np.isfinite(labels)) or np.any(labels != np.round(labels)):
            raise CryoInputError(path, "is not a label volume: it holds non-integer values")
    return labels.astype(np.int32)


def tomogram_name(path: str | os.PathLike) -> str:
    """The tomogram a file belongs to: its stem, up to ``__`` (``tomo__membrane.mrc`` -> ``tomo``)."""
    return file_stem(path).split("__")[0]


def segmentation_path(out_dir: str | os.PathLike, tomogram: str | os.PathLike, feature: str) -> Path:
    """``out_dir/<tomogram>__<feature>.mrc``, the feature's title made safe by :func:`safe_file_stem`."""
    return Path(out_dir) / f"{file_stem(tomogram)}__{safe_file_stem(feature)}.mrc"


def write_segmentation(
    path: str | os.PathLike,
    probabilities: np.ndarray,
    pixel_size: float,
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0),
    feature: str = "",
    overwrite: bool = False,
) -> Path:
    """Write one feature's probabilities as an MRC file, atomically."""
    # MRC labels are printable ASCII; a title in any other script must not stop the write.
    label = "".join(c if " " <= c <= "~" else "?" for c in f"napari-cryo segmentation: {feature}")[:80]
    return write_mrc(path, probabilities.astype(np.float32, copy=False), pixel_size, origin, overwrite=overwrite, text_labels=[label])
