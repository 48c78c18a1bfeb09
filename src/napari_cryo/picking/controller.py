"""Interactive picking without Qt: what the picking widget knows and does.

:class:`PickingController` keeps the models and one
:class:`~.session.MicrographSession` per (image layer, plane), keyed by the
layer's ``unique_id`` so a renamed layer keeps its picks.  It turns the
sessions into napari layer-data tuples, takes the user's edits back, and
gives the long actions (picking, retraining) as progress generators that
read only arrays taken from the layers beforehand.  Layers are duck-typed
(``unique_id``, ``name``, ``data``, ``ndim``, ``scale``, ``translate``,
``units``, ``metadata``): nothing here imports napari.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import CryoInputError
from ..io.names import file_stem
from ..layer_meta import (
    LayerData,
    MICROGRAPH_NAME,
    PICKING_IMAGE,
    PICKING_ROLE,
    PIXEL_SIZE,
    PIXEL_SIZE_KNOWN,
    layer_pixel_size,
    scale_is_placeholder,
)
from ..tasks import Progress
from . import export
from .labels import TrainingMicrograph, prepare_training_micrograph
from .model import PickerModel, load_model
from .picks import PickResult, pick_micrograph
from .preprocess import working_pixel_size
from .session import SOURCE_AUTO, SOURCE_MANUAL, MicrographSession

Key = tuple[str, int]  # (image layer unique_id, plane index; -1 for a 2D image)

GENERIC = "generic"


class Role:
    """What a layer made for an image holds (its ``metadata[PICKING_ROLE]``)."""

    PICKS = "picks"
    REJECTED = "rejected"
    PROBABILITY = "probability"
    EXCLUSIONS = "exclusions"


#: New layers are called '<image name> <suffix>'.
ROLE_SUFFIX = {Role.PICKS: "picks", Role.REJECTED: "rejected", Role.PROBABILITY: "particle probability", Role.EXCLUSIONS: "exclusions"}


def _read_plane(data: Any, plane: int) -> np.ndarray:
    return np.asarray(data if plane < 0 else data[plane], dtype=np.float32)


@dataclass(frozen=True)
class PlaneJob:
    """One micrograph to pick or learn from, as taken from the layers on the main thread.

    ``data`` and ``mask`` are the layers' array objects (read in the worker,
    since reading a memory-mapped or lazy array can be slow).
    """

    key: Key
    name: str
    data: Any
    pixel_size: float
    diameter: float
    mask: Any | None = None
    positives: np.ndarray | None = None
    false_positives: np.ndarray | None = None

    def image(self) -> np.ndarray:
        """The micrograph as float32."""
        return _read_plane(self.data, self.key[1])

    def exclusion(self, shape: tuple[int, ...]) -> np.ndarray | None:
        """The painted exclusions of the micrograph (``None`` without a mask of its shape)."""
        if self.mask is None:
            return None
        plane = np.asarray(self.mask if self.key[1] < 0 else self.mask[self.key[1]])
        return (plane > 0) if plane.shape == shape else None


@dataclass(frozen=True)
class PickOutput:
    """The network's result for one micrograph of a pick job."""

    key: Key
    pixel_size: float
    diameter: float
    result: PickResult


