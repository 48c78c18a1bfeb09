"""The tomogram segmentation view: paint, train per feature, preview, segment, pick, mesh (after Ais).

A thin napari widget over :class:`.controller.SegmentationController`: it reads widget values
and layers on the main thread, runs the controller's jobs as tasks (:class:`~.._view.CryoView`)
and adds the layer-data tuples they return (:mod:`._display_widget`, which also runs the
live preview).  The models and interactions panel is :class:`._models_widget.ModelPanel`.
Saving asks before it replaces a file (:meth:`~.._view.CryoView.confirm_replace`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, FileEdit, FloatSpinBox, LineEdit, PushButton, SpinBox, create_widget

from .._view import CryoView, reports_input_errors
from ..device import resolve_device
from ..errors import CryoInputError
from ..training_loop import EpochRecord, Resumed, Stopped, describe_event
from . import architectures
from ._display_widget import LivePreview, find_output, show, show_all
from ._models_widget import ModelPanel
from .controller import SegmentationController, TomogramRef, features_of
from .dataset import BoxSettings
from .interactions import InteractionEffects
from .model import SegmentationModel
from .particles import PickSettings
from .training import SlicePreview, TrainSettings

if TYPE_CHECKING:  # pragma: no cover
    import napari


def _button(text: str, action) -> PushButton:
    button = PushButton(text=text)
    button.changed.connect(lambda: action())
    return button


class SegmentationWidget(CryoView):
    """Per-feature tomogram segmentation with model interactions (after Ais)."""

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__(napari_viewer)
        self.controller = SegmentationController()
        self._z = 0  # the viewer's slice; training previews read it from the worker
        self.preview = LivePreview(napari_viewer, self.controller, self._tomo, lambda: self._z, self.notify,
                                   on_effects=lambda effects, where: self.models.show_effects(effects, where))
        self._tomogram = create_widget(label="tomogram", annotation="napari.layers.Image")
        self._annotation = create_widget(label="annotations", annotation="napari.layers.Labels")
        # Choices are callables: napari re-reads them on every layer change (reset_choices).
        self._feature = ComboBox(label="feature", choices=self._feature_choices)
        self._new_feature = LineEdit(label="new feature", value="")
        self._architecture = ComboBox(label="architecture", choices=sorted(architectures.available()), value=architectures.DEFAULT)
        self._box = SpinBox(label="box (px)", min=32, max=256, step=16, value=64)
        defaults = TrainSettings()
        self._epochs = SpinBox(label="max epochs", min=1, max=500, value=defaults.epochs,
                               tooltip="training stops sooner when the held-out slices stop improving or the budget is spent")
        self._budget = SpinBox(label="budget (s)", min=0, max=36_000, step=30, value=int(defaults.budget_s or 0),
                               tooltip="training time per feature (0: no limit)")
        self._context = SpinBox(label="slices seen", min=1, max=15, step=2, value=defaults.boxes.context,
                                tooltip="slices the model sees around each one it segments (odd)")
        self._validation = FloatSpinBox(label="validation", min=0.0, max=0.5, step=0.05, value=defaults.val_fraction,
                                        tooltip="fraction of the painted slices held out to stop early and calibrate")
        self._train = _button("Train feature", lambda: self.train([self._feature.value] if self._feature.value else []))
        self._train_all = _button("Train all features", lambda: self.train([f.name for f in self.features()]))
        self.models = ModelPanel(self.controller, self.update_preview, self.notify, self.run, self.confirm_replace)
        self._live = CheckBox(text="live preview of the current slice", value=False)
        self._segment = _button("Segment whole tomogram", self.segment)
        self._out_dir = FileEdit(label="save to", mode="d")
        self._save_segmentations = _button("Save segmentations (MRC)", lambda: self.save_segmentations(self._out_dir.value))
        self._pick_feature = ComboBox(label="pick from", choices=lambda *_: self.controller.segmented_features(self._tomogram_key()))
        self._pick_threshold = FloatSpinBox(label="pick threshold", min=0.01, max=0.99, step=0.05, value=0.5)
        self._min_volume = FloatSpinBox(label="min volume (nm³)", min=0.0, max=1e7, step=100.0, value=0.0)
        self._min_spacing = FloatSpinBox(label="min spacing (Å)", min=0.0, max=1e5, step=10.0, value=0.0)
        self._pick = _button("Pick particles", self.pick)
        self._picks_file = FileEdit(label="export picks", mode="w", filter="*.star *.tsv")
        self._mesh_level = FloatSpinBox(label="mesh level", min=0.01, max=0.99, step=0.05, value=0.5)
        self._mesh = _button("Make mesh", self.make_mesh)
        self._mesh_file = FileEdit(label="save mesh", mode="w", filter="*.obj")
        self._save_mesh = _button("Save mesh (OBJ)", lambda: self.save_mesh(self._mesh_file.value))
        self.extend([
            self._tomogram, self._annotation, _button("New annotation layer", self.new_annotation_layer), self._feature, self._new_feature,
            _button("Add feature", lambda: self.add_feature(self._new_feature.value)), self._architecture, self._box, self._epochs,
            self._budget, self._context, self._validation, self._train, self._train_all, self.models, self._live, self._segment, self._out_dir, self._save_segmentations,
            self._pick_feature, self._pick_threshold, self._min_volume, self._min_spacing, self._pick, self._picks_file,
            _button("Export picks (STAR or TSV)", lambda: self.export_picks(self._picks_file.value)),
            self._mesh_level, self._mesh, self._mesh_file, self._save_mesh,
        ])
        self.add_task_panel([self._train, self._train_all, self._segment, self._save_segmentations, self._pick, self._mesh, self._save_mesh,
                             *self.models.file_buttons])
        self._loss_figure, self._loss_canvas = self.add_plot(150, "loss appears while training")
        self._annotation.changed.connect(self._refresh_features)
        self._feature.changed.connect(self._select_label)
        self._live.changed.connect(lambda on: self.update_preview() if on else None)
        self.viewer.dims.events.current_step.connect(self._on_step)
        self._on_step()
        self._refresh_features()
        self.models.refresh()

    @property
    def session(self):
        """The models and interactions (the controller's session)."""
        return self.controller.session

    # ----------------------------------------------------------------- helpers
    def _tomogram_key(self) -> str | None:
        layer = getattr(self._tomogram, "value", None)
        return str(layer.unique_id) if layer is not None else None

    def _tomo(self) -> TomogramRef:
        return TomogramRef.from_layer(self._tomogram.value)

    # ---------------------------------------------------------------- features
    def features(self) -> list:
        """The feature table of the chosen annotation layer."""
        return features_of(self._annotation.value)

    def _feature_choices(self, *_: Any) -> list[str]:
        try:
            return [f.name for f in self.features()]
        except (CryoInputError, AttributeError):  # AttributeError: called while the widget is being built
            return []

    @reports_input_errors
    def new_annotation_layer(self):
        """An empty Labels layer over the tomogram, with the default features."""
        data, kwargs, _ = self.controller.annotation_layer(self._tomo())
        layer = self.viewer.add_labels(data, **kwargs)
        layer.brush_size = 6
        self._annotation.reset_choices()
        self._annotation.value = layer
        self._refresh_features()
        return layer

    @reports_input_errors
    def add_feature(self, name: str):
        """Add a feature (next free label value, next colour) to the annotation layer's table."""
        layer = self._annotation.value
        if layer is None:
            raise CryoInputError(None, "choose or create an annotation layer first")
        feature, layer.metadata, layer.colormap = self.controller.add_feature(layer.metadata, name)
        self._refresh_features()
        self._feature.value = feature.name
        return feature

    def _refresh_features(self, *_: Any) -> None:
        names = self._feature_choices()
        self._feature.reset_choices()
        if names and self._feature.value not in names:
            self._feature.value = names[0]

    def _select_label(self, name: str | None) -> None:
        """Painting then uses the chosen feature's label value."""
        for f in self.features():
            if f.name == name:
                self._annotation.value.selected_label = f.value

    # ---------------------------------------------------------------- training
    @reports_input_errors
    def train(self, names: list[str]):
        """Train the models of the named features, one after another, in the background."""
        sources = self.controller.annotation_sources(self.viewer.layers, self._tomogram.value, self._annotation.value)
        context = int(self._context.value) | 1  # odd
        settings = TrainSettings(epochs=int(self._epochs.value), val_fraction=float(self._validation.value), budget_s=float(self._budget.value) or None,
                                 boxes=BoxSettings(box=int(self._box.value), context=context))
        tomo = sources[0].tomogram
        stops: list[str] = []

        def on_value(value: Any) -> None:
            self.controller.receive(value)
            if isinstance(value, SlicePreview):
                self.preview.show(tomo, value.z, {value.title: value.probabilities})
            elif isinstance(value, (EpochRecord, Resumed)):
                title = self.controller.training
                self.draw_loss(self._loss_figure, self._loss_canvas, self.controller.history[title], f"{title} ({self._architecture.value})")
            elif isinstance(value, Stopped):
                # The status line, not a notification: a toast costs the event loop a fifth of a second mid-training.
                stops.append(f"{self.controller.training}: {describe_event(value)}")
                self._status.value = stops[-1]
            elif isinstance(value, SegmentationModel):
                self.models.refresh()
            self.controller.drawn()

        job = self.controller.train(sources, names, self._architecture.value, settings, resolve_device("auto"), lambda: self._z, wait_for_view=True)
        # Make the preview layers while the job waits: adding a layer while training competes for the GIL takes longer.
        empty = dict.fromkeys(names, np.zeros(tomo.shape[1:], np.float32))
        show_all(self.viewer, self.controller.preview_layers(tomo, self._z, empty), later=True, then=self.controller.drawn)
        return self.run(job, description="training", on_yield=on_value, on_returned=lambda _: self.notify("; ".join([f"trained {', '.join(names)}", *stops])),
                        on_finished=self.update_preview)

    # ----------------------------------------------------------------- preview
    def _on_step(self, *_: Any) -> None:
        step = self.viewer.dims.current_step
        self._z = int(step[-3]) if len(step) >= 3 else 0
        self.update_preview()

    def update_preview(self):
        """Recompute the current slice's segmentation (all models, with interactions) in the background, if live."""
        return self.preview.request() if self._live.value else None

    # ------------------------------------------------- segment, pick and mesh
    @reports_input_errors
    def segment(self):
        """Segment the whole tomogram with every model, then apply the interactions."""
        tomo = self._tomo()

        def done(result: dict) -> None:
            show_all(self.viewer, self.controller.segmented(tomo, result))
            self._pick_feature.reset_choices()
            self.notify(f"segmented {tomo.name}: {', '.join(result)}")

        def on_value(value: Any) -> None:
            if isinstance(value, InteractionEffects):
                self.models.show_effects(value, f"{tomo.name}, whole tomogram")

        return self.run(self.controller.segment(tomo, resolve_device("auto")), description=f"segmenting {tomo.name}",
                        on_yield=on_value, on_returned=done)

    @reports_input_errors
    def save_segmentations(self, directory):
        """Write ``<tomogram>__<feature>.mrc`` for the chosen tomogram's segmentations (asking before replacing any)."""
        tomo = self._tomo()
        if not self.confirm_replace(self.controller.segmentation_paths(tomo, directory).values()):
            return None
        job = self.controller.save_segmentations(tomo, directory, overwrite=True)
        return self.run(job, description="saving segmentations", on_returned=lambda paths: self.notify(f"wrote {len(paths)} segmentations to {directory}"))

    @reports_input_errors
    def pick(self):
        """Pick particles from a feature's segmentation into a 3D Points layer."""
        tomo, title = self._tomo(), self._pick_feature.value
        settings = PickSettings(threshold=float(self._pick_threshold.value), min_volume=float(self._min_volume.value) * 1000.0,  # nm³ -> Å³
                                min_spacing=float(self._min_spacing.value))

        def done(picked) -> None:
            show(self.viewer, *self.controller.picks_layer(tomo, title, picked), replace=True)
            self.notify(f"{len(picked)} {title} particles")

        return self.run(self.controller.pick(tomo, title, settings), description=f"picking {title}", on_returned=done)

    @reports_input_errors
    def export_picks(self, path):
        """Write the picks layer (as edited) as STAR (``rlnCoordinateX/Y/Z``, pixels) or tab-separated text."""
        tomo = self._tomo()
        layer = find_output(self.viewer, f"{tomo.key}/picks/{self._pick_feature.value}")
        if layer is None:
            raise CryoInputError(None, "pick particles first")
        if not self.confirm_replace([path]):
            return None
        written = self.controller.export_picks(path, tomo, layer, overwrite=True)
        self.notify(f"wrote {len(layer.data)} picks to {written}")
        return written

    @reports_input_errors
    def make_mesh(self):
        """A Surface layer of the chosen feature's segmentation."""
        tomo, title = self._tomo(), self._pick_feature.value
        job = self.controller.mesh(tomo, title, float(self._mesh_level.value), float(self._min_volume.value) * 1000.0)

        def done(mesh) -> None:
            show(self.viewer, *self.controller.meshed(tomo, title, mesh), replace=True)
            self.notify(f"{title} mesh: {len(mesh.vertices)} vertices, {len(mesh.faces)} faces")

        return self.run(job, description=f"meshing {title}", on_returned=done)

    @reports_input_errors
    def save_mesh(self, path):
        """Write the chosen feature's mesh as OBJ in Å (asking before replacing a file)."""
        job = self.controller.save_mesh(self._tomo(), self._pick_feature.value, path, overwrite=True)  # checks there is a mesh before asking
        if not self.confirm_replace([path]):
            return None
        return self.run(job, description="saving mesh", on_returned=lambda written: self.notify(f"wrote {written}"))
