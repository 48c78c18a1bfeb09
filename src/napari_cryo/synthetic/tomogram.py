"""Synthetic tomograms: vesicles, a carbon film with an edge, particles, filaments.

Membrane-bound particles sit at a set distance outside vesicle membranes
and free particles of the same size lie away from them, so that model
interactions ('particle colocalizes with membrane') can be measured.  The
missing wedge of a ±60° tilt series about Y and white noise are applied
last.  Dense material is dark, as in a reconstructed tomogram.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from .micrograph import place_particles
from .structures import random_rotations, random_structure, splat_3d

#: Label values of the ground-truth segmentation.
FEATURES = {"membrane": 1, "carbon": 2, "particle": 3, "filament": 4}


@dataclass
class SyntheticTomogram:
    """A simulated tomogram and its ground truth.

    Attributes
    ----------
    volume : numpy.ndarray
        (Z, Y, X) float32, zero mean, unit variance.
    pixel_size : float
        Å per voxel.
    labels : numpy.ndarray
        (Z, Y, X) uint8 ground-truth features (see :data:`FEATURES`).
    particles : numpy.ndarray
        (N, 3) ZYX particle centres in voxels.
    membrane_bound : numpy.ndarray
        (N,) bool, whether each particle sits on a membrane.
    angles : numpy.ndarray
        (N, 3) RELION Euler angles in degrees.
    features : dict
        Feature name -> label value.
    """

    volume: np.ndarray
    pixel_size: float
    labels: np.ndarray
    particles: np.ndarray
    membrane_bound: np.ndarray
    angles: np.ndarray
    features: dict[str, int] = field(default_factory=lambda: dict(FEATURES))


def _local(center: np.ndarray, radius: float, shape: tuple[int, int, int]):
    """Slices of the box around a sphere and the offsets of its voxels from the centre."""
    lo = np.maximum(0, np.floor(center - radius - 1).astype(int))
    hi = np.minimum(shape, np.ceil(center + radius + 2).astype(int))
    sl = tuple(slice(a, b) for a, b in zip(lo, hi))
    grids = np.ogrid[sl]
    return sl, [(g - c).astype(np.float32) for g, c in zip(grids, center)]


def missing_wedge_mask(shape: tuple[int, int, int], max_tilt: float = 60.0) -> np.ndarray:
    """Fourier mask (on the ``rfftn`` grid) of a single-axis tilt series about Y."""
    kz = np.fft.fftfreq(shape[0])[:, None, None]
    kx = np.fft.rfftfreq(shape[2])[None, None, :]
    measured = np.abs(kz) <= np.abs(kx) * np.tan(np.deg2rad(max_tilt)) + 1e-12
    return np.broadcast_to(measured, (shape[0], shape[1], shape[2] // 2 + 1))


def _transfer(shape: tuple[int, int, int], pixel_size: float, defocus_um: float, bfactor: float) -> np.ndarray:
    """Isotropic CTF (uncorrected, phase contrast negative at low frequency) times a B-factor envelope, on the rfftn grid."""
    kz = np.fft.fftfreq(shape[0])[:, None, None]
    ky = np.fft.fftfreq(shape[1])[None, :, None]
    kx = np.fft.rfftfreq(shape[2])[None, None, :]
    k2 = (kz**2 + ky**2 + kx**2) / pixel_size**2
    out = np.exp(-bfactor * k2 / 4.0)
    if defocus_um:
        wavelength, cs = 0.0197, 2.7e7  # Å at 300 kV; Å
        chi = np.pi * wavelength * defocus_um * 1e4 * k2 - 0.5 * np.pi * cs * wavelength**3 * k2**2
        # Sign chosen so that low frequencies keep their sign: dense material stays dark.
        out = out * (np.sin(chi) * np.sqrt(1 - 0.07**2) + 0.07 * np.cos(chi))
    return out.astype(np.float32)


def simulate_tomogram(
    shape: tuple[int, int, int] = (96, 256, 256),
    pixel_size: float = 10.0,
    n_vesicles: int = 3,
    n_bound: int = 12,
    n_free: int = 12,
    n_filaments: int = 2,
    particle_diameter: float = 200.0,
    membrane_distance: float = 200.0,
    carbon: bool = True,
    snr: float = 0.5,
    max_tilt: float = 60.0,
    seed: int = 0,
    defocus_um: float = 0.0,
    bfactor: float = 0.0,
    n_gold: int = 0,
    membrane_thickness: float = 40.0,
) -> SyntheticTomogram:
    """Simulate one tomogram.

    Parameters
    ----------
    shape : tuple of int
        (Z, Y, X) size in voxels.
    pixel_size : float
        Å per voxel.
    n_vesicles : int
        Spherical vesicles with a bilayer membrane.
    n_bound, n_free : int
        Membrane-bound and free particles.
    n_filaments : int
        Straight filaments of 7 nm diameter.
    particle_diameter : float
        Particle diameter in Å.
    membrane_distance : float
        Distance in Å from the membrane to a bound particle's centre.
    carbon : bool
        Add a carbon film with an edge near the bottom of the volume.
    snr : float
        Signal variance over noise variance, after the missing wedge.
    max_tilt : float
        Tilt range ±``max_tilt`` degrees (the wedge).
    seed : int
        Random seed.
    defocus_um : float
        Defocus in µm of an uncorrected CTF (300 kV, Cs 2.7 mm, 7 % amplitude contrast) applied to
        the volume's spectrum as if isotropic; 0: none.
    bfactor : float
        B-factor in Å² of an envelope exp(-B k² / 4) on the signal; 0: none.
    n_gold : int
        Gold beads (10 nm, very dark, unlabelled) scattered through the volume.
    membrane_thickness : float
        Distance in Å between the two leaflets of a membrane (the label covers both).

    Returns
    -------
    SyntheticTomogram
    """
    rng = np.random.default_rng(seed)
    nz, ny, nx = shape
    zz, yy, xx = np.ogrid[0:nz, 0:ny, 0:nx]
    density = np.zeros(shape, dtype=np.float32)
    labels = np.zeros(shape, dtype=np.uint8)

    carbon_mask = np.zeros(shape, dtype=bool)
    if carbon:
        thickness = max(2, int(round(120.0 / pixel_size)))
        z0 = max(1, nz // 8)
        theta = rng.uniform(0, np.pi)
        edge = np.cos(theta) * (xx - nx / 2) + np.sin(theta) * (yy - ny / 2) > nx * 0.25
        carbon_mask = (zz >= z0) & (zz < z0 + thickness) & edge
        slab = slice(z0, z0 + thickness)
        texture = ndimage.gaussian_filter(rng.standard_normal(size=(thickness, ny, nx), dtype=np.float32), 1.5)
        density[slab] += carbon_mask[slab] * (0.8 + 1.5 * texture)
        labels[carbon_mask] = FEATURES["carbon"]

    # Vesicles: two Gaussian leaflets 40 Å apart.
    leaflet = membrane_thickness / pixel_size / 2.0
    vesicles = []
    for _ in range(n_vesicles):
        r = rng.uniform(0.12, 0.2) * min(ny, nx)
        r = min(r, nz / 2 - 4)
        for _try in range(50):
            c = rng.uniform([r + 2, r + 2, r + 2], [nz - r - 2, ny - r - 2, nx - r - 2])
            if all(np.linalg.norm(c - v[0]) > r + v[1] + membrane_distance / pixel_size * 2 for v in vesicles):
                break
        vesicles.append((c, r))
        sl, (dz, dy, dx) = _local(c, r + 3 * leaflet + 3, shape)
        d = np.sqrt(dz**2 + dy**2 + dx**2) - r
        shell = np.exp(-0.5 * ((d - leaflet) / 0.8) ** 2) + np.exp(-0.5 * ((d + leaflet) / 0.8) ** 2)
        density[sl] += shell
        sub = labels[sl]
        sub[(np.abs(d) <= leaflet + 1.0) & (sub == 0)] = FEATURES["membrane"]

    # Filaments: cylinders at random heights, lying roughly in the XY plane.
    fil_r = 35.0 / pixel_size
    for _ in range(n_filaments):
        p0 = rng.uniform([nz * 0.4, 0, 0], [nz * 0.9, ny, nx])
        direction = np.array([rng.normal(0, 0.1), *rng.normal(size=2)])
        direction /= np.linalg.norm(direction)
        rz, ry, rx = (g.astype(np.float32) - p for g, p in zip((zz, yy, xx), p0))
        along = rz * direction[0] + ry * direction[1] + rx * direction[2]
        dist = np.sqrt(np.maximum(rz**2 + ry**2 + rx**2 - along**2, 0.0))
        tube = np.exp(-0.5 * (dist / fil_r) ** 2)
        density += (0.8 * tube).astype(np.float32)
        labels[(dist <= fil_r * 1.2) & (labels == 0)] = FEATURES["filament"]

    # Particles: bound ones outside a membrane, free ones away from all membranes.
    p_r = particle_diameter / 2.0 / pixel_size
    bound = []
    for _ in range(n_bound * 20):
        if len(bound) >= n_bound or not vesicles:
            break
        c, r = vesicles[rng.integers(len(vesicles))]
        u = rng.normal(size=3)
        u /= np.linalg.norm(u)
        p = c + u * (r + membrane_distance / pixel_size)
        if np.any(p < p_r) or np.any(p > np.array(shape) - p_r - 1) or carbon_mask[tuple(np.round(p).astype(int))]:
            continue
        if bound and np.min(np.linalg.norm(np.asarray(bound) - p, axis=1)) < 2.2 * p_r:
            continue
        bound.append(p)
    near_membrane = np.zeros(shape, dtype=bool)
    reach = membrane_distance / pixel_size + 2 * p_r
    for c, r in vesicles:
        sl, (dz, dy, dx) = _local(c, r + reach, shape)
        near_membrane[sl] |= np.abs(np.sqrt(dz**2 + dy**2 + dx**2) - r) < reach
    forbidden = carbon_mask | near_membrane | (labels == FEATURES["filament"])
    free = place_particles(rng, shape, n_free + len(bound), 2.2 * p_r, p_r + 1, forbidden)
    if len(bound) and len(free):
        keep = np.min(np.linalg.norm(free[:, None] - np.asarray(bound)[None], axis=2), axis=1) >= 2.2 * p_r
        free = free[keep]
    free = free[:n_free]
    centres = np.concatenate([np.asarray(bound).reshape(-1, 3), free.reshape(-1, 3)])
    is_bound = np.arange(len(centres)) < len(bound)
    angles = random_rotations(rng, len(centres))
    molecule = random_structure(rng, particle_diameter, n_atoms=800, n_domains=4)
    from ..geometry import euler_to_matrix

    atoms = []
    for p, a in zip(centres, euler_to_matrix(angles).reshape(-1, 3, 3)):
        atoms.append((molecule @ a.T) / pixel_size + p[::-1])
    if atoms:
        part = splat_3d(np.concatenate(atoms), shape, max(0.7, 15.0 / pixel_size))
        part = part / part.max() * 2.0
        density += part.astype(np.float32)
        for p in centres:
            sl, (dz, dy, dx) = _local(p, 0.8 * p_r, shape)
            sub = labels[sl]
            sub[(dz**2 + dy**2 + dx**2 <= (0.8 * p_r) ** 2) & (sub != FEATURES["carbon"])] = FEATURES["particle"]

    # Gold from its own random stream so the other objects do not move; kept out of the SNR.
    gold = np.zeros(shape, dtype=np.float32)
    if n_gold:
        gold_rng = np.random.default_rng([seed, 7])
        gold_r = 50.0 / pixel_size
        for c in gold_rng.uniform([0, 0, 0], shape, size=(n_gold, 3)):
            sl, (dz, dy, dx) = _local(c, gold_r + 2, shape)
            gold[sl] += 8.0 / (1.0 + np.exp((np.sqrt(dz**2 + dy**2 + dx**2) - gold_r) * 2.0))

    # Missing wedge, CTF and envelope, then noise; dense material dark.
    def imaged(d: np.ndarray) -> np.ndarray:
        spectrum = np.fft.rfftn(d) * missing_wedge_mask(shape, max_tilt)
        if defocus_um or bfactor:
            spectrum = spectrum * _transfer(shape, pixel_size, defocus_um, bfactor)
        return np.fft.irfftn(spectrum, s=shape, axes=(0, 1, 2)).astype(np.float32)

    signal = imaged(density)
    noise = rng.standard_normal(size=shape, dtype=np.float32)
    noise = ndimage.gaussian_filter(noise, 0.6)
    noise *= np.sqrt(np.var(signal) / snr) / max(noise.std(), 1e-9)
    if n_gold:
        signal = signal + imaged(gold)
    volume = -(signal + noise)
    volume = (volume - volume.mean()) / volume.std()
    return SyntheticTomogram(
        volume=volume.astype(np.float32),
        pixel_size=pixel_size,
        labels=labels,
        particles=centres,
        membrane_bound=is_bound,
        angles=angles,
    )
