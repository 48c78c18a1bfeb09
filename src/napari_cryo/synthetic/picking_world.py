"""Varied micrographs for training a picker that holds on data nobody tuned it to.

A generic picker meets raw dose-weighted micrographs at per-particle SNR
0.02, denoised exports that look smooth and low-passed, 8-bit PNG/JPEG/TIFF
exports, touching particles, particles from 80 to 400 Å, white or black
particles, carbon, gold and contamination, on detectors whose noise is not
white.  :func:`random_conditions` draws one such situation and
:func:`simulate_conditions` renders it with :func:`.micrograph.simulate_micrograph`
and the export steps a real pipeline applies afterwards.

The noise spectra span what the real micrographs in the project's test data
show (their radial power falls by a factor 2-3 from mid frequencies to
Nyquist, from dose weighting and the detector's MTF, and rises steeply below
1/100 px⁻¹), with white noise at one end of the range.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from .atomic_models import extent, random_assembly, scaled_to
from .micrograph import NoiseSpectrum, SyntheticMicrograph, simulate_micrograph
from .structures import random_structure

#: Particle diameter in working pixels; the picker's preprocessing uses the same figure.
WORKING_DIAMETER_PX = 20.0


@dataclass(frozen=True)
class PickingConditions:
    """Everything that decides how one simulated micrograph looks.

    Attributes
    ----------
    diameter : float
        Particle diameter in Å.
    pixel_size : float
        The micrograph's pixel size in Å (what a user would state).
    sim_pixel_size : float
        The pixel size the simulation runs at (never finer than needed for
        the working resolution, to keep simulation cheap).
    side : int
        Image side in simulation pixels.
    particle_snr : float
        Per-particle SNR at ``pixel_size`` (before any denoising).
    pink, rolloff : float
        Noise spectrum (see :class:`.micrograph.NoiseSpectrum`).
    coverage : float
        Fraction of the ice area covered by particles.
    spacing : float
        Closest centre distance in diameters (below 1: touching).
    defocus : float
        Å.
    carbon : float
        Fraction covered by carbon (0: none).
    carbon_hole : bool
        Curved hole rim rather than a straight edge.
    contamination : int
        Ice contamination blobs.
    gold : int
        Gold beads.
    ice_gradient : float
        Relative change of contrast across the image.
    atom_sigma : float
        Blur of each atom in Å.
    denoise_sigma : float
        Gaussian low-pass in working pixels applied as a denoiser would (0: raw).
    white_particles : bool
        Contrast inverted (as after phase flipping or in some exports).
    eight_bit : bool
        Quantised to 0-255 after a contrast stretch.
    jpeg_quality : int
        JPEG round trip at this quality (0: none).
    n_shapes : int
        Different molecules in the micrograph.
    """

    diameter: float
    pixel_size: float
    sim_pixel_size: float
    side: int
    particle_snr: float
    pink: float
    rolloff: float
    coverage: float
    spacing: float
    defocus: float
    carbon: float
    carbon_hole: bool
    contamination: int
    gold: int
    ice_gradient: float
    atom_sigma: float
    denoise_sigma: float
    white_particles: bool
    eight_bit: bool
    jpeg_quality: int
    n_shapes: int

    def as_dict(self) -> dict:
        """Plain values, for the record of what a model saw."""
        return asdict(self)


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def random_conditions(
    rng: np.random.Generator,
    working_side: tuple[int, int] = (320, 448),
    raw_fraction: float = 0.65,
    raw_snr: tuple[float, float] = (0.02, 0.5),
) -> PickingConditions:
    """Draw one micrograph's conditions from the ranges a generic picker must cover.

    Parameters
    ----------
    rng : numpy.random.Generator
        Random source.
    working_side : tuple of int
        Range of the image side at the working pixel size (diameter / 20).
    raw_fraction : float
        Share of raw (not denoised) micrographs; of the rest, a quarter are clean.
    raw_snr : tuple of float
        Range of the per-particle SNR of raw micrographs (log-uniform).
    """
    diameter = _log_uniform(rng, 80.0, 400.0)
    # Raw pixels from super-resolution (0.5 Å) to binned exports; at least ~10 px per diameter.
    pixel = min(_log_uniform(rng, 0.5, 8.0), diameter / 10.0)
    working = max(diameter / WORKING_DIAMETER_PX, pixel)
    sim_pixel = max(pixel, working / 2.5)
    side = int(rng.uniform(*working_side) * working / sim_pixel)
    kind = rng.random()
    if kind < raw_fraction:  # raw, dose-weighted
        snr, denoise = _log_uniform(rng, *raw_snr), 0.0
    elif kind < raw_fraction + 0.75 * (1.0 - raw_fraction):  # denoised: the SNR of the output is high and the image smooth
        snr, denoise = _log_uniform(rng, 0.3, 5.0), float(rng.uniform(0.4, 1.5))
    else:  # clean, high-contrast data (large complexes, negative stain-like)
        snr, denoise = _log_uniform(rng, 0.5, 5.0), 0.0
    # Below ~0.5 in the working image no picker can see a particle; do not train on noise alone.
    snr = max(snr, 0.5 / (working / pixel) ** 2)
    has_carbon = rng.random() < 0.4
    return PickingConditions(
        diameter=diameter,
        pixel_size=pixel,
        sim_pixel_size=sim_pixel,
        side=side,
        particle_snr=snr,
        pink=0.0 if rng.random() < 0.3 else _log_uniform(rng, 0.05, 1.0),
        rolloff=float(rng.uniform(0.0, 0.8)),
        coverage=_log_uniform(rng, 0.03, 0.45),
        spacing=float(rng.uniform(0.85, 1.3)),
        defocus=float(rng.uniform(5000, 35000)),
        carbon=float(rng.uniform(0.05, 0.4)) if has_carbon else 0.0,
        carbon_hole=bool(rng.random() < 0.5),
        contamination=int(rng.choice([0, 0, 1, 2, 3, 4])),
        gold=int(rng.integers(1, 9)) if rng.random() < 0.15 else 0,
        ice_gradient=float(rng.uniform(0.0, 0.6)),
        atom_sigma=float(rng.uniform(2.0, 6.0)),
        denoise_sigma=denoise,
        white_particles=bool(rng.random() < 0.5),
        eight_bit=bool(rng.random() < 0.25),
        jpeg_quality=int(rng.integers(60, 96)) if rng.random() < 0.12 else 0,
        n_shapes=int(rng.integers(1, 4)),
    )


def particle_shapes(conditions: PickingConditions, chains: list[np.ndarray], rng: np.random.Generator) -> tuple[list[np.ndarray], list[str]]:
    """The molecules of one micrograph: assemblies of real chains (or pseudo-atomic blobs without chains)."""
    shapes, names = [], []
    for _ in range(conditions.n_shapes):
        size = conditions.diameter * float(rng.uniform(0.85, 1.0))
        if chains and rng.random() < 0.75:
            atoms, name = random_assembly(chains, rng)
            atoms = _fill(atoms, size / max(extent(atoms), 1e-6), rng)
        else:
            atoms, name = random_structure(rng, size, n_atoms=1500, elongation=float(rng.uniform(0.6, 2.0))), "pseudo-atomic"
        shapes.append(scaled_to(atoms, size))
        names.append(name)
    return shapes, names


def _fill(atoms: np.ndarray, scale: float, rng: np.random.Generator, max_atoms: int = 8000) -> np.ndarray:
    """Atoms (native Å) that still look like protein after scaling by ``scale``.

    Scaling a chain up by ``s`` spreads its C-alphas ``s`` times further apart
    (a thread of beads, not a mass of protein); jittered copies, ``s**2`` per
    atom within about half the scaled residue spacing, fill it back in.
    The atom count is capped for speed.
    """
    copies = int(np.clip(np.ceil(scale**2), 1, 16)) if scale > 1.3 else 1
    if copies > 1:
        spread = 1.9 * (1.0 - 1.0 / scale)  # Å at native scale; becomes ~1.9 * (scale - 1) after scaling
        atoms = np.repeat(atoms, copies, axis=0) + rng.normal(scale=spread, size=(len(atoms) * copies, 3))
    if len(atoms) > max_atoms:
        atoms = atoms[rng.choice(len(atoms), max_atoms, replace=False)]
    return atoms


def export_like(image: np.ndarray, conditions: PickingConditions, rng: np.random.Generator) -> np.ndarray:
    """What a pipeline does to a micrograph after acquisition: denoising, inversion, 8-bit, JPEG."""
    out = np.asarray(image, dtype=np.float32)
    if conditions.denoise_sigma > 0:
        sigma = conditions.denoise_sigma * (conditions.diameter / WORKING_DIAMETER_PX) / conditions.sim_pixel_size
        out = ndimage.gaussian_filter(out, sigma)
    if conditions.white_particles:
        out = -out
    if conditions.eight_bit or conditions.jpeg_quality:
        k = float(rng.uniform(2.5, 5.0))
        mu, sd = float(out.mean()), float(out.std()) or 1.0
        out = np.clip(np.round((out - mu) / (2 * k * sd) * 255 + 127.5), 0, 255).astype(np.uint8)
        if conditions.jpeg_quality:
            import imageio.v3 as iio

            buffer = iio.imwrite("<bytes>", out, extension=".jpg", quality=conditions.jpeg_quality)
            out = iio.imread(io.BytesIO(buffer), extension=".jpg")
        out = out.astype(np.float32)
    else:
        # Counts or arbitrary float scaling: normalisation must not care.
        out = out * float(_log_uniform(rng, 0.1, 100.0)) + float(rng.uniform(-50, 500))
    return out


def simulate_conditions(
    conditions: PickingConditions, chains: list[np.ndarray], seed: int
) -> tuple[np.ndarray, SyntheticMicrograph, list[str]]:
    """Render one micrograph.

    Returns
    -------
    image : numpy.ndarray
        The exported image (float32, at ``conditions.sim_pixel_size``).
    micrograph : SyntheticMicrograph
        The simulation before export, with the true picks and junk mask.
    shapes : list of str
        What the molecules were.
    """
    rng = np.random.default_rng(seed)
    shapes, names = particle_shapes(conditions, chains, rng)
    side = conditions.side
    area = (side * conditions.sim_pixel_size) ** 2 * (1.0 - conditions.carbon)
    n = max(1, int(conditions.coverage * area / (np.pi * (conditions.diameter / 2) ** 2)))
    mic = simulate_micrograph(
        shape=(side, side),
        pixel_size=conditions.sim_pixel_size,
        diameter=conditions.diameter,
        n_particles=n,
        defocus=conditions.defocus,
        carbon_fraction=conditions.carbon,
        n_contamination=conditions.contamination,
        ice_gradient=conditions.ice_gradient,
        seed=seed,
        structures=shapes,
        particle_snr=conditions.particle_snr,
        snr_pixel_size=conditions.pixel_size,
        noise=NoiseSpectrum(conditions.pink, conditions.rolloff),
        spacing=conditions.spacing,
        n_gold=conditions.gold,
        # Gold is smaller than the particles here (and far darker), so it is never a particle look-alike.
        gold_diameter=float(min(150.0, conditions.diameter * rng.uniform(0.15, 0.4))),
        contamination_size=float(rng.uniform(3.0, 8.0)),
        carbon_hole=conditions.carbon_hole,
        atom_sigma=conditions.atom_sigma,
    )
    return export_like(mic.image, conditions, rng), mic, names
