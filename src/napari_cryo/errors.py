"""Errors raised for bad input.

Every problem with a user's file is reported as a :class:`CryoInputError`
that names the file and the problem in one line, so that the command line
can print it without a traceback and napari can show it as a notification.
"""

from __future__ import annotations

import os


class CryoInputError(ValueError):
    """A file or a parameter cannot be used, with the reason.

    Parameters
    ----------
    path : str or os.PathLike or None
        The file at fault (``None`` when the problem is not tied to a file).
    problem : str
        What is wrong, as a short sentence without a trailing full stop.
    """

    def __init__(self, path: str | os.PathLike | None, problem: str) -> None:
        self.path = None if path is None else os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


class CryoCancelled(RuntimeError):
    """Raised inside long work when the user asked it to stop."""
