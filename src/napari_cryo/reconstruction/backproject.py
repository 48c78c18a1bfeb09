"""Direct Fourier reconstruction from known poses: half maps, gold-standard FSC, final map.

Each half-set's map is ``V(k) = Σ CTF_i·conj(P_i)·Y_i / (Σ CTF_i² + τ(k))``:
every image spectrum ``Y_i`` is phase-corrected for its shift ``P_i``,
multiplied by its CTF and inserted on its central slice (trilinear
insertion by torch-fourier-slice), the CTF² weights likewise, and the ratio
is Wiener-regularised.  ``τ(k)`` comes from the half maps' own FSC (the
spectral SNR ``FSC / (1 - FSC)``, as RELION does), after a first pass with
a small constant.  The FSC of the two independently reconstructed halves at
0.143 is the resolution; the final map is their average, weighted by
``sqrt(2 FSC / (1 + FSC))``, sharpened with the B-factor fitted to its
Guinier plot and low-passed at that resolution.
"""

from __future__ import annotations

import math
import time
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..tasks import Progress
from .ranks import Ranks


@dataclass
class HalfMaps:
    """The result of :func:`reconstruct_halves`."""

    volume: np.ndarray
    half1: np.ndarray
    half2: np.ndarray
    fsc: Any  # fsc.FscCurve
    resolution: float
    bfactor: float


def _shell_index(box: int) -> torch.Tensor:
    """Integer shell of every voxel of an (L, L, L) volume's full FFT grid (DC at 0)."""
    k = torch.fft.fftfreq(box) * box
    r = torch.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2)
    return torch.round(r).long()


def _radial(values: torch.Tensor, shells: torch.Tensor, n: int) -> torch.Tensor:
    return torch.zeros(n, dtype=values.dtype).index_add_(0, shells.flatten(), values.flatten()) / torch.bincount(shells.flatten(), minlength=n).clamp_min(1).to(values.dtype)


def accumulate(data, rows: np.ndarray, rotations: np.ndarray, shifts: np.ndarray, batch_size: int = 256,
               fftfreq_max: float | None = None, ranks: Ranks | None = None) -> Generator[Progress, None, tuple[torch.Tensor, torch.Tensor]]:
    """Back-project one half-set: (Σ CTF·conj(P)·Y, Σ CTF²) on a full, unshifted 3D FFT grid.

    With ``fftfreq_max`` (cycles/pixel) only the frequencies up to it are
    inserted: the cost falls with the band's area, and the voxels more than
    about one voxel below it are exact.  With ``ranks``, ``rows`` are this
    rank's particles of the half-set, and the sums are all-reduced.
    """
    from .physics import ctf_2d, insert_slices, insert_weights, shift_images

    box = data.box or data.original_box
    numerator = torch.zeros((box, box, box), dtype=torch.complex64)
    weights = torch.zeros((box, box, box), dtype=torch.float32)
    for start in range(0, len(rows), batch_size):
        idx = rows[start : start + batch_size]
        # Unmasked: the mask would cut the signal the CTF spreads beyond it (see ParticleData.images).
        batch = data.batch(idx, masked=False)
        spectra = torch.fft.rfft2(batch.images)
        # Undo the shift: the model image is shift(projection), so the projection is shift⁻¹(image).
        spectra = shift_images(spectra, -torch.as_tensor(shifts[idx], dtype=torch.float32), box)
        rot = torch.as_tensor(rotations[idx], dtype=torch.float32)
        if batch.ctf is not None:
            ctf = ctf_2d(batch.ctf, box, data.pixel_size)
            spectra = spectra * ctf
            ctf2 = ctf**2
        else:
            ctf2 = torch.ones(spectra.shape)
        num, _ = insert_slices(spectra, rot, box, fftfreq_max)
        numerator += num
        weights += insert_weights(ctf2, rot, box, fftfreq_max)
        yield Progress(min(start + batch_size, len(rows)), len(rows), "back-projecting")
    if ranks is not None and ranks.shared:
        ranks.sum_(numerator)
        ranks.sum_(weights)
    return numerator, weights


