"""A model group (``.scnmgroup``): several feature models and their interactions.

The file is one zip archive: ``group.json`` (format, the models' titles in
order, the interaction graph with emit/absorb sets) and each model as an
embedded ``.scnm`` archive under ``models/``.  A group is what the command
line applies to many tomograms: every model, then the interactions, with
each model's own threshold for the interactions whose threshold is ``auto``.

Format version 2 added the interactions' ``mode`` and the ``auto``
threshold; version 1 files still load, their interactions plain (see
:mod:`.interactions`).
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import CryoInputError
from ..io.atomic import atomic_path
from ..tasks import Progress
from ..io.names import safe_file_stem
from .inference import predict_volume
from .interactions import InteractionEffects, InteractionGraph, apply_interactions_with_effects
from .model import MAX_FILE_BYTES, SegmentationModel, check_format, open_archive, read_json, read_member

FORMAT = "napari-cryo segmentation model group"
FORMAT_VERSION = 2
GROUP_JSON = "group.json"
#: Generous for real groups (a few features), small enough that a crafted file cannot make
#: napari-cryo build thousands of networks.
MAX_MODELS = 64
MAX_GROUP_JSON_BYTES = 2**20


@dataclass
class ModelGroup:
    """Models (one per feature, distinct titles) and the interactions between them."""

    models: list[SegmentationModel]
    graph: InteractionGraph = field(default_factory=lambda: InteractionGraph([], set(), set()))

    def __post_init__(self) -> None:
        titles = [m.title for m in self.models]
        repeated = sorted({t for t in titles if titles.count(t) > 1})
        if repeated:
            raise CryoInputError(None, f"two models are both called {repeated[0]!r}; model titles in a group must differ")
        # The models' own flags and the graph's sets say the same thing; the graph wins once set.
        if not self.graph.emit and not self.graph.absorb:
            self.graph.emit = {m.title for m in self.models if m.emit}
            self.graph.absorb = {m.title for m in self.models if m.absorb}
        self.graph.validate(titles)
        self.sync_flags()

    @property
    def titles(self) -> list[str]:
        """Feature names, in order."""
        return [m.title for m in self.models]

    def sync_flags(self) -> None:
        """Copy the graph's emit/absorb sets onto the models (they are saved with each model)."""
        for m in self.models:
            m.emit = m.title in self.graph.emit
            m.absorb = m.title in self.graph.absorb

    def model(self, title: str) -> SegmentationModel:
        """The model of a feature, by name."""
        for m in self.models:
            if m.title == title:
                return m
        raise CryoInputError(None, f"the group has no model '{title}' (it has {', '.join(self.titles) or 'none'})")

    def save(self, path: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write the group to a ``.scnmgroup`` file, atomically."""
        if len(self.models) > MAX_MODELS:
            raise CryoInputError(path, f"a group holds at most {MAX_MODELS} models, not {len(self.models)}")
        self.graph.validate(self.titles)
        self.sync_flags()
        meta = {"format": FORMAT, "version": FORMAT_VERSION, "models": self.titles, "graph": self.graph.to_dict()}
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
            archive.writestr("group.json", json.dumps(meta, indent=1))
            for i, m in enumerate(self.models):
                archive.writestr(f"models/{i:02d}_{safe_file_stem(m.title)}.scnm", m.to_bytes())
        with atomic_path(path, overwrite=overwrite) as tmp:
            tmp.write_bytes(buffer.getvalue())
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ModelGroup":
        """Read a ``.scnmgroup`` file, checking its contents.

        ``group.json`` (format, version) is checked before any model is read,
        and the number and size of the models before any is unpacked.

        Raises
        ------
        CryoInputError
            If the file is missing, is a single model or something else, holds
            no or too many models or a bad one, or its interactions name a
            model it lacks or form a cycle.
        """
        path = Path(path)
        if not path.is_file():
            raise CryoInputError(path, "model group file not found")
        with open_archive(path, path, "is not a model group (.scnmgroup): not a zip archive") as archive:
            meta, models = _read_group(archive, path)
        try:
            graph = InteractionGraph.from_dict(meta.get("graph", {}))
            return cls(models, graph)
        except CryoInputError as exc:
            raise CryoInputError(path, exc.problem) from None

    def apply(
        self,
        volume: np.ndarray,
        pixel_size: float,
        device: torch.device | str = "cpu",
    ) -> Generator[Progress | InteractionEffects, None, dict[str, np.ndarray]]:
        """Segment a tomogram with every model, then apply the interactions.

        Yields progress and, when the group has interactions, one
        :class:`~.interactions.InteractionEffects` (how many objects each
        interaction removed); returns feature name -> (Z, Y, X) float32
        probabilities.
        """
        raw = yield from predict_volume(self.models, volume, pixel_size, device)
        yield Progress(0, None, "applying interactions")
        result, effects = apply_interactions_with_effects(raw, self.graph, pixel_size, self.thresholds)
        if effects.effects:
            yield effects
        return result

    @property
    def thresholds(self) -> dict[str, float]:
        """Each model's own threshold, by feature name (what ``auto`` interaction thresholds use)."""
        return {m.title: m.threshold for m in self.models}


def _read_group(archive: zipfile.ZipFile, path: Path) -> tuple[dict, list[SegmentationModel]]:
    """``group.json`` (checked first) and the models of an open group archive."""
    names = archive.namelist()
    if GROUP_JSON not in names:
        if "metadata.json" in names:
            raise CryoInputError(path, "is a single model (.scnm), not a model group (.scnmgroup)")
        raise CryoInputError(path, f"is not a model group: the archive lacks {GROUP_JSON}")
    meta = read_json(read_member(archive, GROUP_JSON, MAX_GROUP_JSON_BYTES, path), path, GROUP_JSON)
    check_format(meta, FORMAT, FORMAT_VERSION, path, "model group", GROUP_JSON)
    entries = sorted({n for n in names if n.startswith("models/") and n.endswith(".scnm")})
    if not 1 <= len(entries) <= MAX_MODELS:
        raise CryoInputError(path, f"holds {len(entries)} models (a group holds 1 to {MAX_MODELS})")
    return meta, [SegmentationModel.from_bytes(read_member(archive, n, MAX_FILE_BYTES, f"{path}:{n}"), f"{path}:{n}") for n in entries]


def load_models(paths: Sequence[str | os.PathLike]) -> ModelGroup:
    """A group from ``.scnm`` and ``.scnmgroup`` files (groups keep their interactions)."""
    models: list[SegmentationModel] = []
    graph = InteractionGraph([], set(), set())
    for p in paths:
        if str(p).endswith(".scnmgroup"):
            g = ModelGroup.load(p)
            models += g.models
            graph = InteractionGraph(graph.interactions + g.graph.interactions, graph.emit | g.graph.emit, graph.absorb | g.graph.absorb)
        else:
            models.append(SegmentationModel.load(p))
    return ModelGroup(models, graph)
