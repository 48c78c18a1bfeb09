"""Names of data sets from file names, and file names from names read in files."""

from __future__ import annotations

import hashlib
import os
import re
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


# Path separators, characters Windows refuses in names, control characters and lone surrogates.
_UNSAFE_CHARACTERS = re.compile(r'[/\\:*?"<>|\x00-\x1f\x7f\ud800-\udfff]')
_RESERVED_NAMES = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10)), *(f"lpt{i}" for i in range(1, 10))}
#: Bytes of a name's file-name form, leaving room in the 255-byte limit for a tomogram's name.
MAX_STEM_BYTES = 100


def safe_file_stem(name: str) -> str:
    """The file-name form of a name read from a file (a feature title, a model name).

    A plain name is kept as it is.  Otherwise path separators, control
    characters and characters Windows refuses become ``_``, leading dots
    (hidden files, ``..``) and trailing dots and spaces go, the name is
    shortened to :data:`MAX_STEM_BYTES` bytes, and a short hash of the whole
    name is appended, so that two names that differ keep different files.

    Parameters
    ----------
    name : str
        The name as the user sees it.

    Returns
    -------
    str
        One path component: no separators, never empty, ``.`` or ``..``.
    """
    stem = _UNSAFE_CHARACTERS.sub("_", name).lstrip(".").rstrip(". ")
    limit = MAX_STEM_BYTES - 9  # room for the hash
    short = stem.encode("utf-8")[:limit].decode("utf-8", "ignore").rstrip(". ")
    if stem and stem == name and stem.lower().split(".")[0] not in _RESERVED_NAMES and len(stem.encode("utf-8")) <= MAX_STEM_BYTES:
        return stem
    digest = hashlib.sha1(name.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{short}-{digest}" if short else digest
