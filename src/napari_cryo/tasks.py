"""Long work as generators that report progress, for napari and the command line alike.

Core functions that take long are written as generators yielding
:class:`Progress` (and, where useful, intermediate results).  A widget runs
them with :func:`start_worker` in a napari ``thread_worker``: progress drives
a napari progress bar, other values go to ``on_yield`` on the main thread
(which is where layers are touched), and ``worker.quit()`` cancels between
two yields.  The command line runs the same generator with
:func:`run_with_tqdm`.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from typing import Any

from .errors import CryoInputError


@dataclass(frozen=True)
class Progress:
    """A progress report: ``done`` of ``total`` steps, with a short message."""

    done: int
    total: int | None = None
    message: str = ""


def drain(gen: Iterator[Any], on_value: Callable[[Any], None] | None = None) -> tuple[Any, list[Any]]:
    """Run a progress generator to its end without a progress bar (scripts, benchmarks, tests).

    Parameters
    ----------
    gen : iterator
        A generator yielding :class:`Progress` and other values.
    on_value : callable, optional
        Called with every yielded value as it comes.

    Returns
    -------
    tuple
        The generator's return value and the list of everything it yielded.
    """
    items: list[Any] = []
    while True:
        try:
            item = next(gen)
        except StopIteration as stop:
            return stop.value, items
        items.append(item)
        if on_value is not None:
            on_value(item)


def run_with_tqdm(gen: Iterator[Any], description: str = "", on_value: Callable[[Any], None] | None = None) -> Any:
    """Drive a progress generator in the terminal; return its return value.

    Parameters
    ----------
    gen : iterator
        A generator yielding :class:`Progress` and other values.
    description : str
        The progress bar's label.
    on_value : callable, optional
        Called with every yielded value that is not a :class:`Progress`.
    """
    from tqdm import tqdm

    bar = tqdm(desc=description, unit="step", disable=None)
    try:
        while True:
            try:
                item = next(gen)
            except StopIteration as stop:
                return stop.value
            if isinstance(item, Progress):
                if item.total is not None and bar.total != item.total:
                    bar.total = item.total
                bar.n = item.done
                if item.message:
                    bar.set_postfix_str(item.message, refresh=False)
                bar.refresh()
            elif on_value is not None:
                on_value(item)
    finally:
        bar.close()


def start_worker(
    func: Callable[..., Generator[Any, None, Any]],
    *args: Any,
    description: str = "",
    on_yield: Callable[[Any], None] | None = None,
    on_returned: Callable[[Any], None] | None = None,
    on_finished: Callable[[], None] | None = None,
    **kwargs: Any,
):
    """Run a progress generator in a napari thread worker with a progress bar.

    Returns the started ``GeneratorWorker``; call ``quit()`` on it to cancel.
    Errors are shown as napari notifications: a :class:`CryoInputError` as
    its one-line message, anything else with its type.
    """
    from napari.qt.threading import thread_worker
    from napari.utils import progress
    from napari.utils.notifications import show_error, show_info

    # Errors are shown by _errored below, not re-raised into the event loop.
    worker = thread_worker(func, start_thread=False, ignore_errors=True)(*args, **kwargs)
    bar = progress(total=0, desc=description)

    def _yielded(item: Any) -> None:
        if isinstance(item, Progress):
            if item.total is not None and bar.total != item.total:
                bar.total = item.total
            bar.n = item.done
            if item.message:
                bar.set_description(f"{description}: {item.message}" if description else item.message)
            bar.refresh()
        elif on_yield is not None:
            on_yield(item)

    def _errored(exc: BaseException) -> None:
        if isinstance(exc, CryoInputError):
            show_error(str(exc))
        else:
            show_error(f"{description or 'task'} failed: {type(exc).__name__}: {exc}")

    def _finished() -> None:
        bar.close()
        if on_finished is not None:
            on_finished()

    worker.yielded.connect(_yielded)
    worker.errored.connect(_errored)
    worker.aborted.connect(lambda: show_info(f"{description or 'task'} cancelled"))
    if on_returned is not None:
        worker.returned.connect(on_returned)
    worker.finished.connect(_finished)
    worker.start()
    return worker
