"""Global pose search: every particle against projections of a map, on a grid of rotations and shifts.

Gradient descent on a pose only finds the nearest minimum; a search compares
each image with projections in all directions.  Done in two stages, as
cryoDRGN's branch and bound and RELION's adaptive sampling do: a coarse grid
over all of SO(3) and a few shifts, then a few rounds of local refinement
around each particle's best pose, halving the step each round.

The score is the error left after the least-squares scale of the model image
(equivalently the CTF-weighted cross-correlation squared over the model's
power), over the frequencies up to a radius: per-image scales absorb ice
thickness and normalisation, and the radius grows as the map improves.  The
coarse stage is two matrix products per batch of images (cross term and CTF²
power term), so all 10⁴ or so grid projections are compared at once.
"""

from __future__ import annotations

import math
from collections.abc import Generator
from dataclasses import dataclass

import numpy as np
import torch

from ..geometry import euler_to_matrix
from ..tasks import Progress
from .physics import _integer_frequencies, central_slices, ctf_2d, fourier_crop_volume, volume_to_fourier


@dataclass
class SearchSettings:
    """How finely and how far a search looks.

    Attributes
    ----------
    coarse_degrees : float
        Spacing of the global grid of rotations.
    fine_degrees : float
        Local refinement stops below this step.
    local_degrees : float
        First step of a local-only search (``coarse_degrees`` 0): halved
        down to ``fine_degrees``.
    max_shift : float
        Largest origin searched, pixels (0: no shift search).
    shift_step : float
        Spacing of the coarse shift grid, pixels.
    batch_size : int
        Images compared at once.
    """

    coarse_degrees: float = 15.0
    fine_degrees: float = 1.5
    local_degrees: float = 0.0
    max_shift: float = 0.0
    shift_step: float = 2.0
    batch_size: int = 128


