"""The grid-square widget: reads its controls, runs the session's jobs, shows the layers it returns.

The state and every action live in :class:`~.controller.SquaresSession`;
this view adds and updates layers on the main thread, draws the loss curve
and the colour bar, and fills the ranked table.  Writing labels, a model or
the ranked squares asks before replacing a file (:meth:`CryoView.confirm_replace`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from magicgui import widgets as mg
from qtpy.QtWidgets import QAbstractItemView, QTableWidget, QTableWidgetItem

from .._view import CryoView, in_turns, put_layer, reports_input_errors
from ..errors import CryoInputError
from ..plots import loss_figure, qt_figure_canvas
from .controller import SQUARES, SquaresSession, draw_colour_key, placement, square_view

if TYPE_CHECKING:  # pragma: no cover
    import napari

    from ..layer_meta import LayerData
    from .pipeline import AtlasSquares

UNSET = -1.0  # spin-box value meaning 'leave this score as it is'


def file_name(value: Any, what: str) -> Path:
    """A file-name control's value as a path; a :class:`CryoInputError` when it names no file."""
    path = Path(str(value))
    if not str(value).strip() or not path.name or path.is_dir():
        raise CryoInputError(None, f"choose a file name for the {what}")
    return path


class SquaresWidget(CryoView):
    """Grid-square extraction, labelling and scoring on atlas layers."""

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__(napari_viewer)
        self.session = SquaresSession()
        self._rows = self.session.ranked()  # the ranked table's rows
        self._atlas = mg.create_widget(label="atlas", annotation="napari.layers.Image")
        self._extract = mg.PushButton(text="Extract squares")
        self._spins = {
            name: mg.FloatSpinBox(label=name, min=UNSET, max=4.0, step=1.0, value=UNSET, tooltip="-1 = leave unchanged")
            for name in ("cracking", "contamination", "overall", "brightness", "squareness")
        }
        self._apply = mg.PushButton(text="Apply scores to selected squares")
        self._labels_file = mg.FileEdit(label="labels CSV", mode="w", filter="*.csv")
        self._import = mg.PushButton(text="Import labels")
        self._export_labels = mg.PushButton(text="Export labels")
        self._variant = mg.ComboBox(label="model", choices=["xcryonet", "primary"], value="xcryonet")
        self._epochs = mg.SpinBox(label="epochs", min=1, max=500, value=40)
        self._train = mg.PushButton(text="Train")
        self._model_file = mg.FileEdit(label="model file", mode="w", filter="*.pt")
        self._load = mg.PushButton(text="Load model")
        self._save = mg.PushButton(text="Save model")
        self._score = mg.PushButton(text="Score squares")
        self._ranked_dir = mg.FileEdit(label="export folder", mode="d")
        self._export_ranked = mg.PushButton(text="Export ranked squares (CSV + STAR)")
        self.extend(
            [self._atlas, self._extract, *self._spins.values(), self._apply, self._labels_file, self._import, self._export_labels,
             self._variant, self._epochs, self._train, self._model_file, self._load, self._save, self._score,
             self._ranked_dir, self._export_ranked]
        )
        self.add_task_panel([self._extract, self._train, self._score, self._load])
        self._table = QTableWidget(0, 0)
        self._table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self._table.setMinimumHeight(180)
        self._table.cellClicked.connect(self._on_table_click)
        self._figure, self._canvas = qt_figure_canvas(160)
        for widget in (self._table, self._canvas):
            if widget is not None:  # no canvas without matplotlib's Qt backend
                self.native.layout().addWidget(widget)
        if self._canvas is not None:  # the squares' colours, until a training run plots its loss here
            draw_colour_key(self._figure)
        for button, action in (
            (self._extract, self.extract), (self._apply, self.apply_scores), (self._import, self.import_labels),
            (self._export_labels, self.export_labels), (self._train, self.train), (self._load, self.load_model),
            (self._save, self.save_model), (self._score, self.score), (self._export_ranked, lambda: self.export_ranked()),
        ):
            button.changed.connect(action)
        self.viewer.layers.events.removed.connect(lambda event: self.session.forget(event.value.unique_id))

    def _atlas_id(self) -> str:
        """The chosen atlas layer's id; a :class:`CryoInputError` when its squares were not extracted."""
        layer = self._atlas.value
        atlas_id = layer.unique_id if layer is not None else None
        self.session.state(atlas_id)
        return atlas_id

    def _layer(self, unique_id: str | None) -> Any:
        """The viewer's layer with this ``unique_id``, or None (removed, or never added)."""
        return next((layer for layer in self.viewer.layers if layer.unique_id == unique_id), None)

    def _squares(self, atlas_id: str) -> Any:
        """The Shapes layer of an atlas's squares, or None."""
        state = self.session.atlases.get(atlas_id)
        return self._layer(state.layers.get(SQUARES)) if state is not None else None

    def _put(self, atlas_id: str, role: str, layer_data: LayerData, update: tuple[str, ...]) -> Any:
        """Update the atlas's layer for ``role`` (the ``update`` attributes), or add it; None once the atlas is gone."""
        state = self.session.atlases.get(atlas_id)
        if state is None:
            return None
        layer = put_layer(self.viewer, layer_data, self._layer(state.layers.get(role)), update)
        state.layers[role] = layer.unique_id
        return layer

    def _show(self, atlas_id: str) -> list[Callable[[], Any]]:
        """Show an atlas's squares as the session has them; returns the steps that show its attention maps."""
        image = self._layer(atlas_id)
        if image is None:
            return []
        where = placement(image)
        squares = self._put(atlas_id, SQUARES, self.session.squares_layer(atlas_id, where), ("features", "edge_color", "text"))
        for key in range(5):
            squares.bind_key(f"Shift-{key}", lambda _layer, k=key: self.set_selected(atlas_id, overall=float(k)), overwrite=True)
        maps = self.session.attention_layers(atlas_id, where).items()
        return [functools.partial(self._put, atlas_id, role, layer_data, ("data",)) for role, layer_data in maps]

    @reports_input_errors
    def extract(self):
        """Find the squares of the chosen atlas (in the background)."""
        layer = self._atlas.value
        job = self.session.extract_job(layer)
        return self.run(job, description="extracting squares", on_returned=lambda atlas: self._extracted(layer.unique_id, atlas))

    def _extracted(self, atlas_id: str, atlas: AtlasSquares) -> None:
        old = self._squares(atlas_id)
        if old is not None:  # new squares: new polygons
            self.viewer.layers.remove(old)
        self.session.add_atlas(atlas_id, atlas)
        self._show(atlas_id)
        self.notify(self.session.summary(atlas))

    def set_selected(self, atlas_id: str, **scores: float) -> int:
        """Set scores (0-4) of the selected squares of an atlas layer (by ``unique_id``); returns how many squares."""
        squares = self._squares(atlas_id)
        n = self.session.set_labels(atlas_id, squares.selected_data if squares is not None else (), **scores)
        self._show(atlas_id)
        return n

    @reports_input_errors
    def apply_scores(self) -> None:
        """Apply the spin-box scores (those not -1) to the selected squares."""
        atlas_id = self._atlas_id()
        values = {k: float(w.value) for k, w in self._spins.items() if w.value >= 0}
        if not values:
            raise CryoInputError(None, "set at least one score (0-4) first")
        if self.set_selected(atlas_id, **values) == 0:
            self.notify("select squares in the squares layer first (select mode)", error=True)

    @reports_input_errors
    def import_labels(self) -> None:
        """Merge the labels CSV into the chosen atlas's labels."""
        atlas_id = self._atlas_id()
        message = self.session.import_labels(atlas_id, str(self._labels_file.value))
        self._show(atlas_id)
        self.notify(message)

    @reports_input_errors
    def export_labels(self) -> Path | None:
        """Write the chosen atlas's labels to the labels CSV (asking before replacing it); returns the file or None."""
        atlas_id = self._atlas_id()
        path = file_name(self._labels_file.value, "labels CSV")
        if not self.confirm_replace([path]):
            return None
        written = self.session.export_labels(atlas_id, path, overwrite=True)
        self.notify(f"wrote {written}")
        return written

    @reports_input_errors
    def train(self):
        """Train a new model on every loaded atlas (labelled and unlabelled squares), then score."""
        job = self.session.train_job(self._variant.value, int(self._epochs.value))
        return self.run(job, description="training square scorer", on_yield=self._trained_epoch, on_returned=self._trained)

    def _trained_epoch(self, value: Any) -> None:
        if self.session.record(value) and self._canvas is not None:
            plot = functools.partial(loss_figure, self.session.history, self._figure, title="square scorer training")
            in_turns([plot, self._canvas.draw_idle])

    def _trained(self, model) -> None:
        self.session.model = model
        self.notify(f"trained {model.variant}; scoring")
        self.score()

    @reports_input_errors
    def load_model(self) -> None:
        """Load the model file."""
        self.session.load_model(str(self._model_file.value))
        self.notify(f"loaded {self._model_file.value}")

    @reports_input_errors
    def save_model(self) -> Path | None:
        """Save the model to the model file (asking before replacing it); returns the file or None."""
        if self.session.model is None:
            raise CryoInputError(None, "train or load a model first")
        path = file_name(self._model_file.value, "model file")
        if not self.confirm_replace([path]):
            return None
        saved = self.session.save_model(path, overwrite=True)
        self.notify(f"saved {saved}")
        return saved

    @reports_input_errors
    def score(self):
        """Score every loaded atlas (in the background); then colour, add attention maps, fill the table."""
        return self.run(self.session.score_job(), description="scoring squares", on_returned=self._scored)

    def _scored(self, results: dict) -> None:
        maps = [step for atlas_id in self.session.set_scores(results) for step in self._show(atlas_id)]
        self._fill_table()
        model = self.session.model.name if self.session.model is not None else "the model"
        self.notify(f"scored {len(self._rows)} squares with {model}")
        in_turns(maps)

    def _fill_table(self) -> None:
        self._rows = self.session.ranked()
        headers = ["atlas", "rank", "overall", "cracking", "contamination", "brightness", "center_x", "center_y"]
        self._table.clear()
        self._table.setColumnCount(len(headers))
        self._table.setHorizontalHeaderLabels([h.replace("center_", "") for h in headers])
        self._table.setRowCount(len(self._rows))
        for k, row in enumerate(self._rows[headers].itertuples(index=False)):
            for c, v in enumerate(row):
                self._table.setItem(k, c, QTableWidgetItem(f"{v:.2f}" if isinstance(v, float) else str(v)))

    def _on_table_click(self, row: int, _col: int) -> None:
        r = self._rows.iloc[row]
        image = self._layer(r["atlas_id"])
        squares = self._squares(r["atlas_id"])
        if image is None or squares is None:
            return
        scene = getattr(self.viewer, "scene", None)  # napari >= 0.9 moved the camera to viewer.scene
        camera = scene.camera if scene is not None and hasattr(scene, "camera") else self.viewer.camera
        camera.center, camera.zoom = square_view(r, image.scale, image.translate, camera.zoom)
        squares.selected_data = {int(r["square"])}

    @reports_input_errors
    def export_ranked(self, directory: str | Path | None = None) -> list[Path] | None:
        """Write the ranked squares of every scored atlas as CSV and STAR into a folder, asking before replacing any.

        Returns the files written; None when nothing was (an error, or the user kept the files).
        """
        folder = Path(str(directory if directory is not None else self._ranked_dir.value))
        if not self.confirm_replace(self.session.export_paths(folder)):
            return None
        written = self.session.export_ranked(folder, overwrite=True)
        self.notify(f"wrote {', '.join(p.name for p in written)}")
        return written

