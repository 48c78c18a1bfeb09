"""Many files on a dask.distributed cluster: the shared machinery of the batch commands.

``pick run``, ``segment apply``, ``segment pick``, ``squares extract`` and
``squares score`` take ``--scheduler``.  Without it they run in this process
as always.  With it, each input file becomes one task on a dask.distributed
cluster (:func:`connect`):

- ``local`` or ``local:N``: a ``LocalCluster`` of N worker processes (one
  thread each, torch on one thread), started and stopped by the command;
- ``tcp://HOST:PORT`` or a scheduler JSON file: a cluster that runs already
  (e.g. one started with dask-jobqueue on SLURM).

The commands only describe one file's work: a module-level task function
that reads its input, computes and writes its outputs atomically on the
worker, and returns a small :class:`Done`.  :func:`run_batch` does the rest:
it skips inputs whose outputs all exist (unless ``overwrite``), submits one
task per remaining input, shows a tqdm bar over finished tasks, and collects
the failures by file name; a failing file never stops the others.

Models are not sent with the tasks: a task names its model file and calls
:func:`worker_model`, which loads it once per worker process and keeps it,
keyed by the file and its modification time.

``distributed`` is an optional dependency (``napari-cryo[cluster]``); it is
imported only when a cluster is used.  This module imports neither Qt nor
napari.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import CryoInputError

if TYPE_CHECKING:
    from distributed import Client

#: What to install when ``--scheduler`` is used without ``distributed``.
INSTALL_HINT = "pip install 'napari-cryo[cluster]'"
#: Seconds to wait for an existing scheduler to answer.
CONNECT_TIMEOUT_S = 30


def add_scheduler_arg(parser: argparse.ArgumentParser) -> None:
    """The shared ``--scheduler`` option of the batch commands."""
    parser.add_argument(
        "--scheduler",
        metavar="local[:N] | tcp://HOST:PORT | FILE.json",
        help="run one task per file on dask.distributed: 'local' or 'local:N' starts N worker processes here; "
             "tcp://HOST:PORT or a scheduler file uses a running cluster. Failed files are reported at the end "
             "(exit 2) without stopping the others, and files whose outputs exist are skipped (--overwrite redoes them). "
             f"Needs {INSTALL_HINT}",
    )


# --------------------------------------------------------------------------- the scheduler


@dataclass(frozen=True)
class SchedulerSpec:
    """A parsed ``--scheduler`` value.

    Attributes
    ----------
    kind : str
        ``"local"``, ``"address"`` or ``"file"``.
    workers : int
        Worker processes of a local cluster (0 otherwise).
    target : str
        The scheduler address, also of a scheduler file ('' for a local cluster).
    """

    kind: str
    workers: int = 0
    target: str = ""


def available_cores() -> int:
    """CPU cores this process may use (its affinity where the OS says, else the machine's)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def parse_scheduler(spec: str) -> SchedulerSpec:
    """Read a ``--scheduler`` value: ``local``, ``local:N``, a scheduler address or a scheduler file.

    Raises
    ------
    CryoInputError
        If it is none of these.
    """
    text = spec.strip()
    if text == "local":
        return SchedulerSpec("local", available_cores())
    if text.startswith("local:"):
        count = text.removeprefix("local:")
        if not count.isdigit() or int(count) < 1:
            raise CryoInputError(None, f"--scheduler {spec}: give the number of worker processes as local:N with N at least 1")
        return SchedulerSpec("local", int(count))
    if "://" in text:
        return SchedulerSpec("address", target=text)
    if Path(text).is_file():
        # Read here rather than by distributed, which waits and then fails obscurely on a file without an address.
        try:
            address = json.loads(Path(text).read_text())["address"]
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
            raise CryoInputError(text, 'is not a dask scheduler file (JSON with the scheduler\'s "address")') from None
        if not isinstance(address, str) or "://" not in address:
            raise CryoInputError(text, f"holds no scheduler address (found {address!r})")
        return SchedulerSpec("file", target=address)
    raise CryoInputError(text, "is not a scheduler: give local, local:N, tcp://HOST:PORT or an existing scheduler file")


def _distributed():
    """The ``distributed`` package, or a one-line error naming the extra to install."""
    try:
        import distributed
    except ImportError:
        raise CryoInputError(None, f"--scheduler needs dask.distributed, which is not installed: {INSTALL_HINT}") from None
    return distributed


def _one_torch_thread() -> int:
    """Run on each worker of a local cluster: one torch thread per single-threaded worker process."""
    import torch

    torch.set_num_threads(1)
    return torch.get_num_threads()


#: dask's nanny sets these before it spawns a worker.  Its MALLOC_TRIM_THRESHOLD_ of 64 KiB hands freed
#: memory back to the system at once, and torch, which allocates and frees large buffers all the time, slows
#: down (measured: 5 epochs of a segmentation model 51 s instead of 23 s; `pick run` on workers 20-33 % slower),
#: so workers keep glibc's default.
LOCAL_WORKER_ENVIRON = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}


