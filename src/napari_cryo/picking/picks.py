"""From micrograph to picks: probability maps, thresholds, peaks and spacing.

:func:`predict` runs the network once per micrograph; :class:`PickResult`
caches the probability maps so that changing the threshold or the minimum
distance (the widget's slider) recomputes the picks in milliseconds without
running the network again.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import ndimage
from scipy.spatial import cKDTree

from ..errors import CryoInputError
from .model import JUNK, PARTICLE, PickerModel
from .preprocess import Scaling, prepare, rescale, working_pixel_size


@torch.no_grad()
def predict(model: PickerModel, image: np.ndarray, device: torch.device | str = "cpu", tile: int = 2048) -> np.ndarray:
    """Class probabilities (3, H, W) for a working-resolution image.

    The network is fully convolutional and runs on the whole image at once;
    images larger than ``tile`` are cut into overlapping tiles (overlap
    beyond the receptive field) so memory stays bounded.
    """
    net = model.net.to(device).eval()
    h, w = image.shape
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None].to(device)
    if h <= tile and w <= tile:
        return torch.softmax(net(x), dim=1)[0].cpu().numpy()
    pad = 64
    out = np.zeros((3, h, w), dtype=np.float32)
    for y0 in range(0, h, tile - 2 * pad):
        for x0 in range(0, w, tile - 2 * pad):
            ys, xs = max(0, y0 - pad), max(0, x0 - pad)
            ye, xe = min(h, y0 + tile - pad), min(w, x0 + tile - pad)
            prob = torch.softmax(net(x[..., ys:ye, xs:xe]), dim=1)[0].cpu().numpy()
            cy0, cx0 = y0 - ys, x0 - xs
            cy1, cx1 = min(ye, y0 + tile - 2 * pad) - ys, min(xe, x0 + tile - 2 * pad) - xs
            out[:, y0 : y0 + cy1 - cy0, x0 : x0 + cx1 - cx0] = prob[:, cy0:cy1, cx0:cx1]
    return out


def extract_picks(
    particle: np.ndarray,
    threshold: float,
    min_distance: float,
    border: float = 0.0,
    exclude: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Picks from a particle-probability map (all in working pixels).

    Pixels above ``threshold`` are grouped into connected components; each
    component's probability-weighted centroid is a candidate, scored by the
    component's maximum probability.  Candidates inside ``exclude`` or within
    ``border`` of the edge are dropped, then of any two closer than
    ``min_distance`` the one with the higher score is kept.

    Returns
    -------
    yx : numpy.ndarray
        (N, 2) centres, sorted by descending score.
    scores : numpy.ndarray
        (N,) figures of merit in [0, 1].
    """
    mask = particle >= threshold
    if not mask.any():
        return np.zeros((0, 2)), np.zeros(0)
    labels, n = ndimage.label(mask)
    index = np.arange(1, n + 1)
    centres = np.asarray(ndimage.center_of_mass(particle, labels, index), dtype=float).reshape(-1, 2)
    scores = np.asarray(ndimage.maximum(particle, labels, index), dtype=float)
    h, w = particle.shape
    keep = (
        (centres[:, 0] >= border)
        & (centres[:, 0] <= h - 1 - border)
        & (centres[:, 1] >= border)
        & (centres[:, 1] <= w - 1 - border)
    )
    if exclude is not None:
        iy = np.clip(np.round(centres[:, 0]).astype(int), 0, h - 1)
        ix = np.clip(np.round(centres[:, 1]).astype(int), 0, w - 1)
        keep &= ~exclude[iy, ix]
    centres, scores = centres[keep], scores[keep]
    order = np.argsort(-scores, kind="stable")
    centres, scores = centres[order], scores[order]
    if min_distance > 0 and len(centres) > 1:
        keep_idx = suppress_close(centres, min_distance)
        centres, scores = centres[keep_idx], scores[keep_idx]
    return centres, scores


def suppress_close(centres: np.ndarray, min_distance: float) -> np.ndarray:
    """Indices to keep so that no two are closer than ``min_distance``.

    ``centres`` must be sorted by descending score: walking down the list,
    a centre is kept unless a kept centre lies too close, so of two close
    picks the one with the higher score always survives.
    """
    tree = cKDTree(centres)
    suppressed = np.zeros(len(centres), dtype=bool)
    keep = []
    for i in range(len(centres)):
        if suppressed[i]:
            continue
        keep.append(i)
        for j in tree.query_ball_point(centres[i], r=min_distance - 1e-9):
            if j > i:
                suppressed[j] = True
    return np.asarray(keep, dtype=int)


