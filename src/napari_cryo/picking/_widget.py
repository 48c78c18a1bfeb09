"""The particle-picking widget: pick, correct, paint exclusions, retrain, export.

A thin view over :class:`~.controller.PickingController`: it reads the
controls and layers, starts the controller's generators through
:meth:`CryoView.run`, and adds or updates the layers the controller
describes.  Saving and exporting ask before replacing a file
(:meth:`CryoView.confirm_replace`), like the other widgets.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui import widgets as w
from napari.layers import Image

from .._view import CryoView, find_layer, put_layer, reports_input_errors
from ..errors import CryoInputError
from ..layer_meta import PICKING_IMAGE, PICKING_ROLE
from ..training_loop import STOP_WORDS, EpochRecord
from .controller import GENERIC, PickingController, Role
from .session import SOURCE_MANUAL

if TYPE_CHECKING:  # pragma: no cover
    import napari

#: The retrain button's defaults, the same as ``pick train``'s (:class:`~.training.TrainConfig`).
DEFAULT_BUDGET_MIN = 5.0
DEFAULT_MAX_EPOCHS = 100


class PickingWidget(CryoView):
    """Particle picking on open micrograph layers (2D images or stacks)."""

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__(napari_viewer)
        self.controller = PickingController()
        self._history: list[Any] = []
        self._updating = False  # True while the widget itself replaces a picks layer's data

        self._image = w.create_widget(label="micrograph", annotation="napari.layers.Image")
        self._diameter = w.FloatSpinBox(label="diameter (Å)", min=10.0, max=5000.0, value=150.0, step=10.0)
        self._pixel = w.FloatSpinBox(
            label="pixel size (Å)", min=0.0, max=10000.0, value=0.0, step=0.1,
            tooltip="0 = the layer's own; needed for TIFF, PNG and JPEG micrographs, which carry none",
        )
        self._model = w.ComboBox(label="model", choices=[GENERIC], value=GENERIC)
        self._model_file = w.FileEdit(label="load model", mode="r", filter="*.pt")
        self._threshold = w.FloatSlider(label="threshold", min=0.02, max=0.98, step=0.01, value=0.5)
        self._count = w.Label(label="picks", value="-")
        self._min_distance = w.FloatSpinBox(label="min distance (Å)", min=0.0, max=5000.0, value=0.0, tooltip="0 = the particle radius")
        self._pick_current = w.PushButton(text="Pick current")
        self._pick_all = w.PushButton(text="Pick all")
        self._show_prob = w.CheckBox(text="show particle probability", value=False)
        self._brush = w.FloatSpinBox(label="mask brush (Å)", min=1.0, max=1e5, value=400.0, step=50.0)
        self._paint = w.PushButton(text="Paint exclusion mask")
        self._reject = w.PushButton(text="Reject selected picks")
        self._name = w.LineEdit(label="new model name", value="retrained")
        self._budget = w.FloatSpinBox(
            label="budget (min)", min=0.0, max=600.0, value=DEFAULT_BUDGET_MIN, step=1.0,
            tooltip="longest retraining time; it stops sooner when your held-out picks stop improving (0 = no limit)",
        )
        self._epochs = w.SpinBox(label="max epochs", min=1, max=10000, value=DEFAULT_MAX_EPOCHS, tooltip="at most this many epochs")
        self._retrain = w.PushButton(text="Retrain on my picks")
        self._save_path = w.FileEdit(label="save model as", mode="w", filter="*.pt")
        self._save = w.PushButton(text="Save model")
        self._export_dir = w.FileEdit(label="export to", mode="d")
        self._export = w.PushButton(text="Export STAR")
        self.extend([
            self._image, self._diameter, self._pixel, self._model, self._model_file, self._pick_current, self._pick_all, self._threshold,
            self._count, self._min_distance, self._show_prob, self._brush, self._paint, self._reject, self._name, self._budget,
            self._epochs, self._retrain, self._save_path, self._save, self._export_dir, self._export,
        ])  # fmt: skip
        self.add_task_panel([self._pick_current, self._pick_all, self._retrain, self._save])
        self._figure, self._canvas = self.add_plot(200, "the loss curve appears here\nduring retraining")

        for control, slot in (
            (self._pick_current, lambda: self.pick(all_micrographs=False)), (self._pick_all, lambda: self.pick(all_micrographs=True)),
            (self._threshold, self._on_threshold), (self._min_distance, self._on_threshold), (self._show_prob, self._refresh_probability),
            (self._paint, self.paint_mask), (self._brush, self._on_brush), (self._reject, self.reject_selected),
            (self._retrain, self.retrain), (self._save, self.save_model), (self._export, lambda: self.export()),
            (self._model_file, self._on_model_file),
        ):
            control.changed.connect(slot)
        self.viewer.dims.events.current_step.connect(self._update_count)
        self.viewer.layers.events.removed.connect(self._on_layer_removed)

    def _layer(self, image_id: str, role: str) -> Any:
        """The picking layer of ``role`` made for image ``image_id`` (found by metadata, so renames are fine)."""
        return find_layer(self.viewer, **{PICKING_IMAGE: image_id, PICKING_ROLE: role})

    def _masks(self) -> dict[str, Any]:
        """Exclusion Labels data by image id."""
        return {l.metadata[PICKING_IMAGE]: l.data for l in self.viewer.layers if (l.metadata or {}).get(PICKING_ROLE) == Role.EXCLUSIONS}

    def _plane(self, layer: Any) -> int:
        return -1 if layer.ndim == 2 else int(self.viewer.dims.current_step[0])

    def _put(self, layer_data: tuple[Any, dict[str, Any], str]) -> Any:
        """Add a layer, or update the data (and point features and sizes) of the one already there."""
        _, kwargs, kind = layer_data
        extra = [a for a in ("features", "size") if a in kwargs] if kind == "points" else []
        layer = put_layer(self.viewer, layer_data, self._layer(kwargs["metadata"][PICKING_IMAGE], kwargs["metadata"][PICKING_ROLE]), ["data", *extra])
        layer.visible = True
        return layer

    def _sync(self, *image_ids: str) -> None:
        """Read the user's edits of picks layers (default: all) back into the controller."""
        for image_id in image_ids or self.controller.image_ids():
            if (layer := self._layer(image_id, Role.PICKS)) is not None:
                sources = layer.features.get("source")
                self.controller.sync(image_id, np.asarray(layer.data), sources)

    def on_busy_changed(self, busy: bool) -> None:
        if not busy:
            self._update_count()

    @reports_input_errors
    def pick(self, all_micrographs: bool = False):
        """Pick the current plane of the chosen micrograph (or every micrograph) in the background."""
        if all_micrographs:
            layers = [l for l in self.viewer.layers if isinstance(l, Image) and l.ndim in (2, 3) and not l.rgb]
            targets = [(l, None) for l in layers if PICKING_ROLE not in (l.metadata or {})]
        elif self._image.value is None:
            raise CryoInputError(None, "open a micrograph first")
        else:
            targets = [(self._image.value, self._plane(self._image.value))]
        self._sync()
        jobs = self.controller.pick_jobs(targets, self._masks(), float(self._diameter.value), float(self._pixel.value) or None)
        return self.run(self.controller.pick, jobs, self._model.value, description="picking", on_returned=self._on_picked)

    def _on_picked(self, outputs: list) -> None:
        for image_id in self.controller.accept(outputs, float(self._threshold.value), float(self._min_distance.value) or None):
            self._refresh_layers(image_id)
        self._refresh_probability()  # the count follows when the task ends (on_busy_changed)

    def _on_threshold(self, *_: Any) -> None:
        self._sync()
        self.controller.set_threshold(float(self._threshold.value), float(self._min_distance.value) or None)
        for image_id in self.controller.image_ids():
            self._refresh_layers(image_id)
        self._update_count()

    def _update_count(self, *_: Any) -> None:
        layer = self._image.value
        if layer is not None:
            self._count.value = self.controller.count_text(layer.unique_id, self._plane(layer))

    def _refresh_layers(self, image_id: str) -> None:
        """Rebuild the picks (and rejected) layers of an image."""
        picks, rejected = self.controller.picks_layers(image_id)
        self._updating = True
        try:
            new = self._layer(image_id, Role.PICKS) is None
            layer = self._put(picks)
            if new:
                layer.events.data.connect(lambda event, image_id=image_id: self._on_points_edited(image_id, event))
            layer.feature_defaults["source"] = SOURCE_MANUAL
            layer.feature_defaults["rlnAutopickFigureOfMerit"] = 1.0
            layer.current_size = self.controller.point_size(image_id)
            if len(rejected[0]) or self._layer(image_id, Role.REJECTED) is not None:
                self._put(rejected)
        finally:
            self._updating = False
        self.viewer.layers.selection.active = self.controller.images[image_id]

    def _on_points_edited(self, image_id: str, event: Any) -> None:
        if self._updating:
            return
        if str(getattr(event, "action", "")).lower().endswith(("added", "removed", "changed")):
            self._sync(image_id)
            self._update_count()

    def _on_layer_removed(self, event: Any) -> None:
        if isinstance(event.value, Image) and event.value.unique_id in self.controller.images:
            self.controller.forget(event.value.unique_id)

    def reject_selected(self) -> None:
        """Move the selected picks of the current micrograph to its false positives."""
        layer = self._image.value
        points = None if layer is None else self._layer(layer.unique_id, Role.PICKS)
        if points is None:
            self.notify("pick first, then select picks to reject", error=True)
        elif not points.selected_data:
            self.notify("select picks in the picks layer first (select mode)", error=True)
        else:
            points.remove_selected()  # the data event records them as false positives
            self._on_threshold()

    def _refresh_probability(self, *_: Any) -> None:
        if self._show_prob.value:
            for layer_data in self.controller.probability_layers():
                self._put(layer_data)
            return
        for image_id in self.controller.image_ids():
            if (layer := self._layer(image_id, Role.PROBABILITY)) is not None:
                layer.visible = False

    def paint_mask(self) -> None:
        """Add (or select) a Labels layer to paint regions not to pick, brush sized in Å."""
        layer = self._image.value
        if layer is None:
            self.notify("open a micrograph first", error=True)
            return
        labels = self._layer(layer.unique_id, Role.EXCLUSIONS) or self._put(self.controller.exclusions_layer(layer))
        labels.mode = "paint"
        self.viewer.layers.selection.active = labels
        self._on_brush()

    def _on_brush(self, *_: Any) -> None:
        layer = self._image.value
        labels = None if layer is None else self._layer(layer.unique_id, Role.EXCLUSIONS)
        if labels is not None:
            labels.brush_size = max(1.0, float(self._brush.value) / float(layer.scale[-1]))

    @reports_input_errors
    def retrain(self):
        """Fine-tune the current model on the corrected picks, in the background; then pick again."""
        self._sync()
        jobs = self.controller.training_jobs(self._masks())
        name = self._name.value.strip() or "retrained"
        self._history = []

        def on_returned(trained: Any) -> None:
            self.controller.add_model(name, trained)
            self._choose_model(name)
            run = trained.history[-1] if trained.history else {}
            why = STOP_WORDS.get(run.get("stopped"), "done")
            self.notify(f"model '{name}' trained on {len(jobs)} micrograph(s) ({why}; kept epoch {run.get('best_epoch', '?')}); re-picking")
            self.pick(all_micrographs=False)

        budget = float(self._budget.value) * 60.0 or None
        return self.run(
            self.controller.retrain, jobs, self._model.value, name, int(self._epochs.value), budget,
            description="retraining", on_yield=self._on_epoch, on_returned=on_returned,
        )

    def _on_epoch(self, value: Any) -> None:
        if isinstance(value, EpochRecord):
            self._history.append(value)
            self.draw_loss(self._figure, self._canvas, self._history, "retraining")

    def _choose_model(self, name: str) -> None:
        if name not in self._model.choices:
            self._model.choices = [*self._model.choices, name]
        self._model.value = name

    def _on_model_file(self, *_: Any) -> None:
        """Offer a model file in the model list; it is loaded (and checked) when first used."""
        if Path(str(self._model_file.value)).is_file():
            self._choose_model(str(self._model_file.value))

    @reports_input_errors
    def save_model(self):
        """Save the chosen model to the 'save model as' path, in the background (asking before replacing it)."""
        path = Path(str(self._save_path.value))
        if not path.name or path.is_dir():
            raise CryoInputError(None, "choose a file name to save the model to")
        if not self.confirm_replace([path]):
            return None
        return self.run(  # overwrite=True: the file did not exist, or the user agreed to replace it
            self.controller.save_model, self._model.value, path, True,
            description="saving the model", on_returned=lambda saved: self.notify(f"saved {saved}"),
        )

    @reports_input_errors
    def export(self, directory: str | Path | None = None) -> list[Path] | None:
        """Write one RELION STAR file of picks per micrograph (see :mod:`.export`), asking before replacing any.

        Returns the files written; None when nothing was (an error, or the user kept the files).
        """
        out = Path(str(directory if directory is not None else self._export_dir.value))
        if not str(out) or not out.is_dir():
            raise CryoInputError(out, "choose an existing directory to export to")
        self._sync()
        if not self.confirm_replace(self.controller.export_paths(out)):
            return None
        written = self.controller.export(out, overwrite=True)
        self.notify(f"wrote {len(written)} STAR file(s) to {out}")
        return written
