"""Atlas names from file names."""

from __future__ import annotations

import os
from pathlib import Path


def stem(path: str | os.PathLike) -> str:
    """File name without directory and image extensions (.mrc, .tif, .gz ...)."""
    name = Path(str(path)).name
    for suffix in (".gz", ".bz2"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    for suffix in (".mrcs", ".mrc", ".map", ".tiff", ".tif", ".st"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem
