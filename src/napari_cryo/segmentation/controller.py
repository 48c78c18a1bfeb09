"""What the segmentation view does, without Qt or napari: state, long actions, layer data, files.

:class:`SegmentationController` keeps the models (a :class:`.session.SegmentationSession`),
the loss histories, and per tomogram (by the layer's ``unique_id``, so a renamed layer keeps
them) its normalisation statistics, segmentations and meshes.  Layers come in duck-typed and
are read on the main thread into :class:`TomogramRef` and :class:`AnnotationSource` (array
objects, not their values); long actions come back as *jobs*, zero-argument functions that
check their input at once and do the work when a worker runs them; results go out as napari
layer-data tuples ``(data, kwargs, layer_type)``.

Every action that writes files refuses, before its job starts, to replace one
unless called with ``overwrite`` (the view asks the user first); the
``*_paths`` methods list what an action would write, for that question.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CryoInputError
from ..io.atomic import check_outputs
from ..layer_meta import (
    FEATURE,
    MICROGRAPH_NAME,
    OUTPUT,
    PIXEL_SIZE,
    PIXEL_SIZE_KNOWN,
    PREVIEW_Z,
    SEGMENTATION_OF,
    TOMOGRAM,
    TOMOGRAM_ID,
    LayerData,
    layer_pixel_size,
)
from ..tasks import Job, Progress
from ..training_loop import EpochRecord, Resumed
from .dataset import AnnotatedTomogram, BoxSettings, normalisation, sample_boxes
from .features import (
    METADATA_KEY,
    PALETTE,
    Feature,
    check_unique,
    features_from_metadata,
    features_to_metadata,
    label_colours,
    make_features,
)
from .files import segmentation_path, tomogram_name, write_segmentation
from .group import ModelGroup
from .interactions import InteractionEffects
from .meshes import Mesh, mesh_from_volume, surface_layer_data, write_obj
from .model import SegmentationModel
from .particles import PickedParticles, PickSettings, pick_particles, write_picks
from .session import SegmentationSession, preview_slice_with_effects
from .training import SlicePreview, TrainSettings, train_feature

DEFAULT_FEATURES = ("membrane", "carbon", "particle")


@dataclass(frozen=True)
class TomogramRef:
    """A tomogram layer read on the main thread: its identity, transform and (unread) array."""

    key: str
    name: str
    data: Any
    pixel_size: float
    scale: tuple[float, ...]
    translate: tuple[float, ...]
    source: str

    @classmethod
    def from_layer(cls, layer: Any) -> TomogramRef:
        """Read a napari Image layer (duck-typed); raises CryoInputError unless it is 3D with a pixel size."""
        if layer is None or getattr(layer, "ndim", 0) != 3:
            raise CryoInputError(None, "choose a 3D tomogram layer")
        source = getattr(getattr(layer, "source", None), "path", None) or layer.name
        return cls(str(layer.unique_id), layer.name, layer.data, layer_pixel_size(layer), tuple(map(float, layer.scale)),
                   tuple(map(float, layer.translate)), str(source))

    @property
    def shape(self) -> tuple[int, ...]:
        """(Z, Y, X)."""
        return tuple(self.data.shape)


@dataclass(frozen=True)
class AnnotationSource:
    """A painted Labels layer (array unread) with its tomogram and feature table."""

    tomogram: TomogramRef
    labels: Any
    features: tuple[Feature, ...]


@dataclass(frozen=True)
class FeatureStarted:
    """Training of one feature begins (its loss history starts again)."""

    title: str


def colormap(colour: str, name: str) -> dict[str, Any]:
    """A transparent-to-``colour`` colormap, as napari layer kwargs accept it."""
    from matplotlib.colors import to_rgb

    r, g, b = to_rgb(colour)
    return {"colors": [[r, g, b, 0.0], [r, g, b, 1.0]], "name": f"napari-cryo {name}"}


def features_of(layer: Any) -> list[Feature]:
    """The feature table of an annotation layer (duck-typed; none for ``None``)."""
    return features_from_metadata(layer.metadata) if layer is not None else []


class SegmentationController:
    """The segmentation view's state and actions (see the module docstring)."""

    def __init__(self) -> None:
        self.session = SegmentationSession()
        self.history: dict[str, list[EpochRecord]] = {}
        self._training: str | None = None
        self._stats: dict[str, tuple[float, float]] = {}
        self._segmentations: dict[str, dict[str, np.ndarray]] = {}
        self._meshes: dict[tuple[str, str], Mesh] = {}
        self._drawn = threading.Event()

    @property
    def training(self) -> str | None:
        """The feature whose training events :meth:`receive` got last."""
        return self._training

    def colour(self, title: str) -> str:
        """The display colour of a feature's model (a default without one)."""
        model = self.session.models.get(title)
        return model.colour if model is not None else PALETTE[0]

    # ------------------------------------------------------------- annotations
    @staticmethod
    def annotation_layer(tomo: TomogramRef) -> LayerData:
        """An empty Labels layer over the tomogram, with the default features."""
        features = make_features(DEFAULT_FEATURES)
        metadata = {METADATA_KEY: features_to_metadata(features), TOMOGRAM: tomo.name, TOMOGRAM_ID: tomo.key}
        kwargs = {"name": f"{tomo.name} annotations", "scale": tomo.scale, "translate": tomo.translate, "metadata": metadata,
                  "colormap": label_colours(features)}
        return np.zeros(tomo.shape, dtype=np.uint8), kwargs, "labels"

    @staticmethod
    def add_feature(metadata: Mapping[str, Any], name: str) -> tuple[Feature, dict[str, Any], dict]:
        """A new feature (next free label value and colour): it, the layer's new metadata and label colours."""
        existing = features_from_metadata(metadata)
        value = max([f.value for f in existing], default=0) + 1
        feature = Feature(name.strip(), value, PALETTE[(value - 1) % len(PALETTE)])
        table = check_unique(existing + [feature])
        return feature, {**metadata, METADATA_KEY: features_to_metadata(table)}, label_colours(table)

    @staticmethod
    def annotation_sources(layers: Iterable[Any], tomogram: Any, annotations: Any) -> list[AnnotationSource]:
        """The chosen tomogram and annotations first, then every other annotated tomogram open.

        Other annotation layers name their tomogram in their metadata, by ``unique_id`` (layers
        made here) or by name.  Cheap: reads layer attributes, not their arrays.
        """
        tomo = TomogramRef.from_layer(tomogram)
        if annotations is None:
            raise CryoInputError(None, "choose the annotation (Labels) layer you painted")
        layers = list(layers)
        by_id = {str(getattr(layer, "unique_id", "")): layer for layer in layers}
        by_name = {layer.name: layer for layer in layers}
        sources = [AnnotationSource(tomo, annotations.data, tuple(features_of(annotations)))]
        for other in layers:
            meta = other.metadata or {}
            if other is annotations or METADATA_KEY not in meta:
                continue
            image = by_id.get(str(meta.get(TOMOGRAM_ID))) or by_name.get(meta.get(TOMOGRAM))
            if image is not None:
                sources.append(AnnotationSource(TomogramRef.from_layer(image), other.data, tuple(features_of(other))))
        return sources

    @staticmethod
    def annotated_tomograms(sources: Sequence[AnnotationSource], table: Mapping[str, Feature]) -> list[AnnotatedTomogram]:
        """The sources as training data, label values mapped onto ``table`` by feature name (slow: run in a worker).

        The first source is the chosen one and is used as painted; another source's values
        are renumbered, so two tomograms may number their features differently, and a source
        with none of the table's features or nothing painted is left out.
        """
        pooled = []
        for k, source in enumerate(sources):
            data = np.asarray(source.labels)
            if k > 0:
                mapping = {f.value: table[f.name].value for f in source.features if f.name in table}
                if not mapping or not np.any(data):
                    continue
                lut = np.zeros(max(256, int(data.max()) + 1), dtype=np.uint8)
                for src, dst in mapping.items():
                    lut[src] = dst
                data = lut[data]
            tomo = source.tomogram
            pooled.append(AnnotatedTomogram(tomo.data, data, tomo.pixel_size, tomo.name))
        return pooled

    def stats(self, tomo: TomogramRef) -> tuple[float, float]:
        """The tomogram's normalisation (mean, std), computed once per layer (slow the first time: run in a worker)."""
        if tomo.key not in self._stats:
            # A plain dict store is atomic, so workers may fill the cache.
            self._stats[tomo.key] = normalisation(tomo.data)
        return self._stats[tomo.key]

    # ---------------------------------------------------------------- training
    def train(
        self,
        sources: Sequence[AnnotationSource],
        names: Sequence[str],
        architecture: str,
        settings: TrainSettings,
        device: Any = "cpu",
        current_z: Callable[[], int | None] = lambda: None,
        wait_for_view: bool = False,
    ) -> Job:
        """A job training the named features' models one after another.

        It yields :class:`FeatureStarted`, Progress, EpochRecord, SlicePreview (of the slice
        ``current_z()`` names, read in the worker) and each trained model; pass every value
        to :meth:`receive` on the main thread.  It returns the models.  With
        ``wait_for_view`` it pauses at the start (while the view makes its preview layers) and
        after each epoch record and preview until the view calls :meth:`drawn` (or a second
        passes): drawing on the main thread then does not compete with training for the GIL.
        """
        table = {f.name: f for f in sources[0].features}
        if not names:
            raise CryoInputError(None, "add a feature to the annotation layer first")
        unknown = [n for n in names if n not in table]
        if unknown:
            raise CryoInputError(None, f"the annotation layer has no feature {unknown[0]!r}")
        chosen = [table[n] for n in names]
        tomo = sources[0].tomogram
        self._drawn.clear()

        def job() -> Generator[Any, None, list[SegmentationModel]]:
            yield Progress(0, None, "reading annotations")
            if wait_for_view:
                self._drawn.wait(1.0)
            pooled = self.annotated_tomograms(sources, table)
            check = BoxSettings(box=settings.boxes.box, positives_per_slice=1, copies=1)
            for f in chosen:  # fail before training anything, for a feature nobody painted
                sample_boxes(pooled, f.value, pooled[0].pixel_size, check, f.name)
                yield Progress(0, None, "reading annotations")
            stats = self.stats(tomo)

            def preview() -> tuple[int, np.ndarray, float, tuple[float, float]] | None:
                z = current_z()
                if z is None:
                    return None
                return int(np.clip(z, 0, tomo.shape[0] - 1)), tomo.data, tomo.pixel_size, stats

            trained = []
            for f in chosen:
                yield FeatureStarted(f.name)
                steps = train_feature(pooled, f, architecture, settings, device=device, preview=preview)
                model = yield from (self._paced(steps) if wait_for_view else steps)
                trained.append(model)
                yield model
            return trained

        return job

    def _paced(self, steps: Generator[Any, None, Any]) -> Generator[Any, None, Any]:
        """Pass on what ``steps`` yields, waiting for :meth:`drawn` after what the view draws."""
        while True:
            try:
                item = next(steps)
            except StopIteration as stop:
                return stop.value
            self._drawn.clear()
            yield item
            if isinstance(item, (EpochRecord, SlicePreview)):
                self._drawn.wait(1.0)

    def drawn(self) -> None:
        """The view has shown the last value a paced job yielded (see :meth:`train`)."""
        self._drawn.set()

    def receive(self, value: Any) -> None:
        """Keep what a training job yields (main thread): loss histories and trained models."""
        if isinstance(value, FeatureStarted):
            self._training = value.title
            self.history[value.title] = []
        elif isinstance(value, Resumed) and self._training is not None:
            self.history[self._training] = list(value.history)
        elif isinstance(value, EpochRecord) and self._training is not None:
            self.history[self._training].append(value)
        elif isinstance(value, SegmentationModel):
            self.session.add_model(value)

    # ----------------------------------------------------------------- preview
    def preview(self, tomo: TomogramRef, z: int, device: Any = "cpu") -> Callable[[], tuple[int, dict[str, np.ndarray], InteractionEffects]]:
        """A job (plain function) computing slice ``z`` with every model, after interactions.

        It returns ``(z, probabilities, effects)``; the effects say how many objects of the slice
        each interaction removed.

        The models are a snapshot taken now, on the main thread: training may add models to
        the session while the job runs.
        """
        snapshot = self.session.snapshot()
        z = int(np.clip(z, 0, tomo.shape[0] - 1))

        def job() -> tuple[int, dict[str, np.ndarray], InteractionEffects]:
            probabilities, effects = preview_slice_with_effects(snapshot, tomo.data, z, tomo.pixel_size, self.stats(tomo), device)
            return z, probabilities, effects

        return job

    def preview_layers(self, tomo: TomogramRef, z: int, probabilities: Mapping[str, np.ndarray]) -> list[LayerData]:
        """One 2D overlay per feature, shown above its threshold."""
        out = []
        for title, prob in probabilities.items():
            model = self.session.models.get(title)
            threshold = model.threshold if model is not None else 0.5
            shown = np.where(prob >= threshold, prob, 0.0).astype(np.float32)
            kwargs = {"name": f"preview {title}", "scale": tomo.scale[1:], "translate": tomo.translate[1:],
                      "colormap": colormap(self.colour(title), title), "contrast_limits": (0.0, 1.0), "blending": "translucent",
                      "opacity": 0.7, "metadata": {PREVIEW_Z: z, OUTPUT: f"{tomo.key}/preview/{title}"}}
            out.append((shown, kwargs, "image"))
        return out

    # ------------------------------------------------------------ segmentation
    def segment(self, tomo: TomogramRef, device: Any = "cpu") -> Job:
        """A job segmenting the whole tomogram with every model, then the interactions; it returns feature -> probabilities."""
        if not self.session.models:
            raise CryoInputError(None, "no models: train or load some first")
        group = self.session.group()

        def job() -> Generator[Progress, None, dict[str, np.ndarray]]:
            return (yield from group.apply(tomo.data, tomo.pixel_size, device))

        return job

    def segmented(self, tomo: TomogramRef, result: Mapping[str, np.ndarray]) -> list[LayerData]:
        """Keep a finished segmentation (main thread) and return its layers, one per feature."""
        self._segmentations[tomo.key] = dict(result)
        return [
            (prob, {"name": f"{tomo.name} {title}", "scale": tomo.scale, "translate": tomo.translate, "colormap": colormap(self.colour(title), title),
                    "contrast_limits": (0.0, 1.0), "blending": "additive", "rendering": "iso", "iso_threshold": 0.5,
                    "metadata": {SEGMENTATION_OF: tomo.name, FEATURE: title, OUTPUT: f"{tomo.key}/segmentation/{title}"}}, "image")
            for title, prob in result.items()
        ]

    def segmented_features(self, key: str | None) -> list[str]:
        """The features segmented in the tomogram with this layer id."""
        return list(self._segmentations.get(str(key), {}))

    def _segmentation(self, tomo: TomogramRef, title: str) -> np.ndarray:
        result = self._segmentations.get(tomo.key, {})
        if title not in result:
            raise CryoInputError(None, f"segment {tomo.name}, then choose the feature")
        return result[title]

    def segmentation_paths(self, tomo: TomogramRef, directory: str | Path) -> dict[str, Path]:
        """Feature -> the file :meth:`save_segmentations` writes for it.

        Raises
        ------
        CryoInputError
            Before a segmentation, or when ``directory`` is not a directory.
        """
        result = self._segmentations.get(tomo.key, {})
        if not result:
            raise CryoInputError(None, f"segment {tomo.name} first")
        directory = Path(directory)
        if not directory.is_dir():
            raise CryoInputError(directory, "is not a directory")
        return {title: segmentation_path(directory, tomo.source, title) for title in result}

    def save_segmentations(self, tomo: TomogramRef, directory: str | Path, overwrite: bool = False) -> Job:
        """A job writing ``<tomogram>__<feature>.mrc`` per segmented feature; it returns the paths.

        Raises
        ------
        CryoInputError
            At once, when one of the files exists and ``overwrite`` is false (nothing is written).
        """
        result = dict(self._segmentations.get(tomo.key, {}))
        paths = self.segmentation_paths(tomo, directory)
        check_outputs(paths.values(), overwrite=overwrite)

        def job() -> Generator[Progress, None, list[Path]]:
            written = []
            for k, (title, prob) in enumerate(result.items()):
                yield Progress(k, len(result), title)
                written.append(write_segmentation(paths[title], prob, tomo.pixel_size, tomo.translate, title, overwrite=overwrite))
            return written

        return job

    # ---------------------------------------------------------------- picking
    def pick(self, tomo: TomogramRef, title: str, settings: PickSettings) -> Job:
        """A job picking particles from a feature's segmentation; it returns PickedParticles."""
        volume = self._segmentation(tomo, title)

        def job() -> Generator[Progress, None, PickedParticles]:
            return (yield from _step(f"picking {title}", pick_particles, volume, tomo.pixel_size, settings))

        return job

    def picks_layer(self, tomo: TomogramRef, title: str, picked: PickedParticles) -> LayerData:
        """A 3D Points layer of the picks, sized by the median particle volume."""
        diameter = float(np.cbrt(np.median(picked.volume) * 6 / np.pi) / tomo.pixel_size) if len(picked.volume) else 10.0
        kwargs = {"name": f"{tomo.name} {title} picks", "scale": tomo.scale, "translate": tomo.translate,
                  "features": {"volume": picked.volume, "weight": picked.weight}, "size": max(3.0, diameter),
                  "face_color": "transparent", "border_color": self.colour(title) if title in self.session.models else "yellow",
                  "metadata": {PIXEL_SIZE: tomo.pixel_size, PIXEL_SIZE_KNOWN: True, MICROGRAPH_NAME: tomogram_name(tomo.source),
                               OUTPUT: f"{tomo.key}/picks/{title}"}}
        return picked.coordinates, kwargs, "points"

    @staticmethod
    def export_picks(path: str | Path, tomo: TomogramRef, points: Any, overwrite: bool = False) -> Path:
        """Write a picks layer (duck-typed: ``data`` and ``features``, as edited) as STAR or TSV.

        An existing file is replaced only with ``overwrite``.
        """
        check_outputs([path], overwrite=overwrite)
        picked = PickedParticles(np.asarray(points.data, dtype=float), points.features["volume"].to_numpy(), points.features["weight"].to_numpy())
        return write_picks(path, picked, tomo.pixel_size, tomogram_name(tomo.source), overwrite=overwrite)

    # ------------------------------------------------------------------ meshes
    def mesh(self, tomo: TomogramRef, title: str, level: float, min_volume: float) -> Job:
        """A job making the surface mesh of a feature's segmentation (min_volume in Å³); it returns the Mesh."""
        volume = self._segmentation(tomo, title)

        def job() -> Generator[Progress, None, Mesh]:
            mesh = yield from _step(f"meshing {title}", mesh_from_volume, volume, level, tomo.pixel_size, min_volume=min_volume)
            if len(mesh.faces) == 0:
                raise CryoInputError(None, f"nothing in {title} is above level {level:g}")
            return mesh

        return job

    def meshed(self, tomo: TomogramRef, title: str, mesh: Mesh) -> LayerData:
        """Keep a finished mesh (main thread) and return its Surface layer."""
        self._meshes[(tomo.key, title)] = mesh
        kwargs = {"name": f"{tomo.name} {title} mesh", "scale": tomo.scale, "translate": tomo.translate, "colormap": colormap(self.colour(title), title),
                  "opacity": 0.8, "shading": "smooth", "metadata": {OUTPUT: f"{tomo.key}/mesh/{title}"}}
        return surface_layer_data(mesh), kwargs, "surface"

    def save_mesh(self, tomo: TomogramRef, title: str, path: str | Path, overwrite: bool = False) -> Job:
        """A job writing the feature's last mesh as OBJ in Å; it returns the path.

        An existing file is refused at once unless ``overwrite``.
        """
        mesh = self._meshes.get((tomo.key, title))
        if mesh is None:
            raise CryoInputError(None, f"make a mesh of {title} first")
        check_outputs([path], overwrite=overwrite)

        def job() -> Generator[Progress, None, Path]:
            return (yield from _step(f"writing {Path(path).name}", write_obj, path, mesh, overwrite=overwrite))

        return job

    # ------------------------------------------------------------------ models
    @staticmethod
    def load_models(path: str | Path) -> Job:
        """A job reading a ``.scnm`` model or a ``.scnmgroup`` group; pass its result to :meth:`loaded`."""
        path = Path(path)

        def job() -> Generator[Progress, None, ModelGroup | SegmentationModel]:
            reader = ModelGroup.load if path.name.endswith(".scnmgroup") else SegmentationModel.load
            return (yield from _step(f"reading {path.name}", reader, path))

        return job

    def loaded(self, item: ModelGroup | SegmentationModel) -> str:
        """Use what :meth:`load_models` read (main thread): a model is added, a group replaces the models; returns a message."""
        if isinstance(item, ModelGroup):
            self.session.load_group(item)
        else:
            self.session.add_model(item)
        return f"models {', '.join(self.session.models)}"

    @staticmethod
    def model_path(path: str | Path) -> Path:
        """The file :meth:`save_model` writes for ``path``: ``.scnm`` added when missing."""
        return _with_suffix(path, ".scnm")

    @staticmethod
    def group_path(path: str | Path) -> Path:
        """The file :meth:`save_group` writes for ``path``: ``.scnmgroup`` added when missing."""
        return _with_suffix(path, ".scnmgroup")

    def save_model(self, title: str | None, path: str | Path, overwrite: bool = False) -> Job:
        """A job saving a model as :meth:`model_path`; it returns the path (an existing file is refused at once unless ``overwrite``)."""
        model = self.session.models.get(title) if title else None
        if model is None:
            raise CryoInputError(None, "no model to save: train or load one")
        path = self.model_path(path)
        check_outputs([path], overwrite=overwrite)

        def job() -> Generator[Progress, None, Path]:
            return (yield from _step(f"writing {path.name}", model.save, path, overwrite=overwrite))

        return job

    def save_group(self, path: str | Path, overwrite: bool = False) -> Job:
        """A job saving every model and the interactions as :meth:`group_path`; it returns the path (as :meth:`save_model`)."""
        if not self.session.models:
            raise CryoInputError(None, "no models to save: train or load some")
        path = self.group_path(path)
        check_outputs([path], overwrite=overwrite)
        group = self.session.group()

        def job() -> Generator[Progress, None, Path]:
            return (yield from _step(f"writing {path.name}", group.save, path, overwrite=overwrite))

        return job

    def edit_interaction(self, row: int, kind: str, threshold: str, radius_nm: str, mode: str | None = None) -> None:
        """Change one edge's kind, threshold (a number or ``auto``), radius or mode from the table's texts (its ends stay).

        Raises
        ------
        CryoInputError
            "interaction not changed: ..." for bad text or a refused graph; the edges stay as they were.
        """
        edges = list(self.session.graph.interactions)
        if not 0 <= row < len(edges):
            raise CryoInputError(None, f"interaction not changed: there is no interaction {row + 1}")
        edges[row] = edges[row].edited(kind, threshold, radius_nm, mode)
        try:
            self.session.set_interactions(edges)
        except CryoInputError as exc:
            raise CryoInputError(None, f"interaction not changed: {exc.problem}") from None


def _with_suffix(path: str | Path, suffix: str) -> Path:
    """``path`` ending in ``suffix`` (added when missing); a folder or no name at all is refused."""
    path = Path(path)
    if not path.name or path.is_dir():
        raise CryoInputError(path, "is a folder; choose a file name")
    return path if path.name.endswith(suffix) else path.with_suffix(suffix)


def _step(message: str, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Generator[Progress, None, Any]:
    """Run one long call between two progress reports: a Cancel during the call stops at the second."""
    yield Progress(0, 1, message)
    result = func(*args, **kwargs)
    yield Progress(1, 1, message)
    return result
