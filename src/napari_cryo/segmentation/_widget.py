"""The tomogram segmentation widget: paint, train per feature, combine, preview, segment, pick, mesh.

Thin by design: the rules live in the Qt-free core (:mod:`.session`,
:mod:`.training`, :mod:`.inference`, :mod:`.interactions`, :mod:`.particles`,
:mod:`.meshes`).  Long work runs in napari thread workers; layers are only
touched here, on the main thread, from what the workers yield or return.
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
from . import architectures
from .features import METADATA_KEY, Feature, check_unique, features_from_metadata, features_to_metadata, label_colours, make_features
from .interactions import Interaction
from .session import SegmentationSession

if TYPE_CHECKING:  # pragma: no cover
    import napari

DEFAULT_FEATURES = ("membrane", "carbon", "particle")
KINDS = ("colocalize", "avoid")


def _colormap(colour: str, name: str):
    """Transparent-to-colour colormap for a probability overlay."""
    from napari.utils.colormaps import Colormap
    from matplotlib.colors import to_rgb

    r, g, b = to_rgb(colour)
    return Colormap([[r, g, b, 0.0], [r, g, b, 1.0]], name=f"napari-cryo {name}")


class SegmentationWidget(Container):
    """Per-feature tomogram segmentation with model interactions (after Ais)."""

    def __init__(self, napari_viewer: "napari.Viewer") -> None:
        super().__init__(labels=True)
        self.viewer = napari_viewer
        self.session = SegmentationSession()
        self.worker = None
        self._preview_worker = None
        self._preview_pending = False
        self.history: dict[str, list[dict]] = {}
        self.segmentations: dict[str, dict[str, np.ndarray]] = {}  # tomogram layer -> feature -> probabilities

        # Data and features.
        self._tomogram = create_widget(label="tomogram", annotation="napari.layers.Image")
        self._annotation = create_widget(label="annotations", annotation="napari.layers.Labels")
        self._new_annotation = PushButton(text="New annotation layer")
        # Choices are callables: napari re-reads them on every layer change (reset_choices).
        self._feature = ComboBox(label="feature", choices=self._feature_choices)
        self._new_feature = LineEdit(label="new feature", value="")
        self._add_feature = PushButton(text="Add feature")
        # Training.
        self._architecture = ComboBox(label="architecture", choices=sorted(architectures.available()), value=architectures.DEFAULT)
        self._box = SpinBox(label="box (px)", min=32, max=256, step=16, value=64)
        self._epochs = SpinBox(label="epochs", min=1, max=500, value=25)
        self._validation = FloatSpinBox(label="validation", min=0.0, max=0.5, step=0.05, value=0.0)
        self._train = PushButton(text="Train feature")
        self._train_all = PushButton(text="Train all features")
        self._cancel = PushButton(text="Cancel", enabled=False)
        # Models.
        self._model = ComboBox(label="model", choices=self._model_choices)
        self._threshold = FloatSlider(label="threshold", min=0.01, max=0.99, step=0.01, value=0.5)
        self._emit = CheckBox(text="emit (competes)")
        self._absorb = CheckBox(text="absorb (zeroed where emitters are higher)")
        self._model_file = FileEdit(label="model file", mode="w", filter="*.scnm *.scnmgroup")
        self._load_model = PushButton(text="Load model / group")
        self._save_model = PushButton(text="Save model")
        self._save_group = PushButton(text="Save group")
        # Interactions.
        self._child = ComboBox(label="child", choices=self._model_choices)
        self._kind = ComboBox(label="interaction", choices=list(KINDS), value="colocalize")
        self._parent = ComboBox(label="parent", choices=self._model_choices)
        self._parent_threshold = FloatSpinBox(label="parent threshold", min=0.01, max=0.99, step=0.05, value=0.5)
        self._radius = FloatSpinBox(label="radius (nm)", min=0.0, max=1000.0, step=1.0, value=10.0)
        self._add_edge = PushButton(text="Add interaction")
        self._remove_edge = PushButton(text="Remove selected interaction")
        # Preview, segmentation, picking, meshes.
        self._live = CheckBox(text="live preview of the current slice", value=False)
        self._segment = PushButton(text="Segment whole tomogram")
        self._out_dir = FileEdit(label="save to", mode="d")
        self._save_segmentations = PushButton(text="Save segmentations (MRC)")
        self._pick_feature = ComboBox(label="pick from", choices=self._segmentation_choices)
        self._pick_threshold = FloatSpinBox(label="pick threshold", min=0.01, max=0.99, step=0.05, value=0.5)
        self._min_volume = FloatSpinBox(label="min volume (nm³)", min=0.0, max=1e7, step=100.0, value=0.0)
        self._min_spacing = FloatSpinBox(label="min spacing (Å)", min=0.0, max=1e5, step=10.0, value=0.0)
        self._pick = PushButton(text="Pick particles")
        self._picks_file = FileEdit(label="export picks", mode="w", filter="*.star *.tsv")
        self._export_picks = PushButton(text="Export picks (STAR or TSV)")
        self._mesh_level = FloatSpinBox(label="mesh level", min=0.01, max=0.99, step=0.05, value=0.5)
        self._mesh = PushButton(text="Make mesh")
        self._mesh_file = FileEdit(label="save mesh", mode="w", filter="*.obj")
        self._save_mesh = PushButton(text="Save mesh (OBJ)")
        self._status = Label(value="")
        self.extend([
            self._tomogram, self._annotation, self._new_annotation, self._feature, self._new_feature, self._add_feature,
            self._architecture, self._box, self._epochs, self._validation, self._train, self._train_all, self._cancel,
            self._model, self._threshold, self._emit, self._absorb, self._model_file, self._load_model, self._save_model, self._save_group,
            self._child, self._kind, self._parent, self._parent_threshold, self._radius, self._add_edge, self._remove_edge,
            self._live, self._segment, self._out_dir, self._save_segmentations,
            self._pick_feature, self._pick_threshold, self._min_volume, self._min_spacing, self._pick, self._picks_file, self._export_picks,
            self._mesh_level, self._mesh, self._mesh_file, self._save_mesh, self._status,
        ])
        from ..plots import qt_figure_canvas

        self._loss_figure, self._loss_canvas = qt_figure_canvas(150, "loss appears while training")
        self._graph_figure, self._graph_canvas = qt_figure_canvas(200)
        self._table = self._make_table()
        for w in (self._loss_canvas, self._table, self._graph_canvas):
            if w is not None:
                self.native.layout().addWidget(w)

        self._new_annotation.changed.connect(self.new_annotation_layer)
        self._add_feature.changed.connect(lambda: self.add_feature(self._new_feature.value))
        self._annotation.changed.connect(self._refresh_features)
        self._feature.changed.connect(self._select_label)
        self._train.changed.connect(lambda: self.train([self._feature.value] if self._feature.value else []))
        self._train_all.changed.connect(lambda: self.train([f.name for f in self.features()]))
        self._cancel.changed.connect(self.cancel)
        self._model.changed.connect(self._show_model)
        self._threshold.changed.connect(self._set_threshold)
        self._emit.changed.connect(self._set_competition)
        self._absorb.changed.connect(self._set_competition)
        self._load_model.changed.connect(lambda: self.load_models(self._model_file.value))
        self._save_model.changed.connect(lambda: self.save_model(self._model_file.value))
        self._save_group.changed.connect(lambda: self.save_group(self._model_file.value))
        self._add_edge.changed.connect(self.add_interaction_from_controls)
        self._remove_edge.changed.connect(self.remove_selected_interaction)
        self._live.changed.connect(lambda on: self.update_preview() if on else None)
        self._segment.changed.connect(self.segment)
        self._save_segmentations.changed.connect(lambda: self.save_segmentations(self._out_dir.value))
        self._pick.changed.connect(self.pick)
        self._export_picks.changed.connect(lambda: self.export_picks(self._picks_file.value))
        self._mesh.changed.connect(self.make_mesh)
        self._save_mesh.changed.connect(lambda: self.save_mesh(self._mesh_file.value))
        self.viewer.dims.events.current_step.connect(self._on_step)
        self._refresh_features()
        self._refresh_models()

    # ----------------------------------------------------------------- choices
    def _feature_choices(self, *_: Any) -> list[str]:
        try:
            return [f.name for f in self.features()]
        except (CryoInputError, AttributeError):  # AttributeError: called while the widget is being built
            return []

    def _model_choices(self, *_: Any) -> list[str]:
        return list(self.session.models)

    def _segmentation_choices(self, *_: Any) -> list[str]:
        tomo = getattr(getattr(self, "_tomogram", None), "value", None)
        return list(getattr(self, "segmentations", {}).get(tomo.name, {})) if tomo is not None else []

    # ----------------------------------------------------------------- helpers
    def _notify(self, message: str, error: bool = False) -> None:
        from napari.utils.notifications import show_error, show_info

        self._status.value = message[:120]
        (show_error if error else show_info)(message)

    def _tomogram_layer(self):
        layer = self._tomogram.value
        if layer is None or layer.ndim != 3:
            raise CryoInputError(None, "choose a 3D tomogram layer")
        return layer

    @staticmethod
    def _pixel_size(layer) -> float:
        return float(layer.scale[-1])

    def _busy(self, busy: bool) -> None:
        for w in (self._train, self._train_all, self._segment, self._pick):
            w.enabled = not busy
        self._cancel.enabled = busy

    def _finished(self) -> None:
        self._busy(False)
        self.worker = None

    def cancel(self) -> None:
        """Stop the running training or segmentation between two steps."""
        if self.worker is not None:
            self.worker.quit()

    # ---------------------------------------------------------------- features
    def features(self) -> list[Feature]:
        """The feature table of the chosen annotation layer."""
        layer = self._annotation.value
        return features_from_metadata(layer.metadata) if layer is not None else []

    def new_annotation_layer(self):
        """An empty Labels layer over the tomogram, with the default features."""
        try:
            tomo = self._tomogram_layer()
        except CryoInputError as exc:
            self._notify(str(exc), error=True)
            return None
        from napari.utils.colormaps import DirectLabelColormap

        features = make_features(DEFAULT_FEATURES)
        layer = self.viewer.add_labels(
            np.zeros(tomo.data.shape, dtype=np.uint8),
            name=f"{tomo.name} annotations",
            scale=tomo.scale,
            translate=tomo.translate,
            metadata={METADATA_KEY: features_to_metadata(features), "tomogram": tomo.name},
            colormap=DirectLabelColormap(color_dict=label_colours(features)),
        )
        layer.brush_size = 6
        self._annotation.reset_choices()
        self._annotation.value = layer
        self._refresh_features()
        return layer

    def add_feature(self, name: str) -> Feature | None:
        """Add a feature (next free label value, next colour) to the annotation layer's table."""
        layer = self._annotation.value
        if layer is None:
            self._notify("choose or create an annotation layer first", error=True)
            return None
        from napari.utils.colormaps import DirectLabelColormap

        from .features import PALETTE

        try:
            existing = self.features()
            value = max([f.value for f in existing], default=0) + 1
            feature = Feature(name.strip(), value, PALETTE[(value - 1) % len(PALETTE)])
            table = check_unique(existing + [feature])
        except CryoInputError as exc:
            self._notify(str(exc), error=True)
            return None
        layer.metadata = {**layer.metadata, METADATA_KEY: features_to_metadata(table)}
        layer.colormap = DirectLabelColormap(color_dict=label_colours(table))
        self._refresh_features()
        self._feature.value = feature.name
        return feature

    def _refresh_features(self, *_: Any) -> None:
        try:
            names = [f.name for f in self.features()]
        except CryoInputError as exc:
            self._notify(str(exc), error=True)
            names = []
        self._feature.reset_choices()
        if names and self._feature.value not in names:
            self._feature.value = names[0]

    def _select_label(self, name: str | None) -> None:
        """Painting then uses the chosen feature's label value."""
        layer = self._annotation.value
        for f in self.features():
            if f.name == name and layer is not None:
                layer.selected_label = f.value

    # ---------------------------------------------------------------- training
    def _preview_source(self):
        """The current slice for the preview during training (read on the main thread)."""
        holder: dict[str, Any] = {}

        def refresh(*_):
            try:
                tomo = self._tomogram_layer()
            except CryoInputError:
                return
            z = int(self.viewer.dims.current_step[0]) if len(self.viewer.dims.current_step) == 3 else 0
            z = int(np.clip(z, 0, tomo.data.shape[0] - 1))
            holder["value"] = (z, np.asarray(tomo.data[z], dtype=np.float32), self._pixel_size(tomo), self._stats(tomo))

        refresh()
        self.viewer.dims.events.current_step.connect(refresh)
        return (lambda: holder.get("value")), refresh

    def _stats(self, tomo) -> tuple[float, float]:
        from .dataset import normalisation

        cache = tomo.metadata.setdefault("_napari_cryo_stats", {})
        if "stats" not in cache:
            cache["stats"] = normalisation(tomo.data)
        return cache["stats"]

    def train(self, names: list[str]):
        """Train the models of the named features, one after another, in the background."""
        from ..device import resolve_device
        from ..tasks import start_worker
        from .dataset import BoxSettings
        from .training import SlicePreview, TrainSettings, train_feature

        try:
            self._tomogram_layer()
            layer = self._annotation.value
            if layer is None:
                raise CryoInputError(None, "choose the annotation (Labels) layer you painted")
            table = {f.name: f for f in self.features()}
            if not names:
                raise CryoInputError(None, "add a feature to the annotation layer first")
            chosen = [table[n] for n in names]
            pooled = self.annotated_tomograms(table)
            settings = TrainSettings(
                epochs=int(self._epochs.value),
                val_fraction=float(self._validation.value),
                boxes=BoxSettings(box=int(self._box.value)),
            )
            from .dataset import sample_boxes

            for f in chosen:  # fail now, on the main thread, for a feature nobody painted
                sample_boxes(pooled, f.value, pooled[0].pixel_size, BoxSettings(box=int(self._box.value), positives_per_slice=1, copies=1), f.name)
        except CryoInputError as exc:
            self._notify(str(exc), error=True)
            return None
        source, refresh = self._preview_source()
        architecture = self._architecture.value
        device = resolve_device("auto")

        def run():
            trained = []
            for f in chosen:
                yield ("training", f.name)
                model = yield from train_feature(pooled, f, architecture, settings, device=device, preview=source)
                trained.append(model)
                yield model
            return trained

        def on_value(value):
            from .model import SegmentationModel

            if isinstance(value, dict) and "epoch" in value:
                self.history.setdefault(self._training_title, []).append(value)
                self._draw_loss(self._training_title)
            elif isinstance(value, SlicePreview):
                self._show_preview({value.title: value.probabilities}, value.z)
            elif isinstance(value, SegmentationModel):
                self.session.add_model(value)
                self._refresh_models()
            elif isinstance(value, tuple) and value[0] == "training":
                self._training_title = value[1]
                self.history[value[1]] = []

        def finished():
            self.viewer.dims.events.current_step.disconnect(refresh)
            self._finished()
            self._notify(f"trained {', '.join(names)}")
            if self._live.value:
                self.update_preview()

        self._training_title = chosen[0].name
        self.worker = start_worker(run, description="training", on_yield=on_value, on_finished=finished)
        self._busy(True)
        return self.worker

    def annotated_tomograms(self, table: dict[str, Feature]) -> list:
        """The chosen tomogram with its annotations, then every other annotated tomogram open, pooled.

        Other annotation layers are those made by this widget (they name their
        tomogram); their label values are mapped onto the chosen table by
        feature name, so two tomograms may number their features differently.
        """
        from .dataset import AnnotatedTomogram

        tomo, layer = self._tomogram_layer(), self._annotation.value
        pairs = [(tomo, layer)]
        for other in self.viewer.layers:
            name = (other.metadata or {}).get("tomogram")
            if other is layer or METADATA_KEY not in (other.metadata or {}) or name not in self.viewer.layers:
                continue
            pairs.append((self.viewer.layers[name], other))
        pooled = []
        for image, labels in pairs:
            data = np.asarray(labels.data)
            if labels is not layer:
                mapping = {f.value: table[f.name].value for f in features_from_metadata(labels.metadata) if f.name in table}
                if not mapping or not np.any(data):
                    continue
                lut = np.zeros(max(256, int(data.max()) + 1), dtype=np.uint8)
                for src, dst in mapping.items():
                    lut[src] = dst
                data = lut[data]
            pooled.append(AnnotatedTomogram(image.data, data, self._pixel_size(image), image.name))
        return pooled

    def _draw_loss(self, title: str) -> None:
        if self._loss_figure is None:
            return
        from ..plots import loss_figure

        loss_figure(self.history.get(title, []), self._loss_figure, title=f"{title} ({self._architecture.value})")
        self._loss_canvas.draw_idle()

    # ------------------------------------------------------------------ models
    def _refresh_models(self) -> None:
        titles = list(self.session.models)
        for combo in (self._model, self._child, self._parent):
            current = combo.value
            combo.reset_choices()
            if current in titles:
                combo.value = current
        if len(titles) > 1 and self._parent.value == self._child.value:
            self._parent.value = next(t for t in titles if t != self._child.value)
        self._show_model(self._model.value)
        self._refresh_interactions()

    def _show_model(self, title: str | None) -> None:
        model = self.session.models.get(title) if title else None
        if model is None:
            return
        self._threshold.value = model.threshold
        self._emit.value = title in self.session.graph.emit
        self._absorb.value = title in self.session.graph.absorb

    def _set_threshold(self, value: float) -> None:
        model = self.session.models.get(self._model.value)
        if model is not None and abs(model.threshold - value) > 1e-9:
            model.threshold = float(value)
            self.update_preview()

    def _set_competition(self, *_: Any) -> None:
        title = self._model.value
        if title in self.session.models:
            self.session.set_competition(title, bool(self._emit.value), bool(self._absorb.value))
            self._refresh_interactions()
            self.update_preview()

    def load_models(self, path) -> None:
        """Load a ``.scnm`` model (added) or a ``.scnmgroup`` group (replaces the session)."""
        from .group import ModelGroup
        from .model import SegmentationModel

        try:
            if str(path).endswith(".scnmgroup"):
                self.session.load_group(ModelGroup.load(path))
            else:
                self.session.add_model(SegmentationModel.load(path))
        except CryoInputError as exc:
            self._notify(str(exc), error=True)
            return
        self._refresh_models()
        self._notify(f"loaded {Path(path).name}: models {', '.join(self.session.models)}")
        self.update_preview()

    def save_model(self, path) -> None:
        """Save the chosen model as ``.scnm``."""
        model = self.session.models.get(self._model.value)
        if model is None:
            self._notify("no model to save: train or load one", error=True)
            return
        path = Path(path)
        if path.suffix != ".scnm":
            path = path.with_suffix(".scnm")
        try:
            model.save(path, overwrite=True)
        except CryoInputError as exc:
            self._notify(str(exc), error=True)
            return
        self._notify(f"saved {model.title} to {path}")

    def save_group(self, path) -> None:
        """Save every model and the interactions as ``.scnmgroup``."""
        path = Path(path)
        if path.suffix != ".scnmgroup":
            path = path.with_suffix(".scnmgroup")
        try:
            if not self.session.models:
                raise CryoInputError(None, "no models to save: train or load some")
            self.session.group().save(path, overwrite=True)
        except CryoInputError as exc:
            self._notify(str(exc), error=True)
            return
        self._notify(f"saved {len(self.session.models)} models and {len(self.session.graph.interactions)} interactions to {path}")

    # ------------------------------------------------------------ interactions
    def _make_table(self):
        try:
            from qtpy.QtWidgets import QAbstractItemView, QTableWidget
        except ImportError:  # pragma: no cover
            return None
        table = QTableWidget(0, 5)
        table.setHorizontalHeaderLabels(["child", "interaction", "parent", "threshold", "radius (nm)"])
        table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        table.setMinimumHeight(110)
        table.itemChanged.connect(self._table_edited)
        return table

    def add_interaction_from_controls(self) -> None:
        """Add the edge described by the child / interaction / parent controls."""
        try:
            edge = Interaction(
                child=str(self._child.value), parent=str(self._parent.value), kind=str(self._kind.value),
                threshold=float(self._parent_threshold.value), radius_nm=float(self._radius.value),
            )
            self.session.add_interaction(edge)
        except (CryoInputError, TypeError, ValueError) as exc:
            self._notify(str(exc), error=True)
            return
        self._refresh_interactions()
        self.update_preview()

    def remove_selected_interaction(self) -> None:
        """Remove the edges selected in the table."""
        if self._table is None:
            return
        rows = sorted({i.row() for i in self._table.selectedIndexes()})
        kept = [e for k, e in enumerate(self.session.graph.interactions) if k not in rows]
        self.session.set_interactions(kept)
        self._refresh_interactions()
        self.update_preview()

    def _refresh_interactions(self) -> None:
        if self._table is not None:
            from qtpy.QtCore import Qt
            from qtpy.QtWidgets import QTableWidgetItem

            self._table.blockSignals(True)
            edges = self.session.graph.interactions
            self._table.setRowCount(len(edges))
            for r, e in enumerate(edges):
                for c, value in enumerate((e.child, e.kind, e.parent, f"{e.threshold:g}", f"{e.radius_nm:g}")):
                    item = QTableWidgetItem(value)
                    if c in (0, 2):  # changing the ends of an edge is a new edge
                        item.setFlags(item.flags() & ~Qt.ItemFlag.ItemIsEditable)
                    self._table.setItem(r, c, item)
            self._table.blockSignals(False)
        if self._graph_figure is not None:
            from .diagram import graph_figure

            colours = {t: m.colour for t, m in self.session.models.items()}
            graph_figure(list(self.session.models), self.session.graph, colours, self._graph_figure)
            self._graph_canvas.draw_idle()

    def _table_edited(self, item) -> None:
        """An edited type, threshold or radius cell changes that edge and the preview."""
        row = item.row()
        edges = list(self.session.graph.interactions)
        try:
            texts = [self._table.item(row, c).text() for c in range(5)]
            kind = texts[1].strip().lower()
            kind = {"avoids": "avoid", "colocalizes": "colocalize", "coloc": "colocalize"}.get(kind, kind)
            edges[row] = Interaction(edges[row].child, edges[row].parent, kind, float(texts[3]), float(texts[4]))
            edges[row] = Interaction.from_dict(edges[row].to_dict())  # validates kind and numbers
            self.session.set_interactions(edges)
        except (CryoInputError, TypeError, ValueError, IndexError) as exc:
            self._notify(f"interaction not changed: {exc}", error=True)
        self._refresh_interactions()
        self.update_preview()

    # ----------------------------------------------------------------- preview
    def _on_step(self, *_: Any) -> None:
        if self._live.value:
            self.update_preview()

    def update_preview(self):
        """Recompute the current slice's segmentation (all models, with interactions) in the background."""
        if not self._live.value or not self.session.models:
            return None
        try:
            tomo = self._tomogram_layer()
        except CryoInputError:
            return None
        if self._preview_worker is not None:
            self._preview_pending = True  # one more run when the current one ends
            return self._preview_worker
        from napari.qt.threading import thread_worker

        z = int(np.clip(self.viewer.dims.current_step[0], 0, tomo.data.shape[0] - 1))
        plane = np.asarray(tomo.data[z], dtype=np.float32)
        px, stats = self._pixel_size(tomo), self._stats(tomo)
        session = self.session

        @thread_worker(ignore_errors=True)
        def run():
            return z, session.preview(plane, px, stats)

        def done(result):
            self._show_preview(result[1], result[0])

        def finished():
            self._preview_worker = None
            if self._preview_pending:
                self._preview_pending = False
                self.update_preview()

        worker = run()
        worker.returned.connect(done)
        worker.errored.connect(lambda exc: self._notify(f"preview failed: {exc}", error=True))
        worker.finished.connect(finished)
        self._preview_worker = worker
        worker.start()
        return worker

    def _show_preview(self, probabilities: dict[str, np.ndarray], z: int) -> None:
        """One 2D overlay per feature: the preview always shows the slice it was computed for."""
        try:
            tomo = self._tomogram_layer()
        except CryoInputError:
            return
        if tomo not in self.viewer.layers:  # a late result for a closed viewer or a removed tomogram
            return
        for title, prob in probabilities.items():
            name = f"preview {title}"
            model = self.session.models.get(title)
            colour = model.colour if model else "#e69f00"
            threshold = model.threshold if model else 0.5
            shown = np.where(prob >= threshold, prob, 0.0).astype(np.float32)
            if name in self.viewer.layers:
                self.viewer.layers[name].data = shown
                self.viewer.layers[name].metadata["z"] = z
            else:
                self.viewer.add_image(
                    shown, name=name, scale=tomo.scale[1:], translate=tomo.translate[1:], colormap=_colormap(colour, title),
                    contrast_limits=(0.0, 1.0), blending="translucent", opacity=0.7, metadata={"z": z},
                )

    # -------------------------------------------------------------- segmenting
    def segment(self):
        """Segment the whole tomogram with every model, then apply the interactions."""
        from ..device import resolve_device
        from ..tasks import start_worker

        try:
            tomo = self._tomogram_layer()
            if not self.session.models:
                raise CryoInputError(None, "no models: train or load some first")
            group = self.session.group()
        except CryoInputError as exc:
            self._notify(str(exc), error=True)
            return None
        volume, px, name = tomo.data, self._pixel_size(tomo), tomo.name

        def done(result: dict[str, np.ndarray]):
            self.segmentations[name] = result
            for title, prob in result.items():
                self._add_segmentation(tomo, title, prob)
            self._pick_feature.reset_choices()
            self._notify(f"segmented {name}: {', '.join(result)}")

        self.worker = start_worker(group.apply, volume, px, resolve_device("auto"), description=f"segmenting {name}", on_returned=done, on_finished=self._finished)
        self._busy(True)
        return self.worker

    def _add_segmentation(self, tomo, title: str, prob: np.ndarray) -> None:
        name = f"{tomo.name} {title}"
        colour = self.session.models[title].colour if title in self.session.models else "#e69f00"
        if name in self.viewer.layers:
            self.viewer.layers[name].data = prob
        else:
            self.viewer.add_image(
                prob, name=name, scale=tomo.scale, translate=tomo.translate, colormap=_colormap(colour, title),
                contrast_limits=(0.0, 1.0), blending="additive", rendering="iso", iso_threshold=0.5,
                metadata={"segmentation_of": tomo.name, "feature": title},
            )

    def save_segmentations(self, directory) -> list[Path]:
        """Write ``<tomogram>__<feature>.mrc`` for the chosen tomogram's segmentations."""
        from .files import segmentation_path, write_segmentation

        written = []
        try:
            tomo = self._tomogram_layer()
            result = self.segmentations.get(tomo.name)
            if not result:
                raise CryoInputError(None, f"segment {tomo.name} first")
            directory = Path(directory)
            if not directory.is_dir():
                raise CryoInputError(directory, "is not a directory")
            source = (tomo.source.path if getattr(tomo, "source", None) is not None else None) or tomo.name
            for title, prob in result.items():
                path = segmentation_path(directory, source, title)
                write_segmentation(path, prob, self._pixel_size(tomo), tuple(float(t) for t in tomo.translate), title, overwrite=True)
                written.append(path)
        except CryoInputError as exc:
            self._notify(str(exc), error=True)
            return written
        self._notify(f"wrote {len(written)} segmentations to {directory}")
        return written

    # ---------------------------------------------------------------- picking
    def pick(self):
        """Pick particles from a feature's segmentation into a 3D Points layer."""
        from .particles import PickSettings, pick_particles

        try:
            tomo = self._tomogram_layer()
            result = self.segmentations.get(tomo.name, {})
            title = self._pick_feature.value
            if title not in result:
                raise CryoInputError(None, "segment the tomogram, then choose the feature to pick from")
            px = self._pixel_size(tomo)
            settings = PickSettings(
                threshold=float(self._pick_threshold.value),
                min_volume=float(self._min_volume.value) * 1000.0,  # nm³ -> Å³
                min_spacing=float(self._min_spacing.value),
            )
            picked = pick_particles(result[title], px, settings)
        except CryoInputError as exc:
            self._notify(str(exc), error=True)
            return None
        import pandas as pd

        features = pd.DataFrame({"volume": picked.volume, "weight": picked.weight})
        name = f"{tomo.name} {title} picks"
        diameter = float(np.cbrt(np.median(picked.volume) * 6 / np.pi) / px) if len(picked.volume) else 10.0
        if name in self.viewer.layers:
            self.viewer.layers.remove(name)
        layer = self.viewer.add_points(
            picked.coordinates, name=name, scale=tomo.scale, translate=tomo.translate, features=features,
            size=max(3.0, diameter), face_color="transparent", border_color=self.session.models[title].colour if title in self.session.models else "yellow",
            metadata={"pixel_size": px, "pixel_size_known": True, "micrograph_name": tomo.name},
        )
        self._notify(f"{len(picked.coordinates)} {title} particles")
        return layer

    def export_picks(self, path) -> Path | None:
        """Write the current picks as STAR (``rlnCoordinateX/Y/Z``, pixels) or tab-separated text."""
        import pandas as pd

        from ..io.star import write_coordinates
        from .particles import PickedParticles, write_coordinates_tsv

        try:
            tomo = self._tomogram_layer()
            name = f"{tomo.name} {self._pick_feature.value} picks"
            if name not in self.viewer.layers:
                raise CryoInputError(None, "pick particles first")
            layer = self.viewer.layers[name]
            path = Path(path)
            px = self._pixel_size(tomo)
            if path.suffix.lower() in (".tsv", ".txt"):
                picked = PickedParticles(np.asarray(layer.data), layer.features["volume"].to_numpy(), layer.features["weight"].to_numpy())
                write_coordinates_tsv(path, picked, px, overwrite=True)
            else:
                feats = pd.DataFrame({"rlnAutopickFigureOfMerit": layer.features["weight"].to_numpy(), "napariCryoVolumeA3": layer.features["volume"].to_numpy()})
                write_coordinates(path, np.asarray(layer.data), feats, px, micrograph_name=tomo.name, overwrite=True)
        except CryoInputError as exc:
            self._notify(str(exc), error=True)
            return None
        self._notify(f"wrote {len(layer.data)} picks to {path}")
        return path

    # ------------------------------------------------------------------ meshes
    def make_mesh(self):
        """A Surface layer of the chosen feature's segmentation."""
        from .meshes import mesh_from_volume, surface_layer_data

        try:
            tomo = self._tomogram_layer()
            title = self._pick_feature.value
            result = self.segmentations.get(tomo.name, {})
            if title not in result:
                raise CryoInputError(None, "segment the tomogram, then choose the feature")
            px = self._pixel_size(tomo)
            mesh = mesh_from_volume(result[title], float(self._mesh_level.value), px, min_volume=float(self._min_volume.value) * 1000.0)
            if len(mesh.faces) == 0:
                raise CryoInputError(None, f"nothing in {title} is above level {self._mesh_level.value}")
        except CryoInputError as exc:
            self._notify(str(exc), error=True)
            return None
        self.mesh = mesh
        name = f"{tomo.name} {title} mesh"
        if name in self.viewer.layers:
            self.viewer.layers.remove(name)
        colour = self.session.models[title].colour if title in self.session.models else "#e69f00"
        layer = self.viewer.add_surface(
            surface_layer_data(mesh), name=name, scale=tomo.scale, translate=tomo.translate,
            colormap=_colormap(colour, title), opacity=0.8, shading="smooth",
        )
        self._notify(f"{title} mesh: {len(mesh.vertices)} vertices, {len(mesh.faces)} faces")
        return layer

    def save_mesh(self, path) -> Path | None:
        """Write the last mesh as OBJ in Å."""
        from .meshes import write_obj

        if getattr(self, "mesh", None) is None:
            self._notify("make a mesh first", error=True)
            return None
        try:
            write_obj(path, self.mesh, overwrite=True)
        except CryoInputError as exc:
            self._notify(str(exc), error=True)
            return None
        self._notify(f"wrote {path}")
        return Path(path)
