"""Fourier shell correlation, resolution, and the superposition of two maps.

Shells are one Fourier pixel wide: voxel ``j`` (integer frequencies) lies in
shell ``round(|j|)``, and shells run from 0 (DC) to ``L // 2`` (Nyquist);
the corners beyond Nyquist are left out.  Shell ``s`` is at ``s / (L·pixel)``
1/Å, i.e. a period of ``L / s`` pixels.  The sums run over the ``rfftn``
half grid with the columns that stand for two frequencies counted twice, so
they equal the sums over the full grid.

:func:`align_maps` finds the rotation, hand and translation that superpose
one map on another (ab initio maps come out in an arbitrary orientation and
either hand): a global search over random rotations on small low-passed
copies of the maps, for both hands, scored by the cross-correlation peak
over all translations, then a local refinement of the best few at a finer
sampling.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Union

import numpy as np

# At import, not at first use: a run's first use is in a worker, where loading scipy.spatial holds the GIL.
from scipy.spatial.transform import Rotation

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from matplotlib.figure import Figure

# torch is imported where needed: FSC itself is numpy only.
ArrayLike = Union[np.ndarray, "torch.Tensor"]


@dataclass
class FscCurve:
    """A Fourier shell correlation curve.

    Attributes
    ----------
    frequency : numpy.ndarray
        (L//2 + 1,) shell frequencies in 1/Å (shell 0 is DC).
    fsc : numpy.ndarray
        (L//2 + 1,) correlation per shell.
    box : int
        Map size in voxels.
    pixel_size : float
        Å per voxel.
    counts : numpy.ndarray
        Voxels per shell (full grid).
    """

    frequency: np.ndarray
    fsc: np.ndarray
    box: int
    pixel_size: float
    counts: np.ndarray

    def crossing(self, threshold: float = 0.143) -> float | None:
        """Fractional shell where the curve first drops below ``threshold``.

        The search starts at shell 1 and interpolates linearly between the
        last shell at or above the threshold and the first below it.
        Returns ``None`` when the curve never drops below it (up to Nyquist)
        and 0 when even shell 0 is below it.
        """
        values = np.asarray(self.fsc, dtype=np.float64)
        for i in range(1, len(values)):
            if values[i] < threshold:
                a, b = values[i - 1], values[i]
                if a < threshold:
                    return 0.0 if i == 1 else float(i - 1)
                return float(i - 1 + (a - threshold) / (a - b))
        return None

    def resolution(self, threshold: float = 0.143) -> float:
        """Resolution in Å at the first crossing below ``threshold``.

        Returns the Nyquist resolution (``2 · pixel_size``) when the curve
        stays above the threshold up to Nyquist: the sampling limits it, so
        the true resolution is at least that good.  Returns ``inf`` when the
        curve is below the threshold from the start.
        """
        shell = self.crossing(threshold)
        if shell is None:
            return 2.0 * self.pixel_size
        if shell <= 0:
            return math.inf
        return self.box * self.pixel_size / shell

    def resolution_px(self, threshold: float = 0.143) -> float:
        """The same resolution as a period in pixels, ``L / shell`` ("FSC 0.5 at N pixels")."""
        return self.resolution(threshold) / self.pixel_size

    def as_dict(self) -> dict[str, object]:
        """Plain values, for JSON."""
        return {
            "box": self.box,
            "pixel_size": self.pixel_size,
            "frequency": [float(f) for f in self.frequency],
            "fsc": [float(f) for f in self.fsc],
        }


def _as_array(volume: ArrayLike) -> np.ndarray:
    if hasattr(volume, "detach"):
        volume = volume.detach().cpu().numpy()
    return np.asarray(volume, dtype=np.float64)


def shell_index(box: int) -> np.ndarray:
    """Shell ``round(|j|)`` of each voxel of the ``rfftn`` half grid, (L, L, L//2 + 1)."""
    j = np.round(np.fft.fftfreq(box) * box)
    jx = np.arange(box // 2 + 1)
    r = np.sqrt(j[:, None, None] ** 2 + j[None, :, None] ** 2 + jx[None, None, :] ** 2)
    return np.round(r).astype(np.int64)


def _half_weights(box: int) -> np.ndarray:
    """How many full-grid frequencies each rfftn column stands for."""
    w = np.full(box // 2 + 1, 2.0)
    w[0] = 1.0
    if box % 2 == 0:
        w[-1] = 1.0
    return w


def fsc(map1: ArrayLike, map2: ArrayLike, pixel_size: float, mask: ArrayLike | None = None) -> FscCurve:
    """Fourier shell correlation of two maps.

    Parameters
    ----------
    map1, map2 : numpy.ndarray or torch.Tensor
        (L, L, L) maps of the same shape.
    pixel_size : float
        Å per voxel.
    mask : numpy.ndarray or torch.Tensor, optional
        (L, L, L) mask (e.g. :func:`soft_mask`) applied to both maps first.

    Returns
    -------
    FscCurve
        Shells with no power in one map get correlation 0 (DC gets 1).

    Raises
    ------
    ValueError
        If the shapes differ or are not cubic.
    """
    a, b = _as_array(map1), _as_array(map2)
    if a.shape != b.shape:
        raise ValueError(f"the maps have different shapes {a.shape} and {b.shape}")
    if a.ndim != 3 or len(set(a.shape)) != 1:
        raise ValueError(f"expected cubic maps, got shape {a.shape}")
    if mask is not None:
        m = _as_array(mask)
        if m.shape != a.shape:
            raise ValueError(f"the mask's shape {m.shape} differs from the maps' {a.shape}")
        a, b = a * m, b * m
    box = a.shape[0]
    fa, fb = np.fft.rfftn(a), np.fft.rfftn(b)
    shells = shell_index(box)
    weight = np.broadcast_to(_half_weights(box), shells.shape)
    n = box // 2 + 1
    inside = shells < n
    idx = shells[inside]
    cross = np.bincount(idx, weights=(weight * np.real(fa * np.conj(fb)))[inside], minlength=n)
    pa = np.bincount(idx, weights=(weight * np.abs(fa) ** 2)[inside], minlength=n)
    pb = np.bincount(idx, weights=(weight * np.abs(fb) ** 2)[inside], minlength=n)
    counts = np.bincount(idx, weights=weight[inside], minlength=n)
    denom = np.sqrt(pa * pb)
    with np.errstate(invalid="ignore", divide="ignore"):
        curve = np.where(denom > 0, cross / np.where(denom > 0, denom, 1.0), 0.0)
    if denom[0] == 0:
        curve[0] = 1.0
    frequency = np.arange(n) / (box * float(pixel_size))
    return FscCurve(frequency=frequency, fsc=curve, box=box, pixel_size=float(pixel_size), counts=counts.astype(np.int64))


def soft_mask(box: int, radius: float | None = None, width: float | None = None) -> np.ndarray:
    """A sphere at the box centre with a raised-cosine edge.

    Parameters
    ----------
    box : int
        Size of the (box, box, box) mask.
    radius : float, optional
        Radius in voxels where the edge starts (default: ``box/2 - width - 1``).
    width : float, optional
        Width of the cosine edge in voxels (default: ``max(2, box/16)``).

    Returns
    -------
    numpy.ndarray
        float32 values in [0, 1].
    """
    width = max(2.0, box / 16) if width is None else float(width)
    radius = box / 2 - width - 1 if radius is None else float(radius)
    c = box // 2
    z, y, x = np.ogrid[:box, :box, :box]
    r = np.sqrt((x - c) ** 2 + (y - c) ** 2 + (z - c) ** 2)
    edge = np.clip((r - radius) / max(width, 1e-6), 0.0, 1.0)
    return (0.5 * (1.0 + np.cos(np.pi * edge))).astype(np.float32)


def plot_fsc(curves: dict[str, FscCurve], figure: Figure | None = None, note: str | None = None) -> Figure:
    """Plot FSC curves against resolution, with the 0.5 and 0.143 thresholds.

    Parameters
    ----------
    curves : dict of str to FscCurve
        Label -> curve.
    figure : matplotlib.figure.Figure, optional
        Drawn into (cleared first); a new figure otherwise.
    note : str, optional
        A caution written across the plot (e.g. uneven viewing directions).

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    fig = figure if figure is not None else Figure(figsize=(5.5, 3.6), layout="constrained")
    fig.clear()
    ax = fig.add_subplot(1, 1, 1)
    nyquist = 0.0
    for label, curve in curves.items():
        res = curve.resolution(0.143)
        ax.plot(curve.frequency, curve.fsc, lw=1.5, label=f"{label} ({res:.1f} Å at 0.143)")
        nyquist = max(nyquist, float(curve.frequency[-1]))
    for level, style in ((0.5, ":"), (0.143, "--")):
        ax.axhline(level, color="0.4", lw=0.8, ls=style)
        ax.text(0.995, level, f" {level:g}", transform=ax.get_yaxis_transform(), ha="right", va="bottom", fontsize=8, color="0.3")
    ax.axhline(0.0, color="0.7", lw=0.6)
    ax.set_xlim(0.0, nyquist if nyquist > 0 else None)
    ax.set_ylim(-0.1, 1.05)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda f, _pos: f"{1.0 / f:.3g}" if f > 0 else "∞"))
    ax.set_xlabel("resolution (Å)")
    ax.set_ylabel("FSC")
    if curves:
        ax.legend(fontsize=8, loc="upper right", frameon=False)
    if note:
        ax.text(0.02, 0.04, note, transform=ax.transAxes, fontsize=8, color="tab:red", ha="left", va="bottom", wrap=True)
    return fig


# -- superposition


@dataclass
class Alignment:
    """How a moving map superposes on a reference.

    ``aligned(x) = moving(Fᶠ · Rᵀ · (x − t))`` with ``x`` the XYZ voxel
    position from the centre ``L // 2``, ``R`` = :attr:`rotation`, ``t`` =
    :attr:`shift_px`, and ``F = diag(1, 1, −1)`` (mirror through the XY plane)
    applied only when :attr:`flipped`: a feature of the (mirrored) moving
    map at ``p`` lands at ``R·p + t``.

    Attributes
    ----------
    rotation : numpy.ndarray
        (3, 3) rotation acting on XYZ column vectors.
    flipped : bool
        The moving map has the other hand: it was mirrored before rotating.
    shift_px : numpy.ndarray
        (3,) translation ``t``, XYZ, in voxels.
    score : float
        Normalised cross-correlation of the superposed maps.
    aligned : numpy.ndarray
        (L, L, L) float32: the moving map superposed on the reference.
    pixel_size : float
        Å per voxel.
    """

    rotation: np.ndarray
    flipped: bool
    shift_px: np.ndarray
    score: float
    aligned: np.ndarray
    pixel_size: float

    @property
    def shift_angst(self) -> np.ndarray:
        """The translation in Å, XYZ."""
        return self.shift_px * self.pixel_size

    @property
    def angle(self) -> float:
        """Rotation angle in degrees."""
        return float(np.rad2deg(np.arccos(np.clip((np.trace(self.rotation) - 1.0) / 2.0, -1.0, 1.0))))

    @property
    def axis(self) -> np.ndarray:
        """Unit rotation axis, XYZ (arbitrary for a zero angle)."""
        v = Rotation.from_matrix(self.rotation).as_rotvec()
        n = np.linalg.norm(v)
        return v / n if n > 0 else np.array([0.0, 0.0, 1.0])


_MIRROR = np.diag([1.0, 1.0, -1.0])


def uniform_rotations(n: int) -> np.ndarray:
    """``n`` rotations spread evenly over SO(3): a super-Fibonacci spiral (Alexa, CVPR 2022).

    Deterministic, and more even than random rotations: with 3000, every
    orientation is within about 14° of a sample (9° on average).

    Returns
    -------
    numpy.ndarray
        (n, 3, 3) rotation matrices.
    """
    s = np.arange(n, dtype=np.float64) + 0.5
    r, big_r = np.sqrt(s / n), np.sqrt(1.0 - s / n)
    alpha = 2.0 * np.pi * s / np.sqrt(2.0)
    beta = 2.0 * np.pi * s / 1.533751168755204288118041
    q = np.stack([r * np.sin(alpha), r * np.cos(alpha), big_r * np.sin(beta), big_r * np.cos(beta)], axis=1)
    return Rotation.from_quat(q).as_matrix()


def _prepare(volume: np.ndarray, box: int, sigma_px: float | None, whiten: bool = True):
    """Fourier-crop to ``box``, mask to the inscribed sphere, whiten, low-pass, zero mean."""
    import torch

    from .physics import fourier_crop_volume

    v = fourier_crop_volume(torch.as_tensor(volume, dtype=torch.float32), box).double()
    v = v * torch.as_tensor(soft_mask(box, box / 2 - 2, 2.0), dtype=torch.float64)
    spec = torch.fft.rfftn(v)
    shells = torch.as_tensor(shell_index(box))
    if whiten:
        # Flatten the amplitude spectrum shell by shell: the overall blob of a
        # small map would otherwise correlate about as well in any orientation.
        power = torch.zeros(int(shells.max()) + 1, dtype=torch.float64).index_add_(0, shells.flatten(), (spec.abs() ** 2).flatten())
        count = torch.bincount(shells.flatten(), minlength=len(power)).clamp_min(1)
        spec = spec / torch.sqrt(power / count).clamp_min(1e-30)[shells]
    if sigma_px:
        k2 = (shells.double() / box) ** 2
        spec = spec * torch.exp(-2.0 * math.pi**2 * sigma_px**2 * k2)
    spec[0, 0, 0] = 0
    return torch.fft.irfftn(spec, s=v.shape) * torch.as_tensor(soft_mask(box, box / 2 - 2, 2.0), dtype=torch.float64)


def _sample(volume, matrices: np.ndarray, shifts: np.ndarray | None = None):
    """``out_b(x) = volume(M_b · (x − t_b))`` for a batch (trilinear, zeros outside)."""
    import torch

    box = volume.shape[-1]
    c = box // 2
    m = torch.as_tensor(np.asarray(matrices), dtype=torch.float32)
    ax = torch.arange(box, dtype=torch.float32) - c
    z, y, x = torch.meshgrid(ax, ax, ax, indexing="ij")
    xyz = torch.stack([x, y, z], dim=-1).reshape(-1, 3)
    src = torch.einsum("bij,nj->bni", m, xyz) + c
    if shifts is not None:
        src = src - torch.einsum("bij,bj->bi", m, torch.as_tensor(np.asarray(shifts), dtype=torch.float32))[:, None, :]
    grid = (2.0 * src / (box - 1) - 1.0).reshape(len(m), box, box, box, 3)
    vol = volume.float()[None, None].expand(len(m), 1, box, box, box)
    out = torch.nn.functional.grid_sample(vol, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return out[:, 0].double()


def _ncc(ref, moved):
    """Normalised correlation of a zero-mean reference with each map of a batch."""
    import torch

    moved = moved - moved.mean(dim=(-3, -2, -1), keepdim=True)
    num = (moved * ref).sum(dim=(-3, -2, -1))
    den = torch.sqrt((moved**2).sum(dim=(-3, -2, -1)) * (ref**2).sum())
    return (num / den.clamp_min(1e-30)).numpy()


def _scores(ref_ft, ref_norm: float, volume, matrices: np.ndarray, batch: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Best normalised cross-correlation over whole-voxel translations, and that translation (XYZ)."""
    import torch

    out, shifts = [], []
    box = volume.shape[-1]
    for start in range(0, len(matrices), batch):
        moved = _sample(volume, matrices[start : start + batch])
        moved = moved - moved.mean(dim=(-3, -2, -1), keepdim=True)
        norms = torch.sqrt((moved**2).sum(dim=(-3, -2, -1))) * ref_norm
        corr = torch.fft.irfftn(ref_ft * torch.conj(torch.fft.rfftn(moved, dim=(-3, -2, -1))), s=moved.shape[-3:], dim=(-3, -2, -1))
        best, where = corr.reshape(len(moved), -1).max(dim=1)
        zyx = np.stack(np.unravel_index(where.numpy(), (box, box, box)), axis=1)
        zyx = np.where(zyx >= box / 2, zyx - box, zyx)
        out.append((best / norms.clamp_min(1e-30)).numpy())
        shifts.append(zyx[:, ::-1].astype(np.float64))
    return np.concatenate(out), np.concatenate(shifts)


def _perturb(rotation: np.ndarray, step_deg: float, n: int, rng: np.random.Generator) -> np.ndarray:
    vec = rng.normal(size=(n, 3)) * np.deg2rad(step_deg)
    return Rotation.from_rotvec(vec).as_matrix() @ rotation


def _refine_coarse(ref_ft, ref_norm: float, volume, start: np.ndarray, sign: np.ndarray, rng: np.random.Generator,
                   steps=(6.0, 3.0, 1.5), n: int = 32) -> tuple[np.ndarray, float]:
    """Local random search of the rotation (whole-voxel translations), shrinking steps in degrees."""
    best = start
    best_score = float(_scores(ref_ft, ref_norm, volume, (sign @ best.T)[None])[0][0])
    for step in steps:
        trial = _perturb(best, step, n, rng)
        scores, _ = _scores(ref_ft, ref_norm, volume, np.einsum("ij,bkj->bik", sign, trial))
        i = int(np.argmax(scores))
        if scores[i] > best_score:
            best, best_score = trial[i], float(scores[i])
    return best, best_score


def _refine_fine(ref, volume, rotation: np.ndarray, shift: np.ndarray, sign: np.ndarray, rng: np.random.Generator,
                 steps=(3.0, 1.5, 0.75, 0.35, 0.15), n: int = 40) -> tuple[np.ndarray, np.ndarray, float]:
    """Joint local random search of rotation and continuous translation (voxels of ``volume``)."""
    best_r, best_t = rotation, shift
    best_score = float(_ncc(ref, _sample(volume, (sign @ best_r.T)[None], best_t[None]))[0])
    for step in steps:
        for _ in range(2):
            trial_r = _perturb(best_r, step, n, rng)
            trial_t = best_t + rng.normal(size=(n, 3)) * (step / 4.0)
            scores = _ncc(ref, _sample(volume, np.einsum("ij,bkj->bik", sign, trial_r), trial_t))
            i = int(np.argmax(scores))
            if scores[i] > best_score:
                best_r, best_t, best_score = trial_r[i], trial_t[i], float(scores[i])
    return best_r, best_t, best_score


def _transform(volume: np.ndarray, matrix: np.ndarray, shift: np.ndarray, order: int = 3) -> np.ndarray:
    """``out(x) = volume(M · (x − t))`` (XYZ about the centre), cubic spline."""
    from scipy import ndimage

    box = volume.shape[0]
    c = np.full(3, box // 2, dtype=np.float64)
    rev = np.eye(3)[::-1]
    m_zyx = rev @ matrix @ rev
    offset = c - m_zyx @ c - rev @ matrix @ shift
    return ndimage.affine_transform(np.asarray(volume, dtype=np.float64), m_zyx, offset=offset, order=order, mode="constant", cval=0.0).astype(np.float32)


def align_maps(
    reference: ArrayLike,
    moving: ArrayLike,
    pixel_size: float,
    *,
    n_rotations: int = 3000,
    search_box: int = 24,
    refine_box: int = 48,
    allow_flip: bool = True,
    candidates: int = 4,
    seed: int = 0,
) -> Alignment:
    """Superpose ``moving`` on ``reference``: rotation, hand and translation.

    Parameters
    ----------
    reference, moving : numpy.ndarray or torch.Tensor
        (L, L, L) maps of the same shape, L even.
    pixel_size : float
        Å per voxel (only for the reported shift).
    n_rotations : int
        Rotations in the global search (per hand, :func:`uniform_rotations`).
    search_box, refine_box : int
        Sizes the maps are Fourier-cropped to for the global search and for
        the local refinement.
    allow_flip : bool
        Also try the mirrored moving map.
    candidates : int
        Best rotations of each hand refined locally.
    seed : int
        Random seed of the local searches.

    Returns
    -------
    Alignment

    Raises
    ------
    ValueError
        If the shapes differ or are not cubic and even.
    """
    import torch

    ref = _as_array(reference)
    mov = _as_array(moving)
    if ref.shape != mov.shape:
        raise ValueError(f"the maps have different shapes {ref.shape} and {mov.shape}")
    if ref.ndim != 3 or len(set(ref.shape)) != 1 or ref.shape[0] % 2:
        raise ValueError(f"expected cubic maps of even size, got shape {ref.shape}")
    box = ref.shape[0]
    rng = np.random.default_rng(seed)
    hands = [np.eye(3)] + ([_MIRROR] if allow_flip else [])

    def stage(size: int, sigma: float | None):
        size = min(box, size - size % 2)
        r = _prepare(ref, size, sigma)
        r = r - r.mean()
        return size, r, _prepare(mov, size, sigma)

    # Global search: small, smooth maps; the translation is free (FFT peak).
    _, r, m = stage(search_box, 1.0)
    r_ft, r_norm = torch.fft.rfftn(r), float(torch.sqrt((r**2).sum()))
    grid = np.concatenate([np.eye(3)[None], uniform_rotations(max(1, n_rotations - 1))])
    starts = []
    for sign in hands:
        scores, _ = _scores(r_ft, r_norm, m, np.einsum("ij,bkj->bik", sign, grid))
        for i in np.argsort(scores)[::-1][:candidates]:
            starts.append((sign, grid[i]))
    # Local search of each candidate at the same size decides the hand.
    best = None
    for sign, rot in starts:
        rot, score = _refine_coarse(r_ft, r_norm, m, rot, sign, rng)
        if best is None or score > best[2]:
            best = (sign, rot, score)
    sign, rot, _ = best
    # Final refinement with a continuous translation (whole voxels would bias the rotation).
    size, r, m = stage(refine_box, 0.5)
    _, t = _scores(torch.fft.rfftn(r), float(torch.sqrt((r**2).sum())), m, (sign @ rot.T)[None])
    rot, t, _ = _refine_fine(r, m, rot, t[0], sign, rng)
    shift = t * box / size
    flipped = bool(sign[2, 2] < 0)
    matrix = sign @ rot.T
    aligned = _transform(mov, matrix, shift)
    a, b = ref - ref.mean(), aligned - aligned.mean()
    score = float((a * b).sum() / max(np.sqrt((a**2).sum() * (b**2).sum()), 1e-30))
    return Alignment(rotation=rot, flipped=flipped, shift_px=shift, score=score, aligned=aligned, pixel_size=float(pixel_size))
