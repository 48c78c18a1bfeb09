"""Seeded generators of realistic synthetic cryo-EM data.

Used three ways: as napari sample data (small and quick to make), in the tests
(tiny), and in ``benchmarks/`` (full size, with ground truth).  Every
generator takes a ``seed`` and returns its data with the ground truth.
"""

from .atlas import SyntheticAtlas, simulate_atlas
from .micrograph import SyntheticMicrograph, simulate_micrograph
from .particles import SyntheticParticles, simulate_particles, write_particle_dataset
from .tomogram import SyntheticTomogram, simulate_tomogram

__all__ = [
    "SyntheticAtlas",
    "SyntheticMicrograph",
    "SyntheticParticles",
    "SyntheticTomogram",
    "simulate_atlas",
    "simulate_micrograph",
    "simulate_particles",
    "simulate_tomogram",
    "write_particle_dataset",
]
