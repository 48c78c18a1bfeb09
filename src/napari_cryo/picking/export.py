"""Picks as RELION coordinate STAR files, one per micrograph: names and writing.

The widget and ``napari-cryo pick run`` both write through these functions,
so the same micrograph and picks give the same bytes.  The convention:
the file is ``<stem>_picks.star`` (``stem`` = the micrograph's file name
without directory and extension) and ``rlnMicrographName`` is the
micrograph's file name without its directory, so files do not carry the
paths of the machine that wrote them and match micrographs by stem (see
:mod:`.data`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import CryoInputError
from ..io.names import file_stem
from ..io.star import write_coordinates
from ..layer_meta import MICROGRAPH_NAME, SOURCE_PATH

SUFFIX = "_picks.star"


def micrograph_file_name(path: str | os.PathLike) -> str:
    """``rlnMicrographName`` of a micrograph file: its name without the directory."""
    return Path(str(path)).name


def layer_micrograph_name(layer: Any) -> str:
    """``rlnMicrographName`` for an image layer (duck-typed: ``metadata``, ``source``, ``name``).

    The name a reader recorded, else the file the layer was opened from
    (without its directory), else the layer name.
    """
    meta = getattr(layer, "metadata", None) or {}
    if meta.get(MICROGRAPH_NAME):
        return str(meta[MICROGRAPH_NAME])
    path = meta.get(SOURCE_PATH) or getattr(getattr(layer, "source", None), "path", None)
    return micrograph_file_name(path) if path else str(layer.name)


def picks_path(directory: str | os.PathLike, micrograph: str) -> Path:
    """Where the picks of ``micrograph`` (a name or path) go in ``directory``."""
    return Path(directory) / f"{file_stem(micrograph)}{SUFFIX}"


def check_targets(paths: Sequence[Path], overwrite: bool, hint: str = "use --overwrite") -> None:
    """Refuse before writing anything: two micrographs on one file, or existing files without ``overwrite``.

    Raises
    ------
    CryoInputError
        On a collision or an existing file.
    """
    if len(set(paths)) < len(paths):
        raise CryoInputError(None, "two micrographs have the same file name; their pick files would collide")
    if not overwrite:
        existing = [p for p in paths if p.exists()]
        if existing:
            more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
            raise CryoInputError(existing[0], f"already exists{more}; {hint}")


def write_picks(path: str | os.PathLike, yx: np.ndarray, scores: np.ndarray, pixel_size: float, micrograph_name: str) -> Path:
    """Write one micrograph's picks (YX pixels, figures of merit), atomically, replacing ``path``.

    Parameters
    ----------
    path : str or os.PathLike
        The STAR file (see :func:`picks_path`); check it first with :func:`check_targets`.
    yx : numpy.ndarray
        (N, 2) pick centres in micrograph pixels.
    scores : numpy.ndarray
        (N,) ``rlnAutopickFigureOfMerit``.
    pixel_size : float
        Micrograph pixel size in Å.
    micrograph_name : str
        ``rlnMicrographName`` (see :func:`micrograph_file_name`).

    Returns
    -------
    pathlib.Path
        The file written.
    """
    features = pd.DataFrame({"rlnAutopickFigureOfMerit": np.asarray(scores, dtype=float)})
    return write_coordinates(path, np.asarray(yx, dtype=float).reshape(-1, 2), features, pixel_size, micrograph_name=micrograph_name, overwrite=True)
