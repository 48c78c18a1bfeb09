"""Augmentation of training boxes on the fly, so that a model trained on one tomogram holds on others.

A user paints a few slices of one or two tomograms; the model must then
work on tomograms of other SNR, resolution (B-factor, defocus), contrast
and pixel size, with the missing wedge in another orientation.  Each batch
is therefore redrawn, every epoch, with:

* a rotation by any angle, a flip and a zoom (pixel sizes from 0.8x to
  1.25x the painted ones): features meet the network at every orientation
  and a range of sizes;
* a Gaussian blur (what a larger B-factor or a stronger low-pass does);
* added white noise (a lower SNR);
* a gain and an offset (contrast and the normalisation's residual).

Boxes are cut larger than the training box (:data:`CUT_FACTOR`) so that a
rotated or zoomed box is filled with image, not padding; the target mask
goes through the same geometric transform and is thresholded at one half.
The validation boxes are not augmented: early stopping must judge the
model on painted data as it is.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F

#: Boxes are cut this much larger than the training box (see the module docstring).
CUT_FACTOR = 1.5


@dataclass(frozen=True)
class Augmentation:
    """Ranges of the random transforms (each drawn uniformly, per box).

    Attributes
    ----------
    rotate : str
        ``"any"``: rotate by any angle and flip; ``"right"``: by multiples of 90° and flip;
        ``"none"``: neither.
    zoom : tuple of float
        Range of the zoom factor (> 1 shows a larger region: smaller features).
    blur : tuple of float
        Range of the Gaussian blur's sigma, in pixels.
    noise : tuple of float
        Range of the added noise's standard deviation, relative to the normalised image's.
    gain : tuple of float
        Range of the intensity gain.
    offset : float
        Largest intensity offset (in normalised units), either sign.
    """

    rotate: str = "any"
    zoom: tuple[float, float] = (0.8, 1.25)
    blur: tuple[float, float] = (0.0, 1.5)
    noise: tuple[float, float] = (0.0, 1.0)
    gain: tuple[float, float] = (0.7, 1.4)
    offset: float = 0.3

    def to_dict(self) -> dict[str, Any]:
        """Plain data (stored in the model file)."""
        return asdict(self)

    @classmethod
    def none(cls) -> Augmentation:
        """No augmentation: boxes as cut, centre-cropped."""
        return cls(rotate="none", zoom=(1.0, 1.0), blur=(0.0, 0.0), noise=(0.0, 0.0), gain=(1.0, 1.0), offset=0.0)


def _uniform(lo: float, hi: float, n: int, gen: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen)


def _gaussian_blur(images: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Blur each image (N, C, H, W) with its own sigma (pixels), separably; sigma 0 leaves it unchanged."""
    radius = int(math.ceil(3 * float(sigmas.max()))) if len(sigmas) else 0
    if radius < 1:
        return images
    x = torch.arange(-radius, radius + 1, dtype=images.dtype)
    s = sigmas.clamp_min(1e-3)[:, None]
    kernels = torch.exp(-0.5 * (x[None] / s) ** 2)
    kernels = kernels / kernels.sum(dim=1, keepdim=True)
    n, c, h, w = images.shape
    # Grouped convolution: one kernel per image.
    flat = images.reshape(1, n * c, h, w)
    ky = kernels.repeat_interleave(c, dim=0)[:, None, :, None]
    kx = kernels.repeat_interleave(c, dim=0)[:, None, None, :]
    flat = F.conv2d(F.pad(flat, (0, 0, radius, radius), mode="reflect"), ky, groups=n * c)
    flat = F.conv2d(F.pad(flat, (radius, radius, 0, 0), mode="reflect"), kx, groups=n * c)
    return flat.reshape(n, c, h, w)


def augment_batch(
    images: torch.Tensor,
    masks: torch.Tensor,
    box: int,
    aug: Augmentation,
    gen: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Randomly transformed training boxes.

    Parameters
    ----------
    images : torch.Tensor
        (N, C, S, S) normalised images cut ``S >= box`` pixels wide (C: slices of context).
    masks : torch.Tensor
        (N, 1, S, S) target masks of the centre slice.
    box : int
        Output box size.
    aug : Augmentation
        The transforms' ranges.
    gen : torch.Generator
        Random source (CPU).

    Returns
    -------
    tuple of torch.Tensor
        (N, C, box, box) images and (N, 1, box, box) masks in {0, 1}.
    """
    n, c, size, _ = images.shape
    if aug.rotate not in ("any", "right", "none"):
        raise ValueError(f"rotate must be 'any', 'right' or 'none', not {aug.rotate!r}")
    if aug.rotate == "any":
        angle = _uniform(0.0, 2 * math.pi, n, gen)
    elif aug.rotate == "right":
        angle = torch.randint(0, 4, (n,), generator=gen).float() * (math.pi / 2)
    else:
        angle = torch.zeros(n)
    zoom = _uniform(*aug.zoom, n, gen)
    flip = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0) if aug.rotate != "none" else torch.ones(n)
    # affine_grid maps output coordinates in [-1, 1] (of the output box) to input coordinates in
    # [-1, 1] (of the cut box): scale by box / size so an unzoomed, unrotated box is the centre crop.
    frac = zoom * box / size
    cos, sin = torch.cos(angle) * frac, torch.sin(angle) * frac
    theta = torch.stack([torch.stack([cos * flip, -sin, torch.zeros(n)], 1), torch.stack([sin * flip, cos, torch.zeros(n)], 1)], 1)
    grid = F.affine_grid(theta, [n, c, box, box], align_corners=False)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    out_masks = (F.grid_sample(masks, grid, mode="bilinear", padding_mode="zeros", align_corners=False) >= 0.5).float()
    if aug.blur[1] > 0:
        out = _gaussian_blur(out, _uniform(*aug.blur, n, gen))
    if aug.noise[1] > 0:
        sigma = _uniform(*aug.noise, n, gen)[:, None, None, None]
        # Keep the overall scale that the per-tomogram normalisation set.
        out = (out + sigma * torch.randn(out.shape, generator=gen)) / torch.sqrt(1 + sigma**2)
    if aug.gain != (1.0, 1.0) or aug.offset:
        gain = _uniform(*aug.gain, n, gen)[:, None, None, None]
        offset = _uniform(-aug.offset, aug.offset, n, gen)[:, None, None, None]
        out = out * gain + offset
    return out.contiguous(), out_masks.contiguous()