def _restore_environ(before: dict[str, str]) -> None:
    """Undo what the nanny wrote into this process's environment.

    The nanny runs in this process and updates ``os.environ`` (one thread for
    NumPy, the trim threshold); left there, every program started afterwards
    (a torchrun, the viewer's own jobs) would inherit them.
    """
    for key in set(os.environ) - set(before):
        del os.environ[key]
    for key, value in before.items():
        if os.environ.get(key) != value:
            os.environ[key] = value


@contextlib.contextmanager
def local_cluster(workers: int) -> Iterator[Any]:
    """A ``distributed.LocalCluster`` of single-threaded worker processes, closed at the end.

    Workers keep glibc's memory trimming (see ``LOCAL_WORKER_ENVIRON``), and
    this process's environment is left as it was.

    Parameters
    ----------
    workers : int
        Number of worker processes.
    """
    import dask

    distributed = _distributed()
    before = dict(os.environ)
    try:
        with dask.config.set(LOCAL_WORKER_ENVIRON):
            cluster = distributed.LocalCluster(
                n_workers=workers,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                silence_logs=logging.ERROR,
            )
    finally:
        _restore_environ(before)
    try:
        yield cluster
    finally:
        cluster.close()
        _restore_environ(before)


@contextlib.contextmanager
def connect(spec: str | SchedulerSpec) -> Iterator["Client"]:
    """A ``distributed.Client`` for a ``--scheduler`` value, closed (and a local cluster stopped) at the end.

    Parameters
    ----------
    spec : str or SchedulerSpec
        ``local``, ``local:N``, ``tcp://HOST:PORT`` or a scheduler JSON file.

    Raises
    ------
    CryoInputError
        If ``distributed`` is missing, the value is not a scheduler, or no
        scheduler answers.
    """
    parsed = spec if isinstance(spec, SchedulerSpec) else parse_scheduler(spec)
    distributed = _distributed()
    if parsed.kind == "local":
        with local_cluster(parsed.workers) as cluster:
            client = distributed.Client(cluster)
            try:
                client.run(_one_torch_thread)
                yield client
            finally:
                client.close()
        return
    try:
        client = distributed.Client(parsed.target, timeout=CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError, ValueError, KeyError) as exc:
        raise CryoInputError(parsed.target, f"no dask scheduler answers ({type(exc).__name__}: {exc})") from None
    try:
        yield client
    finally:
        client.close()


# --------------------------------------------------------------------------- models on the workers

_MODELS: dict[tuple, Any] = {}
_MODELS_LOCK = threading.Lock()
_LOADS: list[str] = []
#: Models kept per worker process; a new file (or a changed one) pushes out the oldest.
_MODELS_KEPT = 2


def worker_model(loader: Callable[[str], Any], spec: str) -> Any:
    """The model ``loader(spec)`` loaded once in this process and kept for the next tasks.

    The key is the loader, the spec and, for a file, its modification time,
    so a model file replaced during a run is read again.  Worker threads
    share one copy; the lock keeps two of them from loading it twice.
    """
    path = Path(spec)
    stamp = path.stat().st_mtime_ns if path.is_file() else None
    key = (getattr(loader, "__module__", ""), getattr(loader, "__qualname__", repr(loader)), str(spec), stamp)
    with _MODELS_LOCK:
        if key not in _MODELS:
            while len(_MODELS) >= _MODELS_KEPT:
                _MODELS.pop(next(iter(_MODELS)))
            _MODELS[key] = loader(spec)
            _LOADS.append(str(spec))
        return _MODELS[key]


