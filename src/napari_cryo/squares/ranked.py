"""The ranked squares of a scored atlas, and the one way they are written (CSV and STAR).

The command line (``napari-cryo squares score``) and the widget (*Export
ranked squares*) both call :func:`write_ranked`, so the same atlas and model
give the same files, byte for byte.  For an atlas named ``NAME`` it writes,
into one folder:

- ``NAME_squares.csv``: one row per ranked (complete) square, best first,
  with the columns :data:`CSV_COLUMNS`; centres in atlas pixels and in Å
  (the Å columns are empty when the atlas has no pixel size);
- ``NAME_squares.star``: the same squares as RELION coordinates
  (``rlnCoordinateX/Y`` in pixels, ``rlnMicrographName`` = ``NAME``), with
  the rank and scores as ``rnkSquareRank``, ``rnkSquareOverall``, ...
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import CryoInputError
from ..io.names import safe_file_stem
from .model import SCORES

CSV_COLUMNS = ("atlas", "rank", "center_x", "center_y", "center_x_A", "center_y_A", "side", "angle", *SCORES)
STAR_COLUMNS = {"rank": "rnkSquareRank", **{s: f"rnkSquare{s.capitalize()}" for s in SCORES}}
FLOAT_FORMAT = "%.3f"


def ranked_squares(scored: pd.DataFrame, name: str, pixel_size: float | None) -> pd.DataFrame:
    """The ranked squares of one atlas, best first, with the columns :data:`CSV_COLUMNS`.

    Parameters
    ----------
    scored : pandas.DataFrame
        A table from :func:`~.pipeline.score_atlas` (``rank`` 0 = not ranked).
    name : str
        The atlas name.
    pixel_size : float, optional
        Å per pixel; None leaves the Å columns empty.
    """
    table = scored[scored["rank"] > 0].sort_values("rank", kind="stable").reset_index(drop=True)
    table.insert(0, "atlas", name)
    px = np.nan if pixel_size is None else float(pixel_size)
    table["center_x_A"], table["center_y_A"] = table["center_x"] * px, table["center_y"] * px
    return table[list(CSV_COLUMNS)]


def ranked_paths(directory: str | os.PathLike, name: str) -> tuple[Path, Path]:
    """The CSV and STAR paths :func:`write_ranked` writes for atlas ``name``."""
    directory, stem = Path(directory), safe_file_stem(name)  # a layer name may hold separators
    return directory / f"{stem}_squares.csv", directory / f"{stem}_squares.star"


def write_ranked(
    directory: str | os.PathLike, scored: pd.DataFrame, name: str, pixel_size: float | None, overwrite: bool = False
) -> list[Path]:
    """Write the ranked squares of one atlas as CSV and STAR into ``directory`` (created if needed).

    Parameters
    ----------
    directory : path
        The output folder.
    scored : pandas.DataFrame
        A table from :func:`~.pipeline.score_atlas`.
    name : str
        The atlas name: the files' stem and the STAR micrograph name.
    pixel_size : float, optional
        Å per pixel of the atlas.
    overwrite : bool
        Replace existing files.

    Returns
    -------
    list of pathlib.Path
        The CSV and the STAR file.

    Raises
    ------
    CryoInputError
        If ``directory`` is a file, or a file exists and ``overwrite`` is false.
    """
    from ..io.atomic import atomic_path, check_writable
    from ..io.star import write_coordinates

    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise CryoInputError(directory, "exists and is not a directory")
    directory.mkdir(parents=True, exist_ok=True)
    csv, star = ranked_paths(directory, name)
    for path in (csv, star):  # both or neither
        check_writable(path, overwrite)
    table = ranked_squares(scored, name, pixel_size)
    with atomic_path(csv, overwrite=overwrite) as tmp:
        table.to_csv(tmp, index=False, float_format=FLOAT_FORMAT)
    features = table[list(STAR_COLUMNS)].rename(columns=STAR_COLUMNS)
    write_coordinates(star, table[["center_y", "center_x"]].to_numpy(), features, pixel_size, micrograph_name=name, overwrite=overwrite)
    return [csv, star]
