"""Synthetic particle stacks with RELION tables and known poses.

Projections of a pseudo-atomic molecule at uniformly random orientations,
each with its own CTF (lognormal defocus, astigmatism) and white noise at a
stated SNR: the variance of the clean CTF-modulated image over the whole
box divided by the noise variance.  Particles are centred (origin shifts 0).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .structures import apply_ctf, ctf_2d, project_atoms, random_rotations, random_structure


@dataclass
class SyntheticParticles:
    """A simulated particle stack.

    Attributes
    ----------
    images : numpy.ndarray
        (N, L, L) float32 particle images.
    pixel_size : float
        Å per pixel.
    table : pandas.DataFrame
        RELION particle columns, including the true poses
        (``rlnAngleRot/Tilt/Psi``, ``rlnOriginX/YAngst``) and CTF parameters.
    optics : pandas.DataFrame
        A one-group RELION optics block.
    atoms : numpy.ndarray
        The pseudo-atomic model (Å, centred) the images were projected from.
    """

    images: np.ndarray
    pixel_size: float
    table: pd.DataFrame
    optics: pd.DataFrame
    atoms: np.ndarray


def simulate_particles(
    n: int = 200,
    box: int = 64,
    pixel_size: float = 3.0,
    diameter: float = 140.0,
    snr: float = 0.1,
    defocus_median: float = 20000.0,
    defocus_sigma: float = 0.3,
    voltage: float = 300.0,
    cs: float = 2.7,
    amplitude_contrast: float = 0.1,
    seed: int = 0,
    atoms: np.ndarray | None = None,
) -> SyntheticParticles:
    """Simulate a particle stack with its RELION table.

    Parameters
    ----------
    n : int
        Number of particles.
    box : int
        Image size in pixels.
    pixel_size : float
        Å per pixel.
    diameter : float
        Molecule diameter in Å (when ``atoms`` is not given).
    snr : float
        Clean-image variance over the whole box divided by noise variance.
    defocus_median : float
        Median defocus in Å; defoci are lognormal with ``defocus_sigma``.
    defocus_sigma : float
        Standard deviation of log defocus.
    voltage, cs, amplitude_contrast : float
        Microscope: kV, mm, fraction.
    seed : int
        Random seed.
    atoms : numpy.ndarray, optional
        A pseudo-atomic model (Å, centred) to project.

    Returns
    -------
    SyntheticParticles
    """
    rng = np.random.default_rng(seed)
    if atoms is None:
        atoms = random_structure(rng, diameter, n_atoms=1200)
    angles = random_rotations(rng, n)
    clean = project_atoms(atoms, angles, box, pixel_size)
    defocus = defocus_median * np.exp(rng.normal(0.0, defocus_sigma, n))
    astig = rng.uniform(0, 0.05, n) * defocus
    astig_angle = rng.uniform(-180, 180, n)
    images = np.empty_like(clean)
    for i in range(n):
        ctf = ctf_2d((box, box), pixel_size, defocus[i] + astig[i], defocus[i] - astig[i], astig_angle[i], voltage, cs, amplitude_contrast)
        signal = apply_ctf(clean[i], ctf)
        sigma = np.sqrt(max(float(np.var(signal)), 1e-12) / snr)
        images[i] = signal + rng.normal(0.0, sigma, (box, box))
    table = pd.DataFrame(
        {
            "rlnImageName": [f"{i + 1:06d}@particles.mrcs" for i in range(n)],
            "rlnMicrographName": ["synthetic.mrc"] * n,
            "rlnCoordinateX": rng.uniform(box, 4096 - box, n).round(1),
            "rlnCoordinateY": rng.uniform(box, 4096 - box, n).round(1),
            "rlnDefocusU": (defocus + astig).round(2),
            "rlnDefocusV": (defocus - astig).round(2),
            "rlnDefocusAngle": astig_angle.round(3),
            "rlnPhaseShift": np.zeros(n),
            "rlnAngleRot": angles[:, 0],
            "rlnAngleTilt": angles[:, 1],
            "rlnAnglePsi": angles[:, 2],
            "rlnOriginXAngst": np.zeros(n),
            "rlnOriginYAngst": np.zeros(n),
            "rlnOpticsGroup": np.ones(n, dtype=int),
            "rlnRandomSubset": rng.integers(1, 3, n),
        }
    )
    optics = pd.DataFrame(
        {
            "rlnOpticsGroup": [1],
            "rlnOpticsGroupName": ["opticsGroup1"],
            "rlnAmplitudeContrast": [amplitude_contrast],
            "rlnSphericalAberration": [cs],
            "rlnVoltage": [voltage],
            "rlnImagePixelSize": [pixel_size],
            "rlnImageSize": [box],
            "rlnImageDimensionality": [2],
        }
    )
    return SyntheticParticles(images=images.astype(np.float32), pixel_size=pixel_size, table=table, optics=optics, atoms=atoms)


def write_particle_dataset(out_dir: str | os.PathLike, particles: SyntheticParticles, overwrite: bool = False) -> Path:
    """Write ``particles.mrcs`` and ``particles.star`` (RELION 3.1+) into ``out_dir``.

    Returns
    -------
    pathlib.Path
        The STAR file.
    """

    from ..io.star import write_star
    from ..io.mrc import write_mrc

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_mrc(out / "particles.mrcs", particles.images, particles.pixel_size, is_stack=True, overwrite=overwrite)
    star = out / "particles.star"
    write_star({"optics": particles.optics, "particles": particles.table}, star, overwrite=overwrite)
    return star
