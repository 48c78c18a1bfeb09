"""The attributes computed without labels: brightness and squareness (as XCryoNet does).

Both are measured on the upright crops of :func:`.extract.crop_squares`,
whose intensities are normalised per atlas (grid bars ~0, the brightest
squares ~1), and scaled to XCryoNet's 0–4 range.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.feature import canny
from skimage.filters import threshold_otsu

#: Crop intensity of a square with no ice (the film broken), relative to the atlas normalisation.
EMPTY_LEVEL = 1.0
#: The crops extend this factor past the square (see crop_squares).
MARGIN = 1.1


def _inner(size: int, margin: float = MARGIN) -> slice:
    pad = int(round(size * (1 - 1 / margin) / 2))
    return slice(pad, size - pad)


def brightness(crops: np.ndarray) -> np.ndarray:
    """0–4 from the mean of the square's non-zero pixels (0 = as dark as the bars, 4 = no ice)."""
    inner = _inner(crops.shape[-1])
    region = crops[:, inner, inner]
    values = np.where(region > 0.02, region, np.nan)
    mean = np.nan_to_num(np.nanmean(values.reshape(len(crops), -1), axis=1), nan=0.0)
    return np.clip(4.0 * mean / EMPTY_LEVEL, 0.0, 4.0)


def _enclosing_square_side(points: np.ndarray) -> float:
    """Side of the smallest square (any rotation) that encloses 2D points."""
    if len(points) < 3:
        return 0.0
    best = np.inf
    for angle in np.deg2rad(np.arange(0.0, 90.0, 2.0)):
        c, s = np.cos(angle), np.sin(angle)
        u = points[:, 0] * c + points[:, 1] * s
        v = -points[:, 0] * s + points[:, 1] * c
        best = min(best, max(np.ptp(u), np.ptp(v)))
    return float(best + 1.0)


def squareness(crops: np.ndarray) -> np.ndarray:
    """0–4 from how much of the minimal enclosing square the bright square fills.

    Canny edges outline the square; the smallest square enclosing the edges
    is compared with the area of the bright region: a whole square fills it
    (4), a folded or covered corner leaves part of it empty.  The scale
    matches :func:`napari_cryo.synthetic.atlas.squareness_score`:
    ``4 - 8 * (missing fraction)``.
    """
    out = np.zeros(len(crops))
    for i, crop in enumerate(crops):
        smooth = ndimage.gaussian_filter(crop, 0.7)
        if np.ptp(smooth) < 1e-3:
            continue
        level = threshold_otsu(smooth)
        bright = smooth > level
        labels, n = ndimage.label(bright)
        if n == 0:
            continue
        sizes = ndimage.sum(bright, labels, index=np.arange(1, n + 1))
        region = labels == int(np.argmax(sizes)) + 1
        # Canny edges close the outline where cracks or dirt break the threshold.
        edges = canny(crop, sigma=1.5) & ndimage.binary_dilation(region, iterations=2)
        region = ndimage.binary_fill_holes(region | edges)
        side = _enclosing_square_side(np.argwhere(region).astype(float))
        if side <= 0:
            continue
        filled = float(region.sum()) / side**2
        out[i] = np.clip(4.0 - 8.0 * (1.0 - min(1.0, filled)), 0.0, 4.0)
    return out
