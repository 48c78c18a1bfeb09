"""The particle-picking widget: pick, correct, paint exclusions, retrain, export.

Thin by design: it reads layers, hands arrays to the Qt-free core
(:mod:`.picks`, :mod:`.session`, :mod:`.training`) in a worker thread, and
writes results back into layers on the main thread.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSlider,
    FloatSpinBox,
    Label,
    LineEdit,
    PushButton,
    SpinBox,
    create_widget,
)

from ..errors import CryoInputError
from .model import PickerModel, load_model
from .session import SOURCE_AUTO, SOURCE_MANUAL, MicrographSession

if TYPE_CHECKING:  # pragma: no cover
    import napari

Key = tuple[str, int]  # (image layer name, plane index; -1 for a 2D image)


class PickingWidget(Container):
    """Particle picking on open micrograph layers (2D images or stacks)."""

    def __init__(self, napari_viewer: "napari.Viewer") -> None:
        super().__init__(labels=True)
        self.viewer = napari_viewer
        self.models: dict[str, PickerModel] = {}
        self.sessions: dict[Key, MicrographSession] = {}
        self.worker = None

        self._image = create_widget(label="micrograph", annotation="napari.layers.Image")
        self._diameter = FloatSpinBox(label="diameter (Å)", min=10.0, max=5000.0, value=150.0, step=10.0)
        self._model = ComboBox(label="model", choices=["generic"], value="generic")
        self._model_file = FileEdit(label="load model", mode="r", filter="*.pt")
        self._threshold = FloatSlider(label="threshold", min=0.02, max=0.98, step=0.01, value=0.5)
        self._count = Label(label="picks", value="-")
        self._min_distance = FloatSpinBox(label="min distance (Å)", min=0.0, max=5000.0, value=0.0, tooltip="0 = the particle radius")
        self._pick_current = PushButton(text="Pick current")
        self._pick_all = PushButton(text="Pick all")
        self._show_prob = CheckBox(text="show particle probability", value=False)
        self._brush = FloatSpinBox(label="mask brush (Å)", min=1.0, max=1e5, value=400.0, step=50.0)
        self._paint = PushButton(text="Paint exclusion mask")
        self._reject = PushButton(text="Reject selected picks")
        self._name = LineEdit(label="new model name", value="retrained")
        self._epochs = SpinBox(label="epochs", min=1, max=200, value=4)
        self._retrain = PushButton(text="Retrain on my picks")
        self._cancel = PushButton(text="Cancel", enabled=False)
        self._save_path = FileEdit(label="save model as", mode="w", filter="*.pt")
        self._save = PushButton(text="Save model")
        self._export_dir = FileEdit(label="export to", mode="d")
        self._overwrite = CheckBox(text="overwrite existing files", value=False)
        self._export = PushButton(text="Export STAR")
        self._status = Label(value="")
        self.extend(
            [
                self._image, self._diameter, self._model, self._model_file, self._pick_current, self._pick_all,
                self._threshold, self._count, self._min_distance, self._show_prob, self._brush, self._paint,
                self._reject, self._name, self._epochs, self._retrain, self._cancel, self._save_path, self._save,
                self._export_dir, self._overwrite, self._export, self._status,
            ]
        )
        from ..plots import qt_figure_canvas

        self._figure, self._canvas = qt_figure_canvas(200, "the loss curve appears here\nduring retraining")
        if self._canvas is not None:
            self.native.layout().addWidget(self._canvas)

        self._pick_current.changed.connect(lambda: self.pick(all_micrographs=False))
        self._pick_all.changed.connect(lambda: self.pick(all_micrographs=True))
        self._threshold.changed.connect(self._on_threshold)
        self._min_distance.changed.connect(self._on_threshold)
        self._show_prob.changed.connect(self._refresh_probability)
        self._paint.changed.connect(self.paint_mask)
        self._brush.changed.connect(self._on_brush)
        self._reject.changed.connect(self.reject_selected)
        self._retrain.changed.connect(self.retrain)
        self._cancel.changed.connect(self.cancel)
        self._save.changed.connect(self.save_model)
        self._export.changed.connect(lambda: self.export())
        self._model_file.changed.connect(self._on_model_file)
        self.viewer.dims.events.current_step.connect(self._update_count)

    # ----------------------------------------------------------------- helpers
    def _notify(self, message: str, error: bool = False) -> None:
        from napari.utils.notifications import show_error, show_info

        self._status.value = message
        (show_error if error else show_info)(message)

    def current_model(self) -> PickerModel:
        """The model chosen in the combo box (the generic one is loaded on first use)."""
        name = self._model.value
        if name not in self.models:
            self.models[name] = load_model(None if name == "generic" else name)
        return self.models[name]

    def _micrographs(self, all_micrographs: bool) -> list[tuple[Key, Any]]:
        """(key, image layer) pairs to pick: the current plane/layer, or all of them."""
        layers = [l for l in self.viewer.layers if l._type_string == "image" and l.ndim in (2, 3) and not l.rgb]
        layers = [l for l in layers if not l.name.endswith(" particle probability")]
        if not all_micrographs:
            layer = self._image.value
            if layer is None:
                raise CryoInputError(None, "open a micrograph first")
            layers = [layer]
        out = []
        for layer in layers:
            if layer.ndim == 2:
                out.append(((layer.name, -1), layer))
            elif all_micrographs:
                out += [((layer.name, i), layer) for i in range(layer.data.shape[0])]
            else:
                out.append(((layer.name, int(self.viewer.dims.current_step[0])), layer))
        return out

    @staticmethod
    def _pixel_size(layer) -> float:
        meta = layer.metadata or {}
        if meta.get("pixel_size_known") is False:
            raise CryoInputError(layer.name, "has no pixel size; set the layer scale to the pixel size in Å")
        return float(layer.scale[-1])

    @staticmethod
    def _plane(layer, index: int) -> np.ndarray:
        return np.asarray(layer.data if index < 0 else layer.data[index], dtype=np.float32)

    def _mask_layer_name(self, key: Key) -> str:
        return f"{key[0]} exclusions"

    def _exclusion(self, key: Key, shape: tuple[int, int]) -> np.ndarray | None:
        name = self._mask_layer_name(key)
        if name not in self.viewer.layers:
            return None
        data = np.asarray(self.viewer.layers[name].data)
        plane = data if key[1] < 0 else data[key[1]]
        return (plane > 0) if plane.shape == shape else None

    # ------------------------------------------------------------------ picking
    def pick(self, all_micrographs: bool = False):
        """Run the model on the current (or every) micrograph in the background."""
        from ..tasks import Progress, start_worker
        from .picks import pick_micrograph

        try:
            model = self.current_model()
            jobs = []
            for key, layer in self._micrographs(all_micrographs):
                px = self._pixel_size(layer)
                image = self._plane(layer, key[1])
                jobs.append((key, image, px, self._exclusion(key, image.shape)))
        except CryoInputError as exc:
            self._notify(str(exc), error=True)
            return None
        diameter = float(self._diameter.value)

        def work():
            for i, (key, image, px, mask) in enumerate(jobs):
                yield Progress(i, len(jobs), f"{key[0]}")
                result = pick_micrograph(model, image, px, diameter, exclude_mask=mask, name=key[0])
                yield (key, px, result)
            yield Progress(len(jobs), len(jobs))

        def on_result(item):
            key, px, result = item
            session = self.sessions.get(key)
            if session is None or session.pixel_size != px or session.diameter != diameter:
                session = self.sessions[key] = MicrographSession(px, diameter)
            session.result = result
            session.threshold = float(self._threshold.value)
            session.min_distance = float(self._min_distance.value) or None
            self._refresh_layers(key)

        self.worker = start_worker(work, description="picking", on_yield=on_result, on_finished=self._finished)
        self._busy(True)
        return self.worker

    def _busy(self, busy: bool) -> None:
        for w in (self._pick_current, self._pick_all, self._retrain):
            w.enabled = not busy
        self._cancel.enabled = busy

    def _finished(self) -> None:
        self._busy(False)
        self.worker = None
        self._update_count()

    def cancel(self) -> None:
        """Stop the running picking or training (training keeps its last checkpoint)."""
        if self.worker is not None:
            self.worker.quit()

    def _on_threshold(self, *_: Any) -> None:
        for key, session in self.sessions.items():
            self._sync(key)
            session.threshold = float(self._threshold.value)
            session.min_distance = float(self._min_distance.value) or None
            self._refresh_layers(key, probability=False)
        self._update_count()

    def _update_count(self, *_: Any) -> None:
        layer = self._image.value
        if layer is None:
            return
        key = (layer.name, -1 if layer.ndim == 2 else int(self.viewer.dims.current_step[0]))
        session = self.sessions.get(key)
        total = sum(len(s.points()[0]) for s in self.sessions.values())
        here = "-" if session is None else str(len(session.points()[0]))
        self._count.value = f"{here} here, {total} in {len(self.sessions)} micrograph(s)"

    # ------------------------------------------------------------------- layers
    def picks_layer_name(self, image_name: str) -> str:
        return f"{image_name} picks"

    def _sessions_of(self, image_name: str) -> list[tuple[Key, MicrographSession]]:
        return sorted(((k, s) for k, s in self.sessions.items() if k[0] == image_name), key=lambda kv: kv[0][1])

    def _layer_points(self, image_name: str) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
        parts, scores, sources, rejected = [], [], [], []
        for (name, plane), session in self._sessions_of(image_name):
            yx, feats = session.points()
            prefix = [] if plane < 0 else [plane]
            parts.append(np.column_stack([np.full(len(yx), plane)] + [yx]) if prefix else yx)
            scores.append(feats["rlnAutopickFigureOfMerit"].to_numpy())
            sources.append(np.asarray(feats["source"], dtype=object))
            fps = session.false_positives
            rejected.append(np.column_stack([np.full(len(fps), plane), fps]) if prefix else fps)
        ndim = 2 if not parts or parts[0].shape[1] == 2 else 3
        data = np.concatenate(parts) if parts else np.zeros((0, ndim))
        rej = np.concatenate(rejected) if rejected else np.zeros((0, ndim))
        return data, {"rlnAutopickFigureOfMerit": np.concatenate(scores) if scores else np.zeros(0), "source": np.concatenate(sources) if sources else np.zeros(0, object)}, rej

    def _refresh_layers(self, key: Key, probability: bool = True) -> None:
        """Rebuild the picks (and rejected) layers of the image that ``key`` belongs to."""
        import pandas as pd

        image = self.viewer.layers[key[0]]
        session = self.sessions[key]
        data, feats, rejected = self._layer_points(key[0])
        features = pd.DataFrame(
            {
                "rlnAutopickFigureOfMerit": feats["rlnAutopickFigureOfMerit"],
                "source": pd.Categorical(feats["source"], categories=[SOURCE_AUTO, SOURCE_MANUAL]),
            }
        )
        size = session.diameter / session.pixel_size
        name = self.picks_layer_name(key[0])
        self._updating = True
        try:
            if name in self.viewer.layers:
                layer = self.viewer.layers[name]
                layer.selected_data = set()  # indices would be stale after replacing the data
                layer.data = data
                layer.features = features
                layer.size = np.full(len(data), size)
            else:
                layer = self.viewer.add_points(
                    data,
                    name=name,
                    features=features,
                    scale=image.scale,
                    translate=image.translate,
                    units=image.units,
                    size=size,
                    face_color="transparent",
                    border_color="yellow",
                    border_width=0.06,
                    metadata={"pixel_size": session.pixel_size, "pixel_size_known": True, "micrograph_name": key[0], "picking_image": key[0]},
                )
                layer.events.data.connect(lambda event, image_name=key[0]: self._on_points_edited(image_name, event))
            layer.feature_defaults["source"] = SOURCE_MANUAL
            layer.feature_defaults["rlnAutopickFigureOfMerit"] = 1.0
            layer.current_size = size
            rej_name = f"{key[0]} rejected"
            if len(rejected) or rej_name in self.viewer.layers:
                if rej_name in self.viewer.layers:
                    self.viewer.layers[rej_name].data = rejected
                else:
                    self.viewer.add_points(
                        rejected, name=rej_name, scale=image.scale, translate=image.translate, units=image.units,
                        size=size * 0.5, symbol="x", face_color="red", border_color="red",
                    )
        finally:
            self._updating = False
        if probability:
            self._refresh_probability()
        self.viewer.layers.selection.active = image

    def _sync(self, key: Key) -> None:
        """Read the user's edits of a picks layer back into the sessions."""
        name = self.picks_layer_name(key[0])
        if name not in self.viewer.layers:
            return
        layer = self.viewer.layers[name]
        data = np.asarray(layer.data)
        sources = np.asarray(layer.features["source"], dtype=object) if "source" in layer.features else np.full(len(data), SOURCE_MANUAL, object)
        for k, session in self._sessions_of(key[0]):
            if data.shape[1] == 3:
                sel = np.round(data[:, 0]).astype(int) == k[1]
                session.sync_from_layer(data[sel, 1:], sources[sel])
            else:
                session.sync_from_layer(data, sources)

    def _on_points_edited(self, image_name: str, event: Any) -> None:
        if getattr(self, "_updating", False):
            return
        action = str(getattr(event, "action", "")).lower()
        if action.endswith(("added", "removed", "changed")):
            self._sync((image_name, -1))
            self._update_count()

    def reject_selected(self) -> None:
        """Move the selected picks of the current micrograph to its false positives."""
        layer = self._image.value
        if layer is None or self.picks_layer_name(layer.name) not in self.viewer.layers:
            self._notify("pick first, then select picks to reject", error=True)
            return
        points = self.viewer.layers[self.picks_layer_name(layer.name)]
        selected = sorted(points.selected_data)
        if not selected:
            self._notify("select picks in the picks layer first (select mode)", error=True)
            return
        points.remove_selected()  # the data event records them as false positives
        self._on_threshold()

    def _refresh_probability(self, *_: Any) -> None:
        for key, session in self.sessions.items():
            if session.result is None:
                continue
            name = f"{key[0]} particle probability"
            image = self.viewer.layers[key[0]]
            if not self._show_prob.value:
                if name in self.viewer.layers:
                    self.viewer.layers[name].visible = False
                continue
            prob = session.result.probability_map()
            if key[1] >= 0:
                full = np.zeros(image.data.shape, dtype=np.float32) if name not in self.viewer.layers else np.asarray(self.viewer.layers[name].data)
                full[key[1]] = prob
                prob = full
            if name in self.viewer.layers:
                self.viewer.layers[name].data = prob
                self.viewer.layers[name].visible = True
            else:
                self.viewer.add_image(
                    prob, name=name, scale=image.scale, translate=image.translate, units=image.units,
                    colormap="magma", blending="additive", opacity=0.5, contrast_limits=(0, 1),
                )

    # -------------------------------------------------------------------- masks
    def paint_mask(self) -> None:
        """Add (or select) a Labels layer to paint regions not to pick, brush sized in Å."""
        layer = self._image.value
        if layer is None:
            self._notify("open a micrograph first", error=True)
            return
        name = f"{layer.name} exclusions"
        if name not in self.viewer.layers:
            self.viewer.add_labels(
                np.zeros(layer.data.shape, dtype=np.uint8), name=name, scale=layer.scale, translate=layer.translate,
                units=layer.units, opacity=0.4,
            )
        labels = self.viewer.layers[name]
        labels.mode = "paint"
        self.viewer.layers.selection.active = labels
        self._on_brush()

    def _on_brush(self, *_: Any) -> None:
        layer = self._image.value
        if layer is None or f"{layer.name} exclusions" not in self.viewer.layers:
            return
        labels = self.viewer.layers[f"{layer.name} exclusions"]
        labels.brush_size = max(1.0, float(self._brush.value) / float(layer.scale[-1]))

    # ----------------------------------------------------------------- training
    def training_data(self):
        """Prepared training micrographs from every picked micrograph."""
        from .labels import prepare_training_micrograph
        from .preprocess import working_pixel_size

        data = []
        for key, session in self.sessions.items():
            self._sync(key)
            positives = session.training_positives()
            if not len(positives):
                continue
            layer = self.viewer.layers[key[0]]
            image = self._plane(layer, key[1])
            wpx = working_pixel_size(session.diameter, session.pixel_size)
            data.append(
                prepare_training_micrograph(
                    image, session.pixel_size, wpx, positives, session.false_positives,
                    self._exclusion(key, image.shape), invert=self.current_model().invert, name=f"{key[0]}:{key[1]}",
                )
            )
        if not data:
            raise CryoInputError(None, "no picks to learn from: pick (and correct) some micrographs first")
        return data

    def retrain(self):
        """Fine-tune the current model on the corrected picks, in the background."""
        from ..tasks import start_worker
        from .training import TrainConfig, train

        try:
            data = self.training_data()
            base = self.current_model()
        except CryoInputError as exc:
            self._notify(str(exc), error=True)
            return None
        name = self._name.value.strip() or "retrained"
        model = base.copy(name=name)
        config = TrainConfig(epochs=int(self._epochs.value), lr=3e-4)
        self._history: list[dict] = []

        def on_epoch(value):
            if isinstance(value, dict) and "epoch" in value:
                self._history.append(value)
                self._draw_loss()

        def on_returned(trained: PickerModel):
            self.models[name] = trained
            if name not in self._model.choices:
                self._model.choices = [*self._model.choices, name]
            self._model.value = name
            self._notify(f"model '{name}' trained on {len(data)} micrograph(s); re-picking")
            self.pick(all_micrographs=False)

        self.worker = start_worker(train, model, data, config, description="retraining", on_yield=on_epoch, on_returned=on_returned, on_finished=self._finished)
        self._busy(True)
        return self.worker

    def _draw_loss(self) -> None:
        if self._canvas is None:
            return
        from ..plots import loss_figure

        loss_figure(self._history, self._figure, title="retraining")
        self._canvas.draw_idle()

    def _on_model_file(self, *_: Any) -> None:
        path = Path(str(self._model_file.value))
        if not path.is_file():
            return
        try:
            model = PickerModel.load(path)
        except CryoInputError as exc:
            self._notify(str(exc), error=True)
            return
        key = str(path)
        self.models[key] = model
        if key not in self._model.choices:
            self._model.choices = [*self._model.choices, key]
        self._model.value = key

    def save_model(self) -> None:
        """Save the chosen model to the 'save model as' path."""
        path = Path(str(self._save_path.value))
        if not path.name or path.is_dir():
            self._notify("choose a file name to save the model to", error=True)
            return
        try:
            self.current_model().save(path, overwrite=bool(self._overwrite.value))
        except CryoInputError as exc:
            self._notify(str(exc), error=True)
            return
        self._notify(f"saved {path}")

    # ------------------------------------------------------------------- export
    def export(self, directory: str | Path | None = None) -> list[Path]:
        """Write one RELION STAR file of picks per micrograph."""
        import pandas as pd

        from ..io.star import write_coordinates

        out = Path(str(directory if directory is not None else self._export_dir.value))
        if not str(out) or not out.is_dir():
            self._notify(f"{out}: choose an existing directory to export to", error=True)
            return []
        written = []
        try:
            for key, session in sorted(self.sessions.items()):
                self._sync(key)
                yx, feats = session.points()
                stem = key[0] if key[1] < 0 else f"{key[0]}_{key[1]:04d}"
                features = pd.DataFrame({"rlnAutopickFigureOfMerit": feats["rlnAutopickFigureOfMerit"].to_numpy()})
                path = out / f"{stem}_picks.star"
                write_coordinates(path, yx, features, session.pixel_size, micrograph_name=stem, overwrite=bool(self._overwrite.value))
                written.append(path)
        except CryoInputError as exc:
            self._notify(str(exc), error=True)
            return written
        self._notify(f"wrote {len(written)} STAR file(s) to {out}")
        return written
