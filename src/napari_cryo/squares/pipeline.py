"""Atlas -> squares -> crops -> scores and attention maps, the steps shared by the CLI and the widget.

Each step is a progress generator (``iter_*``), so a widget can run it in a
worker and cancel it between steps; the plain functions run the same
generators to their end.
"""

from __future__ import annotations

import os
from collections.abc import Generator, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from ..errors import CryoInputError
from ..io.names import safe_file_stem
from ..tasks import Progress, drain
from .attributes import brightness, squareness
from .extract import Lattice, iter_crop_squares, iter_find_squares, paste_maps
from .model import SCORES, SquareModel

CROP_SIZE = 64
CHUNK = 32  # squares measured between two progress reports
PREDICT_BATCH = 128  # squares per forward pass (training.predict's batch)
ATTENTION = ("cracking", "contamination")  # the scores whose branches give attention maps (XCryoNet only)


def attention_keys(variant: str) -> tuple[str, ...]:
    """The attention maps a model of ``variant`` gives (``"primary"`` has none)."""
    return ATTENTION if variant == "xcryonet" else ()


def attention_path(directory: str | os.PathLike, name: str, key: str) -> Path:
    """Where ``squares score`` writes the ``key`` attention map of atlas ``name``."""
    return Path(directory) / f"{safe_file_stem(name)}_attention_{key}.mrc"


@dataclass
class AtlasSquares:
    """The squares of one atlas.

    Attributes
    ----------
    name : str
        The atlas name (file stem or layer name).
    image : numpy.ndarray
        The atlas.
    pixel_size : float or None
        Å per pixel.
    squares : pandas.DataFrame
        ``center_y, center_x, side, angle, complete, ncc`` and the measured
        ``brightness, squareness`` (0–4) of every square.
    crops : numpy.ndarray
        (N, S, S) upright normalised crops.
    lattice : Lattice
        The mesh.
    """

    name: str
    image: np.ndarray
    pixel_size: float | None
    squares: pd.DataFrame
    crops: np.ndarray
    lattice: Lattice

    def auto_labels(self) -> np.ndarray:
        """(N, 5) labels with the measured brightness and squareness, other scores NaN."""
        labels = np.full((len(self.squares), len(SCORES)), np.nan, dtype=np.float32)
        labels[:, 0] = self.squares["brightness"].to_numpy()
        labels[:, 1] = self.squares["squareness"].to_numpy()
        return labels


def analyse_atlas(image: np.ndarray, name: str = "atlas", pixel_size: float | None = None, crop_size: int = CROP_SIZE) -> AtlasSquares:
    """Find the squares, crop them and measure brightness and squareness (:func:`iter_analyse_atlas` run to its end)."""
    return drain(iter_analyse_atlas(image, name, pixel_size, crop_size))[0]


def iter_analyse_atlas(
    image: ArrayLike, name: str = "atlas", pixel_size: float | None = None, crop_size: int = CROP_SIZE, chunk: int = CHUNK
) -> Generator[Progress, None, AtlasSquares]:
    """Find the squares, crop them and measure brightness and squareness, yielding progress between steps.

    Parameters
    ----------
    image : array-like
        The (Y, X) atlas; a memory map or a lazy array is read here, so that
        a worker, not the caller, pays for reading it.
    name : str
        The atlas name (file stem or layer name).
    pixel_size : float, optional
        Å per pixel.
    crop_size : int
        Side of the upright crops.
    chunk : int
        Squares measured between two progress reports.

    Returns
    -------
    AtlasSquares
        The generator's return value.
    """
    yield Progress(0, None, "reading the atlas")
    image = np.asarray(image, dtype=np.float32)
    squares, lattice = yield from iter_find_squares(image)
    crops = yield from iter_crop_squares(image, squares, crop_size, chunk=chunk)
    squares = squares.copy()
    squares["brightness"] = brightness(crops)
    measured = []
    for start in range(0, len(crops), chunk):
        yield Progress(start, len(crops), "measuring squareness")
        measured.append(squareness(crops[start : start + chunk]))
    squares["squareness"] = np.concatenate(measured) if measured else np.zeros(0)
    return AtlasSquares(name, image, pixel_size, squares, crops, lattice)


def score_atlas(model: SquareModel, atlas: AtlasSquares, device: str = "cpu") -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Predicted scores, ranks and attention maps of an atlas (:func:`iter_score_atlas` run to its end)."""
    return drain(iter_score_atlas(model, atlas, device))[0]


def iter_score_atlas(
    model: SquareModel, atlas: AtlasSquares, device: str = "cpu", batch: int = PREDICT_BATCH
) -> Generator[Progress, None, tuple[pd.DataFrame, dict[str, np.ndarray]]]:
    """Predicted scores and rank of every complete square, and attention maps in atlas coordinates.

    Yields progress between batches of squares.

    Returns
    -------
    table : pandas.DataFrame
        The square table with ``brightness ... overall`` predicted (NaN for
        incomplete squares) and ``rank`` (1 = best overall; 0 = not ranked).
    maps : dict
        ``cracking`` and ``contamination`` attention maps, (Y, X), for
        XCryoNet models.
    """
    from .training import predict

    table = atlas.squares.copy()
    complete = table["complete"].to_numpy(bool)
    crops = atlas.crops[complete]
    parts = []
    for start in range(0, len(crops), batch):
        yield Progress(start, len(crops), f"scoring {atlas.name}")
        parts.append(predict(model, crops[start : start + batch], device, batch))
    out = {key: np.concatenate([p[key] for p in parts]) for key in (parts[0] if parts else {})}
    scores = out.get("scores", np.zeros((0, len(SCORES))))
    for j, name in enumerate(SCORES):
        values = np.full(len(table), np.nan)
        values[complete] = scores[:, j]
        table[name] = values
    order = np.argsort(-np.nan_to_num(table["overall"].to_numpy(), nan=-1.0), kind="stable")
    rank = np.zeros(len(table), dtype=int)
    n = int(complete.sum())
    rank[order[:n]] = np.arange(1, n + 1)
    table["rank"] = rank
    maps = {}
    for key in ATTENTION:
        att = out.get(f"attention_{key}")
        if att is not None:
            yield Progress(len(crops), len(crops), f"{key} attention of {atlas.name}")
            maps[key] = paste_maps(att, table[complete], atlas.image.shape)
    return table, maps


def training_set(atlases: Iterable[tuple[AtlasSquares, np.ndarray | None]]) -> tuple[np.ndarray, np.ndarray]:
    """The crops and labels of the complete squares of atlases, for :func:`~.training.train_squares`.

    Parameters
    ----------
    atlases : iterable of (AtlasSquares, numpy.ndarray or None)
        Each atlas with its (N, 5) user labels (NaN where unset), or None for
        an atlas whose squares train without labels.  Measured brightness and
        squareness fill the labels the user left unset.

    Returns
    -------
    crops : numpy.ndarray
        (M, S, S) crops.
    labels : numpy.ndarray
        (M, 5) labels in :data:`~.model.SCORES` order, NaN where unknown.

    Raises
    ------
    CryoInputError
        If there are no atlases.
    """
    crops, labels = [], []
    for atlas, user in atlases:
        keep = atlas.squares["complete"].to_numpy(bool)
        auto = atlas.auto_labels()
        merged = auto if user is None else np.where(np.isfinite(user), user, auto)
        crops.append(atlas.crops[keep])
        labels.append(merged[keep])
    if not crops:
        raise CryoInputError(None, "extract the squares of an atlas first")
    return np.concatenate(crops), np.concatenate(labels)
