"""The Qt-free picking controller: sessions by layer identity, layer data, jobs, export."""

from types import SimpleNamespace

import numpy as np
import pytest

from napari_cryo.errors import CryoInputError
from napari_cryo.io.star import read_coordinates
from napari_cryo.layer_meta import PICKING_ROLE
from napari_cryo.picking.controller import PickingController, Role
from napari_cryo.picking.session import SOURCE_AUTO, SOURCE_MANUAL
from napari_cryo.synthetic import simulate_micrograph
from napari_cryo.tasks import drain

TORCH_THREADS = 1


def _layer(image, name="mic", uid="id-1", **metadata):
    """A stand-in for a napari Image layer: only what the controller reads."""
    return SimpleNamespace(
        unique_id=uid, name=name, data=image, ndim=image.ndim, scale=(3.0,) * image.ndim, translate=(0.0,) * image.ndim,
        units=("angstrom",) * image.ndim, metadata={"pixel_size_known": True, **metadata}, source=None,
    )


@pytest.fixture(scope="module")
def picked():
    mic = simulate_micrograph(shape=(384, 384), pixel_size=3.0, diameter=150, n_particles=25, carbon_fraction=0, n_contamination=0, seed=3)
    controller = PickingController()
    layer = _layer(mic.image.astype(np.float32))
    jobs = controller.pick_jobs([(layer, -1)], {}, 150.0)
    outputs = drain(controller.pick(jobs, "generic"))[0]
    assert not controller.sessions  # nothing is stored until the main thread accepts
    controller.accept(outputs, 0.3, None)
    return controller, layer


def test_sessions_are_keyed_by_layer_identity(picked):
    controller, layer = picked
    assert list(controller.sessions) == [("id-1", -1)]
    layer.name = "renamed"  # a renamed layer keeps its picks
    (data, kwargs, kind), (_, rkwargs, _) = controller.picks_layers("id-1")
    assert kind == "points" and kwargs["name"] == "renamed picks" and len(data) > 5
    assert kwargs["metadata"][PICKING_ROLE] == Role.PICKS and kwargs["metadata"]["picking_image"] == "id-1"
    assert kwargs["size"][0] == pytest.approx(50.0) and rkwargs["symbol"] == "x"
    assert set(kwargs["features"]["source"]) == {SOURCE_AUTO}
    layer.name = "mic"


def test_sync_takes_edits_and_export_refuses_to_overwrite(picked, tmp_path):
    controller, _ = picked
    (data, kwargs, _), _ = controller.picks_layers("id-1")
    sources = np.asarray(kwargs["features"]["source"], dtype=object)
    # the user deletes the first pick and adds one by hand
    edited = np.concatenate([data[1:], [[5.0, 5.0]]])
    controller.sync("id-1", edited, np.concatenate([sources[1:], [SOURCE_MANUAL]]))
    session = controller.sessions[("id-1", -1)]
    assert len(session.false_positives) == 1 and len(session.manual) == 1
    (path,) = controller.export(tmp_path, overwrite=False)
    assert path.name == "mic_picks.star"
    (cs,) = read_coordinates(path)
    assert cs.name == "mic" and cs.pixel_size == 3.0 and len(cs.points) == len(edited)
    with pytest.raises(CryoInputError, match="already exists"):
        controller.export(tmp_path, overwrite=False)
    assert controller.export(tmp_path, overwrite=True) == [path]


def test_training_jobs_and_stack_planes(picked):
    controller, _ = picked
    jobs = controller.training_jobs({})
    assert len(jobs) == 1 and len(jobs[0].positives)
    data = drain(controller.training_data(jobs, invert=False))[0]
    assert data[0].n_labelled == len(jobs[0].positives)
    stack = _layer(np.zeros((3, 8, 8), np.float32), name="stack", uid="id-2")
    assert [j.key for j in controller.pick_jobs([(stack, None)], {}, 150.0)] == [("id-2", 0), ("id-2", 1), ("id-2", 2)]
    assert [j.key for j in controller.pick_jobs([(stack, 1)], {}, 150.0)] == [("id-2", 1)]
    unknown = _layer(np.zeros((8, 8), np.float32), uid="id-3", pixel_size_known=False)
    with pytest.raises(CryoInputError, match="no pixel size"):
        controller.pick_jobs([(unknown, -1)], {}, 150.0)


def test_empty_controller_has_nothing_to_learn():
    with pytest.raises(CryoInputError, match="no picks to learn from"):
        PickingController().training_jobs({})
