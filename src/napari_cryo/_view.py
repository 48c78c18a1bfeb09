"""The base every napari-cryo widget shares: notifications, input errors, one task at a time.

A view reads widget values, calls its capability's Qt-free controller and
adds the layer-data tuples the controller returns.  What all four views
need for that lives here once:

- :func:`start_worker` runs a progress generator in a napari
  ``thread_worker`` with a progress bar; errors become notifications.
- :class:`TaskRunner` gives every task an id and drops the callbacks of
  tasks that are no longer the latest, so a task started from another
  task's result (retrain, then pick) owns the busy state and Cancel.
- :class:`CryoView` is the widget base: a status line, a Cancel button,
  ``notify`` and ``run`` (start a task, disable the action buttons until the
  latest task ends).
- :meth:`CryoView.confirm_replace` asks before a job replaces files
  (:func:`ask_to_replace`, a dialog that tests replace).
- :func:`reports_input_errors` turns a :class:`CryoInputError` raised by a
  view method into a notification and a ``None`` return.
- :func:`find_layer`, :func:`put_layer` and :func:`in_turns` find the layer
  a view made (by metadata, so renames do not matter), add or update it from
  a controller's layer-data tuple, and spread slow GUI steps over turns of
  the event loop.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Generator, Iterable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from magicgui.widgets import Container, Label, PushButton

from .errors import CryoInputError
from .tasks import Progress

if TYPE_CHECKING:  # pragma: no cover
    import napari

F = TypeVar("F", bound=Callable[..., Any])


def notify(message: str, error: bool = False, warning: bool = False) -> None:
    """Show a napari notification: an error, a warning or information."""
    from napari.utils.notifications import show_error, show_info, show_warning

    (show_error if error else show_warning if warning else show_info)(message)


def ask_to_replace(paths: Sequence[Any], parent: Any = None) -> bool:
    """Ask the user, in a dialog, whether to replace files that exist; True when there are none.

    Widgets call this before a job writes (the output-folder policy, see
    :func:`napari_cryo.io.atomic.check_outputs`).  Tests replace it with a
    function that answers yes or no.
    """
    if not paths:
        return True
    from qtpy.QtWidgets import QMessageBox

    names = [str(p) for p in paths]
    shown = "\n".join(names[:8]) + (f"\n... and {len(names) - 8} more" if len(names) > 8 else "")
    answer = QMessageBox.question(
        parent,
        "Replace files?",
        f"{len(names)} file(s) exist already and would be replaced:\n{shown}",
        QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
        QMessageBox.StandardButton.No,
    )
    return answer == QMessageBox.StandardButton.Yes


def start_worker(
    func: Callable[..., Generator[Any, None, Any]],
    *args: Any,
    description: str = "",
    on_yield: Callable[[Any], None] | None = None,
    on_returned: Callable[[Any], None] | None = None,
    on_finished: Callable[[], None] | None = None,
    on_errored: Callable[[BaseException], None] | None = None,
    on_aborted: Callable[[], None] | None = None,
    **kwargs: Any,
):
    """Run a progress generator in a napari thread worker with a progress bar.

    Parameters
    ----------
    func : callable
        A generator function yielding :class:`~napari_cryo.tasks.Progress` and other values.
    *args, **kwargs
        Passed to ``func``.
    description : str
        The progress bar's label, also used in error messages.
    on_yield, on_returned, on_finished, on_errored, on_aborted : callable, optional
        Called on the main thread: with every value that is not a ``Progress``, with the return
        value, when the worker ends whatever the reason, with the exception, and after a cancel.

    Returns
    -------
    napari.qt.threading.GeneratorWorker
        The started worker; ``quit()`` cancels it between two yields.
    """
    from napari.qt.threading import thread_worker
    from napari.utils import progress

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
            notify(str(exc), error=True)
        else:
            notify(f"{description or 'task'} failed: {type(exc).__name__}: {exc}", error=True)
        if on_errored is not None:
            on_errored(exc)

    def _aborted() -> None:
        notify(f"{description or 'task'} cancelled")
        if on_aborted is not None:
            on_aborted()

    def _finished() -> None:
        bar.close()
        if on_finished is not None:
            on_finished()

    worker.yielded.connect(_yielded)
    worker.errored.connect(_errored)
    worker.aborted.connect(_aborted)
    if on_returned is not None:
        worker.returned.connect(on_returned)
    worker.finished.connect(_finished)
    worker.start()
    return worker


def find_layer(viewer: Any, **metadata: Any) -> Any:
    """The first layer whose metadata holds every given item (``None`` if there is none)."""
    for layer in viewer.layers:
        meta = layer.metadata or {}
        if all(key in meta and meta[key] == value for key, value in metadata.items()):
            return layer
    return None


def put_layer(viewer: Any, layer_data: tuple[Any, dict[str, Any], str], existing: Any = None, update: Sequence[str] = ("data",)) -> Any:
    """Add a layer from a layer-data tuple, or update ``existing`` from it.

    Parameters
    ----------
    viewer : napari.Viewer
        Where to add the layer.
    layer_data : tuple
        ``(data, kwargs, layer_type)`` as a controller returns it.
    existing : napari layer, optional
        The layer made before for the same thing; ``None`` adds a new one.
    update : sequence of str
        The attributes of ``existing`` to set: ``"data"`` from the data, the others from ``kwargs``.

    Returns
    -------
    napari layer
        The new or updated layer.
    """
    data, kwargs, layer_type = layer_data
    if existing is None:
        return getattr(viewer, f"add_{layer_type}")(data, **kwargs)
    if layer_type == "points" and "data" in update:
        existing.selected_data = set()  # indices would be stale after replacing the data
    for key in update:
        setattr(existing, key, data if key == "data" else kwargs[key])
    return existing


_scheduled = 0


def pending_turns() -> int:
    """Steps of :func:`in_turns` still waiting for their turn (a viewer closed before they run would get them late)."""
    return _scheduled


def in_turns(steps: Sequence[Callable[[], Any]], delay_ms: int = 10, now: bool = False) -> None:
    """Run ``steps`` one per turn of the Qt event loop, so the GUI's own timers run between them.

    Adding a layer or drawing a plot takes up to ~0.1 s; several in one turn would stall the
    GUI.  The delay is a timer, not 0: a zero timer runs before timers that are overdue.  With
    ``now`` the first step runs at once.
    """
    from qtpy.QtCore import QTimer

    if not steps:
        return

    def run() -> None:
        steps[0]()
        in_turns(steps[1:], delay_ms)

    def later() -> None:
        global _scheduled
        _scheduled -= 1
        run()

    if now:
        run()
    else:
        global _scheduled
        _scheduled += 1
        QTimer.singleShot(delay_ms, later)


class TaskRunner:
    """One task at a time, with ids: only the latest task's callbacks change state.

    A view starts every long action through :meth:`start`.  Each start gets
    a new id; the callbacks of an older task (its late values, its result,
    its end) are dropped, so that whichever task is newest owns the busy
    state and is the one Cancel stops.

    Parameters
    ----------
    on_busy : callable, optional
        Called with ``True`` when a task starts and ``False`` when the latest task ends.
    """

    def __init__(self, on_busy: Callable[[bool], None] | None = None) -> None:
        self._on_busy = on_busy
        self._task_id = 0
        self.worker = None

    @property
    def task_id(self) -> int:
        """The id of the latest task started (0 before the first)."""
        return self._task_id

    @property
    def busy(self) -> bool:
        """Whether the latest task is still running."""
        return self.worker is not None

    def _current(self, task_id: int, callback: Callable[..., Any] | None) -> Callable[..., None] | None:
        if callback is None:
            return None

        def guarded(*args: Any) -> None:
            if task_id == self._task_id:
                callback(*args)

        return guarded

    def start(
        self,
        func: Callable[..., Generator[Any, None, Any]],
        *args: Any,
        description: str = "",
        on_yield: Callable[[Any], None] | None = None,
        on_returned: Callable[[Any], None] | None = None,
        on_finished: Callable[[], None] | None = None,
        on_aborted: Callable[[], None] | None = None,
        **kwargs: Any,
    ):
        """Start ``func`` as the latest task; an older task still running is cancelled.

        Returns the worker (see :func:`start_worker`).
        """
        if self.worker is not None:
            self.worker.quit()
        self._task_id += 1
        task_id = self._task_id

        def finished() -> None:
            if task_id != self._task_id:
                return
            self.worker = None
            if on_finished is not None:
                on_finished()
            if self._on_busy is not None and self.worker is None:
                self._on_busy(False)

        self.worker = start_worker(
            func,
            *args,
            description=description,
            on_yield=self._current(task_id, on_yield),
            on_returned=self._current(task_id, on_returned),
            on_aborted=self._current(task_id, on_aborted),
            on_finished=finished,
            **kwargs,
        )
        if self._on_busy is not None:
            self._on_busy(True)
        return self.worker

    def cancel(self) -> None:
        """Ask the latest task to stop at its next yield."""
        if self.worker is not None:
            self.worker.quit()


def reports_input_errors(method: F) -> F:
    """Decorate a view method: a :class:`CryoInputError` becomes a notification and ``None``."""

    @functools.wraps(method)
    def wrapper(self: CryoView, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except CryoInputError as exc:
            self.notify(str(exc), error=True)
            return None

    return wrapper  # type: ignore[return-value]


class CryoView(Container):
    """The base of the four napari-cryo widgets.

    Subclasses add their controls, then call :meth:`add_task_panel` with the
    buttons to disable while a task runs; the Cancel button and the status
    line go below them.

    Parameters
    ----------
    napari_viewer : napari.Viewer
        The viewer the widget works on.
    """

    def __init__(self, napari_viewer: "napari.Viewer", **kwargs: Any) -> None:
        super().__init__(**{"labels": True, **kwargs})
        self.viewer = napari_viewer
        self.tasks = TaskRunner(on_busy=self._set_busy)
        self._actions: list[Any] = []
        self._cancel = PushButton(text="Cancel", enabled=False)
        self._status = Label(value="")
        self._cancel.changed.connect(self.cancel)

    @property
    def worker(self):
        """The latest task's worker, or ``None`` when idle."""
        return self.tasks.worker

    def add_task_panel(self, actions: Iterable[Any]) -> None:
        """Append the Cancel button and the status line; ``actions`` are disabled while busy."""
        self._actions = list(actions)
        self.extend([self._cancel, self._status])

    def _set_busy(self, busy: bool) -> None:
        for widget in self._actions:
            widget.enabled = not busy
        self._cancel.enabled = busy
        self.on_busy_changed(busy)

    def on_busy_changed(self, busy: bool) -> None:
        """Hook for subclasses: called when a task starts (True) or the latest one ends (False)."""

    def add_plot(self, height: int = 180, placeholder: str | None = None) -> tuple[Any, Any]:
        """A matplotlib figure on a Qt canvas below the controls: ``(figure, canvas)``, ``(None, None)`` without Qt."""
        from .plots import qt_figure_canvas

        figure, canvas = qt_figure_canvas(height, placeholder)
        if canvas is not None:
            self.native.layout().addWidget(canvas)
        return figure, canvas

    @staticmethod
    def draw_loss(figure: Any, canvas: Any, history: Sequence[Any], title: str) -> None:
        """Redraw a loss plot (see :func:`~napari_cryo.plots.loss_figure`) on a canvas from :meth:`add_plot`."""
        if canvas is None:
            return
        from .plots import loss_figure

        loss_figure(history, figure, title=title)
        canvas.draw_idle()

    def notify(self, message: str, error: bool = False, warning: bool = False) -> None:
        """Show ``message`` in the status line and as a napari notification."""
        self._status.value = message
        notify(message, error=error, warning=warning)

    def confirm_replace(self, paths: Iterable[Any]) -> bool:
        """Whether the job may go on: no listed file exists, or the user agreed to replace them.

        A refusal is reported in the status line; nothing is written.
        """
        from .io.atomic import existing_outputs

        clashes = existing_outputs(paths)
        if not clashes:
            return True
        if ask_to_replace(clashes, parent=self.native):
            return True
        self.notify(f"Nothing written: {clashes[0]} exists and was not replaced", warning=True)
        return False

    def run(self, func: Callable[..., Generator[Any, None, Any]], *args: Any, **kwargs: Any):
        """Start a long action as this view's latest task (see :meth:`TaskRunner.start`)."""
        return self.tasks.start(func, *args, **kwargs)

    def cancel(self) -> None:
        """Stop the running task at its next progress report."""
        self.tasks.cancel()
