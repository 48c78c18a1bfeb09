"""Applying per-feature models to tomograms: slice by slice, in blended tiles.

Each XY slice is resampled to the model's pixel size, cut into tiles that
overlap by ``overlap`` (0.2 of a tile, as in Ais), and the tile outputs are
blended with weights that fall off linearly across the overlap, so that no
seam shows where tiles meet.  Tiles are as large as ``max_tile`` allows and
spread evenly over the slice, so that little work is spent on overlap.
The probability map is resampled back to the tomogram's grid.  A model
that sees several slices (``context``) gets each slice with its
neighbours, one model pixel apart (:func:`~.dataset.context_stack`), and
its calibration offset is added to the logits before the sigmoid.

:func:`predict_volume` is a generator (progress, cancellable between
batches of slices); :func:`predict_slice` is the interactive preview of one
slice.
"""

from __future__ import annotations

import math
from collections.abc import Generator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..tasks import Progress
from .dataset import context_stack, context_step, normalisation
from .model import SegmentationModel


def tile_layout(length: int, max_tile: int, overlap: float, multiple: int = 16) -> tuple[int, list[int]]:
    """Tile size and start positions covering ``length`` pixels.

    The fewest tiles no larger than ``max_tile`` that overlap by at least
    ``overlap`` of a tile; the tile size is a multiple of ``multiple`` (the
    networks halve the size several times).  A short axis gets one tile
    padded up to the multiple.
    """
    padded = int(math.ceil(length / multiple) * multiple)
    if padded <= max_tile:
        return padded, [0]
    n = 2
    while True:
        tile = int(math.ceil(length / (n - (n - 1) * overlap) / multiple) * multiple)
        if tile <= max_tile:
            break
        n += 1
    starts = np.linspace(0, length - tile, n).round().astype(int).tolist()
    return tile, starts