def final_map_seconds(data, ranks: Ranks | None = None, batch_size: int = 256, batches: int = 3) -> float:
    """Seconds :func:`reconstruct_halves` will take on ``data``, from back-projecting a few batches now.

    The batches after the first (which pays for allocations and the first
    reads) are timed, at random poses: the cost of an insertion does not
    depend on the pose.  With ``ranks``, the figure is for one rank's share.
    """
    n = len(data)
    own = -(-n // (ranks.size if ranks is not None else 1))
    rows = np.arange(min(n, batches * batch_size))
    rng = np.random.default_rng(0)
    rotations = np.linalg.qr(rng.normal(size=(len(rows), 3, 3)))[0].astype(np.float32)
    shifts = np.zeros((len(rows), 2), dtype=np.float32)
    marks = [time.perf_counter()]
    for _ in accumulate(data, rows, rotations, shifts, batch_size):
        marks.append(time.perf_counter())
    timed = len(rows) - batch_size if len(marks) > 2 else len(rows)
    seconds = marks[-1] - (marks[1] if len(marks) > 2 else marks[0])
    return seconds * own / max(1, timed)


def mean_weight(data, rows: np.ndarray, chunk: int = 1024) -> float:
    """The mean over the volume's voxels of the ``Σ CTF²`` that :func:`accumulate` would insert at every frequency.

    Computed from the CTF parameters alone, so a regulariser scaled by it
    does not depend on how much of the band was inserted.
    """
    from .physics import ctf_2d

    box = data.box or data.original_box
    if data.ctf is None:
        return len(rows) * box**2 / box**3
    total = 0.0
    for start in range(0, len(rows), chunk):
        idx = rows[start : start + chunk]
        ctf2 = ctf_2d({k: torch.from_numpy(v[idx]) for k, v in data.ctf.items()}, box, data.pixel_size) ** 2
        # rfft2 columns 1..L/2-1 stand for two frequencies each.
        total += float(ctf2.sum()) + float(ctf2[..., 1 : box // 2].sum())
    return total / box**3


def wiener(numerator: torch.Tensor, weights: torch.Tensor, tau: torch.Tensor | float) -> np.ndarray:
    """Real-space map from the accumulated sums and the regulariser (full FFT grids, DC at 0)."""
    from .physics import fourier_to_volume_full

    return fourier_to_volume_full(numerator / (weights + tau)).numpy().astype(np.float32)


def reconstruct_halves(
    data,
    rotations: np.ndarray,
    shifts: np.ndarray,
    seed: int = 0,
    batch_size: int = 256,
    ranks: Ranks | None = None,
) -> Generator[Progress, None, HalfMaps]:
    """Gold-standard reconstruction from poses: two half maps, their FSC, the final map.

    Parameters
    ----------
    data : ParticleData
        The particles.
    rotations : numpy.ndarray
        (N, 3, 3) RELION matrices, one per particle.
    shifts : numpy.ndarray
        (N, 2) origins in pixels (x, y).
    seed : int
        Random split into halves.
    ranks : Ranks, optional
        The processes sharing the particles: each back-projects its own, and
        every rank gets the same half maps.

    Yields
    ------
    Progress

    Returns
    -------
    HalfMaps
    """
    from .fsc import fsc as fsc_curve

    box = data.box or data.original_box
    half_a, half_b = data.half_sets(seed)
    sums = []
    ranks = ranks or Ranks.single()
    for rows in (half_a, half_b):
        sums.append((yield from accumulate(data, ranks.own(np.sort(rows)), rotations, shifts, batch_size, ranks=ranks)))
    shells = _shell_index(box)
    n_shells = int(shells.max()) + 1
    mean_w = [_radial(w, shells, n_shells) for _, w in sums]
    # First pass: a small constant regulariser, 1 % of the mean weight.
    tau0 = 0.01 * float(torch.stack([w.mean() for _, w in sums]).mean())
    maps = [wiener(num, w, tau0) for num, w in sums]
    curve = fsc_curve(maps[0], maps[1], data.pixel_size)
    # Second pass: tau(k) = mean weight / SSNR(k), SSNR from the half maps' FSC.
    f = torch.as_tensor(np.clip(np.asarray(curve.fsc, dtype=np.float64), 1e-3, 0.999))
    ssnr = f / (1 - f)
    n_curve = len(ssnr)
    taus = []
    for w in mean_w:
        t = torch.full((n_shells,), float("inf"))
        m = min(n_shells, n_curve)
        t[:m] = (w[:m].double() / ssnr[:m]).float()
        taus.append(t[shells])
    maps = [wiener(num, w, tau) for (num, w), tau in zip(sums, taus)]
    curve = fsc_curve(maps[0], maps[1], data.pixel_size)
    resolution = float(curve.resolution(0.143))
    volume, bfactor = final_map(maps[0], maps[1], curve, data.pixel_size, resolution)
    return HalfMaps(volume=volume, half1=maps[0], half2=maps[1], fsc=curve, resolution=resolution, bfactor=bfactor)


def final_map(half1: np.ndarray, half2: np.ndarray, curve, pixel_size: float, resolution: float) -> tuple[np.ndarray, float]:
    """Average the halves, weight by ``sqrt(2FSC/(1+FSC))``, sharpen (Guinier B-factor) and low-pass."""
    box = half1.shape[0]
    ft = np.fft.fftn(0.5 * (half1 + half2))
    k = np.fft.fftfreq(box)
    kk = np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2)
    shells = np.round(kk * box).astype(int)
    f = np.clip(np.asarray(curve.fsc, dtype=np.float64), 0.0, 0.999)
    weight_shell = np.sqrt(2 * f / (1 + f))
    weight = np.where(shells < len(weight_shell), weight_shell[np.minimum(shells, len(weight_shell) - 1)], 0.0)
    # Guinier fit between 10 Å (or 1/4 of Nyquist) and the resolution: ln|F| = a - B s²/4.
    power = np.bincount(shells.ravel(), weights=np.abs(ft).ravel() ** 2) / np.maximum(1, np.bincount(shells.ravel()))
    s = np.arange(len(power)) / (box * pixel_size)
    lo = max(1.0 / 10.0, 0.25 / (2 * pixel_size)) if math.isfinite(resolution) else 0.0
    hi = 1.0 / resolution if math.isfinite(resolution) and resolution > 0 else 1.0 / (2 * pixel_size)
    sel = (s >= min(lo, hi * 0.7)) & (s <= hi) & (power > 0)
    bfactor = 0.0
    if np.count_nonzero(sel) >= 3:
        slope = np.polyfit(s[sel] ** 2, 0.5 * np.log(power[sel]), 1)[0]
        bfactor = float(-4.0 * slope)
    sharpen = np.exp(max(0.0, bfactor) * (kk / pixel_size) ** 2 / 4.0)
    cutoff = 1.0 / resolution if math.isfinite(resolution) and resolution > 0 else 1.0 / (2 * pixel_size)
    # A raised-cosine edge one shell wide avoids ringing at the cut-off.
    width = 1.0 / (box * pixel_size)
    freq = kk / pixel_size
    lowpass = np.clip(0.5 + 0.5 * np.cos(np.pi * np.clip((freq - cutoff) / width + 0.5, 0, 1)), 0, 1)
    out = np.fft.ifftn(ft * weight * sharpen * lowpass).real
    return out.astype(np.float32), bfactor
