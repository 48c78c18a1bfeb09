"""Training boxes cut from painted tomogram slices, as Ais builds its training sets.

For the model of one feature (label value ``v``):

* **positives** are boxes centred near pixels painted ``v``;
* **negatives** are boxes centred on the other features' annotations and
  boxes at random places in annotated slices (what the user left unpainted
  there is background);

both with the target mask ``labels == v``.  There are
``negative_ratio`` times as many negatives as positives.  Only slices
with any annotation are used: an unpainted slice says nothing.

Boxes are cut :data:`~.augment.CUT_FACTOR` times larger than the training
box, so that training can rotate and zoom them on the fly
(:mod:`.augment`), and hold ``context`` neighbouring slices as channels
(the painted slice in the middle): a membrane that the missing wedge
blurs in one slice is reinforced by its neighbours.  Each box remembers
its slice, so that validation holds out whole painted slices.

Tomograms at another pixel size than the model's are resampled as boxes
are cut (a larger or smaller region is read and resized), and each
tomogram is normalised with its own robust mean and standard deviation,
exactly as at inference (:func:`normalisation`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import CryoInputError
from ..io.mrc import sample_planes


@dataclass
class AnnotatedTomogram:
    """A tomogram and its painted labels.

    Attributes
    ----------
    volume : numpy.ndarray
        (Z, Y, X) tomogram; may be memory-mapped.
    labels : numpy.ndarray
        (Z, Y, X) integer labels, 0 = unpainted or background.
    pixel_size : float
        Å per voxel.
    name : str
        Where it came from (file or layer name), for messages.
    """

    volume: np.ndarray
    labels: np.ndarray
    pixel_size: float
    name: str = "tomogram"

    def __post_init__(self) -> None:
        if self.volume.ndim != 3:
            raise CryoInputError(self.name, f"is not a 3D tomogram (shape {tuple(self.volume.shape)})")
        if tuple(self.labels.shape) != tuple(self.volume.shape):
            raise CryoInputError(
                self.name,
                f"labels have shape {tuple(self.labels.shape)} but the tomogram has {tuple(self.volume.shape)}",
            )
        if not self.pixel_size or self.pixel_size <= 0:
            raise CryoInputError(self.name, "has no pixel size; set it (Å per voxel) before training")


@dataclass
class BoxSettings:
    """How training boxes are sampled.

    Attributes
    ----------
    box : int
        Box size in pixels at the model's pixel size (a multiple of 16).
    context : int
        Slices per box (odd): the painted slice and its neighbours, one model pixel apart.
    positives_per_slice : int
        Boxes centred on the feature per annotated slice.
    negative_ratio : float
        Negatives per positive (Ais uses 1.3).
    copies : int
        Copies of each box (pre-cut copies under a random 90° rotation and flip; with on-the-fly
        augmentation, leave it at 1).
    augment : bool
        Rotate and flip the copies (off: identical copies).
    cut : int
        Size of the cut boxes (0: ``box``; training cuts them larger to augment them).
    seed : int
        Random seed.
    """

    box: int = 64
    positives_per_slice: int = 24
    negative_ratio: float = 1.3
    copies: int = 1
    augment: bool = True
    seed: int = 0
    context: int = 1
    cut: int = 0


@dataclass
class BoxSet:
    """Training boxes for one feature: images (N, C, S, S) (C slices of context) and masks (N, 1, S, S), float32."""

    images: torch.Tensor
    masks: torch.Tensor
    source: np.ndarray  # (N,) index of the un-augmented box each copy came from
    slices: np.ndarray | None = None  # (N,) index of the painted slice each box was cut from
    slice_keys: tuple[tuple[int, int], ...] = ()  # slice index -> (tomogram index, z)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def _pick(self, keep: np.ndarray) -> BoxSet:
        index = torch.from_numpy(keep)
        return BoxSet(self.images[index], self.masks[index], self.source[keep], None if self.slices is None else self.slices[keep], self.slice_keys)

    def split(self, fraction: float, seed: int = 0) -> tuple["BoxSet", "BoxSet | None"]:
        """Training and validation sets.

        Whole painted slices are held out when there are at least three (boxes of one slice
        overlap, so a box-wise split would validate on what training saw); otherwise boxes,
        and copies of one box never straddle the two.
        """
        if fraction <= 0:
            return self, None
        rng = np.random.default_rng(seed)
        if self.slices is not None and len(np.unique(self.slices)) >= 3:
            groups, labels = np.unique(self.slices), self.slices
        else:
            groups, labels = np.unique(self.source), self.source
            if len(groups) < 5:
                return self, None
        n_val = min(len(groups) - 1, max(1, int(round(len(groups) * fraction))))
        val = np.isin(labels, rng.choice(groups, size=n_val, replace=False))
        return self._pick(~val), self._pick(val)


def normalisation(volume: np.ndarray) -> tuple[float, float]:
    """Robust mean and standard deviation of a tomogram, from a sample of planes.

    Percentile clipping keeps gold fiducials and empty borders from setting
    the scale.
    """
    sample = np.asarray(sample_planes(volume), dtype=np.float32).ravel()
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(sample, [0.5, 99.5])
    clipped = np.clip(sample, lo, hi)
    std = float(clipped.std())
    return float(clipped.mean()), std if std > 0 else 1.0


def context_stack(volume: np.ndarray, z: int, context: int, step: int = 1) -> np.ndarray:
    """Slices ``z - step * (context // 2) ... z + step * (context // 2)`` of a volume as (context, Y, X) float32.

    Slices beyond the volume repeat its first or last slice.
    """
    half = context // 2
    zs = np.clip(z + step * np.arange(-half, half + 1), 0, volume.shape[0] - 1)
    lo, hi = int(zs.min()), int(zs.max())
    block = np.asarray(volume[lo : hi + 1], dtype=np.float32)
    return block[zs - lo]


def context_step(model_pixel: float, tomogram_pixel: float) -> int:
    """Tomogram slices between context slices: one model pixel, at least one slice."""
    return max(1, int(round(model_pixel / tomogram_pixel)))


def annotated_slices(labels: np.ndarray) -> np.ndarray:
    """Indices of the Z slices that hold any annotation."""
    return np.flatnonzero([np.any(np.asarray(labels[z])) for z in range(labels.shape[0])])


def _crop(plane: np.ndarray, cy: int, cx: int, size: int, fill: float) -> np.ndarray:
    """A size×size crop centred at (cy, cx), padded with ``fill`` outside the plane."""
    out = np.full((size, size), fill, dtype=np.float32)
    y0, x0 = cy - size // 2, cx - size // 2
    ys, xs = max(0, y0), max(0, x0)
    ye, xe = min(plane.shape[0], y0 + size), min(plane.shape[1], x0 + size)
    if ye > ys and xe > xs:
        out[ys - y0 : ye - y0, xs - x0 : xe - x0] = plane[ys:ye, xs:xe]
    return out


def _centres(mask: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` random (y, x) positions where ``mask`` is true (with repeats if too few)."""
    where = np.argwhere(mask)
    if len(where) == 0 or n <= 0:
        return np.zeros((0, 2), dtype=int)
    return where[rng.choice(len(where), size=n, replace=len(where) < n)]


def sample_boxes(
    tomograms: Sequence[AnnotatedTomogram],
    value: int,
    pixel_size: float,
    settings: BoxSettings | None = None,
    feature_name: str | None = None,
) -> BoxSet:
    """Cut the training boxes of the feature painted ``value``.

    Parameters
    ----------
    tomograms : sequence of AnnotatedTomogram
        Pooled annotated tomograms.
    value : int
        The feature's label value.
    pixel_size : float
        The model's pixel size in Å (boxes are resampled to it).
    settings : BoxSettings, optional
        Sampling settings.
    feature_name : str, optional
        For messages.

    Returns
    -------
    BoxSet

    Raises
    ------
    CryoInputError
        If no tomogram has any pixel painted ``value``.
    """
    settings = settings or BoxSettings()
    if settings.box % 16 or settings.box < 32:
        raise CryoInputError(None, f"box size {settings.box} must be a multiple of 16 and at least 32")
    rng = np.random.default_rng(settings.seed)
    label = feature_name or f"label {value}"
    # (tomogram index, z, y, x, is_positive) before augmentation.
    pos: list[tuple[int, int, int, int]] = []
    neg_other: list[tuple[int, int, int, int]] = []
    neg_random: list[tuple[int, int, int, int]] = []
    for t, tomo in enumerate(tomograms):
        for z in annotated_slices(tomo.labels):
            plane = np.asarray(tomo.labels[z])
            n_pos = settings.positives_per_slice if np.any(plane == value) else 0
            n_neg = int(round(settings.positives_per_slice * settings.negative_ratio))
            pos += [(t, int(z), int(y), int(x)) for y, x in _centres(plane == value, n_pos, rng)]
            neg_other += [(t, int(z), int(y), int(x)) for y, x in _centres((plane > 0) & (plane != value), n_neg, rng)]
            neg_random += [(t, int(z), int(y), int(x)) for y, x in _centres(np.ones(plane.shape, bool), n_neg, rng)]
    if not pos:
        raise CryoInputError(
            None, f"feature '{label}' has no annotation: paint it (label value {value}) on at least one slice"
        )
    n_neg = int(round(len(pos) * settings.negative_ratio))
    # Half the negatives from other features (the confusable ones), the rest anywhere.
    n_other = min(len(neg_other), n_neg // 2)
    chosen_other = [neg_other[i] for i in rng.choice(len(neg_other), n_other, replace=False)] if n_other else []
    n_rand = n_neg - n_other
    chosen_rand = [neg_random[i] for i in rng.choice(len(neg_random), n_rand, replace=len(neg_random) < n_rand)] if n_rand and neg_random else []
    centres = pos + chosen_other + chosen_rand

    stats = [normalisation(t.volume) for t in tomograms]
    box = settings.box
    cut = max(box, settings.cut or box)
    context = max(1, int(settings.context))
    slice_ids: dict[tuple[int, int], int] = {}
    images, masks, slices = [], [], []
    cache: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
    for t, z, y, x in centres:
        tomo = tomograms[t]
        scale = pixel_size / tomo.pixel_size  # source pixels per model pixel
        if (t, z) not in cache:
            cache.clear()  # centres come in runs of one slice: keep that slice's stack
            stack = context_stack(tomo.volume, z, context, context_step(pixel_size, tomo.pixel_size))
            cache[(t, z)] = stack, (np.asarray(tomo.labels[z]) == value).astype(np.float32)
        stack, plane_mask = cache[(t, z)]
        # Jitter positives so the feature is not always at the centre.
        jy, jx = rng.integers(-box // 4, box // 4 + 1, size=2)
        cy, cx = y + int(round(jy * scale)), x + int(round(jx * scale))
        src = max(1, int(round(cut * scale)))
        mean, std = stats[t]
        img = np.stack([(_crop(p, cy, cx, src, mean) - mean) / std for p in stack])
        msk = _crop(plane_mask, cy, cx, src, 0.0)
        if src != cut:
            img = F.interpolate(torch.from_numpy(img)[None], size=(cut, cut), mode="bilinear", antialias=src > cut, align_corners=False)[0].numpy()
            msk = (F.interpolate(torch.from_numpy(msk)[None, None], size=(cut, cut), mode="bilinear", align_corners=False)[0, 0].numpy() >= 0.5).astype(np.float32)
        images.append(img)
        masks.append(msk)
        slices.append(slice_ids.setdefault((t, z), len(slice_ids)))
    images_arr = np.stack(images)
    masks_arr = np.stack(masks)
    reps = max(1, settings.copies)
    out_i, out_m, source = [], [], []
    for c in range(reps):
        for i in range(len(images_arr)):
            im, mk = images_arr[i], masks_arr[i]
            if settings.augment and c > 0:
                k = int(rng.integers(4))
                im, mk = np.rot90(im, k, axes=(-2, -1)), np.rot90(mk, k)
                if rng.random() < 0.5:
                    im, mk = im[..., ::-1], mk[:, ::-1]
            out_i.append(np.ascontiguousarray(im))
            out_m.append(np.ascontiguousarray(mk))
            source.append(i)
    source_arr = np.asarray(source)
    return BoxSet(
        images=torch.from_numpy(np.stack(out_i)),
        masks=torch.from_numpy(np.stack(out_m))[:, None],
        source=source_arr,
        slices=np.asarray(slices)[source_arr],
        slice_keys=tuple(slice_ids),
    )