class PickingController:
    """Models, per-micrograph sessions and the actions of the picking widget.

    Attributes
    ----------
    models : dict of str to PickerModel
        Loaded models by name (``"generic"``, a file path, or a retrained model's name).
    sessions : dict of Key to MicrographSession
        Picking state per (image layer ``unique_id``, plane).
    images : dict of str to layer
        The image layers the sessions belong to, by ``unique_id``.
    """

    def __init__(self) -> None:
        self.models: dict[str, PickerModel] = {}
        self.sessions: dict[Key, MicrographSession] = {}
        self.images: dict[str, Any] = {}
        self._models_lock = threading.Lock()

    # ------------------------------------------------------------------ models
    def model(self, name: str) -> PickerModel:
        """The model called ``name``, loaded on first use (call it in a worker: loading is slow)."""
        with self._models_lock:
            if name not in self.models:
                self.models[name] = load_model(None if name == GENERIC else name)
            return self.models[name]

    def add_model(self, name: str, model: PickerModel) -> None:
        """Keep a model (a retrained one) under ``name``."""
        with self._models_lock:
            self.models[name] = model

    def save_model(self, name: str, path: str | os.PathLike, overwrite: bool) -> Generator[Progress, None, Path]:
        """Write model ``name`` to ``path``; a generator to run in a worker."""
        yield Progress(0, 1, f"saving {Path(path).name}")
        model = self.model(name)
        return model.save(path, overwrite=overwrite)

    # ------------------------------------------------------------------- picking
    def pick_jobs(
        self, targets: Iterable[tuple[Any, int | None]], masks: Mapping[str, Any], diameter: float, pixel_size: float | None = None
    ) -> list[PlaneJob]:
        """Jobs for ``(image layer, plane)`` targets; plane ``None`` means every plane of a stack.

        ``masks`` maps an image's ``unique_id`` to its exclusion Labels data.
        ``pixel_size`` (Å), when given, replaces the layers' own: TIFF, PNG and
        JPEG micrographs carry none.  Fast: reads pixel sizes and array
        objects, no pixels.

        Raises
        ------
        CryoInputError
            When a layer has no pixel size and none is given.
        """
        if pixel_size is not None and not 0 < pixel_size <= 1e4:
            raise CryoInputError(None, f"the pixel size must be from 0 to 10000 Å, got {pixel_size}")
        jobs = []
        for layer, plane in targets:
            if pixel_size is None and scale_is_placeholder(layer):
                raise CryoInputError(
                    layer.name,
                    "has no pixel size (TIFF, PNG and JPEG files carry none): enter it in 'pixel size (Å)' or set the layer's scale",
                )
            layer_px = pixel_size if pixel_size is not None else layer_pixel_size(layer)
            self.images[layer.unique_id] = layer
            planes = [-1] if layer.ndim == 2 else (range(layer.data.shape[0]) if plane is None else [plane])
            jobs += [
                PlaneJob((layer.unique_id, p), layer.name, layer.data, layer_px, diameter, masks.get(layer.unique_id))
                for p in planes
            ]
        return jobs

    def pick(self, jobs: Sequence[PlaneJob], model_name: str) -> Generator[Progress, None, list[PickOutput]]:
        """Run the network on every job; a generator for a worker, returning the results.

        Nothing is stored here: :meth:`accept` takes the results on the main
        thread, so a cancelled run leaves no partial picks.
        """
        yield Progress(0, len(jobs), "loading the model")
        model = self.model(model_name)
        outputs = []
        for i, job in enumerate(jobs):
            yield Progress(i, len(jobs), job.name)
            image = job.image()
            result = pick_micrograph(model, image, job.pixel_size, job.diameter, exclude_mask=job.exclusion(image.shape), name=job.name)
            outputs.append(PickOutput(job.key, job.pixel_size, job.diameter, result))
        yield Progress(len(jobs), len(jobs))
        return outputs

    def accept(self, outputs: Iterable[PickOutput], threshold: float, min_distance: float | None) -> set[str]:
        """Store pick results in their sessions; returns the image ids that changed.

        A session keeps its corrections unless the pixel size or diameter changed.
        """
        changed = set()
        for out in outputs:
            if out.key[0] not in self.images:  # the image layer was removed while it was picked
                continue
            session = self.sessions.get(out.key)
            if session is None or session.pixel_size != out.pixel_size or session.diameter != out.diameter:
                session = self.sessions[out.key] = MicrographSession(out.pixel_size, out.diameter)
            session.result = out.result
            session.threshold = threshold
            session.min_distance = min_distance
            changed.add(out.key[0])
        return changed

    def set_threshold(self, threshold: float, min_distance: float | None) -> None:
        """Change every session's threshold and minimum distance (instant: no network run)."""
        for session in self.sessions.values():
            session.threshold = threshold
            session.min_distance = min_distance

    def image_ids(self) -> list[str]:
        """The image layers that have sessions."""
        return sorted({key[0] for key in self.sessions})

    def forget(self, image_id: str) -> None:
        """Drop the sessions of an image layer that was removed."""
        self.sessions = {k: s for k, s in self.sessions.items() if k[0] != image_id}
        self.images.pop(image_id, None)

    def _sessions_of(self, image_id: str) -> list[tuple[Key, MicrographSession]]:
        return sorted(((k, s) for k, s in self.sessions.items() if k[0] == image_id), key=lambda kv: kv[0][1])

    def count_text(self, image_id: str | None, plane: int) -> str:
        """'N here, M in K micrograph(s)' for the count label."""
        session = self.sessions.get((image_id, plane)) if image_id is not None else None
        total = sum(s.count(s.threshold) for s in self.sessions.values())
        here = "-" if session is None else str(session.count(session.threshold))
        return f"{here} here, {total} in {len(self.sessions)} micrograph(s)"

    # -------------------------------------------------------------------- layers
    def layer_name(self, image_id: str, role: str) -> str:
        """The name a new picking layer of ``role`` gets ('<image> picks', ...)."""
        return f"{self.images[image_id].name} {ROLE_SUFFIX[role]}"

    def _layer_kwargs(self, image_id: str, role: str, **kwargs: Any) -> dict[str, Any]:
        image = self.images[image_id]
        metadata = {PICKING_IMAGE: image_id, PICKING_ROLE: role, **kwargs.pop("metadata", {})}
        return {
            "name": self.layer_name(image_id, role),
            "scale": tuple(image.scale),
            "translate": tuple(image.translate),
            "units": tuple(image.units),
            "metadata": metadata,
            **kwargs,
        }

    def picks_points(self, image_id: str) -> tuple[np.ndarray, pd.DataFrame, np.ndarray]:
        """All picks of an image (with the plane first for a stack), their features, and the rejected picks."""
        parts, scores, sources, rejected = [], [], [], []
        for (_, plane), session in self._sessions_of(image_id):
            yx, feats = session.points()
            fps = session.false_positives
            parts.append(yx if plane < 0 else np.column_stack([np.full(len(yx), plane), yx]))
            rejected.append(fps if plane < 0 else np.column_stack([np.full(len(fps), plane), fps]))
            scores.append(feats["rlnAutopickFigureOfMerit"].to_numpy())
            sources.append(np.asarray(feats["source"], dtype=object))
        ndim = self.images[image_id].ndim
        features = pd.DataFrame(
            {
                "rlnAutopickFigureOfMerit": np.concatenate(scores) if scores else np.zeros(0),
                "source": pd.Categorical(np.concatenate(sources) if sources else [], categories=[SOURCE_AUTO, SOURCE_MANUAL]),
            }
        )
        data = np.concatenate(parts) if parts else np.zeros((0, ndim))
        return data, features, (np.concatenate(rejected) if rejected else np.zeros((0, ndim)))

    def point_size(self, image_id: str) -> float:
        """The particle diameter in image pixels (the size of a pick's circle)."""
        session = self._sessions_of(image_id)[0][1]
        return session.diameter / session.pixel_size

    def picks_layers(self, image_id: str) -> tuple[LayerData, LayerData]:
        """Layer data of an image's picks (Points, sized to the particle) and its rejected picks."""
        data, features, rejected = self.picks_points(image_id)
        session = self._sessions_of(image_id)[0][1]
        size = self.point_size(image_id)
        picks = self._layer_kwargs(
            image_id, Role.PICKS, features=features, size=np.full(len(data), size), face_color="transparent",
            border_color="yellow", border_width=0.06,
            metadata={PIXEL_SIZE: session.pixel_size, PIXEL_SIZE_KNOWN: True, MICROGRAPH_NAME: export.layer_micrograph_name(self.images[image_id])},
        )
        rejects = self._layer_kwargs(image_id, Role.REJECTED, size=size * 0.5, symbol="x", face_color="red", border_color="red")
        return (data, picks, "points"), (rejected, rejects, "points")

    def sync(self, image_id: str, data: np.ndarray, sources: np.ndarray | None) -> None:
        """Take the user's edits of an image's picks layer (``sources`` None: all added by hand)."""
        data = np.asarray(data, dtype=float)
        sources = np.full(len(data), SOURCE_MANUAL, object) if sources is None else np.asarray(sources, dtype=object)
        for (_, plane), session in self._sessions_of(image_id):
            if data.ndim == 2 and data.shape[1] == 3:
                sel = np.round(data[:, 0]).astype(int) == plane
                session.sync_from_layer(data[sel, 1:], sources[sel])
            else:
                session.sync_from_layer(data.reshape(-1, 2), sources)

    def probability_layers(self) -> list[LayerData]:
        """Particle-probability overlays (original resolution), one per image with results."""
        out = []
        for image_id in self.image_ids():
            planes = [(k[1], s.result) for k, s in self._sessions_of(image_id) if s.result is not None]
            if not planes:
                continue
            if planes[0][0] < 0:
                prob = planes[0][1].probability_map()
            else:
                prob = np.zeros(self.images[image_id].data.shape, dtype=np.float32)
                for plane, result in planes:
                    prob[plane] = result.probability_map()
            kwargs = self._layer_kwargs(image_id, Role.PROBABILITY, colormap="magma", blending="additive", opacity=0.5, contrast_limits=(0, 1))
            out.append((prob, kwargs, "image"))
        return out

    def exclusions_layer(self, image: Any) -> LayerData:
        """An empty exclusion mask (Labels) for an image layer, to paint regions not to pick."""
        self.images[image.unique_id] = image
        kwargs = self._layer_kwargs(image.unique_id, Role.EXCLUSIONS, opacity=0.4)
        return np.zeros(image.data.shape, dtype=np.uint8), kwargs, "labels"

    # ------------------------------------------------------------------ training
    def training_jobs(self, masks: Mapping[str, Any]) -> list[PlaneJob]:
        """What retraining learns from: every micrograph with picks (sync the layers first).

        Raises
        ------
        CryoInputError
            When nothing was picked.
        """
        jobs = []
        for key, session in sorted(self.sessions.items()):
            positives = session.training_positives()
            if not len(positives):
                continue
            image = self.images[key[0]]
            jobs.append(
                PlaneJob(
                    key, f"{image.name}:{key[1]}", image.data, session.pixel_size, session.diameter, masks.get(key[0]),
                    positives, session.false_positives.copy(),
                )
            )
        if not jobs:
            raise CryoInputError(None, "no picks to learn from: pick (and correct) some micrographs first")
        return jobs

    @staticmethod
    def training_data(jobs: Sequence[PlaneJob], invert: bool) -> Generator[Progress, None, list[TrainingMicrograph]]:
        """Prepared training micrographs (targets from picks, rejections and masks); a generator."""
        data = []
        for i, job in enumerate(jobs):
            yield Progress(i, len(jobs), f"preparing {job.name}")
            image = job.image()
            wpx = working_pixel_size(job.diameter, job.pixel_size)
            data.append(
                prepare_training_micrograph(
                    image, job.pixel_size, wpx, job.positives, job.false_positives, job.exclusion(image.shape),
                    invert=invert, name=job.name,
                )
            )
        return data

    def retrain(
        self, jobs: Sequence[PlaneJob], base: str, name: str, max_epochs: int | None = None, budget_s: float | None = 300.0
    ) -> Generator[Any, None, PickerModel]:
        """Fine-tune a copy of model ``base`` as ``name`` on the jobs; a generator for a worker.

        Training stops when the held-out picks stop improving, when ``budget_s``
        seconds are spent (None: no budget) or after ``max_epochs`` (None: the
        default cap), whichever comes first, and keeps the best epoch
        (:func:`~.training.train`).  Yields :class:`~napari_cryo.tasks.Progress`
        (with an ETA) and the training loop's events; returns the trained model
        (not yet kept: see :meth:`add_model`).
        """
        from .training import TrainConfig, train

        config = TrainConfig(lr=3e-4, budget_s=budget_s)
        if max_epochs is not None:
            config.epochs = int(max_epochs)
        config.check()
        yield Progress(0, None, "loading the model")
        model = self.model(base)
        data = yield from self.training_data(jobs, model.invert)
        trained = yield from train(model.copy(name=name), data, config)
        return trained

    # -------------------------------------------------------------------- export
    def export_entries(self) -> list[tuple[str, float, np.ndarray, np.ndarray]]:
        """(micrograph name, pixel size, YX, scores) per micrograph, sorted by name (sync the layers first).

        The name of a stack's plane is ``<stem>_<plane:04d>``.
        """
        entries = []
        for (image_id, plane), session in self.sessions.items():
            name = export.layer_micrograph_name(self.images[image_id])
            if plane >= 0:
                name = f"{file_stem(name)}_{plane:04d}"
            yx, feats = session.points()
            entries.append((name, session.pixel_size, yx, feats["rlnAutopickFigureOfMerit"].to_numpy()))
        return sorted(entries, key=lambda e: e[0])

    def export_paths(self, directory: str | os.PathLike) -> list[Path]:
        """The files :meth:`export` writes into ``directory``, one per micrograph, in its order.

        Raises
        ------
        CryoInputError
            If two micrographs would write the same file.
        """
        paths = [export.picks_path(directory, name) for name, *_ in self.export_entries()]
        if len(set(paths)) < len(paths):
            raise CryoInputError(None, "two micrographs have the same file name; their pick files would collide")
        return paths

    def export(self, directory: str | os.PathLike, overwrite: bool) -> list[Path]:
        """Write ``<stem>_picks.star`` per micrograph into ``directory`` (see :mod:`.export`).

        A view asks the user about the files that exist (:meth:`export_paths`)
        and passes ``overwrite=True`` once they agreed.

        Raises
        ------
        CryoInputError
            Before writing anything, if a file exists and ``overwrite`` is false or two would collide.
        """
        entries = self.export_entries()
        paths = self.export_paths(directory)
        export.check_targets(paths, overwrite, hint="nothing was written")
        return [export.write_picks(path, yx, scores, px, name) for path, (name, px, yx, scores) in zip(paths, entries)]
