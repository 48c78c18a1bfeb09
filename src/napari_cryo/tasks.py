"""Long work as generators that report progress, for napari and the command line alike.

Core functions that take long are written as generators yielding
:class:`Progress` (and, where useful, intermediate results).  A widget runs
them in a napari ``thread_worker`` through the shared view base
(:mod:`napari_cryo._view`); the command line runs the same generator with
:func:`run_with_tqdm`.  This module imports neither Qt nor napari.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from typing import Any



#: A long action ready to run: a generator function without arguments (a view runs it in a worker).
Job = Callable[[], Generator[Any, None, Any]]


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
