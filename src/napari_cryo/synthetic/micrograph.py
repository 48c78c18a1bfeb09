"""Synthetic micrographs with ground-truth picks, carbon and contamination.

Each micrograph holds projections of one or more pseudo-atomic molecules at
random orientations, a carbon film beyond a straight edge, ice
contamination blobs, a gradient of ice thickness, the CTF of a stated
defocus and white noise at a stated SNR.  Particles are never placed on the
carbon or the contamination: those regions are what a picker must learn to
avoid, and ``junk_mask`` marks them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .structures import apply_ctf, ctf_2d, random_rotations, random_structure, splat_2d

CARBON, CONTAMINATION = 1, 2


@dataclass
class SyntheticMicrograph:
    """A simulated micrograph and what is known about it.

    Attributes
    ----------
    image : numpy.ndarray
        (Y, X) float32, zero mean and unit variance.
    pixel_size : float
        Å per pixel.
    picks : numpy.ndarray
        (N, 2) YX particle centres in pixels.
    structure : numpy.ndarray
        (N,) which molecule each particle is.
    angles : numpy.ndarray
        (N, 3) RELION Euler angles in degrees.
    junk_mask : numpy.ndarray
        (Y, X) uint8: 0 ice, 1 carbon, 2 contamination.
    diameter : float
        Particle diameter in Å.
    defocus : float
        Defocus in Å.
    snr : float
        Variance of the CTF-modulated particle signal over the micrograph
        divided by the noise variance.
    """

    image: np.ndarray
    pixel_size: float
    picks: np.ndarray
    structure: np.ndarray
    angles: np.ndarray
    junk_mask: np.ndarray
    diameter: float
    defocus: float
    snr: float


def _carbon_mask(rng: np.random.Generator, shape: tuple[int, int], fraction: float) -> np.ndarray:
    """Half-plane beyond a straight edge that covers about ``fraction`` of the image."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    theta = rng.uniform(0, 2 * np.pi)
    d = np.cos(theta) * (xx - shape[1] / 2) + np.sin(theta) * (yy - shape[0] / 2)
    cut = np.quantile(d, 1.0 - fraction)
    return d > cut


def _contamination_mask(rng: np.random.Generator, shape: tuple[int, int], n: int, radius_px: float) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    yy, xx = np.ogrid[0 : shape[0], 0 : shape[1]]
    for _ in range(n):
        cy, cx = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        a, b = radius_px * rng.uniform(0.6, 1.4), radius_px * rng.uniform(0.6, 1.4)
        t = rng.uniform(0, np.pi)
        u = (xx - cx) * np.cos(t) + (yy - cy) * np.sin(t)
        v = -(xx - cx) * np.sin(t) + (yy - cy) * np.cos(t)
        mask |= (u / a) ** 2 + (v / b) ** 2 <= 1.0
    return mask


def place_particles(
    rng: np.random.Generator,
    shape: tuple[int, ...],
    n: int,
    min_distance: float,
    margin: float,
    forbidden: np.ndarray | None = None,
    max_tries: int = 50,
) -> np.ndarray:
    """Random non-overlapping centres (pixels, array order) avoiding ``forbidden``."""
    ndim = len(shape)
    found: list[np.ndarray] = []
    lo = np.full(ndim, margin)
    hi = np.asarray(shape, dtype=float) - margin - 1
    for _ in range(n * max_tries):
        if len(found) >= n:
            break
        p = rng.uniform(lo, hi)
        if forbidden is not None and forbidden[tuple(np.round(p).astype(int))]:
            continue
        if found and np.min(np.linalg.norm(np.asarray(found) - p, axis=1)) < min_distance:
            continue
        found.append(p)
    return np.asarray(found).reshape(-1, ndim)


