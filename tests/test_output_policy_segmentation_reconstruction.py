"""The output-folder policy in segmentation and reconstruction: a job lists every file it writes and checks them first.

For each command, ONE file it would write is made beforehand (where there is
a choice, one written last: a loss plot, the second tomogram's segmentation,
``checkpoint.pt``, ``progress.csv``).  Without ``--overwrite`` (or
``--resume``) the command stops with exit 2 and one line naming that file,
and no other file is created or changed; with the flag it runs.  The widgets
ask before they replace a file: answered no, nothing is written; yes, the file
is replaced.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest

from napari_cryo.cli import main
from napari_cryo.io.mrc import read_mrc, write_mrc
from napari_cryo.segmentation.model import SegmentationModel

TORCH_THREADS = 1
OLD = b"an earlier file that must survive\n"


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with a hash of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def refused(capsys, folder: Path, clash: Path, *argv) -> None:
    """Run a command that must stop on ``clash``: exit 2, one line naming it, ``folder`` untouched."""
    before = snapshot(folder)
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and str(clash) in lines[0] and "already exists" in lines[0], err
    assert snapshot(folder) == before, "the command wrote or changed files although it stopped"
    assert clash.read_bytes() == OLD


def ran(capsys, *argv) -> str:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out


# -- segmentation ---------------------------------------------------------------


@pytest.fixture(scope="module")
def painted(tmp_path_factory) -> dict[str, Path]:
    """A small tomogram with two painted slices (membrane=1, carbon=2), and a model that segments at 12 Å."""
    from napari_cryo.synthetic.tomogram import simulate_tomogram

    d = tmp_path_factory.mktemp("painted")
    t = simulate_tomogram(shape=(24, 96, 96), pixel_size=12.0, n_vesicles=2, n_bound=3, n_free=3, n_filaments=0, snr=2.0, seed=3)
    labels = np.zeros_like(t.labels)
    for z in (6, 16):
        labels[z] = np.where(np.isin(t.labels[z], (1, 2)), t.labels[z], 0)
    write_mrc(d / "tomo.mrc", t.volume, 12.0)
    write_mrc(d / "tomo_labels.mrc", labels, 12.0, labels=True)
    SegmentationModel.new("vgg", "density", box_size=32, pixel_size=12.0).save(d / "density.scnm")
    return {"dir": d, "tomo": d / "tomo.mrc", "labels": d / "tomo_labels.mrc", "model": d / "density.scnm"}


def _train_args(painted, out: Path, *extra) -> list:
    return ["segment", "train", painted["tomo"], "--labels", painted["labels"], "--feature", "membrane=1", "--feature", "carbon=2",
            "--box", 32, "--epochs", 1, "--boxes-per-slice", 2, "--copies", 1, "--batch-size", 8, "--out", out, "--device", "cpu", *extra]


@pytest.mark.parametrize("name", ["run_carbon.loss.png", "run_carbon.ckpt", "run_membrane.ckpt"])
def test_segment_train_checks_models_plots_and_checkpoints_first(capsys, painted, tmp_path, name):
    """Before: the loss plot was replaced after training, and a checkpoint silently deleted."""
    clash = tmp_path / name
    clash.write_bytes(OLD)
    refused(capsys, tmp_path, clash, *_train_args(painted, tmp_path / "run"))


def test_segment_train_overwrite_and_resume(capsys, painted, tmp_path):
    loss = tmp_path / "run_carbon.loss.png"
    loss.write_bytes(OLD)
    ran(capsys, *_train_args(painted, tmp_path / "run", "--overwrite"))
    assert loss.read_bytes()[:4] == b"\x89PNG" and (tmp_path / "run_membrane.scnm").exists()
    assert not list(tmp_path.glob("*.ckpt"))
    # Resuming an interrupted training: the feature whose model was written is kept, the other trained.
    membrane = (tmp_path / "run_membrane.scnm").read_bytes()
    (tmp_path / "run_carbon.scnm").unlink()
    loss.unlink()
    out = ran(capsys, *_train_args(painted, tmp_path / "run", "--resume"))
    assert "trained before; kept" in out and (tmp_path / "run_membrane.scnm").read_bytes() == membrane
    assert SegmentationModel.load(tmp_path / "run_carbon.scnm").title == "carbon" and loss.exists()


def test_segment_group_checks_its_file(capsys, painted, tmp_path):
    clash = tmp_path / "g.scnmgroup"
    clash.write_bytes(OLD)
    argv = ["segment", "group", painted["model"], "--out", clash]
    refused(capsys, tmp_path, clash, *argv)
    ran(capsys, *argv, "--overwrite")
    assert clash.read_bytes() != OLD


def test_segment_apply_checks_every_tomogram_first(capsys, painted, tmp_path):
    tomo2 = tmp_path / "tomo2.mrc"
    shutil.copy(painted["tomo"], tomo2)
    out = tmp_path / "seg"
    out.mkdir()
    clash = out / "tomo2__density.mrc"  # the second tomogram's: written last
    clash.write_bytes(OLD)
    argv = ["segment", "apply", painted["model"], painted["tomo"], tomo2, "--out", out, "--device", "cpu"]
    refused(capsys, tmp_path, clash, *argv)
    ran(capsys, *argv, "--overwrite")
    assert read_mrc(clash)[0].shape == (24, 96, 96) and (out / "tomo__density.mrc").exists()


def test_segment_apply_refuses_two_tomograms_writing_one_file(capsys, painted, tmp_path):
    """Before: ``a/tomo.mrc`` and ``b/tomo.mrc`` both wrote ``tomo__density.mrc``, the second over the first."""
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        shutil.copy(painted["tomo"], tmp_path / sub / "tomo.mrc")
    code = main(["segment", "apply", str(painted["model"]), str(tmp_path / "a" / "tomo.mrc"), str(tmp_path / "b" / "tomo.mrc"),
                 "--out", str(tmp_path / "seg"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "tomo__density.mrc" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "seg").exists()


@pytest.fixture
def segmentation(tmp_path) -> Path:
    """A probability volume with two spheres."""
    zz, yy, xx = np.mgrid[0:16, 0:32, 0:32]
    prob = np.zeros((16, 32, 32), np.float32)
    for c in ((8, 10, 10), (8, 22, 22)):
        prob[(zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 <= 16] = 0.9
    path = tmp_path / "tomo__particle.mrc"
    write_mrc(path, prob, 12.0)
    return path


@pytest.mark.parametrize("step, name", [("pick", "picks.star"), ("pick", "picks.tsv"), ("mesh", "particle.obj")])
def test_segment_pick_and_mesh_check_their_file(capsys, segmentation, tmp_path, step, name):
    clash = tmp_path / name
    clash.write_bytes(OLD)
    argv = ["segment", step, segmentation, "--out", clash]
    refused(capsys, tmp_path, clash, *argv)
    ran(capsys, *argv, "--overwrite")
    assert clash.read_bytes() != OLD


# -- reconstruction ---------------------------------------------------------------


@pytest.fixture(scope="module")
def particles(tmp_path_factory) -> Path:
    """24 particles of 16 px with CTF: particles.star."""
    from napari_cryo.synthetic.particles import simulate_particles, write_particle_dataset

    sim = simulate_particles(n=24, box=16, pixel_size=6.0, snr=1.0, seed=2)
    return write_particle_dataset(tmp_path_factory.mktemp("particles") / "set", sim)


RECONSTRUCT = ("--max-minutes", "0.01", "--heads", "2", "--device", "cpu")


@pytest.mark.parametrize("name", ["checkpoint.pt", "progress.csv", "intermediate_003.mrc", "loss.png", "directions.png", "poses.star"])
def test_reconstruct_checks_every_file_of_a_run_first(capsys, particles, tmp_path, name):
    """Before: only five final outputs were checked; a checkpoint was overwritten, progress.csv deleted, plots replaced."""
    out = tmp_path / "run"
    out.mkdir()
    clash = out / name
    clash.write_bytes(OLD)
    refused(capsys, tmp_path, clash, "reconstruct", particles, "--out", out, *RECONSTRUCT)


def test_reconstruct_overwrite_deletes_the_earlier_run_and_resume_continues(capsys, particles, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    for name in ("progress.csv", "intermediate_042.mrc", "volume.mrc"):
        (out / name).write_bytes(OLD)
    (out / "notes.txt").write_bytes(OLD)  # not a file of a run: left alone
    ran(capsys, "reconstruct", particles, "--out", out, *RECONSTRUCT, "--overwrite")
    assert not (out / "intermediate_042.mrc").exists()  # the earlier run's map is not mixed with this run's
    assert (out / "progress.csv").read_bytes() != OLD and read_mrc(out / "volume.mrc")[0].shape == (16, 16, 16)
    assert (out / "notes.txt").read_bytes() == OLD and (out / "checkpoint.pt").exists()
    # --resume continues the run in the folder (its checkpoint) and rewrites its files.
    before = (out / "volume.mrc").stat().st_mtime_ns
    ran(capsys, "reconstruct", particles, "--out", out, *RECONSTRUCT, "--resume")
    assert (out / "volume.mrc").stat().st_mtime_ns > before


def test_reconstruct_resume_without_a_checkpoint_is_not_a_licence_to_overwrite(capsys, particles, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    clash = out / "volume.mrc"
    clash.write_bytes(OLD)
    refused(capsys, tmp_path, clash, "reconstruct", particles, "--out", out, *RECONSTRUCT, "--resume")
    code = main(["reconstruct", str(particles), "--out", str(out), *RECONSTRUCT, "--resume"])
    assert code == 2 and "no checkpoint.pt to resume from" in capsys.readouterr().err


def test_fsc_plot_is_checked(capsys, testdata, tmp_path):
    clash = tmp_path / "fsc.png"
    clash.write_bytes(OLD)
    mrc = testdata / "mrc" / "EMD-3197.map"
    argv = ["fsc", mrc, mrc, "--plot", clash]
    refused(capsys, tmp_path, clash, *argv)
    ran(capsys, *argv, "--overwrite")
    assert clash.read_bytes()[:4] == b"\x89PNG"


def test_simulate_checks_every_file_first(capsys, testdata, tmp_path):
    out = tmp_path / "sim"
    out.mkdir()
    clash = out / "ground_truth.star"  # written last
    clash.write_bytes(OLD)
    argv = ["simulate", "particles", testdata / "particles" / "hand-vol.mrc", "--n", 4, "--box", 16, "--out", out, "--device", "cpu"]
    refused(capsys, tmp_path, clash, *argv)
    ran(capsys, *argv, "--overwrite")
    assert b"rlnAngleRot" in clash.read_bytes()


# -- widgets ---------------------------------------------------------------------


def _answer(monkeypatch, answer: bool) -> list:
    """Make the replace dialog answer ``answer``; returns the list of what it was asked."""
    import napari_cryo._view

    asked: list = []
    monkeypatch.setattr(napari_cryo._view, "ask_to_replace", lambda paths, parent=None: asked.append(list(paths)) or answer)
    return asked


@pytest.mark.gui
def test_reconstruction_start_asks_before_replacing_an_earlier_run(make_napari_viewer, qtbot, particles, tmp_path, monkeypatch):
    """Before: Start wrote into a folder holding an earlier run without asking."""
    from napari_cryo.reconstruction._widget import ReconstructionWidget

    out = tmp_path / "run"
    out.mkdir()
    for name in ("checkpoint.pt", "intermediate_007.mrc"):
        (out / name).write_bytes(OLD)
    widget = ReconstructionWidget(make_napari_viewer())
    widget._star.value = particles
    widget._device.value = "cpu"
    widget._minutes.value = 0.1
    widget._out.value = out
    before = snapshot(out)
    asked = _answer(monkeypatch, False)
    assert widget.start() is None and widget.worker is None
    assert snapshot(out) == before and {p.name for p in asked[0]} == {"checkpoint.pt", "intermediate_007.mrc"}
    asked = _answer(monkeypatch, True)
    worker = widget.start()
    assert worker is not None and len(asked) == 1
    widget.stop()  # finish at once: the final map from the first poses
    qtbot.waitUntil(lambda: widget.worker is None, timeout=120000)
    assert widget.result is not None and read_mrc(out / "volume.mrc")[0].shape == (16, 16, 16)
    assert not (out / "intermediate_007.mrc").exists() and (out / "checkpoint.pt").read_bytes() != OLD


@pytest.fixture
def segmentation_view(make_napari_viewer):
    """The segmentation view with a model, a finished segmentation, picks and a mesh (nothing trained)."""
    from napari_cryo.segmentation._display_widget import show
    from napari_cryo.segmentation._widget import SegmentationWidget
    from napari_cryo.segmentation.controller import TomogramRef
    from napari_cryo.segmentation.meshes import mesh_from_volume
    from napari_cryo.segmentation.particles import PickSettings, pick_particles

    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((16, 32, 32), np.float32), name="tomo", scale=(12.0, 12.0, 12.0))
    view = SegmentationWidget(viewer)
    view._tomogram.value = viewer.layers["tomo"]
    view.session.add_model(SegmentationModel.new("vgg", "particle", box_size=32, pixel_size=12.0))
    view.models.refresh()
    tomo = TomogramRef.from_layer(view._tomogram.value)
    prob = np.zeros((16, 32, 32), np.float32)
    prob[5:11, 10:16, 10:16] = 0.9
    view.controller.segmented(tomo, {"particle": prob})
    view._pick_feature.reset_choices()
    view._pick_feature.value = "particle"
    show(viewer, *view.controller.picks_layer(tomo, "particle", pick_particles(prob, 12.0, PickSettings())))
    view.controller.meshed(tomo, "particle", mesh_from_volume(prob, 0.5, 12.0))
    return view


def _saves(view, tmp_path: Path):
    """Each save of the view: (name, the file it writes, a call that saves it and returns the task or path)."""
    return [
        ("segmentations", tmp_path / "tomo__particle.mrc", lambda: view.save_segmentations(tmp_path)),
        ("picks", tmp_path / "picks.star", lambda: view.export_picks(tmp_path / "picks.star")),
        ("mesh", tmp_path / "particle.obj", lambda: view.save_mesh(tmp_path / "particle.obj")),
        ("model", tmp_path / "m.scnm", lambda: view.models.save_model(tmp_path / "m")),  # the suffix is added
        ("group", tmp_path / "g.scnmgroup", lambda: view.models.save_group(tmp_path / "g.scnmgroup")),
    ]


@pytest.mark.gui
def test_segmentation_saves_ask_before_replacing(segmentation_view, qtbot, tmp_path, monkeypatch):
    """Before: every save of the segmentation view replaced an existing file without asking."""
    view = segmentation_view
    for name, path, save in _saves(view, tmp_path):
        path.write_bytes(OLD)
        asked = _answer(monkeypatch, False)
        assert save() is None, name
        qtbot.wait(20)
        assert path.read_bytes() == OLD and asked == [[path]], name
        asked = _answer(monkeypatch, True)
        assert save() is not None, name
        qtbot.waitUntil(lambda: view.worker is None, timeout=30000)
        assert path.read_bytes() != OLD and asked == [[path]], name
    # A file that does not exist is written without a question.
    asked = _answer(monkeypatch, False)
    assert view.export_picks(tmp_path / "new.tsv") is not None and asked == []