def model_loads() -> list[str]:
    """The models this process has loaded through :func:`worker_model`, in order (for tests and logs)."""
    return list(_LOADS)


# --------------------------------------------------------------------------- tasks and the batch


@dataclass(frozen=True)
class FileJob:
    """One input file and every file its task writes.

    Attributes
    ----------
    source : str
        The input file (the name failures are reported by).
    outputs : tuple of str
        The files the task writes; all present means the input is done.
    """

    source: str
    outputs: tuple[str, ...]


@dataclass(frozen=True)
class Done:
    """What a task sends back: a small summary, never the data.

    Attributes
    ----------
    value : object
        A small number or tuple for the command's summary (e.g. picks found).
    lines : tuple of str
        Lines for standard output (e.g. the files written).
    notes : tuple of str
        Lines for standard error (e.g. what interactions removed).
    """

    value: Any = None
    lines: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Outcome:
    """The end of one file's task: done, or failed with a one-line message naming the file."""

    source: str
    done: Done | None = None
    error: str = ""

    @property
    def ok(self) -> bool:
        """Whether the task finished."""
        return self.done is not None


@dataclass
class BatchReport:
    """What a batch did: the finished files, the skipped ones and the failures."""

    finished: list[Outcome] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[Outcome] = field(default_factory=list)

    @property
    def exit_status(self) -> int:
        """2 if any file failed (like any bad input), else 0."""
        return 2 if self.failed else 0

    def values(self) -> list[Any]:
        """The tasks' summary values, of the finished files."""
        return [o.done.value for o in self.finished if o.done is not None]


def run_task(task: Callable[..., Done], job: FileJob, shared: tuple) -> Outcome:
    """Run ``task(job, *shared)`` and turn any failure into a one-line message (runs on a worker).

    Errors never travel as exceptions: a :class:`CryoInputError` keeps its
    message (``path: problem``); anything else is a bug and says so.
    """
    try:
        return Outcome(job.source, task(job, *shared))
    except CryoInputError as exc:
        message = str(exc) if exc.path else f"{job.source}: {exc.problem}"
        return Outcome(job.source, error=message)
    except (FileNotFoundError, PermissionError, IsADirectoryError) as exc:
        return Outcome(job.source, error=f"{exc.filename or job.source}: {exc.strerror}")
    except Exception as exc:  # noqa: BLE001 - a bug in one file's task must not stop the others
        return Outcome(job.source, error=f"{job.source}: internal error: {type(exc).__name__}: {exc} (please report it)")


def complete(job: FileJob) -> bool:
    """Whether every output of the job exists (writes are atomic: an existing file is a whole one)."""
    return bool(job.outputs) and all(Path(p).exists() for p in job.outputs)


def per_input_targets(
    inputs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    suffix: str,
    what: str,
    file_suffixes: Sequence[str],
) -> tuple[list[Path], bool]:
    """The output file of each input of a one-output-per-file command, and whether ``out`` is a directory.

    One input writes ``out`` itself unless it is a directory; several (or a
    directory) write ``out/<input stem><suffix>`` each.

    Parameters
    ----------
    inputs : sequence of path
        The input files.
    out : path
        The ``--out`` value.
    suffix : str
        What each input's file name ends with in a directory, e.g. ``"_extracted.csv"``.
    what : str
        The inputs in words, plural, for the messages (``"atlases"``).
    file_suffixes : sequence of str
        Lower-case file suffixes that make an ``out`` that does not exist a file name.

    Raises
    ------
    CryoInputError
        If several inputs are given with a file for ``out``, or two inputs would write the same file.
    """
    from .io.names import file_stem

    out = Path(out)
    if len(inputs) == 1 and not out.is_dir():
        return [out], False
    if out.exists() and not out.is_dir():
        raise CryoInputError(out, f"is a file; with several {what} --out must be a directory")
    if not out.exists() and out.suffix.lower() in file_suffixes:
        raise CryoInputError(out, f"looks like a file name; with several {what} --out must be a directory")
    targets = [out / f"{file_stem(p)}{suffix}" for p in inputs]
    for i, target in enumerate(targets):
        if target in targets[:i]:
            other = inputs[targets.index(target)]
            raise CryoInputError(inputs[i], f"would write {target.name} as {other} does; give the {what} different names")
    return targets, True


