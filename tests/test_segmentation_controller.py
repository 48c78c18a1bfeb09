"""The segmentation controller without Qt: state by layer identity, jobs, layer data, exports."""

from __future__ import annotations

import uuid
from types import SimpleNamespace

import numpy as np
import pytest

from napari_cryo.errors import CryoInputError
from napari_cryo.layer_meta import FEATURES_TABLE as METADATA_KEY
from napari_cryo.layer_meta import TOMOGRAM
from napari_cryo.segmentation.controller import SegmentationController, TomogramRef
from napari_cryo.segmentation.features import features_to_metadata, make_features
from napari_cryo.segmentation.interactions import Interaction
from napari_cryo.segmentation.model import SegmentationModel
from napari_cryo.segmentation.particles import PickSettings
from napari_cryo.tasks import drain

TORCH_THREADS = 1


def _layer(data, name="tomo", metadata=None, pixel_size=12.0):
    """A stand-in for a napari layer: what the controller reads of one."""
    return SimpleNamespace(unique_id=uuid.uuid4(), name=name, data=data, ndim=data.ndim, scale=(pixel_size,) * data.ndim,
                           translate=(0.0,) * data.ndim, metadata=dict(metadata or {}), source=SimpleNamespace(path=None))


def _blob_volume() -> np.ndarray:
    z, y, x = np.indices((16, 40, 40))
    return np.exp(-((z - 8) ** 2 + (y - 20) ** 2 + (x - 20) ** 2) / 20.0).astype(np.float32)


def test_state_follows_the_layer_not_its_name():
    layer = _layer(np.random.default_rng(0).normal(size=(8, 32, 32)).astype(np.float32))
    controller = SegmentationController()
    tomo = TomogramRef.from_layer(layer)
    stats = controller.stats(tomo)
    controller.segmented(tomo, {"membrane": _blob_volume()})
    layer.name = "renamed"
    renamed = TomogramRef.from_layer(layer)
    assert controller.stats(renamed) == stats and controller.segmented_features(renamed.key) == ["membrane"]
    assert layer.metadata == {}  # no cache in the layer's metadata
    with pytest.raises(CryoInputError, match="pixel size"):
        TomogramRef.from_layer(_layer(np.zeros((4, 8, 8)), metadata={"pixel_size_known": False}))
    with pytest.raises(CryoInputError, match="3D"):
        TomogramRef.from_layer(_layer(np.zeros((8, 8))))


def test_annotations_find_their_tomogram_by_id_after_a_rename():
    tomo_a, tomo_b = _layer(np.zeros((4, 16, 16), np.float32), "a"), _layer(np.zeros((4, 16, 16), np.float32), "b")
    controller = SegmentationController()
    data, kwargs, kind = controller.annotation_layer(TomogramRef.from_layer(tomo_b))
    assert kind == "labels" and data.shape == (4, 16, 16) and kwargs["metadata"][TOMOGRAM] == "b"
    labels_b = _layer(data, "b annotations", kwargs["metadata"])
    labels_b.data[1, 4:8, 4:8] = 2
    tomo_b.name = "b renamed"
    chosen = _layer(np.zeros((4, 16, 16), np.uint8), "a annotations", {METADATA_KEY: features_to_metadata(make_features(["carbon", "membrane"]))})
    chosen.data[0, :2, :2] = 1
    sources = controller.annotation_sources([tomo_a, tomo_b, chosen, labels_b], tomo_a, chosen)
    assert [s.tomogram.name for s in sources] == ["a", "b renamed"]
    pooled = controller.annotated_tomograms(sources, {f.name: f for f in sources[0].features})
    assert set(np.unique(pooled[1].labels[1])) == {0, 1}  # carbon is 2 in b's table and 1 in the chosen one


def test_jobs_check_at_once_and_return_results():
    controller = SegmentationController()
    tomo = TomogramRef.from_layer(_layer(_blob_volume()))
    with pytest.raises(CryoInputError, match="no models"):
        controller.segment(tomo)
    with pytest.raises(CryoInputError, match="segment"):
        controller.pick(tomo, "membrane", PickSettings())
    controller.segmented(tomo, {"membrane": _blob_volume()})
    picked, _ = drain(controller.pick(tomo, "membrane", PickSettings(threshold=0.5))())
    assert len(picked) == 1
    _, kwargs, kind = controller.picks_layer(tomo, "membrane", picked)
    assert kind == "points" and kwargs["metadata"]["micrograph_name"] == "tomo" and kwargs["metadata"]["pixel_size"] == 12.0
    mesh, _ = drain(controller.mesh(tomo, "membrane", 0.5, 0.0)())
    (_, faces, _), kwargs, kind = controller.meshed(tomo, "membrane", mesh)
    assert kind == "surface" and len(faces) > 0
    with pytest.raises(CryoInputError, match="above level"):
        drain(controller.mesh(tomo, "membrane", 1.5, 0.0)())


def test_preview_job_uses_the_models_of_when_it_was_made():
    controller = SegmentationController()
    tomo = TomogramRef.from_layer(_layer(_blob_volume()))
    controller.session.add_model(SegmentationModel.new("vgg", "membrane", box_size=32, pixel_size=12.0))
    job = controller.preview(tomo, 100)
    controller.session.add_model(SegmentationModel.new("vgg", "carbon", box_size=32, pixel_size=12.0))
    z, probabilities, effects = job()
    assert z == 15 and list(probabilities) == ["membrane"] and probabilities["membrane"].shape == (40, 40)


def test_interaction_edits_from_table_text():
    controller = SegmentationController()
    for title in ("membrane", "carbon"):
        controller.session.add_model(SegmentationModel.new("vgg", title, box_size=32, pixel_size=12.0))
    controller.session.add_interaction(Interaction("membrane", "carbon", "colocalize", 0.5, 5.0))
    controller.edit_interaction(0, "Avoids", "0.4", "8")
    assert controller.session.graph.interactions == [Interaction("membrane", "carbon", "avoid", 0.4, 8.0)]
    for bad in (("sticks", "0.4", "8"), ("avoid", "x", "8"), ("avoid", "0.4", "-1")):
        with pytest.raises(CryoInputError, match="interaction not changed"):
            controller.edit_interaction(0, *bad)
    assert controller.session.graph.interactions == [Interaction("membrane", "carbon", "avoid", 0.4, 8.0)]
