"""A first map from nothing: stochastic expectation-maximisation over a grid of poses.

Hard pose assignments against a featureless start lock in noise (the map
explains the noise it was built from).  So the first map comes from soft
assignments on small random batches, as in the stochastic initial-model
methods of RELION and cryoSPARC:

* each batch is compared with projections of the current map on a global
  grid of rotations (:func:`~.search.rotation_grid`), at a low working box
  and over a frequency band that widens from batch to batch;
* each image is back-projected at its ``top_k`` best rotations, weighted by
  their posterior probabilities, with the log-likelihood tempered by
  ``beta`` (a cold start would freeze on the first accidental match);
* the running sums forget old batches, remembering about ``memory``
  particles, so early mistakes fade as the map improves;
* the map is masked by a sphere (``mask_radius``) before each batch is
  compared with it: outside the particle it holds only back-projected
  noise, which the next batch's images would otherwise be fitted to;
* off-centre particles (``origin_sigma``) are compared at every origin of
  a small grid too, weighted by a Gaussian prior, and each kept rotation is
  back-projected once with the image averaged over its origins (summing
  over origins, as RELION's expectation step does, rather than taking the
  best one, which at low SNR follows the noise).

The result is a low-resolution map; :mod:`.refine` takes it to full
resolution with hard assignments and local searches.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass

import numpy as np
import torch

from ..tasks import Progress
from .fsc import soft_mask
from .physics import fourier_to_volume_full, insert_slices, insert_weights, shift_images
from .ranks import Ranks
from .search import _Band, _band_ctf, _errors, band_volume, batch_ctf, rotation_grid, shift_grid


@dataclass
class StochasticSettings:
    """Schedule of the stochastic stage (defaults are the benchmarked ones).

    Attributes
    ----------
    box : int
        Working box (pixels) the images are Fourier-cropped to.
    batch_size, batches : int
        Images per batch, and number of batches.
    radius_start, radius_end : float
        Band compared, pixels of frequency at the full box (the same
        frequencies at any box), growing linearly over the batches.
    grid_degrees : float
        Spacing of the rotation grid.
    top_k : int
        Rotations each image is back-projected at.
    beta : float
        Tempering of the log-likelihood (1: the plain posterior).
    memory_start, memory_end : float
        Particles remembered by the running sums, growing over the batches.
    origin_sigma : float
        Spread of the particles' origins, pixels of the working box (0: the
        images are taken as centred).  Each image is then also compared at
        every origin of a grid within 2 sigma, weighted by a Gaussian prior.
    origin_step : float
        Spacing of that grid of origins, pixels of the working box.
    mask_radius : float
        Radius of a soft spherical mask put on the map before each batch is
        compared with it, as a fraction of the half box (0: no mask).
    """

    box: int = 32
    batch_size: int = 256
    batches: int = 100
    radius_start: float = 4.0
    radius_end: float = 12.0
    grid_degrees: float = 15.0
    top_k: int = 8
    beta: float = 0.2
    memory_start: float = 1000.0
    memory_end: float = 5000.0
    origin_sigma: float = 0.0
    origin_step: float = 1.0
    mask_radius: float = 0.0


def _regularised(numerator: torch.Tensor, weights: torch.Tensor) -> np.ndarray:
    """The map from the running sums, with a Wiener constant of 5 % of the mean weight."""
    return fourier_to_volume_full(numerator / (weights + 0.05 * float(weights.mean()))).numpy().astype(np.float32)


def origin_prior(sigma: float, step: float = 1.0, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Candidate origins within 2 ``sigma`` on a grid of ``step`` pixels, and their Gaussian log prior.

    With ``sigma`` 0 the particles are taken as centred: one origin, (0, 0).
    The prior keeps centred particles centred: at low SNR a flat choice of
    origins lets every image slide onto the noise that fits it best, which
    blurs the map (measured on centred particles: 2.0 px with this prior
    against 3.6 px with a flat one, at a 32-px box).
    """
    if sigma <= 0:
        return torch.zeros((1, 2), device=device), torch.zeros(1, device=device)
    origins = torch.as_tensor(shift_grid(2 * sigma, step), device=device)
    return origins, -(origins**2).sum(-1) / (2 * sigma**2)


