"""Atlas -> squares -> crops -> scores and attention maps, the steps shared by the CLI and the widget."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .attributes import brightness, squareness
from .extract import Lattice, crop_squares, find_squares, paste_maps
from .model import SCORES, SquareModel

CROP_SIZE = 64


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
    """Find the squares, crop them and measure brightness and squareness."""
    squares, lattice = find_squares(image)
    crops = crop_squares(image, squares, crop_size)
    squares = squares.copy()
    squares["brightness"] = brightness(crops)
    squares["squareness"] = squareness(crops)
    return AtlasSquares(name, np.asarray(image), pixel_size, squares, crops, lattice)


def score_atlas(model: SquareModel, atlas: AtlasSquares, device: str = "cpu") -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Predicted scores and rank of every complete square, and attention maps in atlas coordinates.

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
    out = predict(model, atlas.crops[complete], device)
    for j, name in enumerate(SCORES):
        values = np.full(len(table), np.nan)
        values[complete] = out["scores"][:, j]
        table[name] = values
    order = np.argsort(-np.nan_to_num(table["overall"].to_numpy(), nan=-1.0), kind="stable")
    rank = np.zeros(len(table), dtype=int)
    n = int(complete.sum())
    rank[order[:n]] = np.arange(1, n + 1)
    table["rank"] = rank
    maps = {}
    for key in ("cracking", "contamination"):
        att = out.get(f"attention_{key}")
        if att is not None:
            maps[key] = paste_maps(att, table[complete], atlas.image.shape)
    return table, maps