def fibonacci_directions(n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` nearly uniform directions on the sphere as RELION (rot, tilt) in degrees."""
    i = np.arange(n) + 0.5
    tilt = np.degrees(np.arccos(1 - 2 * i / n))
    rot = np.degrees((i * math.pi * (3 - math.sqrt(5))) % (2 * math.pi))
    return rot, tilt


def rotation_grid(spacing_degrees: float) -> np.ndarray:
    """Rotations covering SO(3) about every ``spacing_degrees``: directions × in-plane angles.

    Parameters
    ----------
    spacing_degrees : float
        Distance between neighbouring directions, and between in-plane angles.

    Returns
    -------
    numpy.ndarray
        (R, 3, 3) RELION matrices; R ≈ 4π/Δ² · 2π/Δ (Δ in radians), 4,500 at 15°.
    """
    step = math.radians(spacing_degrees)
    n_dir = max(2, math.ceil(4 * math.pi / step**2))
    n_psi = max(1, math.ceil(2 * math.pi / step))
    rot, tilt = fibonacci_directions(n_dir)
    psi = np.arange(n_psi) * 360.0 / n_psi
    angles = np.stack([np.repeat(rot, n_psi), np.repeat(tilt, n_psi), np.tile(psi, n_dir)], axis=1)
    return euler_to_matrix(angles).astype(np.float32)


def shift_grid(max_shift: float, step: float) -> np.ndarray:
    """Origins (x, y) in pixels on a square grid within a disc of ``max_shift`` (always including 0)."""
    if max_shift <= 0:
        return np.zeros((1, 2), dtype=np.float32)
    r = np.arange(-math.floor(max_shift / step), math.floor(max_shift / step) + 1) * step
    xy = np.stack(np.meshgrid(r, r, indexing="xy"), axis=-1).reshape(-1, 2)
    return xy[np.hypot(xy[:, 0], xy[:, 1]) <= max_shift + 1e-6].astype(np.float32)


def _axis_angle(vectors: torch.Tensor) -> torch.Tensor:
    """Rotation matrices of axis-angle vectors (Rodrigues)."""
    angle = vectors.norm(dim=-1, keepdim=True)
    axis = vectors / angle.clamp_min(1e-12)
    x, y, z = axis.unbind(-1)
    zero = torch.zeros_like(x)
    k = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=-1).reshape(*vectors.shape[:-1], 3, 3)
    s, c = torch.sin(angle)[..., None], torch.cos(angle)[..., None]
    eye = torch.eye(3, dtype=vectors.dtype, device=vectors.device)
    return eye + s * k + (1 - c) * (k @ k)


def local_offsets(step_degrees: float) -> torch.Tensor:
    """The 27 small rotations of a 3×3×3 axis-angle grid of the given step (identity included)."""
    r = torch.tensor([-1.0, 0.0, 1.0]) * math.radians(step_degrees)
    v = torch.stack(torch.meshgrid(r, r, r, indexing="ij"), dim=-1).reshape(-1, 3)
    return _axis_angle(v)


class _Band:
    """The rfft2 pixels with 0 < |k| ≤ radius (pixels of frequency), and the weight each stands for.

    Indexes both the images' grid (``box``) and the smaller grid of a map
    Fourier-cropped to ``small`` (the same frequencies in both), so that
    projections are computed only as large as the band needs.
    """

    def __init__(self, box: int, radius: float, device: torch.device) -> None:
        radius = min(radius, box / 2)
        self.box = box
        self.small = min(box, 2 * math.ceil(radius) + 4)
        jy, jx = _integer_frequencies(box, device)
        r = torch.sqrt(jy[:, None] ** 2 + jx[None, :] ** 2)
        keep = (r <= radius) & (r > 0)  # the DC term carries only the images' offset
        rows, cols = torch.nonzero(keep, as_tuple=True)
        self.jy, self.jx = jy[rows].float(), jx[cols].float()
        self.index = rows * (box // 2 + 1) + cols
        self.small_index = (self.jy.long() % self.small) * (self.small // 2 + 1) + cols
        # Columns 1..L/2-1 of the half spectrum stand for two frequencies each.
        self.weight = torch.where((cols > 0) & (cols < box // 2), 2.0, 1.0).to(device)

    def take(self, spectra: torch.Tensor) -> torch.Tensor:
        """Band values (..., K) of spectra on the images' grid."""
        return spectra.flatten(-2)[..., self.index]

    def project(self, volume_ft: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
        """Band values (..., K) of the projections of a map prepared by :func:`band_volume`."""
        return central_slices(volume_ft, rotations).flatten(-2)[..., self.small_index]

    def centred(self, spectra: torch.Tensor, origins: torch.Tensor) -> torch.Tensor:
        """Band spectra (N, K) of the images re-centred for each candidate origin (N, T, 2) -> (N, T, K)."""
        phase = (-2.0 * math.pi / self.box) * (origins[..., 0, None] * self.jx + origins[..., 1, None] * self.jy)
        return spectra[:, None, :] * torch.polar(torch.ones_like(phase), phase)


def band_volume(volume: torch.Tensor | np.ndarray, band: _Band) -> torch.Tensor:
    """The map's spectrum at the band's small box (Fourier-cropped), ready for :meth:`_Band.project`."""
    v = torch.as_tensor(np.array(volume, dtype=np.float32)) if isinstance(volume, np.ndarray) else volume.float()
    if v.shape[-1] != band.small:
        v = fourier_crop_volume(v, band.small)
    return volume_to_fourier(v)


def _errors(images: torch.Tensor, ctf_w: torch.Tensor, ctf2_w: torch.Tensor, proj: torch.Tensor, proj_power: torch.Tensor, image_power: torch.Tensor) -> torch.Tensor:
    """Error after the best positive scale, for every image row against every projection.

    images (M, K) complex, ctf_w / ctf2_w (M, K) the CTF and CTF² times the band weight,
    proj (R, K) complex, proj_power (R, K) |proj|², image_power (M,) -> (M, R).
    """
    a = torch.conj(images) * ctf_w
    cross = a.real @ proj.real.T - a.imag @ proj.imag.T
    power = (ctf2_w @ proj_power.T).clamp_min(1e-12)
    return image_power[:, None] - cross.clamp_min(0) ** 2 / power


def batch_ctf(data, batch, device) -> torch.Tensor:
    """The CTF of a batch of particles on the rfft2 grid of the working box (ones without CTF columns)."""
    box = data.box or data.original_box
    if batch.ctf is None:
        return torch.ones(len(batch.indices), box, box // 2 + 1, device=device)
    return ctf_2d(batch.ctf, box, data.pixel_size).to(device)


def _band_ctf(ctf: torch.Tensor, band: _Band) -> tuple[torch.Tensor, torch.Tensor]:
    """The CTF and CTF² in the band, times the band's weights."""
    c = band.take(ctf)
    return c * band.weight, c**2 * band.weight


@torch.no_grad()
def global_search(
    data,
    volume: torch.Tensor | np.ndarray,
    radius: float,
    settings: SearchSettings | None = None,
    rows: np.ndarray | None = None,
    previous: tuple[np.ndarray, np.ndarray] | None = None,
    device: torch.device | str = "cpu",
) -> Generator[Progress, None, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The best rotation and origin of every particle against a map.

    Parameters
    ----------
    data : ParticleData
        The particles (at the working box).
    volume : torch.Tensor or numpy.ndarray
        The map (L, L, L) at the working box, centred at L // 2.
    radius : float
        Frequencies compared, in pixels of frequency (up to box/2).
    settings : SearchSettings, optional
        Grid spacing and shift range.
    rows : numpy.ndarray, optional
        Particles to search (default all).
    previous : (rotations, shifts), optional
        Poses already held (for all particles): kept where they score better.
        A global search then looks for origins on a 3×3 grid around the held
        ones; with the coarse grid skipped (``settings.coarse_degrees <= 0``)
        the search is local around the held poses.
    device : torch.device or str
        Where to compute.

    Yields
    ------
    Progress

    Returns
    -------
    rotations : numpy.ndarray
        (n, 3, 3) RELION matrices of the searched rows.
    shifts : numpy.ndarray
        (n, 2) origins in pixels.
    errors : numpy.ndarray
        (n,) the fraction of each image's power in the band that the best
        pose leaves unexplained (lower is better).
    """
    settings = settings or SearchSettings()
    device = torch.device(device)
    box = data.box or data.original_box
    rows = np.arange(len(data)) if rows is None else np.asarray(rows)
    band = _Band(box, radius, device)
    volume_ft = band_volume(volume, band).to(device)
    coarse = settings.coarse_degrees > 0
    if coarse:
        grid = torch.as_tensor(rotation_grid(settings.coarse_degrees), device=device)
        proj = torch.cat([band.project(volume_ft, g) for g in grid.split(2048)])
        proj_power = proj.real**2 + proj.imag**2
    origins = torch.as_tensor(shift_grid(settings.max_shift, settings.shift_step), device=device)
    out_rot = np.empty((len(rows), 3, 3), dtype=np.float32)
    out_shift = np.empty((len(rows), 2), dtype=np.float32)
    out_err = np.empty(len(rows), dtype=np.float32)
    done = 0
    for start in range(0, len(rows), settings.batch_size):
        idx = rows[start : start + settings.batch_size]
        batch = data.batch(idx)
        spectra = band.take(torch.fft.rfft2(batch.images.to(device)))
        ctf_w, ctf2_w = _band_ctf(batch_ctf(data, batch, device), band)
        m = len(idx)
        power = ((spectra.real**2 + spectra.imag**2) * band.weight).sum(-1)
        if coarse:
            if previous is not None:
                # Origins are local: search them around the ones held (a whole grid costs a product each).
                held = torch.as_tensor(previous[1][idx], dtype=torch.float32, device=device)
                cand = held[:, None, :] + _neighbourhood(settings.shift_step, device)[None] if settings.max_shift > 0 else held[:, None, :]
                cand = _clip(cand, settings.max_shift)
            else:
                cand = origins.expand(m, -1, -1)
            centred = band.centred(spectra, cand)  # (m, T, K)
            t = cand.shape[1]
            err = _errors(centred.reshape(m * t, -1), ctf_w.repeat_interleave(t, 0), ctf2_w.repeat_interleave(t, 0), proj, proj_power, power.repeat_interleave(t, 0))
            err = err.view(m, -1)  # (m, T·R), T major
            best = err.argmin(dim=1)
            rot = grid[best % grid.shape[0]]
            shift = cand[torch.arange(m, device=device), best // grid.shape[0]]
            step = settings.coarse_degrees / 2
        else:
            rot = torch.as_tensor(previous[0][idx], dtype=torch.float32, device=device)
            shift = torch.as_tensor(previous[1][idx], dtype=torch.float32, device=device)
            step = max(settings.local_degrees, settings.fine_degrees)
        shift_step = settings.shift_step / 2
        while True:
            rot, shift, best_err = _refine(volume_ft, band, spectra, ctf_w, ctf2_w, power, rot, shift, step, shift_step, settings.max_shift)
            if step <= settings.fine_degrees:
                break
            step, shift_step = step / 2, shift_step / 2
        if previous is not None:
            # A pose held already wins where it fits better (the search grid may straddle it).
            old_rot = torch.as_tensor(previous[0][idx], dtype=torch.float32, device=device)
            old_shift = torch.as_tensor(previous[1][idx], dtype=torch.float32, device=device)
            old_err = _pose_errors(volume_ft, band, spectra, ctf_w, ctf2_w, power, old_rot, old_shift)
            keep = old_err < best_err
            rot[keep], shift[keep], best_err[keep] = old_rot[keep], old_shift[keep], old_err[keep]
        out_rot[start : start + m] = rot.cpu().numpy()
        out_shift[start : start + m] = shift.cpu().numpy()
        out_err[start : start + m] = (best_err / power.clamp_min(1e-20)).cpu().numpy()
        done += m
        yield Progress(done, len(rows), "searching poses")
    return out_rot, out_shift, out_err


def _neighbourhood(step: float, device) -> torch.Tensor:
    """The 3×3 grid of origin offsets (9, 2) of a step."""
    d = torch.tensor([-1.0, 0.0, 1.0], device=device) * step
    return torch.stack(torch.meshgrid(d, d, indexing="xy"), dim=-1).reshape(-1, 2)


def _clip(origins: torch.Tensor, max_shift: float) -> torch.Tensor:
    """Origins pulled back onto the disc of ``max_shift`` where they leave it."""
    if max_shift <= 0:
        return torch.zeros_like(origins)
    return origins * (max_shift / origins.norm(dim=-1, keepdim=True).clamp_min(max_shift))


def _pose_errors(volume_ft, band: _Band, spectra, ctf_w, ctf2_w, power, rot, shift) -> torch.Tensor:
    proj = band.project(volume_ft, rot)
    centred = band.centred(spectra, shift[:, None, :])[:, 0]
    a = torch.conj(centred) * ctf_w
    cross = (a * proj).real.sum(-1)
    p = (ctf2_w * (proj.real**2 + proj.imag**2)).sum(-1).clamp_min(1e-12)
    return power - cross.clamp_min(0) ** 2 / p


def _refine(volume_ft, band: _Band, spectra, ctf_w, ctf2_w, power, rot, shift, step: float, shift_step: float, max_shift: float):
    """One round of local search: 27 rotations around each pose × 9 shifts around each origin."""
    m = rot.shape[0]
    offsets = local_offsets(step).to(rot.device)
    candidates = rot[:, None] @ offsets[None]  # (m, 27, 3, 3)
    c = candidates.shape[1]
    proj = band.project(volume_ft, candidates.reshape(-1, 3, 3)).view(m, c, -1)
    if max_shift > 0:
        origins = _clip(shift[:, None, :] + _neighbourhood(shift_step, rot.device)[None], max_shift)
    else:
        origins = shift[:, None, :]
    centred = band.centred(spectra, origins)  # (m, T, K)
    a = torch.conj(centred) * ctf_w[:, None]
    cross = torch.einsum("mtk,mck->mtc", a.real, proj.real) - torch.einsum("mtk,mck->mtc", a.imag, proj.imag)
    p = torch.einsum("mk,mck->mc", ctf2_w, proj.real**2 + proj.imag**2).clamp_min(1e-12)
    err = power[:, None, None] - cross.clamp_min(0) ** 2 / p[:, None, :]
    flat = err.reshape(m, -1)
    best_err, best = flat.min(dim=1)
    t_best, c_best = best // c, best % c
    ar = torch.arange(m, device=rot.device)
    return candidates[ar, c_best], origins[ar, t_best], best_err