def soft_insert(weighted: torch.Tensor, ctf2: torch.Tensor, loglik: torch.Tensor, grid: torch.Tensor, origins: torch.Tensor,
                top_k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Back-project a batch with soft assignments over rotations and origins (the M-step of one batch).

    Parameters
    ----------
    weighted : torch.Tensor
        (M, L, L//2+1) image spectra times their CTF.
    ctf2 : torch.Tensor
        (M, L, L//2+1) CTF squared.
    loglik : torch.Tensor
        (M, T, R) log posterior (up to a constant) of each origin and rotation.
    grid : torch.Tensor
        (R, 3, 3) rotations.
    origins : torch.Tensor
        (T, 2) origins (x, y) in pixels, ``rlnOrigin`` semantics.
    top_k : int
        Rotations kept per image, ranked by their probability summed over origins.

    Returns
    -------
    numerator, weights : torch.Tensor
        The (L, L, L) sums to add to the map's running sums.
    best : torch.Tensor
        (M,) index of each image's most probable rotation.
    """
    box = weighted.shape[-2]
    t = len(origins)
    marginal = torch.logsumexp(loglik, dim=1)
    top, which = marginal.topk(min(top_k, len(grid)), dim=1)
    prob = torch.softmax(top, dim=1)
    rot = grid[which].reshape(-1, 3, 3)
    slices = weighted[:, None] * prob[..., None, None]
    if t > 1:
        # Each kept rotation is inserted once, with the image averaged over its origins given that rotation.
        given = torch.softmax(torch.gather(loglik, 2, which[:, None, :].expand(-1, t, -1)), dim=1)  # (M, T, k)
        phases = shift_images(torch.ones((t, box, box // 2 + 1), dtype=torch.complex64, device=weighted.device), -origins, box)
        slices = slices * torch.einsum("mtk,tyx->mkyx", given.to(torch.complex64), phases)
    numerator, _ = insert_slices(slices.reshape(-1, box, box // 2 + 1), rot, box)
    weights = insert_weights((ctf2[:, None] * prob[..., None, None]).reshape(-1, box, box // 2 + 1), rot, box)
    return numerator, weights, which[:, 0]


@torch.no_grad()
def stochastic_map(
    data,
    settings: StochasticSettings | None = None,
    seed: int = 0,
    stop: Callable[[], bool] | None = None,
    device: torch.device | str = "cpu",
    ranks: Ranks | None = None,
) -> Generator[Progress, None, tuple[np.ndarray, np.ndarray]]:
    """A low-resolution map of the particles, with no reference.

    Parameters
    ----------
    data : ParticleData
        The particles, cropped to ``settings.box`` (see :class:`~.data.ParticleData`).
    settings : StochasticSettings, optional
        Schedule.
    seed : int
        Chooses the batches and the random start.
    stop : callable, optional
        Polled every batch; ends the stage early when it returns True.
    device : torch.device or str
        Where to compute.
    ranks : Ranks, optional
        The processes sharing the particles: every rank draws the same
        batches, compares and back-projects its own particles of each, and the
        sums are all-reduced, so every rank holds the same map.

    Yields
    ------
    Progress

    Returns
    -------
    volume : numpy.ndarray
        (box, box, box) map at ``data.pixel_size``.
    rotations : numpy.ndarray
        (N, 3, 3) each particle's most probable rotation when last seen
        (identity for particles never drawn).
    """
    s = settings or StochasticSettings()
    device = torch.device(device)
    box = data.box or data.original_box
    n = len(data)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    grid = torch.as_tensor(rotation_grid(s.grid_degrees), device=device)
    origins, log_prior = origin_prior(s.origin_sigma, s.origin_step, device)
    numerator = torch.zeros((box, box, box), dtype=torch.complex64, device=device)
    weights = torch.zeros((box, box, box), dtype=torch.float32, device=device)
    rotations = np.tile(np.eye(3, dtype=np.float32), (n, 1, 1))
    batch_size = min(s.batch_size, n)
    ranks = ranks or Ranks.single()
    mask = None
    if s.mask_radius > 0:
        outer = s.mask_radius * box / 2
        mask = soft_mask(box, radius=max(1.0, outer - 2.0), width=2.0)
    label = "first map (stochastic search" + (f", masked at {s.mask_radius:.2f} of the half box)" if mask is not None else ")")
    # The start: one batch back-projected at random rotations (a blob with a little structure).
    first = rng.choice(n, batch_size, replace=False)
    start_rot = grid[torch.randint(len(grid), (batch_size,), generator=gen).to(device)]
    mine = ranks.owned(n)[first]
    if mine.any():
        batch = data.batch(first[mine])
        ctf = batch_ctf(data, batch, device)
        rot = start_rot[torch.as_tensor(mine).to(device)]
        num, _ = insert_slices(torch.fft.rfft2(batch.images.to(device)) * ctf, rot, box)
        numerator += num
        weights += insert_weights(ctf**2, rot, box)
    ranks.sum_(numerator)
    ranks.sum_(weights)
    for b in range(s.batches):
        if stop is not None and stop():
            break
        frac = b / max(1, s.batches - 1)
        band = _Band(box, s.radius_start + (s.radius_end - s.radius_start) * frac, device)
        volume = _regularised(numerator, weights)
        if mask is not None:
            volume *= mask
        volume_ft = band_volume(volume, band).to(device)
        rows = rng.choice(n, batch_size, replace=False)
        rows = ranks.own(rows)
        num = torch.zeros_like(numerator)
        wts = torch.zeros_like(weights)
        if len(rows):
            proj = torch.cat([band.project(volume_ft, g) for g in grid.split(2048)])
            proj_power = proj.real**2 + proj.imag**2
            batch = data.batch(rows)
            spectra = torch.fft.rfft2(batch.images.to(device))
            taken = band.take(spectra)
            ctf = batch_ctf(data, batch, device)
            ctf_w, ctf2_w = _band_ctf(ctf, band)
            power = ((taken.real**2 + taken.imag**2) * band.weight).sum(-1)
            m, t = len(rows), len(origins)
            centred = band.centred(taken, origins.expand(m, -1, -1)).reshape(m * t, -1)
            rep = lambda x: x.repeat_interleave(t, 0)  # noqa: E731
            err = _errors(centred, rep(ctf_w), rep(ctf2_w), proj, proj_power, rep(power)).view(m, t, -1)
            best = err.flatten(1).min(dim=1).values
            # Noise power per coefficient from the best fit: the residual is noise plus model error,
            # so the posterior is, if anything, too broad (safe early on).
            sigma2 = (best / band.weight.sum()).clamp_min(1e-20)
            loglik = -(err - best[:, None, None]) / (2 * sigma2[:, None, None]) * s.beta + log_prior[None, :, None]
            num, wts, which = soft_insert(spectra * ctf, ctf**2, loglik, grid, origins, s.top_k)
            rotations[rows] = grid[which].cpu().numpy()
        ranks.sum_(num)
        ranks.sum_(wts)
        memory = s.memory_start + (s.memory_end - s.memory_start) * frac
        keep = max(0.0, 1.0 - batch_size / memory)
        numerator = keep * numerator + num
        weights = keep * weights + wts
        yield Progress(b + 1, s.batches, label)
    volume = _regularised(numerator, weights)
    if mask is not None:
        volume *= mask
    return volume, rotations
