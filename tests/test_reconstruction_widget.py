"""The reconstruction widget in a real viewer: start, watch the map, pause, resume, stop, save."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_cryo.cli import main
from napari_cryo.io.mrc import read_mrc
from napari_cryo.reconstruction.controller import map_layer_data
from napari_cryo.reconstruction.run import MapUpdate

pytestmark = pytest.mark.gui
#: FSC 0.5 against the true map, in pixels, that a run which found the poses reaches: on this data set
#: 2 epochs of cryoSPIN and a 0.4-minute search both reached 3.2-3.6 px; a map from random poses,
#: or an empty one, never crosses 0.5 (measured 29-90 px after the same superposition).
FOUND_PX = 5.0


@pytest.fixture(scope="module")
def dataset(testdata, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("recon_widget") / "set"
    assert main(["simulate", "particles", str(testdata / "particles" / "hand-vol.mrc"), "--n", "300", "--box", "32",
                 "--snr", "1.0", "--out", str(out), "--device", "cpu", "--seed", "7"]) == 0
    return out


def resolution_against_truth(volume: np.ndarray, dataset: Path) -> float:
    """FSC 0.5 resolution (px) of a map against the simulated particles' true map, after superposing it.

    An ab initio map has its own orientation and hand.  The superposition is a coarse one (300
    rotations at 16 px, refined at 24 px): about a second, and enough to tell a map from noise.
    """
    from napari_cryo.reconstruction.fsc import align_maps, fsc

    truth, info = read_mrc(dataset / "ground_truth_map.mrc")
    truth = np.asarray(truth, dtype=np.float32)
    px = float(info.voxel_size[0])
    aligned = align_maps(truth, np.asarray(volume, dtype=np.float32), px, n_rotations=300, search_box=16, refine_box=24, candidates=2)
    return fsc(aligned.aligned, truth, px).resolution_px(0.5)


def _wait(qtbot, worker, timeout=300000):
    assert worker is not None
    with qtbot.waitSignal(worker.finished, timeout=timeout):
        pass


def test_run_pause_resume_stop(make_napari_viewer, qtbot, dataset, tmp_path, monkeypatch):
    import napari_cryo._view
    from napari_cryo.reconstruction._widget import ReconstructionWidget

    asked = []
    monkeypatch.setattr(napari_cryo._view, "ask_to_replace", lambda paths, parent=None: asked.append(paths) or False)
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

    worker = widget.start(resume=True)  # Resume continues the paused run's folder without asking
    assert worker is not None and asked == []
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
    # The map is the particle's: against the true map it reaches what a run that found the poses reaches,
    # which neither an empty map nor one from random poses does.
    assert resolution_against_truth(layer.data, dataset) < FOUND_PX
    blank = np.random.default_rng(0).normal(0, 1e-3, layer.data.shape).astype(np.float32)
    assert resolution_against_truth(blank, dataset) > 2 * FOUND_PX
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
    written, _ = read_mrc(tmp_path / "search" / "volume.mrc")
    assert resolution_against_truth(written, dataset) < FOUND_PX


def test_bad_input_is_a_notification(make_napari_viewer, dataset, tmp_path, monkeypatch):
    """Start checks the run's inputs as the command does: one notification, no task, no folder."""
    import starfile
    from napari.utils import notifications

    from napari_cryo.reconstruction._widget import ReconstructionWidget

    errors = []
    monkeypatch.setattr(notifications, "show_error", lambda message: errors.append(message))
    viewer = make_napari_viewer()
    widget = ReconstructionWidget(viewer)
    widget._out.value = tmp_path / "run"
    assert widget.start() is None and "choose a particle STAR file" in errors[-1]
    empty = tmp_path / "empty.star"
    empty.write_text("data_particles\n\nloop_\n_rlnImageName #1\n")
    widget._star.value = empty
    assert widget.start() is None and "empty.star" in errors[-1]
    # Too few particles: refused at Start, not in the worker.
    blocks = starfile.read(dataset / "particles.star", always_dict=True)
    blocks["particles"] = blocks["particles"].head(4)
    few = dataset / "four.star"
    starfile.write(blocks, few, overwrite=True)
    widget._star.value = few
    assert widget.start() is None and widget.worker is None
    assert len(errors) == 3 and "four.star" in errors[-1] and "4 particles" in errors[-1]
    assert not (tmp_path / "run").exists()


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
