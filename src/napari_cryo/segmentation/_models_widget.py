"""The models panel of the segmentation view: thresholds, competition, files, interactions and their diagram.

A magicgui container over the controller's :class:`~.session.SegmentationSession`: the
interaction table (kind, threshold, radius and mode editable) and the graph drawing
(:mod:`.diagram`) are redrawn from the session after every change.  The table's last
column says how many objects of the child each interaction removes, as the view last
reported them (:meth:`ModelPanel.show_effects`, after a live preview or a segmentation).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, FloatSlider, FloatSpinBox, PushButton

from .._view import reports_input_errors
from ..errors import CryoInputError
from ..plots import qt_figure_canvas
from .controller import SegmentationController
from .diagram import graph_figure
from .interactions import KINDS, MODES, Interaction, InteractionEffect, InteractionEffects, threshold_text

COLUMNS = ["child", "interaction", "parent", "threshold", "radius (nm)", "mode", "removes"]
_EDITABLE = (1, 3, 4, 5)  # kind, threshold, radius, mode; changing the ends of an edge is a new edge


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
        self.edge_auto = CheckBox(text="parent threshold: the parent model's own", value=True)
        self.edge_threshold = FloatSpinBox(label="parent threshold", min=0.01, max=0.99, step=0.05, value=0.5, enabled=False)
        self.edge_radius = FloatSpinBox(label="radius (nm)", min=0.0, max=1000.0, step=1.0, value=10.0)
        self.edge_mode = ComboBox(label="mode", choices=list(MODES), value="robust",
                                  tooltip="robust: the parent's mask without specks, child objects kept or removed whole; plain: the parent's mask, voxel by voxel")
        add, remove = PushButton(text="Add interaction"), PushButton(text="Remove selected interaction")
        self.extend([self.model, self.threshold, self.emit, self.absorb, self.model_file, load, save, save_group,
                     self.edge_child, self.edge_kind, self.edge_parent, self.edge_auto, self.edge_threshold, self.edge_radius,
                     self.edge_mode, add, remove])
        self._effects: tuple[InteractionEffect, ...] = ()
        self._effects_where = ""
        self.table = self._make_table()
        self.figure, self.canvas = qt_figure_canvas(200)
        for w in (self.table, self.canvas):
            if w is not None:
                self.native.layout().addWidget(w)
        self.model.changed.connect(self._show_model)
        self.threshold.changed.connect(self._set_threshold)
        self.emit.changed.connect(self._set_competition)
        self.absorb.changed.connect(self._set_competition)
        self.edge_auto.changed.connect(lambda auto: setattr(self.edge_threshold, "enabled", not auto))
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
                threshold=None if self.edge_auto.value else float(self.edge_threshold.value), radius_nm=float(self.edge_radius.value),
                mode=str(self.edge_mode.value),
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
                for c, value in enumerate((e.child, e.kind, e.parent, threshold_text(e.threshold), f"{e.radius_nm:g}", e.mode, "")):
                    item = QTableWidgetItem(value)
                    if c not in _EDITABLE:
                        item.setFlags(item.flags() & ~Qt.ItemFlag.ItemIsEditable)
                    self.table.setItem(r, c, item)
            self.table.blockSignals(False)
            self._fill_removes()
        if self.figure is not None:
            colours = {t: m.colour for t, m in self.session.models.items()}
            graph_figure(list(self.session.models), self.session.graph, colours, self.figure)
            self.canvas.draw_idle()

    def _table_edited(self, item) -> None:
        """An edited kind, threshold, radius or mode cell changes that edge and the preview."""
        row = item.row()
        try:
            texts = [self.table.item(row, c).text() for c in range(len(COLUMNS))]
            self.edit_interaction(row, texts[1], texts[3], texts[4], texts[5])
        except CryoInputError as exc:
            self.notify(str(exc), error=True)
        self.refresh_interactions()
        self.on_change()

    def edit_interaction(self, row: int, kind: str, threshold: str, radius_nm: str, mode: str) -> None:
        """Change one edge from the table's texts (see :meth:`.controller.SegmentationController.edit_interaction`)."""
        self.controller.edit_interaction(row, kind, threshold, radius_nm, mode)

    # ------------------------------------------------------------ effects
    def show_effects(self, effects: InteractionEffects | Iterable[InteractionEffect] | None, where: str = "") -> None:
        """Show how many objects each interaction removes, in the table's last column.

        Call it on the main thread with what a live preview or a segmentation computed
        (:func:`~.interactions.apply_interactions_with_effects`); ``where`` says on what,
        e.g. ``"slice 12"``.  An edge changed since shows nothing until the next report.
        """
        if isinstance(effects, InteractionEffects):
            effects = effects.effects
        self._effects = tuple(effects or ())
        self._effects_where = where
        self._fill_removes()  # not the whole table and diagram: this comes after every preview

    def _fill_removes(self) -> None:
        if self.table is None:
            return
        column = len(COLUMNS) - 1
        self.table.blockSignals(True)
        for r, (edge, text) in enumerate(zip(self.session.graph.interactions, self.removes_texts())):
            item = self.table.item(r, column)
            if item is not None:
                item.setText(text)
                item.setToolTip(f"objects of {edge.child} this interaction removed ({self._effects_where})" if text else "")
        self.table.blockSignals(False)

    def removes_texts(self) -> list[str]:
        """Per edge in the table, ``"3 of 20"`` (objects removed of those before it) or ``""`` when unknown."""
        unused = list(self._effects)
        texts = []
        for edge in self.session.graph.interactions:
            match = next((k for k, e in enumerate(unused) if e.interaction == edge), None)
            if match is None:
                texts.append("")
            else:
                effect = unused.pop(match)
                texts.append(f"{effect.removed} of {effect.before}")
        return texts
