"""Models and the interaction graph between them, without Qt; slice previews.

The segmentation controller keeps one :class:`SegmentationSession`; every
rule about models and interactions (no cycles, no edge to a missing model,
one model per feature) lives here.  A preview works on a
:class:`ModelSnapshot` taken on the main thread, so a worker never iterates
the session's own dict while training adds a model to it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import CryoInputError
from .group import ModelGroup
from .inference import model_planes, predict_planes
from .interactions import Interaction, InteractionEffects, InteractionGraph, apply_interactions_with_effects
from .model import SegmentationModel


@dataclass(frozen=True)
class ModelSnapshot:
    """The models and a copy of the graph at one moment, safe to use from a worker."""

    models: tuple[SegmentationModel, ...]
    graph: InteractionGraph


def preview_slice(
    snapshot: ModelSnapshot,
    volume: np.ndarray,
    z: int,
    pixel_size: float,
    stats: tuple[float, float],
    device: torch.device | str = "cpu",
    interactions: bool = True,
) -> dict[str, np.ndarray]:
    """Every model's output on one slice, after competition and interactions.

    The interactions' dilations are then computed within the slice (a 2D
    approximation of the 3D result of applying them to the volume).
    """
    return preview_slice_with_effects(snapshot, volume, z, pixel_size, stats, device, interactions)[0]


def preview_slice_with_effects(
    snapshot: ModelSnapshot,
    volume: np.ndarray,
    z: int,
    pixel_size: float,
    stats: tuple[float, float],
    device: torch.device | str = "cpu",
    interactions: bool = True,
) -> tuple[dict[str, np.ndarray], InteractionEffects]:
    """:func:`preview_slice`, and how many objects of the slice each interaction removed.

    ``auto`` interaction thresholds are each model's own threshold.
    """
    raw = {m.title: predict_planes(m, model_planes(m, volume, z, z + 1, pixel_size), pixel_size, stats, device) for m in snapshot.models}
    graph = snapshot.graph
    effects = InteractionEffects()
    if interactions and (graph.interactions or graph.emit or graph.absorb):
        thresholds = {m.title: m.threshold for m in snapshot.models}
        raw, effects = apply_interactions_with_effects(raw, graph, pixel_size, thresholds)
    return {t: p[0] for t, p in raw.items()}, effects


@dataclass
class SegmentationSession:
    """Models by feature name and the interaction graph between them."""

    models: dict[str, SegmentationModel] = field(default_factory=dict)
    graph: InteractionGraph = field(default_factory=lambda: InteractionGraph([], set(), set()))

    def add_model(self, model: SegmentationModel) -> None:
        """Add or replace the model of a feature (its interactions stay)."""
        self.models[model.title] = model
        if model.emit:
            self.graph.emit.add(model.title)
        if model.absorb:
            self.graph.absorb.add(model.title)

    def remove_model(self, title: str) -> None:
        """Drop a model and every interaction and flag that names it."""
        self.models.pop(title, None)
        self.graph = InteractionGraph(
            [i for i in self.graph.interactions if title not in (i.child, i.parent)],
            self.graph.emit - {title},
            self.graph.absorb - {title},
        )

    def set_interactions(self, interactions: Sequence[Interaction]) -> None:
        """Replace the edges, refusing missing models and cycles (the old edges stay then)."""
        graph = InteractionGraph(list(interactions), set(self.graph.emit), set(self.graph.absorb))
        graph.validate(self.models)
        self.graph = graph

    def add_interaction(self, interaction: Interaction) -> None:
        """Add one edge (replacing an edge with the same child, parent and kind)."""
        kept = [i for i in self.graph.interactions if (i.child, i.parent, i.kind) != (interaction.child, interaction.parent, interaction.kind)]
        self.set_interactions(kept + [interaction])

    def set_competition(self, title: str, emit: bool, absorb: bool) -> None:
        """Set a model's emit and absorb flags."""
        if title not in self.models:
            raise CryoInputError(None, f"there is no model '{title}'")
        (self.graph.emit.add if emit else self.graph.emit.discard)(title)
        (self.graph.absorb.add if absorb else self.graph.absorb.discard)(title)
        self.models[title].emit, self.models[title].absorb = emit, absorb

    def group(self) -> ModelGroup:
        """The models and interactions as a group (to save or to apply from a worker)."""
        snapshot = self.snapshot()
        return ModelGroup(list(snapshot.models), snapshot.graph)

    def load_group(self, group: ModelGroup) -> None:
        """Replace everything with a loaded group."""
        self.models = {m.title: m for m in group.models}
        self.graph = InteractionGraph(list(group.graph.interactions), set(group.graph.emit), set(group.graph.absorb))

    def snapshot(self) -> ModelSnapshot:
        """The models and a copy of the graph now (take it on the thread that edits the session)."""
        graph = InteractionGraph(list(self.graph.interactions), set(self.graph.emit), set(self.graph.absorb))
        return ModelSnapshot(tuple(self.models.values()), graph)

    def preview(
        self,
        volume: np.ndarray,
        z: int,
        pixel_size: float,
        stats: tuple[float, float],
        device: torch.device | str = "cpu",
        interactions: bool = True,
    ) -> dict[str, np.ndarray]:
        """Every model's output on slice ``z`` now (see :func:`preview_slice`)."""
        return preview_slice(self.snapshot(), volume, z, pixel_size, stats, device, interactions)