def make_out_folder(out: str | os.PathLike, targets: Sequence[Path], directory: bool) -> None:
    """Create the ``--out`` directory of :func:`per_input_targets`, or check that a single output's folder exists.

    Raises
    ------
    CryoInputError
        If a single output's folder does not exist.
    """
    if directory:
        Path(out).mkdir(parents=True, exist_ok=True)
    elif not targets[0].parent.is_dir():
        raise CryoInputError(targets[0], f"directory {targets[0].parent} does not exist")


def run_batch(
    client: "Client",
    task: Callable[..., Done],
    jobs: Sequence[FileJob],
    shared: tuple = (),
    overwrite: bool = False,
    description: str = "files",
    echo: bool = True,
) -> BatchReport:
    """Run one task per file on a cluster and collect what happened.

    Parameters
    ----------
    client : distributed.Client
        The cluster to run on.
    task : callable
        A module-level function ``task(job, *shared) -> Done`` that reads
        ``job.source`` and writes ``job.outputs`` atomically.
    jobs : sequence of FileJob
        One per input file.
    shared : tuple
        Further arguments of every task: settings and model file names (small;
        they are pickled with each task).
    overwrite : bool
        Redo files whose outputs all exist; otherwise they are skipped.
    description : str
        The progress bar's label.
    echo : bool
        Print each task's lines and notes as it finishes.

    Returns
    -------
    BatchReport
        Finished, skipped and failed files.
    """
    from distributed import as_completed
    from tqdm import tqdm

    report = BatchReport()
    todo = []
    for job in jobs:
        if not overwrite and complete(job):
            report.skipped.append(job.source)
        else:
            todo.append(job)
    batch = uuid.uuid4().hex[:8]
    futures = {
        client.submit(run_task, task, job, shared, key=f"napari-cryo-{batch}-{i}-{Path(job.source).name}", pure=False): job
        for i, job in enumerate(todo)
    }
    bar = tqdm(total=len(todo), desc=description, unit="file", disable=None)
    try:
        for future in as_completed(list(futures)):
            job = futures.pop(future)
            try:
                outcome = future.result()
            except Exception as exc:  # noqa: BLE001 - e.g. the worker died (KilledWorker) on this file
                outcome = Outcome(job.source, error=f"{job.source}: the task failed on the cluster ({type(exc).__name__}: {exc})")
            future.release()
            (report.finished if outcome.ok else report.failed).append(outcome)
            if echo and outcome.done is not None:
                for line in outcome.done.notes:
                    tqdm.write(line, file=sys.stderr)
                for line in outcome.done.lines:
                    tqdm.write(line, file=sys.stdout)
            bar.update(1)
    finally:
        bar.close()
        if futures:  # interrupted: do not leave the cluster working for nobody
            client.cancel(list(futures))
    return report


def print_report(report: BatchReport, command: str, what: str = "file") -> int:
    """Print the failures (one line each, at the end) and a summary; return the exit status.

    Parameters
    ----------
    report : BatchReport
        From :func:`run_batch`.
    command : str
        The command's name for the error lines, e.g. ``"pick"``.
    what : str
        What one input is, for the summary (``"micrograph"``).
    """
    for outcome in report.failed:
        print(f"napari-cryo {command}: error: {outcome.error}", file=sys.stderr)
    parts = [f"{len(report.finished)} {what}(s) done"]
    if report.skipped:
        parts.append(f"{len(report.skipped)} skipped (outputs complete; --overwrite redoes them)")
    if report.failed:
        parts.append(f"{len(report.failed)} failed")
    print(", ".join(parts), file=sys.stderr if report.failed else sys.stdout)
    return report.exit_status
