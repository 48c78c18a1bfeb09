"""The segmentation view's long actions: off the GUI thread, cancellable; its picks export equal to the CLI's; the preview race."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from napari_cryo.cli import main
from napari_cryo.segmentation.model import SegmentationModel

pytestmark = pytest.mark.gui
TORCH_THREADS = 1


def _blobs(shape=(24, 96, 96), seed=0) -> np.ndarray:
    """A probability volume with a few soft spheres."""
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(shape)
    out = np.zeros(shape, np.float32)
    for _ in range(6):
        c = rng.uniform((4, 10, 10), (shape[0] - 4, shape[1] - 10, shape[2] - 10))
        r2 = (z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2
        out = np.maximum(out, np.exp(-r2 / 18.0).astype(np.float32))
    return out


@pytest.fixture
def widget(make_napari_viewer):
    """The view on a small synthetic tomogram, with an annotation layer holding two painted slices."""
    from napari_cryo.segmentation._widget import SegmentationWidget
    from napari_cryo.synthetic.tomogram import simulate_tomogram

    t = simulate_tomogram(shape=(24, 96, 96), pixel_size=12.0, n_vesicles=2, n_bound=3, n_free=3, n_filaments=0, snr=3.0, seed=5)
    viewer = make_napari_viewer()
    viewer.add_image(t.volume, name="tomo", scale=(12.0, 12.0, 12.0))
    view = SegmentationWidget(viewer)
    view._tomogram.value = viewer.layers["tomo"]
    labels = view.new_annotation_layer()
    for z in (6, 16):
        labels.data[z] = np.where(np.isin(t.labels[z], (1, 2)), t.labels[z], 0)
    view._box.value = 32
    return view


def _segmented(view, title="membrane"):
    """Give the view a segmentation without training (the controller keeps it as a finished one)."""
    from napari_cryo.segmentation._display_widget import show
    from napari_cryo.segmentation.controller import TomogramRef

    view.session.add_model(SegmentationModel.new("vgg", title, box_size=32, pixel_size=12.0))
    tomo = TomogramRef.from_layer(view._tomogram.value)
    for layer_data in view.controller.segmented(tomo, {title: _blobs()}):
        show(view.viewer, *layer_data)
    view._pick_feature.reset_choices()
    view._pick_feature.value = title
    return tomo


def _actions_enabled(view) -> bool:
    buttons = (view._train, view._train_all, view._segment, view._pick, view._mesh, view._save_segmentations, view._save_mesh)
    return all(b.enabled for b in buttons) and not view._cancel.enabled


def _slowed(monkeypatch, module, name, seconds=0.5):
    """Make ``module.name`` sleep first; returns an event set when a call starts."""
    real, started = getattr(module, name), threading.Event()

    def slow(*args, **kwargs):
        started.set()
        time.sleep(seconds)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, slow)
    return started


def test_train_and_segment_keep_the_gui_responsive(widget, longest_gui_gap):
    widget._epochs.value = 2
    widget._budget.value = 0
    widget.viewer.dims.set_current_step(0, 6)
    gap = longest_gui_gap(lambda: widget.train(["membrane"]), lambda: widget.worker is None)
    assert set(widget.session.models) == {"membrane"} and gap < 0.2, gap
    gap = longest_gui_gap(widget.segment, lambda: widget.worker is None)
    assert "tomo membrane" in widget.viewer.layers and gap < 0.2, gap
    assert "_napari_cryo_stats" not in widget.viewer.layers["tomo"].metadata  # the stats stay in the controller


def test_pick_and_mesh_keep_the_gui_responsive(widget, monkeypatch, longest_gui_gap):
    from napari_cryo.segmentation import controller

    _segmented(widget)
    _slowed(monkeypatch, controller, "pick_particles")
    _slowed(monkeypatch, controller, "mesh_from_volume")
    gap = longest_gui_gap(widget.pick, lambda: widget.worker is None)
    assert len(widget.viewer.layers["tomo membrane picks"].data) > 0 and gap < 0.2, gap
    gap = longest_gui_gap(widget.make_mesh, lambda: widget.worker is None)
    assert len(widget.viewer.layers["tomo membrane mesh"].data[1]) > 0 and gap < 0.2, gap


def _cancel_mid_run(qtbot, view, action, started) -> None:
    assert action() is not None
    qtbot.waitUntil(started, timeout=60000)
    assert view._cancel.enabled and not view._pick.enabled
    view._cancel.native.click()
    qtbot.waitUntil(lambda: view.worker is None, timeout=60000)
    qtbot.wait(50)
    assert _actions_enabled(view)


def test_cancel_training(widget, qtbot):
    widget._epochs.value = 200
    _cancel_mid_run(qtbot, widget, lambda: widget.train(["membrane"]), lambda: len(widget.controller.history.get("membrane", [])) >= 1)
    assert widget.session.models == {}  # no model from a cancelled training


def test_cancel_segmentation(widget, qtbot, monkeypatch):
    from napari_cryo.segmentation import inference

    widget.session.add_model(SegmentationModel.new("vgg", "membrane", box_size=32, pixel_size=12.0))
    started = _slowed(monkeypatch, inference, "predict_planes", 0.3)
    _cancel_mid_run(qtbot, widget, widget.segment, started.is_set)
    assert "tomo membrane" not in widget.viewer.layers and widget.controller.segmented_features(widget._tomogram_key()) == []


def test_cancel_picking_and_meshing(widget, qtbot, monkeypatch):
    from napari_cryo.segmentation import controller

    _segmented(widget)
    _cancel_mid_run(qtbot, widget, widget.pick, _slowed(monkeypatch, controller, "pick_particles", 1.0).is_set)
    assert "tomo membrane picks" not in widget.viewer.layers
    _cancel_mid_run(qtbot, widget, widget.make_mesh, _slowed(monkeypatch, controller, "mesh_from_volume", 1.0).is_set)
    assert "tomo membrane mesh" not in widget.viewer.layers
    assert widget.save_mesh(widget.viewer.layers["tomo"].name + ".obj") is None  # no mesh kept to save


def test_widget_and_cli_write_the_same_picks(widget, qtbot, tmp_path, monkeypatch):
    _segmented(widget)
    assert widget.save_segmentations(tmp_path) is not None
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60000)
    widget._pick_threshold.value = 0.5
    widget.pick()
    qtbot.waitUntil(lambda: widget.worker is None and "tomo membrane picks" in widget.viewer.layers, timeout=60000)
    for suffix in (".star", ".tsv"):
        ours = widget.export_picks(tmp_path / f"widget{suffix}")
        assert main(["segment", "pick", str(tmp_path / "tomo__membrane.mrc"), "--threshold", "0.5", "--out", str(tmp_path / f"cli{suffix}")]) == 0
        assert ours.read_bytes() == (tmp_path / f"cli{suffix}").read_bytes()
    assert "rlnTomoName" in ours.with_suffix(".star").read_text()


def test_live_preview_survives_a_model_added_while_it_runs(make_napari_viewer, qtbot, monkeypatch):
    """Training adds models on the main thread while a preview worker runs: the worker uses a snapshot."""
    from napari.utils import notifications

    from napari_cryo.segmentation import session
    from napari_cryo.segmentation._widget import SegmentationWidget

    errors = []
    monkeypatch.setattr(notifications, "show_error", lambda message: errors.append(message))
    viewer = make_napari_viewer()
    viewer.add_image(_blobs(), name="tomo", scale=(12.0, 12.0, 12.0))
    view = SegmentationWidget(viewer)
    view._tomogram.value = viewer.layers["tomo"]
    for title in ("membrane", "carbon"):
        view.session.add_model(SegmentationModel.new("vgg", title, box_size=32, pixel_size=12.0))
    real, started, release = session.predict_planes, threading.Event(), threading.Event()

    def blocking(*args, **kwargs):
        started.set()
        release.wait(30)
        return real(*args, **kwargs)

    monkeypatch.setattr(session, "predict_planes", blocking)
    view._live.value = True  # starts the preview
    qtbot.waitUntil(started.is_set, timeout=30000)
    view.session.add_model(SegmentationModel.new("vgg", "particle", box_size=32, pixel_size=12.0))  # what training does
    release.set()
    qtbot.waitUntil(lambda: view.preview.worker is None, timeout=60000)
    qtbot.waitUntil(lambda: {"preview membrane", "preview carbon"} <= {layer.name for layer in viewer.layers} or bool(errors), timeout=5000)
    assert not errors, errors