def simulate_micrograph(
    shape: tuple[int, int] = (1024, 1024),
    pixel_size: float = 2.0,
    diameter: float = 150.0,
    n_particles: int = 120,
    n_structures: int = 1,
    snr: float = 0.1,
    defocus: float = 15000.0,
    carbon_fraction: float = 0.15,
    n_contamination: int = 2,
    ice_gradient: float = 0.3,
    seed: int = 0,
    structures: list[np.ndarray] | None = None,
) -> SyntheticMicrograph:
    """Simulate one micrograph.

    Parameters
    ----------
    shape : tuple of int
        (Y, X) size in pixels.
    pixel_size : float
        Å per pixel.
    diameter : float
        Particle diameter in Å.
    n_particles : int
        Particles to place (fewer if they do not fit).
    n_structures : int
        Different molecules mixed in the micrograph.
    snr : float
        Signal variance over noise variance (see :class:`SyntheticMicrograph`).
    defocus : float
        Defocus in Å; astigmatism is 5 % of it at a random angle.
    carbon_fraction : float
        Fraction of the image covered by carbon (0 for none).
    n_contamination : int
        Ice contamination blobs.
    ice_gradient : float
        Relative change of the signal across the image from ice thickness.
    seed : int
        Random seed.
    structures : list of numpy.ndarray, optional
        Pseudo-atomic models to use instead of random ones.

    Returns
    -------
    SyntheticMicrograph
    """
    rng = np.random.default_rng(seed)
    radius_px = diameter / 2.0 / pixel_size
    if structures is None:
        structures = [random_structure(rng, diameter, elongation=rng.uniform(0.8, 1.6)) for _ in range(n_structures)]

    junk = np.zeros(shape, dtype=np.uint8)
    if carbon_fraction > 0:
        junk[_carbon_mask(rng, shape, carbon_fraction)] = CARBON
    if n_contamination > 0:
        junk[_contamination_mask(rng, shape, n_contamination, 2.5 * radius_px)] = CONTAMINATION
    forbidden = ndimage.binary_dilation(junk > 0, iterations=max(1, int(radius_px)))
    picks = place_particles(rng, shape, n_particles, 2.1 * radius_px, radius_px + 2, forbidden)
    which = rng.integers(0, len(structures), len(picks))
    angles = random_rotations(rng, len(picks))

    from ..geometry import euler_to_matrix

    mats = euler_to_matrix(angles) if len(picks) else np.zeros((0, 3, 3))
    xy_all = []
    for p, s, a in zip(picks, which, mats):
        xy = (structures[s] @ a.T)[:, :2] / pixel_size
        xy_all.append(xy + p[::-1])
    xy_all_arr = np.concatenate(xy_all) if xy_all else np.zeros((0, 2))
    density = splat_2d(xy_all_arr, shape, 4.0 / pixel_size)
    density /= max(density.max(), 1e-9)

    astig = 0.05 * defocus
    ctf = ctf_2d(shape, pixel_size, defocus + astig, defocus - astig, rng.uniform(0, 180), bfactor=50.0)
    signal = apply_ctf(density, ctf)

    # Carbon: a textured film, contamination: thick ice, both strongly scattering.
    texture = ndimage.gaussian_filter(rng.normal(size=shape), 3.0)
    film = (junk == CARBON) * (0.6 + 2.0 * texture)
    film = ndimage.gaussian_filter(film.astype(float), 1.0)
    clumps = ndimage.gaussian_filter((junk == CONTAMINATION).astype(float), 4.0) * 3.0
    junk_signal = apply_ctf(film + clumps, ctf)

    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    ramp = 1.0 - ice_gradient * (xx / shape[1] * 0.7 + yy / shape[0] * 0.3)
    signal_var = float(np.var(signal)) if np.var(signal) > 0 else 1.0
    noise = rng.normal(scale=np.sqrt(signal_var / snr), size=shape)
    image = (signal + junk_signal) * ramp + noise * np.sqrt(1.0 + 0.3 * (1.0 - ramp))
    image -= (clumps * 0.5 * np.sqrt(signal_var / snr))  # contamination is dark in the image too
    image = (image - image.mean()) / image.std()
    return SyntheticMicrograph(
        image=image.astype(np.float32),
        pixel_size=pixel_size,
        picks=picks,
        structure=which,
        angles=angles,
        junk_mask=junk,
        diameter=diameter,
        defocus=defocus,
        snr=snr,
    )
