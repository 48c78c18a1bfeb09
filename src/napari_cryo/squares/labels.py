"""Square labels as CSV: ``center_x, center_y`` (atlas pixels) and any of the five scores.

Empty cells are unlabelled.  Rows are matched to extracted squares by the
nearest centre, within half a mesh pitch.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

from ..errors import CryoInputError
from .model import SCORES


def read_labels(path: str | os.PathLike) -> pd.DataFrame:
    """Read a labels CSV, checking its columns and values."""
    path = Path(path)
    if not path.is_file():
        raise CryoInputError(path, "file not found")
    try:
        df = pd.read_csv(path)
    except Exception as exc:  # noqa: BLE001 - pandas raises many kinds
        raise CryoInputError(path, f"cannot be read as CSV ({type(exc).__name__})") from None
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in ("center_x", "center_y") if c not in df.columns]
    if missing:
        raise CryoInputError(path, f"lacks column(s) {', '.join(missing)}")
    present = [c for c in SCORES if c in df.columns]
    if not present:
        raise CryoInputError(path, f"has none of the score columns {', '.join(SCORES)}")
    for c in ("center_x", "center_y", *present):
        values = pd.to_numeric(df[c], errors="coerce")
        bad = values.isna() & df[c].notna() & (df[c].astype(str).str.strip() != "")
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise CryoInputError(path, f"column {c} has a non-numeric value {df[c].iloc[row]!r} in row {row + 1}")
        df[c] = values
    for c in present:
        out = df[c].notna() & ((df[c] < 0) | (df[c] > 4))
        if out.any():
            row = int(np.flatnonzero(out.to_numpy())[0])
            raise CryoInputError(path, f"column {c} has {df[c].iloc[row]} in row {row + 1}; scores are 0-4")
    return df


def match_labels(labels: pd.DataFrame, squares: pd.DataFrame, max_distance: float, name: str = "labels") -> tuple[np.ndarray, list[str]]:
    """(N_squares, 5) scores from labels matched by nearest centre; NaN where unlabelled.

    Returns the matrix and warnings (labels that matched no square).

    Raises
    ------
    CryoInputError
        If no label row matches any square.
    """
    out = np.full((len(squares), len(SCORES)), np.nan, dtype=np.float32)
    if len(squares) == 0 or len(labels) == 0:
        raise CryoInputError(name, "no squares or no labels to match")
    tree = cKDTree(squares[["center_y", "center_x"]].to_numpy(float))
    d, idx = tree.query(labels[["center_y", "center_x"]].to_numpy(float))
    ok = d <= max_distance
    if not ok.any():
        raise CryoInputError(name, f"none of its {len(labels)} centres lies within {max_distance:.0f} px of an extracted square")
    for row, (good, i) in enumerate(zip(ok, idx)):
        if not good:
            continue
        for j, c in enumerate(SCORES):
            if c in labels.columns and pd.notna(labels[c].iloc[row]):
                out[i, j] = float(labels[c].iloc[row])
    warnings = []
    if (~ok).any():
        warnings.append(f"{name}: {int((~ok).sum())} label(s) match no square (nearest more than {max_distance:.0f} px away); ignored")
    return out, warnings


def write_labels(path: str | os.PathLike, squares: pd.DataFrame, scores: np.ndarray, overwrite: bool = False) -> Path:
    """Write a labels CSV (unlabelled scores as empty cells)."""
    from ..io.atomic import atomic_path

    df = pd.DataFrame({"center_x": squares["center_x"].to_numpy(), "center_y": squares["center_y"].to_numpy()})
    for j, c in enumerate(SCORES):
        df[c] = scores[:, j]
    with atomic_path(path, overwrite=overwrite) as tmp:
        df.to_csv(tmp, index=False, float_format="%.3f")
    return Path(path)
