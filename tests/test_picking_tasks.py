"""The picking widget's long actions: off the GUI thread, cancellable, chained, and its export equal to the CLI's."""

import threading
import time

import numpy as np
import pytest

from napari_cryo.cli import main
from napari_cryo.io.mrc import write_mrc
from napari_cryo.synthetic import simulate_micrograph
from napari_cryo.training_loop import EpochRecord

pytestmark = pytest.mark.gui
TORCH_THREADS = 1


def _stack_widget(make_napari_viewer, planes=3, size=384):
    from napari_cryo.picking._widget import PickingWidget

    viewer = make_napari_viewer()
    mics = [simulate_micrograph(shape=(size, size), pixel_size=3.0, n_particles=20, carbon_fraction=0, n_contamination=0, seed=s) for s in range(planes)]
    stack = viewer.add_image(np.stack([m.image for m in mics]), name="stack", scale=(1.0, 3.0, 3.0))
    widget = PickingWidget(viewer)
    widget._image.value = stack
    widget._threshold.value = 0.3
    return viewer, widget


def _actions_enabled(widget) -> bool:
    return widget._pick_current.enabled and widget._pick_all.enabled and widget._retrain.enabled and not widget._cancel.enabled


def _slow_picks(monkeypatch, seconds=0.5):
    """Make every micrograph's pick take ``seconds``; returns an event set when one starts."""
    from napari_cryo.picking import controller

    real, started = controller.pick_micrograph, threading.Event()

    def slow(*args, **kwargs):
        started.set()
        time.sleep(seconds)
        return real(*args, **kwargs)

    monkeypatch.setattr(controller, "pick_micrograph", slow)
    return started


def _tiny_training(monkeypatch, steps=4):
    """Retraining with ``steps`` small batches per epoch, so that a test takes seconds."""
    import functools

    from napari_cryo.picking import training

    monkeypatch.setattr(training, "TrainConfig", functools.partial(training.TrainConfig, steps_per_epoch=steps, batch_size=2, patch=96))


def _cancel_once_started(qtbot, widget, worker, started):
    """Press Cancel once ``started`` is set; the worker must abort and the buttons come back."""
    aborted = []
    worker.aborted.connect(lambda: aborted.append(True))
    assert widget._cancel.enabled and not widget._pick_all.enabled and not widget._retrain.enabled
    qtbot.waitUntil(started.is_set, timeout=60000)
    widget._cancel.native.click()
    qtbot.waitUntil(lambda: widget.worker is None and bool(aborted), timeout=60000)
    assert _actions_enabled(widget)


def test_pick_and_retrain_keep_the_gui_responsive(make_napari_viewer, monkeypatch, longest_gui_gap):
    viewer, widget = _stack_widget(make_napari_viewer)
    _tiny_training(monkeypatch)
    gap = longest_gui_gap(lambda: widget.pick(all_micrographs=True), lambda: widget.worker is None)
    assert gap < 0.2, gap
    assert len(viewer.layers["stack picks"].data)

    widget._epochs.value = 1
    widget._name.value = "mine"
    # training data are prepared in the worker too
    gap = longest_gui_gap(widget.retrain, lambda: widget._model.value == "mine" and widget.worker is None)
    assert gap < 0.2, gap


def test_cancel_pick_leaves_nothing(make_napari_viewer, qtbot, monkeypatch):
    viewer, widget = _stack_widget(make_napari_viewer, planes=4, size=256)
    started = _slow_picks(monkeypatch)
    _cancel_once_started(qtbot, widget, widget.pick(all_micrographs=True), started)
    assert "stack picks" not in viewer.layers and not widget.controller.sessions


