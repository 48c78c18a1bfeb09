"""Pseudo-atomic structures, their maps and projections, and a numpy CTF.

Molecules are clouds of Gaussian 'pseudo-atoms' built from a few globular
domains, so they look like proteins at low resolution, are asymmetric, and
can be projected exactly and fast: rotating the atoms and splatting them
into a 2D histogram is the projection of the 3D map, whatever the angle.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..geometry import euler_to_matrix


def random_structure(
    rng: np.random.Generator,
    diameter: float = 150.0,
    n_atoms: int = 1500,
    n_domains: int = 5,
    elongation: float = 1.0,
) -> np.ndarray:
    """A random asymmetric molecule as pseudo-atom positions in Å, centred.

    Parameters
    ----------
    rng : numpy.random.Generator
        Random source (seeded by the caller, for reproducible data).
    diameter : float
        Approximate largest extent in Å.
    n_atoms : int
        Number of pseudo-atoms.
    n_domains : int
        Number of globular domains the atoms are spread over.
    elongation : float
        Stretch along the molecule's Z axis (1 = roughly globular).

    Returns
    -------
    numpy.ndarray
        (n_atoms, 3) XYZ positions in Å with the centre of mass at 0.
    """
    radius = diameter / 2.0
    centres = rng.normal(size=(n_domains, 3)) * radius * 0.35
    centres[:, 2] *= elongation
    sizes = rng.uniform(0.25, 0.45, n_domains) * radius
    weights = sizes**3 / np.sum(sizes**3)
    which = rng.choice(n_domains, size=n_atoms, p=weights)
    atoms = centres[which] + rng.normal(size=(n_atoms, 3)) * sizes[which, None] * 0.45
    atoms -= atoms.mean(axis=0)
    # Keep the molecule inside its nominal diameter.
    r = np.linalg.norm(atoms, axis=1)
    scale = np.minimum(1.0, radius * 0.95 / np.maximum(r, 1e-9))
    return atoms * scale[:, None]


def atoms_from_map(volume: np.ndarray, voxel_size: float, n_atoms: int = 2000, seed: int = 0, level: float | None = None) -> np.ndarray:
    """Pseudo-atoms that follow a real density map (e.g. an EMDB map), in Å, centred.

    Voxels above ``level`` (default: the 90th percentile, roughly the
    molecular surface of a map in a box) are drawn with probability
    proportional to their density and jittered within the voxel, so the
    projections of the atoms reproduce the projections of the map at the
    atoms' blur.
    """
    rng = np.random.default_rng(seed)
    vol = np.asarray(volume, dtype=np.float64)
    level = float(np.percentile(vol, 90)) if level is None else level
    weights = np.clip(vol - level, 0, None).ravel()
    if weights.sum() <= 0:
        raise ValueError("no density above the level")
    idx = rng.choice(weights.size, size=n_atoms, p=weights / weights.sum())
    zyx = np.column_stack(np.unravel_index(idx, vol.shape)).astype(float) + rng.uniform(-0.5, 0.5, (n_atoms, 3))
    xyz = zyx[:, ::-1] * voxel_size
    return xyz - xyz.mean(axis=0)


def random_rotations(rng: np.random.Generator, n: int) -> np.ndarray:
    """Uniformly distributed RELION Euler angles (rot, tilt, psi) in degrees, (n, 3)."""
    rot = rng.uniform(-180.0, 180.0, n)
    tilt = np.rad2deg(np.arccos(rng.uniform(-1.0, 1.0, n)))
    psi = rng.uniform(-180.0, 180.0, n)
    return np.stack([rot, tilt, psi], axis=1)


def splat_2d(xy: np.ndarray, shape: tuple[int, int], sigma_px: float, weights: np.ndarray | None = None) -> np.ndarray:
    """Sum of Gaussians at XY pixel positions on a (Y, X) grid (0-based pixel centres)."""
    hist, _, _ = np.histogram2d(
        xy[:, 1], xy[:, 0], bins=shape, range=[[-0.5, shape[0] - 0.5], [-0.5, shape[1] - 0.5]], weights=weights
    )
    return ndimage.gaussian_filter(hist, sigma_px, mode="constant")


def splat_3d(xyz: np.ndarray, shape: tuple[int, int, int], sigma_px: float, weights: np.ndarray | None = None) -> np.ndarray:
    """Sum of Gaussians at XYZ pixel positions on a (Z, Y, X) grid."""
    zyx = xyz[:, ::-1]
    hist, _ = np.histogramdd(zyx, bins=shape, range=[[-0.5, s - 0.5] for s in shape], weights=weights)
    return ndimage.gaussian_filter(hist, sigma_px, mode="constant")


def atoms_to_volume(atoms: np.ndarray, box: int, pixel_size: float, sigma: float = 4.0) -> np.ndarray:
    """Rasterise pseudo-atoms (Å, centred) into a (box, box, box) map at ``pixel_size``."""
    centre = box // 2
    xyz = atoms / pixel_size + centre
    vol = splat_3d(xyz, (box, box, box), sigma / pixel_size)
    return (vol / vol.max()).astype(np.float32)


def project_atoms(atoms: np.ndarray, angles: np.ndarray, box: int, pixel_size: float, sigma: float = 4.0) -> np.ndarray:
    """Projections of a pseudo-atomic model along Z after RELION rotation ``A``.

    Parameters
    ----------
    atoms : numpy.ndarray
        (n, 3) XYZ in Å, centred.
    angles : numpy.ndarray
        (N, 3) RELION Euler angles in degrees.
    box : int
        Image size in pixels; the molecule's centre lands on pixel ``box // 2``.
    pixel_size : float
        Å per pixel.
    sigma : float
        Gaussian width of each atom in Å.

    Returns
    -------
    numpy.ndarray
        (N, box, box) float32 projections.
    """
    mats = euler_to_matrix(np.atleast_2d(angles))
    out = np.empty((len(mats), box, box), dtype=np.float32)
    centre = box // 2
    for i, a in enumerate(mats):
        xy = (atoms @ a.T)[:, :2] / pixel_size + centre
        out[i] = splat_2d(xy, (box, box), sigma / pixel_size)
    return out


def electron_wavelength(voltage_kv: float) -> float:
    """Relativistic electron wavelength in Å for an acceleration voltage in kV."""
    v = voltage_kv * 1e3
    return 12.2643247 / np.sqrt(v * (1.0 + v * 0.978466e-6))


def ctf_2d(
    shape: tuple[int, int],
    pixel_size: float,
    defocus_u: float,
    defocus_v: float | None = None,
    astigmatism_angle: float = 0.0,
    voltage: float = 300.0,
    cs: float = 2.7,
    amplitude_contrast: float = 0.1,
    phase_shift: float = 0.0,
    bfactor: float = 0.0,
) -> np.ndarray:
    """The CTF of a raw micrograph on an unshifted ``numpy.fft.fft2`` grid.

    Defoci in Å (positive = underfocus), angle and phase shift in degrees,
    voltage in kV, Cs in mm.  ``-sin(chi)``: positive density appears dark
    at low frequency, as in a micrograph.  This is the *negative* of RELION's
    CTF, which applies to contrast-inverted (white) particles; reconstruction
    uses RELION's (:func:`napari_cryo.reconstruction.physics.ctf_2d`).
    """
    defocus_v = defocus_u if defocus_v is None else defocus_v
    ky = np.fft.fftfreq(shape[0], d=pixel_size)[:, None]
    kx = np.fft.fftfreq(shape[1], d=pixel_size)[None, :]
    k2 = kx**2 + ky**2
    angle = np.arctan2(ky, kx)
    defocus = 0.5 * (defocus_u + defocus_v) + 0.5 * (defocus_u - defocus_v) * np.cos(2.0 * (angle - np.deg2rad(astigmatism_angle)))
    lam = electron_wavelength(voltage)
    cs_a = cs * 1e7
    chi = np.pi * lam * defocus * k2 - 0.5 * np.pi * cs_a * lam**3 * k2**2
    chi += np.arcsin(amplitude_contrast) + np.deg2rad(phase_shift)
    ctf = -np.sin(chi)
    if bfactor:
        ctf *= np.exp(-bfactor * k2 / 4.0)
    return ctf


def apply_ctf(image: np.ndarray, ctf: np.ndarray) -> np.ndarray:
    """Convolve an image with a CTF given on its FFT grid."""
    return np.fft.ifft2(np.fft.fft2(image) * ctf).real.astype(np.float32)