@dataclass
class PickResult:
    """The network's view of one micrograph, and picks at any threshold.

    Attributes
    ----------
    probabilities : numpy.ndarray
        (3, H, W) class probabilities at the working resolution.
    scaling : Scaling
        Original <-> working coordinates.
    pixel_size : float
        Original pixel size in Å.
    working_pixel_size : float
        Working pixel size in Å.
    diameter : float
        Particle diameter in Å.
    shape : tuple of int
        Original micrograph shape.
    exclude : numpy.ndarray or None
        Working-resolution mask where picks are not allowed (painted
        exclusions and, unless disabled, the predicted junk).
    """

    probabilities: np.ndarray
    scaling: Scaling
    pixel_size: float
    working_pixel_size: float
    diameter: float
    shape: tuple[int, int]
    exclude: np.ndarray | None = None
    model_name: str = ""
    extra: dict = field(default_factory=dict)

    def picks(self, threshold: float = 0.5, min_distance: float | None = None, border: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Picks in original pixel coordinates (YX) and their scores.

        Parameters
        ----------
        threshold : float
            Particle-probability threshold.
        min_distance : float, optional
            Minimum distance in Å between picks (default: the radius).
        border : float, optional
            Margin in Å from the micrograph edge (default: the radius).
        """
        radius = self.diameter / 2.0
        md = (radius if min_distance is None else min_distance) / self.working_pixel_size
        bd = (radius if border is None else border) / self.working_pixel_size
        yx, scores = extract_picks(self.probabilities[PARTICLE], threshold, md, bd, self.exclude)
        return self.scaling.to_original(yx), scores

    def probability_map(self, cls: int = PARTICLE) -> np.ndarray:
        """A class probability at the original resolution (for overlays)."""
        prob = rescale(self.probabilities[cls], 1.0 / self.scaling.fy)
        out = np.zeros(self.shape, dtype=np.float32)
        h, w = min(self.shape[0], prob.shape[0]), min(self.shape[1], prob.shape[1])
        out[:h, :w] = prob[:h, :w]
        return out


def pick_micrograph(
    model: PickerModel,
    image: np.ndarray,
    pixel_size: float,
    diameter: float,
    working_px: float | None = None,
    invert: bool | None = None,
    exclude_mask: np.ndarray | None = None,
    exclude_junk: bool = True,
    device: torch.device | str = "cpu",
    name: str = "micrograph",
) -> PickResult:
    """Run the picker on one micrograph.

    Parameters
    ----------
    model : PickerModel
        The picker.
    image : numpy.ndarray
        (Y, X) micrograph.
    pixel_size : float
        Its pixel size in Å.
    diameter : float
        Particle diameter in Å.
    working_px : float, optional
        Override of the working pixel size.
    invert : bool, optional
        Invert contrast (default: the model's setting).
    exclude_mask : numpy.ndarray, optional
        (Y, X) mask of regions not to pick (painted Labels > 0).
    exclude_junk : bool
        Also exclude pixels the network calls junk.
    device : torch.device or str
        Where to run.
    name : str
        For messages.

    Raises
    ------
    CryoInputError
        For a non-2D, empty (constant) or non-finite micrograph.
    """
    image = np.asarray(image)
    if image.ndim != 2:
        raise CryoInputError(name, f"a micrograph must be 2D, got shape {image.shape}")
    sample = image[:: max(1, image.shape[0] // 128), :: max(1, image.shape[1] // 128)]
    if not np.isfinite(sample).all() or not np.isfinite(image).all():
        raise CryoInputError(name, "micrograph contains NaN or infinite values")
    if float(np.ptp(sample)) == 0.0 and float(np.ptp(image)) == 0.0:
        raise CryoInputError(name, "micrograph is empty (all pixels have the same value)")
    wpx = working_pixel_size(diameter, pixel_size, working_px)
    work, scaling = prepare(image, pixel_size, wpx, invert=model.invert if invert is None else invert)
    prob = predict(model, work, device)
    exclude = None
    if exclude_mask is not None and np.any(exclude_mask):
        if exclude_mask.shape != image.shape:
            raise CryoInputError(name, f"exclusion mask shape {exclude_mask.shape} differs from the micrograph {image.shape}")
        exclude = rescale(np.asarray(exclude_mask > 0, dtype=np.float32), scaling.fy)[: work.shape[0], : work.shape[1]] > 0.25
    if exclude_junk:
        junk = ndimage.binary_opening(prob[JUNK] > prob[PARTICLE], iterations=1) & (prob[JUNK] > 0.5)
        exclude = junk if exclude is None else (exclude | junk)
    return PickResult(prob, scaling, pixel_size, wpx, diameter, tuple(image.shape), exclude, model.name)
