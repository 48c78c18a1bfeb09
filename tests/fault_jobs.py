"""Run ``napari-cryo`` commands as separate processes for the fault tests (``test_faults.py``).

Each job is a real process running :func:`napari_cryo.cli.main`, which a test
kills with SIGKILL like any other.  The processes are forked by a
``multiprocessing`` forkserver that has imported torch and every command
once (:data:`PRELOAD`): a job then starts in milliseconds instead of the
seconds torch takes to import, so a test can kill many jobs.

Two faults are made inside the job itself:

- ``die_at=(PATTERN, N)``: the N-th atomic rename onto a file whose name
  matches PATTERN (see :mod:`napari_cryo.io.atomic`) instead truncates the
  temporary file to half its size and kills the process with SIGKILL, as if
  it died in the middle of writing that file;
- ``file_size_limit=B``: ``RLIMIT_FSIZE`` of B bytes with SIGXFSZ ignored, so
  that writing past B bytes fails with EFBIG, as on a full disk; with
  ``limit_from=NAME`` the limit starts only when the atomic write of the file
  NAME begins (the disk fills up just then).
"""

from __future__ import annotations

import fnmatch
import functools
import importlib
import os
import resource
import signal
import sys
import tempfile
from pathlib import Path

#: What the forkserver imports once, for every job (installed modules only: Python 3.11's forkserver
#: does not apply the parent's ``sys.path`` before it imports them).
PRELOAD = [
    "torch",
    "torch._dynamo",  # the first optimiser would import it, for seconds, in every job
    "matplotlib.figure",
    "matplotlib.backends.backend_agg",
    "starfile",
    "napari_cryo.cli",
    "napari_cryo.picking._cli",
    "napari_cryo.picking.training",
    "napari_cryo.squares._cli",
    "napari_cryo.squares.training",
    "napari_cryo.squares.pipeline",
    "napari_cryo.segmentation._cli",
    "napari_cryo.segmentation.training",
    "napari_cryo.segmentation.group",
    "napari_cryo.reconstruction._cli",
    "napari_cryo.reconstruction.controller",
    "napari_cryo.plots",
]


def _die_at(pattern: str, n: int) -> None:
    """Make the n-th atomic rename onto a file matching ``pattern`` a kill in the middle of writing it."""
    from napari_cryo.io.atomic import PARTIAL

    real_replace = os.replace
    count = 0

    def replace(src, dst, *args, **kwargs):
        nonlocal count
        if PARTIAL in os.path.basename(os.fspath(src)) and fnmatch.fnmatch(os.path.basename(os.fspath(dst)), pattern):
            count += 1
            if count == n:
                os.truncate(src, os.path.getsize(src) // 2)
                os.kill(os.getpid(), signal.SIGKILL)
        return real_replace(src, dst, *args, **kwargs)

    os.replace = replace


def _limit_file_size(limit: int) -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def _limit_from(name: str, limit: int) -> None:
    """Limit the file size once the atomic write of the file ``name`` starts its temporary file.

    The temporary file's name begins with the target's stem and ends with its suffixes.
    """
    real_mkstemp = tempfile.mkstemp
    stem, suffixes = name.split(".", 1)

    def mkstemp(*args, **kwargs):
        if str(kwargs.get("prefix", "")).startswith(f".{stem}.") and str(kwargs.get("suffix", "")).endswith(f".{suffixes}"):
            _limit_file_size(limit)
        return real_mkstemp(*args, **kwargs)

    tempfile.mkstemp = mkstemp


def _smaller_defaults(overrides: dict[str, dict]) -> None:
    """Give settings classes smaller defaults (``{"module:Class": {field: value}}``) for options a command does not offer."""
    for target, values in overrides.items():
        module_name, name = target.split(":")
        module = importlib.import_module(module_name)
        setattr(module, name, functools.partial(getattr(module, name), **values))


def run_cli(argv: list[str], log: str, die_at: tuple[str, int] | None = None, file_size_limit: int = 0,
            limit_from: str | None = None, defaults: dict[str, dict] | None = None) -> None:
    """The job: ``napari-cryo ARGV`` with stdout and stderr in ``LOG.out`` and ``LOG.err``; exits with its status.

    Parameters
    ----------
    argv : list of str
        The command line after ``napari-cryo``.
    log : str
        Path prefix of the two output files.
    die_at : (str, int), optional
        Kill the process in the middle of its N-th atomic write of a file matching the pattern.
    file_size_limit : int
        If positive, writing a file past this many bytes fails with EFBIG.
    limit_from : str, optional
        Apply ``file_size_limit`` only from the atomic write of the file of this name on (a name with one dot).
    defaults : dict, optional
        Smaller defaults of settings classes, see :func:`_smaller_defaults`.
    """
    for fd, suffix in ((1, ".out"), (2, ".err")):
        target = os.open(log + suffix, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(target, fd)
        os.close(target)
    import torch

    from napari_cryo import cli

    torch.set_num_threads(1)  # the tests share two cores
    _smaller_defaults(defaults or {})
    if die_at is not None:
        _die_at(*die_at)
    if file_size_limit and limit_from:
        _limit_from(limit_from, file_size_limit)
    elif file_size_limit:
        _limit_file_size(file_size_limit)
    code = cli.main([str(a) for a in argv])
    sys.stdout.flush()
    sys.stderr.flush()
    sys.exit(code)


def read_log(log: str | os.PathLike) -> tuple[str, str]:
    """The job's stdout and stderr."""
    return Path(f"{log}.out").read_text(errors="replace"), Path(f"{log}.err").read_text(errors="replace")
