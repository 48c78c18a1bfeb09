"""Atomic file writing and the output-folder policy.

Atomic writes: write to a temporary file beside the target, flush it to disk,
then rename.  A crash, a kill or an exception mid-write leaves the old file
(or no file) in place, never a partial one.  ``os.replace`` is atomic on POSIX
and Windows when the temporary file is on the same file system, which is why
it is created in the target's own directory.  The data are fsynced before the
rename, and the directory after it, so that a power cut cannot leave a
renamed but empty file.

A write killed before its rename leaves its temporary file behind; the next
write of the same target removes it (temporary names carry the writer's
process id, so a temporary file of a process that is still running is kept).

The output-folder policy (:func:`check_outputs`): a job lists every file it
will write before it writes any, and stops on the first that exists unless
the user asked to replace (``--overwrite``) or continue (``--resume``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from ..errors import CryoInputError

PARTIAL = ".partial"
#: Errors of the disk rather than of the writer: reported in one line naming the target.
_DISK_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO}
_PARTIAL_RE = re.compile(r"^\.(?P<stem>.*)\.(?P<pid>\d+)-[^.]*\.partial")


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


def check_outputs(
    paths: Iterable[str | os.PathLike],
    overwrite: bool = False,
    resume: bool = False,
    hint: str | None = None,
) -> list[Path]:
    """Apply the output-folder policy before a job writes anything.

    Parameters
    ----------
    paths : iterable of path-like
        Every file the job will write: outputs, checkpoints, intermediates
        and plots.
    overwrite : bool
        The user asked to replace earlier outputs.
    resume : bool
        The user asked to continue an earlier run (its files are expected).
    hint : str, optional
        What to tell the user to do about a clash; by default the flags.

    Returns
    -------
    list of pathlib.Path
        The paths, in order.

    Raises
    ------
    CryoInputError
        Naming the first path that exists (when neither flag applies) or
        that is a directory (always).
    """
    listed = [Path(p) for p in paths]
    for path in listed:
        if path.is_dir():
            raise CryoInputError(path, "is a directory, expected a file name")
    if overwrite or resume:
        return listed
    for path in listed:
        if path.exists():
            raise CryoInputError(path, f"already exists ({hint or 'use --overwrite to replace it'}); nothing was written")
    return listed


def existing_outputs(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """The listed paths that exist already (for a widget's confirmation dialog)."""
    return [Path(p) for p in paths if Path(p).exists()]


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def stale_partials(folder: str | os.PathLike) -> list[Path]:
    """Temporary files in ``folder`` left by writers that were killed before their rename."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = []
    for entry in folder.iterdir():
        match = _PARTIAL_RE.match(entry.name)
        if match and entry.is_file() and not _alive(int(match["pid"])):
            found.append(entry)
    return found


def remove_stale_partials(folder: str | os.PathLike, stem: str | None = None) -> int:
    """Delete stale temporary files in ``folder`` (of one target's stem, or all); returns how many."""
    removed = 0
    for entry in stale_partials(folder):
        match = _PARTIAL_RE.match(entry.name)
        if stem is not None and match and match["stem"] != stem:
            continue
        with contextlib.suppress(OSError):
            entry.unlink()
            removed += 1
    return removed


def reserve_space(path: str | os.PathLike) -> None:
    """Allocate a file's blocks on disk now, for a file that will be written through a memory map.

    A write through a memory map onto a full disk kills the process with
    SIGBUS, with no message; after this, a full disk is an ``OSError``
    (ENOSPC) here instead, which :func:`atomic_path` reports in one line.
    File systems that cannot preallocate are left as they are.
    """
    if not hasattr(os, "posix_fallocate"):
        return
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise
    finally:
        os.close(fd)


def _fsync_path(path: Path, directory: bool = False) -> None:
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0)
    try:
        fd = os.open(path, flags)
    except OSError:  # e.g. directories cannot be opened on Windows; the data are still renamed atomically
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path to write to; fsync it and rename it onto ``path`` on success.

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

    Raises
    ------
    CryoInputError
        If the target may not be written, or the disk is full or refuses the
        write (the temporary file is removed and the old target kept).
    """
    target = check_writable(path, overwrite=overwrite)
    suffix = "".join(target.suffixes) or ".tmp"
    # A short stem keeps the temporary name within the file system's limit.
    stem = target.stem[:40].replace(".", "_")
    remove_stale_partials(target.parent, stem)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{stem}.{os.getpid()}-", suffix=PARTIAL + suffix[-20:], dir=target.parent)
    except OSError as exc:
        raise CryoInputError(target, f"cannot write in {target.parent} ({exc.strerror})") from None
    os.close(fd)
    tmp = Path(tmp_name)
    tmp.unlink()  # writers such as mrcfile refuse to open an existing file
    try:
        try:
            yield tmp
        except OSError as exc:
            if exc.errno in _DISK_ERRORS:
                raise CryoInputError(target, f"cannot be written ({exc.strerror}); the old file, if any, is kept") from None
            raise
        if not tmp.exists():
            raise RuntimeError(f"nothing was written to {tmp}")
        _fsync_path(tmp)
        try:
            os.replace(tmp, target)
        except OSError as exc:
            raise CryoInputError(target, f"cannot be written ({exc.strerror})") from None
        _fsync_path(target.parent, directory=True)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
