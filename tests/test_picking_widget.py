"""The picking widget in a real viewer: pick, correct, paint, retrain, export."""

import numpy as np
import pytest

pytestmark = pytest.mark.gui


@pytest.fixture
def picking(make_napari_viewer, qtbot):
    from napari_cryo.picking._widget import PickingWidget

    viewer = make_napari_viewer()
    viewer.open_sample("napari-cryo", "micrograph")
    widget = PickingWidget(viewer)
    widget._image.value = viewer.layers["micrograph"]
    widget._diameter.value = 150.0
    return viewer, widget, qtbot


def _wait(qtbot, worker):
    assert worker is not None
    with qtbot.waitSignal(worker.finished, timeout=120000):
        pass


def test_pick_threshold_and_corrections(picking, tmp_path):
    viewer, widget, qtbot = picking
    _wait(qtbot, widget.pick())
    layer = viewer.layers["micrograph picks"]
    n = len(layer.data)
    assert n > 20 and set(layer.features["source"]) == {"auto"}
    assert np.allclose(layer.scale, viewer.layers["micrograph"].scale)
    assert layer.size[0] == pytest.approx(150 / viewer.layers["micrograph"].scale[-1])

    widget._threshold.value = 0.95  # instant: no network run
    assert len(viewer.layers["micrograph picks"].data) < n
    widget._threshold.value = 0.5
    n = len(layer.data)

    # the user deletes two picks: they become false positives
    layer.selected_data = {0, 1}
    widget.reject_selected()
    image_id = viewer.layers["micrograph"].unique_id
    assert len(widget.controller.sessions[(image_id, -1)].false_positives) == 2
    assert len(layer.data) == n - 2
    assert "micrograph rejected" in viewer.layers

    # adding a point by hand makes a manual pick that survives the threshold
    layer.add(np.array([[5.0, 5.0]]))
    assert list(layer.features["source"])[-1] == "manual"
    widget._threshold.value = 0.98
    assert any(np.allclose(p, [5.0, 5.0]) for p in viewer.layers["micrograph picks"].data)
    assert "here" in widget._count.value

    written = widget.export(tmp_path)
    from napari_cryo.io.star import read_coordinates

    (cs,) = read_coordinates(written[0])
    np.testing.assert_allclose(np.sort(cs.points, axis=0), np.sort(np.asarray(viewer.layers["micrograph picks"].data), axis=0))


def test_mask_brush_in_angstrom_and_exclusion(picking):
    viewer, widget, qtbot = picking
    widget._brush.value = 300.0
    widget.paint_mask()
    labels = viewer.layers["micrograph exclusions"]
    assert labels.mode == "paint"
    assert labels.brush_size == pytest.approx(300.0 / viewer.layers["micrograph"].scale[-1])
    labels.data[:, :] = 1  # paint everything: nothing may be picked
    _wait(qtbot, widget.pick())
    assert len(viewer.layers["micrograph picks"].data) == 0


def test_probability_overlay_and_retrain(picking):
    viewer, widget, qtbot = picking
    _wait(qtbot, widget.pick())
    widget._show_prob.value = True
    prob = viewer.layers["micrograph particle probability"]
    assert prob.data.shape == viewer.layers["micrograph"].data.shape and prob.blending == "additive"
    widget._epochs.value = 1
    widget._name.value = "mine"
    worker = widget.retrain()
    _wait(qtbot, worker)
    qtbot.waitUntil(lambda: widget._model.value == "mine", timeout=60000)
    assert "mine" in widget.controller.models and widget.controller.models["mine"].history
    qtbot.waitUntil(lambda: widget.worker is None, timeout=120000)


def test_errors_become_notifications(make_napari_viewer, monkeypatch):
    import napari.utils.notifications as notifications

    from napari_cryo.picking._widget import PickingWidget

    shown = []
    monkeypatch.setattr(notifications, "show_error", shown.append)
    viewer = make_napari_viewer()
    widget = PickingWidget(viewer)
    assert widget.pick() is None and widget.retrain() is None
    assert shown and "open a micrograph first" in shown[0]


def test_stack_of_micrographs(make_napari_viewer, qtbot, tmp_path):
    from napari_cryo.picking._widget import PickingWidget
    from napari_cryo.synthetic import simulate_micrograph

    viewer = make_napari_viewer()
    mics = [simulate_micrograph(shape=(512, 512), pixel_size=3.0, n_particles=30, carbon_fraction=0, n_contamination=0, seed=s) for s in (1, 2)]
    stack = viewer.add_image(np.stack([m.image for m in mics]), name="stack", scale=(1.0, 3.0, 3.0))
    widget = PickingWidget(viewer)
    widget._image.value = stack
    widget._threshold.value = 0.3
    _wait(qtbot, widget.pick(all_micrographs=True))
    picks = viewer.layers["stack picks"]
    assert picks.data.shape[1] == 3 and set(np.unique(picks.data[:, 0])) == {0, 1}
    written = widget.export(tmp_path)
    assert [p.name for p in written] == ["stack_0000_picks.star", "stack_0001_picks.star"]


def test_renamed_layer_keeps_its_picks(picking):
    viewer, widget, qtbot = picking
    _wait(qtbot, widget.pick())
    viewer.layers["micrograph"].name = "renamed"
    widget._threshold.value = 0.4  # redraws the picks of the renamed layer, in the same layer
    _wait(qtbot, widget.pick())
    assert [layer.name for layer in viewer.layers if layer.name.endswith("picks")] == ["micrograph picks"]
    assert len(widget.controller.sessions) == 1 and "1 micrograph(s)" in widget._count.value
