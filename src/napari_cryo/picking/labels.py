"""Training targets: per-pixel classes from picks, false positives and painted masks.

Targets live at the working resolution and use four values:

* ``PARTICLE`` (1) in a small disc at each labelled particle centre;
* ``BACKGROUND`` (0) in the ring around each labelled particle out to half
  a diameter — no other particle centre can lie that close;
* ``FALSE_POSITIVE`` (3) in a disc of the particle radius at each false
  positive: background, weighted up in the loss as BoxNet does;
* ``JUNK`` (2) where the user painted a mask (carbon, contamination, ...);
* ``UNLABELLED`` (-1) everywhere else.  With sparse labels the unlabelled
  pixels hold unpicked particles, so they are trained with a
  positive-unlabelled risk (see :mod:`.training`), not as certain negatives.
  With complete labels (simulated data) they are set to background.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .model import BACKGROUND, JUNK, PARTICLE
from .preprocess import DIAMETER_PX, Scaling, prepare, rescale

UNLABELLED = -1
#: Background pixels the user marked as false positives (weighted up in the loss).
FALSE_POSITIVE = 3
#: Radius of the positive disc in working pixels: about a quarter of the particle radius, as in BoxNet.
POSITIVE_RADIUS = 0.15 * DIAMETER_PX


@dataclass
class TrainingMicrograph:
    """One micrograph prepared for training.

    Attributes
    ----------
    image : numpy.ndarray
        Working-resolution normalised image (float32).
    target : numpy.ndarray
        Working-resolution int8 classes (see module docstring).
    n_labelled : int
        Number of labelled particles.
    expected_particles : float
        How many particles the micrograph is believed to hold (for the
        positive-unlabelled prior).
    name : str
        Micrograph name, for messages.
    """

    image: np.ndarray
    target: np.ndarray
    n_labelled: int
    expected_particles: float
    name: str = ""

    @property
    def prior(self) -> float:
        """Expected fraction of unlabelled pixels that are particle-centre pixels."""
        unlabelled = int(np.count_nonzero(self.target == UNLABELLED))
        if unlabelled == 0:
            return 0.0
        missing = max(0.0, self.expected_particles - self.n_labelled)
        return float(min(0.5, missing * np.pi * POSITIVE_RADIUS**2 / unlabelled))


def _stamp(target: np.ndarray, centres: np.ndarray, radius: float, value: int, where: np.ndarray | None = None) -> None:
    """Set a disc of ``radius`` around each centre (YX, working px) to ``value``."""
    h, w = target.shape
    r = int(np.ceil(radius))
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    for cy, cx in centres:
        iy, ix = int(round(cy)), int(round(cx))
        disc = (yy + iy - cy) ** 2 + (xx + ix - cx) ** 2 <= radius**2
        y0, y1, x0, x1 = iy - r, iy + r + 1, ix - r, ix + r + 1
        sy0, sx0 = max(0, -y0), max(0, -x0)
        y0c, y1c, x0c, x1c = max(0, y0), min(h, y1), max(0, x0), min(w, x1)
        if y0c >= y1c or x0c >= x1c:
            continue
        d = disc[sy0 : sy0 + (y1c - y0c), sx0 : sx0 + (x1c - x0c)]
        region = target[y0c:y1c, x0c:x1c]
        if where is not None:
            d = d & where[y0c:y1c, x0c:x1c]
        region[d] = value


def build_target(
    shape: tuple[int, int],
    positives: np.ndarray,
    false_positives: np.ndarray | None = None,
    junk_mask: np.ndarray | None = None,
    complete: bool = False,
) -> np.ndarray:
    """Per-pixel training classes at the working resolution.

    Parameters
    ----------
    shape : tuple of int
        Working image shape.
    positives : numpy.ndarray
        (N, 2) YX particle centres in working pixels.
    false_positives : numpy.ndarray, optional
        (M, 2) YX centres the user marked as not particles.
    junk_mask : numpy.ndarray, optional
        Boolean working-resolution mask of painted junk.
    complete : bool
        Whether every particle is labelled (then unlabelled = background).

    Returns
    -------
    numpy.ndarray
        int8 classes.
    """
    target = np.full(shape, BACKGROUND if complete else UNLABELLED, dtype=np.int8)
    positives = np.asarray(positives, dtype=float).reshape(-1, 2)
    _stamp(target, positives, 0.5 * DIAMETER_PX, BACKGROUND)
    if false_positives is not None and len(false_positives):
        _stamp(target, np.asarray(false_positives, dtype=float).reshape(-1, 2), 0.5 * DIAMETER_PX, FALSE_POSITIVE)
    if junk_mask is not None:
        target[junk_mask] = JUNK
    _stamp(target, positives, POSITIVE_RADIUS, PARTICLE)
    return target


def prepare_training_micrograph(
    image: np.ndarray,
    pixel_size: float,
    working_px: float,
    positives: np.ndarray,
    false_positives: np.ndarray | None = None,
    junk_mask: np.ndarray | None = None,
    complete: bool = False,
    expected_particles: float | None = None,
    invert: bool = False,
    name: str = "",
) -> TrainingMicrograph:
    """Rescale a micrograph and its labels (original pixel coordinates) for training.

    ``expected_particles`` defaults to twice the labelled count: the normal
    case is that the user picked some, not all, of the particles.
    """
    work, scaling = prepare(image, pixel_size, working_px, invert=invert)
    pos = _inside(scaling.to_working(positives), work.shape)
    fps = None if false_positives is None else _inside(scaling.to_working(false_positives), work.shape)
    mask = None
    if junk_mask is not None and np.any(junk_mask):
        mask = rescale(np.asarray(junk_mask > 0, dtype=np.float32), _factor(scaling)) > 0.5
        mask = mask[: work.shape[0], : work.shape[1]]
    target = build_target(work.shape, pos, fps, mask, complete)
    expected = float(expected_particles) if expected_particles is not None else 2.0 * len(pos)
    return TrainingMicrograph(work, target, len(pos), expected, name)


def _factor(scaling: Scaling) -> float:
    return 0.5 * (scaling.fy + scaling.fx)


def _inside(yx: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    yx = np.asarray(yx, dtype=float).reshape(-1, 2)
    ok = (yx[:, 0] >= -0.5) & (yx[:, 0] <= shape[0] - 0.5) & (yx[:, 1] >= -0.5) & (yx[:, 1] <= shape[1] - 0.5)
    return yx[ok]
