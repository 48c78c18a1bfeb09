"""The reconstruction widget in a real viewer: start, watch the map, pause, resume, stop, save."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_cryo.cli import main
from napari_cryo.reconstruction.controller import map_layer_data
from napari_cryo.reconstruction.run import MapUpdate

pytestmark = pytest.mark.gui


@pytest.fixture(scope="module")
def dataset(testdata, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("recon_widget") / "set"
    assert main(["simulate", "particles", str(testdata / "particles" / "hand-vol.mrc"), "--n", "300", "--box", "32",
                 "--snr", "1.0", "--out", str(out), "--device", "cpu", "--seed", "7"]) == 0
    return out


def _wait(qtbot, worker, timeout=300000):
    assert worker is not None
    with qtbot.waitSignal(worker.finished, timeout=timeout):
        pass


def test_run_pause_resume_stop(make_napari_viewer, qtbot, dataset, tmp_path):
    from napari_cryo.reconstruction._widget import ReconstructionWidget

    viewer = make_napari_viewer()
    viewer.open(str(dataset / "particles.star"), plugin="napari-cryo")
    stack = viewer.layers[0]
    widget = ReconstructionWidget(viewer)
    widget._layer.value = stack  # an open stack layer with its STAR table
    widget._minutes.value = 0.3
    widget._out.value = tmp_path / "run"
    worker = widget.start()
    qtbot.waitUntil(lambda: len(widget.history) >= 1, timeout=120000)
    widget.pause()
    _wait(qtbot, worker)
    assert widget._resume.enabled and (tmp_path / "run" / "checkpoint.pt").exists()
    assert widget.result is None

    worker = widget.start(resume=True)
    qtbot.waitUntil(lambda: len(widget.history) >= 2, timeout=120000)
    widget.stop()  # finish now with the poses reached
    _wait(qtbot, worker)
    assert widget.result is not None
    layer = viewer.layers["reconstruction"]
    assert layer.data.shape == (32, 32, 32) and tuple(layer.scale) == pytest.approx((2.0, 2.0, 2.0))
    assert viewer.dims.ndisplay == 3
    assert (tmp_path / "run" / "volume.mrc").exists() and (tmp_path / "run" / "poses.star").exists()
    # The widget's poses file and the run folder's (the command line's) are one writer's: the same bytes.
    copy = widget.save_poses(tmp_path / "poses_copy.star")
    assert copy.read_bytes() == (tmp_path / "run" / "poses.star").read_bytes()
    assert np.isfinite(widget.result.resolution) or widget.result.resolution == float("inf")
    # The final direction plot says how evenly the poses fill Fourier space.
    from napari_cryo.reconstruction.outputs import direction_title

    assert widget.shown_plots["directions"].axes[0].get_title() == direction_title(widget.result.coverage)
    assert "SCF" in direction_title(widget.result.coverage)
    assert set(widget.shown_plots) == {"loss", "fsc", "directions"} and not widget._plots["fsc"].pixmap().isNull()


def test_search_method_in_the_widget(make_napari_viewer, qtbot, dataset, tmp_path):
    """The search method runs from the widget: first map, a search round, the final map as a 3D layer."""
    from napari_cryo.reconstruction._widget import ReconstructionWidget

    viewer = make_napari_viewer()
    widget = ReconstructionWidget(viewer)
    widget._star.value = dataset / "particles.star"
    widget._method.value = "search"
    widget._minutes.value = 0.4  # the first map is cut short by the budget, then one global search
    widget._out.value = tmp_path / "search"
    worker = widget.start()
    _wait(qtbot, worker)
    assert widget.result is not None and widget.result.rotations.shape == (300, 3, 3)
    phases = [h["phase"] for h in widget.history]
    assert phases[0] == "first map" and "global search" in phases
    assert viewer.layers["reconstruction"].data.shape == (32, 32, 32)
    assert (tmp_path / "search" / "volume.mrc").exists()


def test_bad_input_is_a_notification(make_napari_viewer, tmp_path, monkeypatch):
    from napari.utils import notifications

    from napari_cryo.reconstruction._widget import ReconstructionWidget

    errors = []
    monkeypatch.setattr(notifications, "show_error", lambda message: errors.append(message))
    viewer = make_napari_viewer()
    widget = ReconstructionWidget(viewer)
    assert widget.start() is None and "choose a particle STAR file" in errors[-1]
    empty = tmp_path / "empty.star"
    empty.write_text("data_particles\n\nloop_\n_rlnImageName #1\n")
    widget._star.value = empty
    assert widget.start() is None and "empty.star" in errors[-1]


def _cpu_widget(viewer, star: Path, minutes: float, out: Path):
    from napari_cryo.reconstruction._widget import ReconstructionWidget

    widget = ReconstructionWidget(viewer)
    widget._star.value = star
    widget._device.value = "cpu"
    widget._minutes.value = minutes
    widget._out.value = out
    return widget


def test_the_gui_stays_responsive_during_a_run(make_napari_viewer, qtbot, dataset, tmp_path, longest_gui_gap):
    """A whole tiny run (maps, records, the final map and its files): no gap over 200 ms on the main thread."""
    viewer = make_napari_viewer()
    widget = _cpu_widget(viewer, dataset / "particles.star", 0.1, tmp_path / "beat")
    widget._map_every.value = 0.05
    # The first map layer (and its 3D canvas) is made once, before timing: that is napari's, not the run's.
    data, kwargs, _ = map_layer_data(MapUpdate(np.zeros((32, 32, 32), np.float32), 2.0, "blank"))
    viewer.add_image(data, **kwargs)
    viewer.dims.ndisplay = 3
    qtbot.wait(200)
    gap = longest_gui_gap(widget.start, lambda: widget.worker is None)
    assert widget.result is not None and (tmp_path / "beat" / "volume.mrc").exists()
    assert any(name.startswith("intermediate_") for name in (p.name for p in (tmp_path / "beat").iterdir()))
    assert gap < 0.2, f"longest gap {gap * 1000:.0f} ms"


def test_cancel_stops_the_run_and_leaves_no_partial_output(make_napari_viewer, qtbot, dataset, tmp_path):
    """Cancel mid-run: the worker ends, the buttons come back, the checkpoint stays and no map is left half-written."""
    out = tmp_path / "cancelled"
    widget = _cpu_widget(make_napari_viewer(), dataset / "particles.star", 5.0, out)
    worker = widget.start()
    assert not widget._start.enabled and widget._cancel.enabled and widget._pause.enabled
    qtbot.waitUntil(lambda: len(widget.history) >= 2, timeout=120000)  # past the first epoch: a checkpoint is due
    widget._cancel.native.click()  # the view's Cancel button, as a user presses it
    _wait(qtbot, worker, timeout=60000)
    assert widget.worker is None and widget.result is None
    assert widget._start.enabled and not widget._cancel.enabled and not widget._pause.enabled and not widget._stop_button.enabled
    names = {p.name for p in out.iterdir()}
    assert "checkpoint.pt" in names and widget._resume.enabled
    assert not names & {"volume.mrc", "half1.mrc", "half2.mrc", "poses.star", "fsc.png"}, names
    assert not [n for n in names if ".partial" in n], names
