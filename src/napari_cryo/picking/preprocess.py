"""Micrograph preprocessing: rescaling to the working pixel size and normalisation.

The picker sees every micrograph at a *working pixel size* at which the
particle diameter spans :data:`DIAMETER_PX` pixels.  Warp's BoxNet works at a
fixed 8 Å/px; deriving the size from the diameter instead lets one network
pick particles of very different sizes, since they all look the same size to
it, and keeps its ~96-pixel receptive field at about five diameters.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

#: Particle diameter in working pixels.
DIAMETER_PX = 20.0


def working_pixel_size(diameter: float, pixel_size: float, override: float | None = None) -> float:
    """The pixel size (Å) the network works at.

    Parameters
    ----------
    diameter : float
        Particle diameter in Å.
    pixel_size : float
        The micrograph's pixel size in Å.
    override : float, optional
        A working pixel size chosen by the user.

    Returns
    -------
    float
        ``diameter / DIAMETER_PX``, never finer than the micrograph itself.
    """
    if override is not None:
        if not override > 0:
            raise ValueError(f"working pixel size must be positive, got {override}")
        return float(override)
    if not diameter > 0:
        raise ValueError(f"particle diameter must be positive, got {diameter}")
    return float(max(diameter / DIAMETER_PX, pixel_size))


def rescale(image: np.ndarray, factor: float) -> np.ndarray:
    """Resample a 2D image by ``factor`` (< 1 shrinks) with area averaging.

    Area averaging (box filter) is the anti-aliased choice for shrinking and
    costs one pass over the image, so a 4k micrograph shrinks in tens of ms.
    """
    if abs(factor - 1.0) < 1e-6:
        return np.asarray(image, dtype=np.float32)
    # Writable as well as contiguous: torch warns on (and must not alias) a read-only memory map.
    t = torch.as_tensor(np.require(image, np.float32, ["C", "W"]))[None, None]
    out_shape = (max(1, int(round(image.shape[0] * factor))), max(1, int(round(image.shape[1] * factor))))
    mode = "area" if factor < 1 else "bilinear"
    kwargs = {} if mode == "area" else {"align_corners": False}
    return F.interpolate(t, size=out_shape, mode=mode, **kwargs)[0, 0].numpy()


def normalise(image: np.ndarray, invert: bool = False, clip: float = 4.0) -> np.ndarray:
    """Zero median, unit robust spread, outliers clipped; optionally inverted.

    Robust statistics (median and the 16–84 % range) keep carbon and ice
    contamination from dominating the scaling.  Particles are expected dark
    (as in raw micrographs); ``invert`` flips micrographs with white particles.
    """
    img = np.asarray(image, dtype=np.float32)
    sample = img[:: max(1, img.shape[0] // 256), :: max(1, img.shape[1] // 256)]
    centre = float(np.median(sample))
    lo, hi = np.percentile(sample, [16, 84])
    spread = float(hi - lo) / 2.0 or float(sample.std()) or 1.0
    out = (img - centre) / spread
    if invert:
        out = -out
    return np.clip(out, -clip, clip)


@dataclass(frozen=True)
class Scaling:
    """Mapping between original and working pixel coordinates (pixel centres, 0-based).

    A working pixel ``w`` covers original pixels ``[w / f, (w + 1) / f)``, so
    its centre is at ``(w + 0.5) / f - 0.5``.
    """

    fy: float
    fx: float

    def to_working(self, yx: np.ndarray) -> np.ndarray:
        """Original (N, 2) YX pixel coordinates -> working coordinates."""
        f = np.array([self.fy, self.fx])
        return (np.asarray(yx, dtype=float).reshape(-1, 2) + 0.5) * f - 0.5

    def to_original(self, yx: np.ndarray) -> np.ndarray:
        """Working (N, 2) YX pixel coordinates -> original coordinates."""
        f = np.array([self.fy, self.fx])
        return (np.asarray(yx, dtype=float).reshape(-1, 2) + 0.5) / f - 0.5


def prepare(image: np.ndarray, pixel_size: float, working_px: float, invert: bool = False) -> tuple[np.ndarray, Scaling]:
    """Rescale to the working pixel size and normalise.

    Returns
    -------
    image : numpy.ndarray
        The working image.
    scaling : Scaling
        The coordinate mapping between the original and the working image.
    """
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"a micrograph must be 2D, got shape {image.shape}")
    work = rescale(image, pixel_size / working_px)
    scaling = Scaling(work.shape[0] / image.shape[0], work.shape[1] / image.shape[1])
    return normalise(work, invert=invert), scaling
