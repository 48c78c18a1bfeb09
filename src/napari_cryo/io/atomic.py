"""Atomic file writing: write to a temporary file beside the target, then rename.

A crash or an exception mid-write leaves the old file (or no file) in place,
never a partial one.  ``os.replace`` is atomic on POSIX and Windows when the
temporary file is on the same file system, which is why it is created in the
target's own directory.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ..errors import CryoInputError


def check_writable(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Check that ``path`` may be written and return it as a Path.

    Parameters
    ----------
    path : str or os.PathLike
        The output file.
    overwrite : bool
        Whether an existing file may be replaced.

    Raises
    ------
    CryoInputError
        If the file exists and ``overwrite`` is false, if it is a directory,
        or if its directory does not exist.
    """
    path = Path(path)
    if path.is_dir():
        raise CryoInputError(path, "is a directory, expected a file name")
    if path.exists() and not overwrite:
        raise CryoInputError(path, "already exists (use --overwrite to replace it)")
    if not path.parent.exists():
        raise CryoInputError(path, f"directory {path.parent} does not exist")
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path to write to; rename it onto ``path`` on success.

    The temporary file keeps the target's suffixes, so libraries that choose
    a format or compression from the file name behave as for the target.

    Parameters
    ----------
    path : str or os.PathLike
        The final file.
    overwrite : bool
        Whether an existing file may be replaced.

    Yields
    ------
    pathlib.Path
        A path in the same directory that does not exist yet.
    """
    target = check_writable(path, overwrite=overwrite)
    suffix = "".join(target.suffixes) or ".tmp"
    try:
        # A short prefix keeps the temporary name within the file system's limit.
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.stem[:40]}.", suffix=".partial" + suffix[-20:], dir=target.parent)
    except OSError as exc:
        raise CryoInputError(target, f"cannot write in {target.parent} ({exc.strerror})") from None
    os.close(fd)
    tmp = Path(tmp_name)
    tmp.unlink()  # writers such as mrcfile refuse to open an existing file
    try:
        yield tmp
        if not tmp.exists():
            raise RuntimeError(f"nothing was written to {tmp}")
        try:
            os.replace(tmp, target)
        except OSError as exc:
            raise CryoInputError(target, f"cannot be written ({exc.strerror})") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