def _ramp(tile: int, starts: Sequence[int], length: int, overlap: float) -> list[np.ndarray]:
    """1D blending weights of each tile: linear ramps over the overlap, flat at the slice edges."""
    width = max(1, int(round(tile * overlap)))
    ramp = np.minimum(1.0, (np.arange(tile) + 0.5) / width)
    out = []
    for s in starts:
        w = np.minimum(ramp, ramp[::-1]).astype(np.float32)
        if s == 0:
            w[: tile // 2] = 1.0
        if s + tile >= length:
            w[tile // 2 :] = 1.0
        out.append(w)
    return out


def _resize(stack: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize (N, 1, H, W) with antialiasing when shrinking."""
    if tuple(stack.shape[-2:]) == tuple(size):
        return stack
    shrink = size[0] < stack.shape[-2] or size[1] < stack.shape[-1]
    return F.interpolate(stack, size=size, mode="bilinear", antialias=shrink, align_corners=False)


@torch.inference_mode()
def predict_planes(
    model: SegmentationModel,
    planes: np.ndarray,
    pixel_size: float,
    stats: tuple[float, float],
    device: torch.device | str = "cpu",
    max_tile: int = 512,
    tile_batch: int = 8,
) -> np.ndarray:
    """Probabilities for a stack of XY planes.

    Parameters
    ----------
    model : SegmentationModel
        The feature's model (put on ``device`` by the caller).
    planes : numpy.ndarray
        (N, Y, X) slices of the tomogram, or (N, C, Y, X) with ``C = model.context`` slices
        around each (a model with context given single slices sees each repeated).
    pixel_size : float
        Å per pixel of the tomogram.
    stats : tuple of float
        The tomogram's normalisation (mean, std) from :func:`~.dataset.normalisation`.
    device : torch.device or str
        Where the network runs.
    max_tile : int
        Largest tile edge in model pixels.
    tile_batch : int
        Tiles per forward pass.

    Returns
    -------
    numpy.ndarray
        (N, Y, X) float32 probabilities in [0, 1].
    """
    planes = np.asarray(planes)
    if planes.ndim == 3:
        planes = np.repeat(planes[:, None], model.context, axis=1)
    n, c, ny, nx = planes.shape
    if c != model.context:
        raise ValueError(f"model '{model.title}' sees {model.context} slices, got {c}")
    x = torch.from_numpy(np.array(planes, dtype=np.float32))  # a copy: memory-mapped planes are read-only
    x = (x - stats[0]) / stats[1]
    scale = pixel_size / model.pixel_size
    work = (max(1, int(round(ny * scale))), max(1, int(round(nx * scale)))) if abs(scale - 1.0) > 0.01 else (ny, nx)
    x = _resize(x, work)
    overlap = model.overlap
    ty, ys = tile_layout(work[0], max_tile, overlap)
    tx, xs = tile_layout(work[1], max_tile, overlap)
    pad_y, pad_x = max(0, ty - work[0]), max(0, tx - work[1])
    if pad_y or pad_x:
        # Reflection keeps the statistics of the border the network sees.
        mode = "reflect" if pad_y < work[0] and pad_x < work[1] else "replicate"
        x = F.pad(x, (0, pad_x, 0, pad_y), mode=mode)
    wy, wx = _ramp(ty, ys, work[0], overlap), _ramp(tx, xs, work[1], overlap)
    out = torch.zeros((n, 1, work[0] + pad_y, work[1] + pad_x))
    offset = float(model.logit_offset)
    weight = torch.zeros_like(out[:1])
    tiles = [(y0, x0, torch.from_numpy(np.outer(a, b))) for y0, a in zip(ys, wy) for x0, b in zip(xs, wx)]
    for y0, x0, w in tiles:
        weight[0, 0, y0 : y0 + ty, x0 : x0 + tx] += w
    net = model.net
    net.eval()
    crops = [(i, y0, x0, w) for i in range(n) for (y0, x0, w) in tiles]
    for k in range(0, len(crops), tile_batch):
        chunk = crops[k : k + tile_batch]
        batch = torch.stack([x[i, :, y0 : y0 + ty, x0 : x0 + tx] for i, y0, x0, _ in chunk]).to(device)
        prob = torch.sigmoid(net(batch).float() + offset).cpu()
        for (i, y0, x0, w), p in zip(chunk, prob):
            out[i, :, y0 : y0 + ty, x0 : x0 + tx] += p * w
    out = out / weight.clamp_min(1e-6)
    out = out[..., : work[0], : work[1]]
    out = _resize(out, (ny, nx)).clamp_(0.0, 1.0)
    return out[:, 0].numpy()


def model_planes(model: SegmentationModel, volume: np.ndarray, z0: int, z1: int, pixel_size: float) -> np.ndarray:
    """Slices ``z0:z1`` of a volume as the model reads them: (N, Y, X), or (N, C, Y, X) with context."""
    if model.context == 1:
        return np.asarray(volume[z0:z1], dtype=np.float32)
    step = context_step(model.pixel_size, pixel_size)
    return np.stack([context_stack(volume, z, model.context, step) for z in range(z0, z1)])


def predict_slice(
    model: SegmentationModel,
    volume: np.ndarray,
    z: int,
    pixel_size: float,
    stats: tuple[float, float],
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """Probabilities for slice ``z`` of a volume (the interactive preview)."""
    return predict_planes(model, model_planes(model, volume, z, z + 1, pixel_size), pixel_size, stats, device)[0]


def predict_volume(
    models: Sequence[SegmentationModel],
    volume: np.ndarray,
    pixel_size: float,
    device: torch.device | str = "cpu",
    planes_per_step: int = 4,
    out: dict[str, np.ndarray] | None = None,
) -> Generator[Progress, None, dict[str, np.ndarray]]:
    """Apply several models to a whole tomogram.

    Parameters
    ----------
    models : sequence of SegmentationModel
        One per feature (titles must differ).
    volume : numpy.ndarray
        (Z, Y, X) tomogram, possibly memory-mapped: it is read a few planes at a time.
    pixel_size : float
        Å per voxel.
    device : torch.device or str
        Where the networks run.
    planes_per_step : int
        Slices read and predicted per step (between two progress reports).
    out : dict, optional
        Preallocated (Z, Y, X) float32 arrays per title (e.g. memory-mapped
        files); by default new arrays.

    Yields
    ------
    Progress

    Returns
    -------
    dict
        Title -> (Z, Y, X) float32 probabilities.
    """
    nz = volume.shape[0]
    stats = normalisation(volume)
    out = out if out is not None else {m.title: np.zeros(volume.shape, dtype=np.float32) for m in models}
    for m in models:
        m.net.to(device).eval()
    total = nz * len(models)
    yield Progress(0, total, "segmenting")
    for z0 in range(0, nz, planes_per_step):
        z1 = min(nz, z0 + planes_per_step)
        single = np.asarray(volume[z0:z1], dtype=np.float32)
        for k, m in enumerate(models):
            planes = single if m.context == 1 else model_planes(m, volume, z0, z1, pixel_size)
            out[m.title][z0:z1] = predict_planes(m, planes, pixel_size, stats, device)
            yield Progress(z0 * len(models) + (k + 1) * (z1 - z0), total, m.title)
    return out
