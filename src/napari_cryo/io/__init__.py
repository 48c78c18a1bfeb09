"""Reading and writing cryo-EM files: MRC family, RELION STAR, particle stacks.

The functions here are plain (no napari, no Qt): ``read_mrc``/``write_mrc``,
``read_star``/``read_coordinates``/``write_coordinates`` and
``ParticleStack``.  ``layers`` turns files into napari layer data, and the
underscore modules are the npe2 hooks.
"""

from .mrc import MrcInfo, read_header, read_mrc, sniff_mrc, write_mrc
from .particles import ParticleStack
from .star import CoordinateSet, ParticleTable, particle_table, read_coordinates, read_star, write_coordinates

__all__ = [
    "CoordinateSet",
    "MrcInfo",
    "ParticleStack",
    "ParticleTable",
    "particle_table",
    "read_coordinates",
    "read_header",
    "read_mrc",
    "read_star",
    "sniff_mrc",
    "write_coordinates",
    "write_mrc",
]
