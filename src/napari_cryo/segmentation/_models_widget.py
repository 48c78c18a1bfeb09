"""The models panel of the segmentation view: thresholds, competition, files, interactions and their diagram.

A magicgui container over the controller's :class:`~.session.SegmentationSession`: the
interaction table (kind, threshold and radius editable) and the graph drawing
(:mod:`.diagram`) are redrawn from the session after every change.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, FloatSlider, FloatSpinBox, PushButton

from .._view import reports_input_errors
from ..errors import CryoInputError
from ..plots import qt_figure_canvas
from .controller import SegmentationController
from .diagram import graph_figure
from .interactions import KINDS, Interaction

COLUMNS = ["child", "interaction", "parent", "threshold", "radius (nm)"]


class ModelPanel(Container):
    """Edit the models and the interactions between them.

    Parameters
    ----------
    controller : SegmentationController
        Holds the session edited here.
    on_change : callable
        Called after any change that alters a segmentation (to refresh the live preview).
    notify : callable
        ``notify(message, error=False)``: the view's status line and notifications.
    run : callable
        The view's :meth:`~napari_cryo._view.CryoView.run`: model files are read and written as tasks.
    confirm : callable
        The view's :meth:`~napari_cryo._view.CryoView.confirm_replace`: asked before a file is replaced.
    """

    def __init__(self, controller: SegmentationController, on_change: Callable[[], Any], notify: Callable[..., None],
                 run: Callable[..., Any], confirm: Callable[[Any], bool]) -> None:
        super().__init__(labels=True)
        self.controller, self.on_change, self.notify, self.run, self.confirm = controller, on_change, notify, run, confirm
        titles = lambda *_: list(controller.session.models)  # napari re-reads choices on reset_choices
        self.model = ComboBox(label="model", choices=titles)
        self.threshold = FloatSlider(label="threshold", min=0.01, max=0.99, step=0.01, value=0.5)
        self.emit = CheckBox(text="emit (competes)")
        self.absorb = CheckBox(text="absorb (zeroed where emitters are higher)")
        self.model_file = FileEdit(label="model file", mode="w", filter="*.scnm *.scnmgroup")
        load, save, save_group = (PushButton(text=t) for t in ("Load model / group", "Save model", "Save group"))
        self.file_buttons = [load, save, save_group]  # disabled while the view runs a task
        self.edge_child = ComboBox(label="child", choices=titles)
        self.edge_kind = ComboBox(label="interaction", choices=list(KINDS), value="colocalize")
        self.edge_parent = ComboBox(label="parent", choices=titles)
        self.edge_threshold = FloatSpinBox(label="parent threshold", min=0.01, max=0.99, step=0.05, value=0.5)
        self.edge_radius = FloatSpinBox(label="radius (nm)", min=0.0, max=1000.0, step=1.0, value=10.0)
        add, remove = PushButton(text="Add interaction"), PushButton(text="Remove selected interaction")
        self.extend([self.model, self.threshold, self.emit, self.absorb, self.model_file, load, save, save_group,
                     self.edge_child, self.edge_kind, self.edge_parent, self.edge_threshold, self.edge_radius, add, remove])
        self.table = self._make_table()
        self.figure, self.canvas = qt_figure_canvas(200)
        for w in (self.table, self.canvas):
            if w is not None:
                self.native.layout().addWidget(w)
        self.model.changed.connect(self._show_model)
        self.threshold.changed.connect(self._set_threshold)
        self.emit.changed.connect(self._set_competition)
        self.absorb.changed.connect(self._set_competition)
        load.changed.connect(lambda: self.load_models(self.model_file.value))
        save.changed.connect(lambda: self.save_model(self.model_file.value))
        save_group.changed.connect(lambda: self.save_group(self.model_file.value))
        add.changed.connect(self.add_from_controls)
        remove.changed.connect(self.remove_selected)

    @property
    def session(self):
        return self.controller.session

    def refresh(self) -> None:
        """Re-read the model names, the chosen model's settings, the table and the diagram."""
        titles = list(self.session.models)
        for combo in (self.model, self.edge_child, self.edge_parent):
            current = combo.value
            combo.reset_choices()
            if current in titles:
                combo.value = current
        if len(titles) > 1 and self.edge_parent.value == self.edge_child.value:
            self.edge_parent.value = next(t for t in titles if t != self.edge_child.value)
        self._show_model(self.model.value)
        self.refresh_interactions()

    def _show_model(self, title: str | None) -> None:
        model = self.session.models.get(title) if title else None
        if model is not None:
            self.threshold.value = model.threshold
            self.emit.value = title in self.session.graph.emit
            self.absorb.value = title in self.session.graph.absorb

    def _set_threshold(self, value: float) -> None:
        model = self.session.models.get(self.model.value)
        if model is not None and abs(model.threshold - value) > 1e-9:
            model.threshold = float(value)
            self.on_change()

    def _set_competition(self, *_: Any) -> None:
        title = self.model.value
        if title in self.session.models:
            self.session.set_competition(title, bool(self.emit.value), bool(self.absorb.value))
            self.refresh_interactions()
            self.on_change()

    @reports_input_errors
    def load_models(self, path):
        """Load a ``.scnm`` model (added) or a ``.scnmgroup`` group (replaces the models) in the background."""

        def done(item: Any) -> None:
            self.notify(f"loaded {Path(str(path)).name}: {self.controller.loaded(item)}")
            self.refresh()
            self.on_change()

        return self.run(self.controller.load_models(path), description="loading models", on_returned=done)

    @reports_input_errors
    def save_model(self, path):
        """Save the chosen model as ``.scnm`` in the background (asking before replacing a file)."""
        title = self.model.value
        job = self.controller.save_model(title, path, overwrite=True)  # checks there is a model before asking
        if not self.confirm([self.controller.model_path(path)]):
            return None
        return self.run(job, description="saving model", on_returned=lambda p: self.notify(f"saved {title} to {p}"))

    @reports_input_errors
    def save_group(self, path):
        """Save every model and the interactions as ``.scnmgroup`` in the background (asking before replacing a file)."""
        message = f"saved {len(self.session.models)} models and {len(self.session.graph.interactions)} interactions to"
        job = self.controller.save_group(path, overwrite=True)
        if not self.confirm([self.controller.group_path(path)]):
            return None
        return self.run(job, description="saving models", on_returned=lambda p: self.notify(f"{message} {p}"))

    # ------------------------------------------------------------ interactions
    def _make_table(self):
        try:
            from qtpy.QtWidgets import QAbstractItemView, QTableWidget
        except ImportError:  # pragma: no cover
            return None
        table = QTableWidget(0, len(COLUMNS))
        table.setHorizontalHeaderLabels(COLUMNS)
        table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        table.setMinimumHeight(110)
        table.itemChanged.connect(self._table_edited)
        return table

    def add_from_controls(self) -> None:
        """Add the edge described by the child / interaction / parent controls."""
        try:
            self.session.add_interaction(Interaction(
                child=str(self.edge_child.value), parent=str(self.edge_parent.value), kind=str(self.edge_kind.value),
                threshold=float(self.edge_threshold.value), radius_nm=float(self.edge_radius.value),
            ))
        except CryoInputError as exc:
            self.notify(str(exc), error=True)
            return
        self.refresh_interactions()
        self.on_change()

    def remove_selected(self) -> None:
        """Remove the edges selected in the table."""
        if self.table is None:
            return
        rows = {i.row() for i in self.table.selectedIndexes()}
        self.session.set_interactions([e for k, e in enumerate(self.session.graph.interactions) if k not in rows])
        self.refresh_interactions()
        self.on_change()

    def refresh_interactions(self) -> None:
        """Redraw the table and the diagram from the session."""
        if self.table is not None:
            from qtpy.QtCore import Qt
            from qtpy.QtWidgets import QTableWidgetItem

            self.table.blockSignals(True)
            edges = self.session.graph.interactions
            self.table.setRowCount(len(edges))
            for r, e in enumerate(edges):
                for c, value in enumerate((e.child, e.kind, e.parent, f"{e.threshold:g}", f"{e.radius_nm:g}")):
                    item = QTableWidgetItem(value)
                    if c in (0, 2):  # changing the ends of an edge is a new edge
                        item.setFlags(item.flags() & ~Qt.ItemFlag.ItemIsEditable)
                    self.table.setItem(r, c, item)
            self.table.blockSignals(False)
        if self.figure is not None:
            colours = {t: m.colour for t, m in self.session.models.items()}
            graph_figure(list(self.session.models), self.session.graph, colours, self.figure)
            self.canvas.draw_idle()

    def _table_edited(self, item) -> None:
        """An edited kind, threshold or radius cell changes that edge and the preview."""
        row = item.row()
        try:
            texts = [self.table.item(row, c).text() for c in range(len(COLUMNS))]
            self.controller.edit_interaction(row, texts[1], texts[3], texts[4])
        except CryoInputError as exc:
            self.notify(str(exc), error=True)
        self.refresh_interactions()
        self.on_change()
