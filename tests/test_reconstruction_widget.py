"""The reconstruction widget in a real viewer: start, watch the map, pause, resume, stop, save."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_cryo.cli import main

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
    assert widget.save_poses(tmp_path / "poses_copy.star").exists()
    assert np.isfinite(widget.result.resolution) or widget.result.resolution == float("inf")
    if widget._dir_fig is not None:  # the final direction plot says how evenly the poses fill Fourier space
        from napari_cryo.reconstruction.outputs import direction_title

        assert widget._dir_fig.axes[0].get_title() == direction_title(widget.result.coverage)
        assert "SCF" in direction_title(widget.result.coverage)


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
    import napari.utils.notifications as notifications

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
