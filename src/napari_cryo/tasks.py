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


#: Seconds between progress lines when standard error is not a terminal (a log file): the bar is off there.
LOG_EVERY_S = 30.0


def run_with_tqdm(gen: Iterator[Any], description: str = "", on_value: Callable[[Any], None] | None = None,
                  budget_s: float | None = None) -> Any:
    """Drive a progress generator in the terminal; return its return value.

    On a terminal, a tqdm bar with the rate and the time left; in a log (standard
    error not a terminal), one line every :data:`LOG_EVERY_S` seconds instead.

    Parameters
    ----------
    gen : iterator
        A generator yielding :class:`Progress` and other values.
    description : str
        The progress bar's label.
    on_value : callable, optional
        Called with every yielded value that is not a :class:`Progress`.
    budget_s : float, optional
        For work that runs to a time budget: the bar counts seconds of it, so its ETA is the budget's end.
    """
    import sys
    import time

    from tqdm import tqdm

    timed = budget_s is not None
    bar = tqdm(desc=description, unit="s" if timed else "step", total=round(budget_s) if timed else None, disable=None,
               bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s [{elapsed}<{remaining}{postfix}]" if timed else None)
    start = last_line = time.perf_counter()
    try:
        while True:
            try:
                item = next(gen)
            except StopIteration as stop:
                return stop.value
            if isinstance(item, Progress):
                now = time.perf_counter()
                if timed:
                    bar.n = min(now - start, bar.total)
                else:
                    if item.total is not None and bar.total != item.total:
                        bar.total = item.total
                    bar.n = item.done
                if item.message:
                    bar.set_postfix_str(item.message, refresh=False)
                bar.refresh()
                if bar.disable and now - last_line >= LOG_EVERY_S:
                    last_line = now
                    done = f"{now - start:.0f} of {budget_s:.0f} s" if timed else f"{item.done}" + ("" if item.total is None else f"/{item.total}")
                    print(f"{description}: {done}{': ' + item.message if item.message else ''}", file=sys.stderr, flush=True)
            elif on_value is not None:
                on_value(item)
    finally:
        bar.close()
