"""The square widget's long actions run in workers: the GUI stays live, and Cancel stops them cleanly."""

import functools
import threading

import numpy as np
import pytest

pytestmark = pytest.mark.gui
TORCH_THREADS = 1
MAX_GAP = 0.2  # seconds the main thread may go without a heartbeat


@pytest.fixture
def atlas_image():
    from napari_cryo.synthetic.atlas import simulate_atlas

    return simulate_atlas(shape=(512, 512), seed=1).image


def _widget(make_napari_viewer, atlas_image):
    from napari_cryo.squares._widget import SquaresWidget

    viewer = make_napari_viewer()
    layer = viewer.add_image(atlas_image, name="atlas", scale=(5000.0, 5000.0))
    widget = SquaresWidget(viewer)
    widget._atlas.value = layer
    return viewer, widget, layer


def _extracted(qtbot, make_napari_viewer, atlas_image):
    viewer, widget, layer = _widget(make_napari_viewer, atlas_image)
    widget.extract()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60000)
    complete = np.flatnonzero(widget.session.state(layer.unique_id).atlas.squares["complete"].to_numpy())
    widget.session.set_labels(layer.unique_id, complete[:4], overall=3.0, cracking=1.0)
    return viewer, widget, layer


def _fast_training(monkeypatch, widget):
    """Training settings for seconds, not minutes (the widget's epochs still apply)."""
    monkeypatch.setattr(widget.session, "train_job", functools.partial(widget.session.train_job, min_steps=2, batch_size=8))


def _idle(widget) -> bool:
    return widget.worker is None and all(b.enabled for b in (widget._extract, widget._train, widget._score)) and not widget._cancel.enabled


def _block_until(event: threading.Event, func):
    """``func`` that first waits (up to 20 s) for ``event``: holds a worker mid-step until the test has pressed Cancel."""

    def blocked(*args, **kwargs):
        event.wait(20)
        return func(*args, **kwargs)

    return blocked


def _cancel_mid_run(qtbot, widget, start, release: threading.Event | None = None):
    """Start an action, press Cancel after its first progress report, wait until its worker is aborted."""
    worker = start()
    assert worker is not None and not widget._extract.enabled and widget._cancel.enabled
    with qtbot.waitSignal(worker.yielded, timeout=10000):
        pass
    with qtbot.waitSignal(worker.aborted, timeout=60000):
        widget._cancel.native.click()
        if release is not None:
            release.set()
    qtbot.waitUntil(lambda: _idle(widget), timeout=10000)


def test_extract_keeps_the_gui_live(make_napari_viewer, atlas_image, longest_gui_gap):
    viewer, widget, _ = _widget(make_napari_viewer, atlas_image)
    assert longest_gui_gap(widget.extract, lambda: widget.worker is None) < MAX_GAP
    assert "atlas squares" in viewer.layers and _idle(widget)


def test_train_and_score_keep_the_gui_live(make_napari_viewer, qtbot, monkeypatch, atlas_image, longest_gui_gap):
    viewer, widget, layer = _extracted(qtbot, make_napari_viewer, atlas_image)
    _fast_training(monkeypatch, widget)
    widget._epochs.value = 2
    maps = ("atlas attention: cracking", "atlas attention: contamination")
    # training, then scoring
    assert longest_gui_gap(widget.train, lambda: widget.worker is None and all(m in viewer.layers for m in maps)) < MAX_GAP
    assert widget.session.model is not None and len(widget.session.history) == 2
    assert longest_gui_gap(widget.score, lambda: widget.worker is None) < MAX_GAP
    assert widget._table.rowCount() == int(widget.session.state(layer.unique_id).atlas.squares["complete"].sum())


def test_cancel_extraction(make_napari_viewer, qtbot, monkeypatch, atlas_image):
    # Extraction once ran as one step: Cancel did nothing and the squares layer came anyway.
    from napari_cryo.squares import extract

    release = threading.Event()
    monkeypatch.setattr(extract, "grid_region", _block_until(release, extract.grid_region))
    viewer, widget, layer = _widget(make_napari_viewer, atlas_image)
    _cancel_mid_run(qtbot, widget, widget.extract, release)
    qtbot.wait(200)
    assert [lyr.name for lyr in viewer.layers] == ["atlas"]
    assert layer.unique_id not in widget.session.atlases


def test_cancel_training(make_napari_viewer, qtbot, monkeypatch, atlas_image):
    viewer, widget, _ = _extracted(qtbot, make_napari_viewer, atlas_image)
    _fast_training(monkeypatch, widget)
    widget._epochs.value = 50
    _cancel_mid_run(qtbot, widget, widget.train)
    qtbot.wait(200)
    assert widget.session.model is None and widget.worker is None  # no model, and no scoring started
    assert [lyr.name for lyr in viewer.layers] == ["atlas", "atlas squares"]


def test_cancel_scoring(make_napari_viewer, qtbot, monkeypatch, atlas_image):
    from napari_cryo.squares import pipeline
    from napari_cryo.squares.model import SquareModel, XCryoNet

    viewer, widget, layer = _extracted(qtbot, make_napari_viewer, atlas_image)
    widget.session.model = SquareModel(XCryoNet(channels=16))
    release = threading.Event()
    monkeypatch.setattr(pipeline, "paste_maps", _block_until(release, pipeline.paste_maps))
    _cancel_mid_run(qtbot, widget, widget.score, release)
    qtbot.wait(200)
    assert [lyr.name for lyr in viewer.layers] == ["atlas", "atlas squares"]
    assert widget.session.state(layer.unique_id).scored is None
    assert (viewer.layers["atlas squares"].features["rank"] == 0).all() and widget._table.rowCount() == 0


def test_state_follows_the_layer_not_its_name(make_napari_viewer, qtbot, atlas_image):
    viewer, widget, layer = _extracted(qtbot, make_napari_viewer, atlas_image)
    layer.name = "renamed atlas"
    squares = viewer.layers["atlas squares"]
    squares.selected_data = {0, 1}
    widget._spins["overall"].value = 2.0
    widget.apply_scores()
    assert list(squares.features["label_overall"].iloc[:2]) == [2.0, 2.0]
    viewer.layers.remove(layer)
    assert widget.session.atlases == {}
