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

CARBON, CONTAMINATION, GOLD = 1, 2, 3


@dataclass(frozen=True)
class NoiseSpectrum:
    """The shape of the noise power spectrum (white when both are 0).

    Attributes
    ----------
    pink : float
        Extra power falling as 1/|k| (ice thickness, charging, drift), as a
        fraction of the white noise variance.
    rolloff : float
        Attenuation of the power at Nyquist, 0 (white) to 1: detector MTF and
        dose weighting take power away from the highest frequencies.
    """

    pink: float = 0.0
    rolloff: float = 0.0

    def filter(self, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
        """Coloured Gaussian noise of unit white-part variance (plus ``pink`` in 1/f power)."""
        ky = np.fft.fftfreq(shape[0])[:, None]
        kx = np.fft.fftfreq(shape[1])[None, :]
        k = np.sqrt(kx**2 + ky**2)
        amp_white = np.sqrt(1.0 - self.rolloff * np.clip(k / 0.5, 0, 1) ** 2)
        spectrum = np.fft.fft2(rng.normal(size=shape))
        white = np.fft.ifft2(spectrum * amp_white).real
        white /= max(float(white.std()), 1e-12)
        if self.pink <= 0:
            return white
        kmin = 1.0 / max(shape)
        amp_pink = 1.0 / np.sqrt(np.maximum(k, kmin))
        amp_pink[0, 0] = 0.0
        pink = np.fft.ifft2(spectrum * amp_pink).real
        pink *= np.sqrt(self.pink) / max(float(pink.std()), 1e-12)
        return white + pink


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
    particle_snr : float
        Mean square of the particle signal inside the particles' discs over
        the variance of the (white part of the) noise, at the pixel size the
        SNR was stated for.
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
    particle_snr: float = float("nan")


def _carbon_mask(rng: np.random.Generator, shape: tuple[int, int], fraction: float) -> np.ndarray:
    """Half-plane beyond a straight edge that covers about ``fraction`` of the image."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    theta = rng.uniform(0, 2 * np.pi)
    d = np.cos(theta) * (xx - shape[1] / 2) + np.sin(theta) * (yy - shape[0] / 2)
    cut = np.quantile(d, 1.0 - fraction)
    return d > cut


def _hole_mask(rng: np.random.Generator, shape: tuple[int, int], fraction: float) -> np.ndarray:
    """Carbon outside a circular hole whose edge crosses the image, covering about ``fraction``."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    radius = max(shape) * rng.uniform(0.8, 3.0)
    theta = rng.uniform(0, 2 * np.pi)
    # Centre the hole off the image so its rim is a gentle arc.
    cy = shape[0] / 2 - np.sin(theta) * radius * 0.6
    cx = shape[1] / 2 - np.cos(theta) * radius * 0.6
    d = np.hypot(yy - cy, xx - cx)
    return d > np.quantile(d, 1.0 - fraction)


def _gold_mask(rng: np.random.Generator, shape: tuple[int, int], n: int, radius_px: float) -> np.ndarray:
    """Small round gold beads (fiducials or stray colloidal gold)."""
    mask = np.zeros(shape, dtype=bool)
    yy, xx = np.ogrid[0 : shape[0], 0 : shape[1]]
    for _ in range(n):
        cy, cx = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        mask |= (yy - cy) ** 2 + (xx - cx) ** 2 <= radius_px**2
    return mask


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
    """Random non-overlapping centres (pixels, array order) avoiding ``forbidden``.

    Random sequential placement; a grid of cells one ``min_distance`` wide
    keeps each test local, so thousands of particles (dense fields) place fast.
    """
    ndim = len(shape)
    found: list[np.ndarray] = []
    cells: dict[tuple[int, ...], list[np.ndarray]] = {}
    cell = max(float(min_distance), 1e-9)
    offsets = np.stack(np.meshgrid(*[[-1, 0, 1]] * ndim, indexing="ij"), -1).reshape(-1, ndim)
    lo = np.full(ndim, margin)
    hi = np.asarray(shape, dtype=float) - margin - 1
    for _ in range(n * max_tries):
        if len(found) >= n:
            break
        p = rng.uniform(lo, hi)
        if forbidden is not None and forbidden[tuple(np.round(p).astype(int))]:
            continue
        key = np.floor(p / cell).astype(int)
        near = [q for o in offsets for q in cells.get(tuple(key + o), ())]
        if near and np.min(np.linalg.norm(np.asarray(near) - p, axis=1)) < min_distance:
            continue
        found.append(p)
        cells.setdefault(tuple(key), []).append(p)
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
    particle_snr: float | None = None,
    snr_pixel_size: float | None = None,
    noise: NoiseSpectrum | None = None,
    spacing: float = 1.05,
    n_gold: int = 0,
    gold_diameter: float = 100.0,
    carbon_hole: bool = False,
    atom_sigma: float = 4.0,
    contamination_size: float = 2.5,
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
    particle_snr : float, optional
        Per-particle SNR (see :class:`SyntheticMicrograph`); replaces ``snr``.
    snr_pixel_size : float, optional
        The pixel size (Å) ``particle_snr`` is stated at, when the simulation
        runs at a coarser one: white noise averages down with the pixel area,
        so the simulated noise variance is scaled by ``(snr_pixel_size / pixel_size) ** 2``.
    noise : NoiseSpectrum, optional
        Coloured noise (default white).
    spacing : float
        Closest centre-to-centre distance in diameters (below 1: particles touch).
    n_gold : int
        Gold beads of ``gold_diameter`` Å, labelled as junk (``GOLD``).
    carbon_hole : bool
        Carbon lies outside the curved rim of a hole rather than beyond a straight edge.
    atom_sigma : float
        Gaussian blur of each (pseudo-)atom in Å.
    contamination_size : float
        Mean semi-axis of the contamination blobs in particle radii.

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
        junk[(_hole_mask if carbon_hole else _carbon_mask)(rng, shape, carbon_fraction)] = CARBON
    if n_contamination > 0:
        junk[_contamination_mask(rng, shape, n_contamination, contamination_size * radius_px)] = CONTAMINATION
    if n_gold > 0:
        junk[_gold_mask(rng, shape, n_gold, gold_diameter / 2.0 / pixel_size)] = GOLD
    forbidden = ndimage.binary_dilation(junk > 0, iterations=max(1, int(radius_px)))
    picks = place_particles(rng, shape, n_particles, 2.0 * spacing * radius_px, radius_px + 2, forbidden)
    which = rng.integers(0, len(structures), len(picks))
    angles = random_rotations(rng, len(picks))

    from ..geometry import euler_to_matrix

    mats = euler_to_matrix(angles) if len(picks) else np.zeros((0, 3, 3))
    xy_all = []
    for p, s, a in zip(picks, which, mats):
        xy = (structures[s] @ a.T)[:, :2] / pixel_size
        xy_all.append(xy + p[::-1])
    xy_all_arr = np.concatenate(xy_all) if xy_all else np.zeros((0, 2))
    density = splat_2d(xy_all_arr, shape, atom_sigma / pixel_size)
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
    inside = _disc_mask(shape, picks, radius_px)
    particle_power = float(np.mean((signal[inside] - signal.mean()) ** 2)) if inside.any() else signal_var
    if particle_snr is not None:
        factor = (snr_pixel_size or pixel_size) / pixel_size
        noise_var = particle_power / particle_snr * factor**2
        snr = signal_var / noise_var
    else:
        noise_var = signal_var / snr
    if noise is None:
        noise_field = rng.normal(scale=np.sqrt(noise_var), size=shape)
    else:
        noise_field = noise.filter(shape, rng) * np.sqrt(noise_var)
    image = (signal + junk_signal) * ramp + noise_field * np.sqrt(1.0 + 0.3 * (1.0 - ramp))
    image -= (clumps * 0.5 * np.sqrt(signal_var / snr))  # contamination is dark in the image too
    if n_gold > 0:
        # Gold scatters far more than protein or ice: nearly black, with a CTF fringe.
        beads = ndimage.gaussian_filter((junk == GOLD).astype(float), 0.5)
        image -= apply_ctf(beads, np.abs(ctf) ** 0.25) * 8.0 * np.sqrt(noise_var)
    image = (image - image.mean()) / image.std()
    measured_snr = particle_power / noise_var * ((snr_pixel_size or pixel_size) / pixel_size) ** 2 if noise_var > 0 else float("inf")
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
        particle_snr=measured_snr,
    )


def _disc_mask(shape: tuple[int, int], centres: np.ndarray, radius: float) -> np.ndarray:
    """Pixels within ``radius`` of any centre."""
    mask = np.zeros(shape, dtype=bool)
    if not len(centres):
        return mask
    seeds = np.zeros(shape, dtype=bool)
    idx = np.clip(np.round(centres).astype(int), 0, np.array(shape) - 1)
    seeds[idx[:, 0], idx[:, 1]] = True
    return ndimage.distance_transform_edt(~seeds) <= radius
