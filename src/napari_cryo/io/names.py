"""Names of data sets from file names."""

from __future__ import annotations

import os
from pathlib import Path

_SUFFIXES = (".mrcs", ".mrc", ".map", ".rec", ".st", ".ali", ".tiff", ".tif", ".star")


def file_stem(name: str | os.PathLike) -> str:
    """File name without directory, compression and image/STAR extensions (``mic001.mrc.gz`` -> ``mic001``).

    Pick files and label files name micrographs and atlases by path, and
    paths rarely match where the data are now, so data are matched by stem.
    """
    base = Path(str(name)).name
    for suffix in (".gz", ".bz2"):
        if base.lower().endswith(suffix):
            base = base[: -len(suffix)]
    for suffix in _SUFFIXES:
        if base.lower().endswith(suffix):
            return base[: -len(suffix)]
    return Path(base).stem