def test_cancel_retrain_keeps_no_model(make_napari_viewer, qtbot, monkeypatch):
    from napari_cryo.picking import training

    _, widget = _stack_widget(make_napari_viewer, planes=1, size=256)
    widget.pick()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=120000)
    real, started = training.train, threading.Event()

    def train(*args, **kwargs):
        started.set()
        return (yield from real(*args, **kwargs))

    monkeypatch.setattr(training, "train", train)
    _tiny_training(monkeypatch, steps=400)
    widget._name.value = "mine"
    _cancel_once_started(qtbot, widget, widget.retrain(), started)
    assert "mine" not in widget.controller.models and "mine" not in widget._model.choices


class QuietBar:
    """A stand-in for napari's progress bar, which processes Qt events when it is made."""

    def __init__(self, *args, **kwargs) -> None:
        self.n = self.total = 0

    def set_description(self, *args) -> None: ...

    def refresh(self) -> None: ...

    def close(self) -> None: ...


def test_retrain_then_pick_owns_cancel(make_napari_viewer, qtbot, monkeypatch):
    """After retraining returns, the pick it starts is the widget's task: Cancel stops it.

    Qt delivers the retrain's result, then its end; the pick starts from the
    result, so the retrain's end arrives after the pick started and must not
    clear the busy state.  (napari's progress bars process events when made,
    which can hide the bug; a quiet bar keeps Qt's order.)
    """
    import napari.utils

    from napari_cryo.picking import training

    _, widget = _stack_widget(make_napari_viewer, planes=1, size=256)
    widget.pick()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=120000)
    release = threading.Event()

    def fake_train(model, data, config=None, *args, **kwargs):
        assert data
        release.wait(30)
        yield EpochRecord(1, 0.1, 1.0)
        return model

    monkeypatch.setattr(training, "train", fake_train)
    monkeypatch.setattr(napari.utils, "progress", QuietBar)
    started = _slow_picks(monkeypatch, seconds=1.0)
    retrain_worker = widget.retrain()
    with qtbot.waitSignal(retrain_worker.finished, timeout=60000):
        release.set()
    qtbot.wait(50)
    pick_worker = widget.worker
    assert pick_worker is not None and pick_worker is not retrain_worker
    assert widget._model.value == "retrained"
    _cancel_once_started(qtbot, widget, pick_worker, started)


def test_widget_and_cli_write_the_same_star(make_napari_viewer, qtbot, tmp_path, monkeypatch):
    import hashlib

    from napari_cryo.picking import controller, picks
    from napari_cryo.picking._widget import PickingWidget

    # The network's last digits depend on the thread count of the thread that runs it (the
    # widget's worker or the CLI's main thread): both get the same result for the same input.
    real, results = picks.pick_micrograph, {}

    def same_result(model, image, pixel_size, diameter, **kwargs):
        key = (hashlib.sha1(np.ascontiguousarray(image, dtype=np.float32).tobytes()).hexdigest(), float(pixel_size), float(diameter))
        if key not in results:
            results[key] = real(model, image, pixel_size, diameter, **kwargs)
        return results[key]

    monkeypatch.setattr(picks, "pick_micrograph", same_result)
    monkeypatch.setattr(controller, "pick_micrograph", same_result)

    mic = simulate_micrograph(shape=(512, 512), pixel_size=3.0, diameter=150, n_particles=25, seed=5)
    path = tmp_path / "mic05.mrc"
    write_mrc(path, mic.image, 3.0)
    assert main(["pick", "run", str(path), "--diameter", "150", "--threshold", "0.3", "--out", str(tmp_path / "cli"), "--device", "cpu"]) == 0

    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(path), plugin="napari-cryo")
    widget = PickingWidget(viewer)
    widget._image.value = layer
    widget._threshold.value = 0.3
    widget.pick()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=120000)
    assert len(results) == 1  # the widget read the same micrograph and pixel size as the CLI
    (tmp_path / "widget").mkdir()
    (written,) = widget.export(tmp_path / "widget")
    cli = tmp_path / "cli" / "mic05_picks.star"
    assert written.name == cli.name and b"mic05.mrc" in cli.read_bytes() and len(viewer.layers["mic05 picks"].data) > 10
    assert written.read_bytes() == cli.read_bytes()
