"""The output-folder policy in the picking and squares commands and widgets, and in ``convert`` (issue #27).

A command lists every file it will write (outputs, checkpoints, loss plots)
before it writes any: when one exists it stops with one line naming it
(exit 2) and leaves every file as it was; ``--overwrite`` (or ``--resume``
for a checkpoint) lets it run.  A widget asks before replacing a file.
Each test puts in place one file the job writes late (the loss plot, the
third atlas's last map), where writing as one goes would already have
changed others.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from napari_cryo.cli import main
from napari_cryo.io.mrc import write_mrc
from napari_cryo.io.star import write_coordinates

TORCH_THREADS = 1
OLD = b"an earlier run's file"


def snapshot(*folders: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under ``folders`` with its modification time and size."""
    return {str(p): (p.stat().st_mtime_ns, p.stat().st_size) for folder in folders for p in sorted(folder.rglob("*"))}


def cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_refused(capsys, clash: Path, folders: tuple[Path, ...], *argv, hint: str = "--overwrite") -> None:
    """The command exits 2 with one line naming ``clash`` and changes nothing under ``folders``."""
    before = snapshot(*folders)
    code, _, err = cli(capsys, *argv)
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and f"{clash}: already exists" in lines[0] and hint in lines[0], err
    assert snapshot(*folders) == before
    assert clash.read_bytes() == OLD


@pytest.fixture(scope="module")
def micrographs(tmp_path_factory) -> tuple[Path, list[Path]]:
    """Two small simulated micrographs and a folder of sparse picks."""
    from napari_cryo.synthetic import simulate_micrograph

    root = tmp_path_factory.mktemp("mics")
    (root / "picks").mkdir()
    paths = []
    for i in range(2):
        m = simulate_micrograph(shape=(256, 256), pixel_size=3.0, diameter=150, n_particles=12, seed=40 + i)
        paths.append(root / f"mic{i}.mrc")
        write_mrc(paths[-1], m.image, 3.0)
        write_coordinates(root / "picks" / f"mic{i}.star", m.picks[::2], None, 3.0)
    return root, paths


def pick_train(micrographs, model: Path, *flags) -> list:
    root, paths = micrographs
    return ["pick", "train", *paths, "--positives", root / "picks", "--diameter", 150, "--out", model, "--epochs", 1, "--steps", 1, *flags]


def test_pick_train_lists_the_loss_plot(capsys, micrographs, tmp_path):
    plot = tmp_path / "m_loss.png"
    plot.write_bytes(OLD)
    assert_refused(capsys, plot, (tmp_path, micrographs[0]), *pick_train(micrographs, tmp_path / "m.pt"))
    code, _, err = cli(capsys, *pick_train(micrographs, tmp_path / "m.pt", "--overwrite"))
    assert code == 0, err
    assert plot.read_bytes().startswith(b"\x89PNG") and (tmp_path / "m.pt").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt", "m_loss.png"]


def test_pick_train_checkpoint_is_resumed_only_when_asked(capsys, micrographs, tmp_path):
    checkpoint = tmp_path / "m.pt.ckpt"
    checkpoint.write_bytes(OLD)  # an interrupted run's (unreadable: training starts again)
    assert_refused(capsys, checkpoint, (tmp_path,), *pick_train(micrographs, tmp_path / "m.pt"), hint="--resume")
    code, _, err = cli(capsys, *pick_train(micrographs, tmp_path / "m.pt", "--resume"))
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt", "m_loss.png"]


def test_pick_run_checks_every_pick_file_first(capsys, micrographs, tmp_path):
    _, paths = micrographs
    out = tmp_path / "picks"
    out.mkdir()
    last = out / "mic1_picks.star"
    last.write_bytes(OLD)
    argv = ["pick", "run", *paths, "--diameter", 150, "--out", out, "--threshold", 0.3]
    assert_refused(capsys, last, (tmp_path,), *argv)
    code, _, err = cli(capsys, *argv, "--overwrite")
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["mic0_picks.star", "mic1_picks.star"] and last.read_bytes() != OLD


@pytest.fixture(scope="module")
def atlases(tmp_path_factory) -> tuple[Path, list[Path], Path]:
    """Three small atlases, a labels CSV for the first and a tiny untrained model."""
    import torch

    from napari_cryo.squares.model import SquareModel, XCryoNet
    from napari_cryo.squares.pipeline import analyse_atlas
    from napari_cryo.synthetic.atlas import simulate_atlas

    root = tmp_path_factory.mktemp("atlases")
    paths = []
    for i in range(3):
        image = simulate_atlas(shape=(512, 512), seed=20 + i).image
        paths.append(root / f"atlas{i}.mrc")
        write_mrc(paths[-1], image, 5000.0)
    squares = analyse_atlas(simulate_atlas(shape=(512, 512), seed=20).image).squares
    labels = squares[["center_x", "center_y"]].copy()
    labels["overall"] = np.arange(len(labels)) % 5
    labels.to_csv(root / "labels.csv", index=False)
    torch.manual_seed(0)
    SquareModel(XCryoNet(channels=8)).save(root / "tiny.pt")
    return root, paths, root / "tiny.pt"


def test_squares_extract_checks_its_table(capsys, atlases, tmp_path):
    _, paths, _ = atlases
    out = tmp_path / "squares.csv"
    out.write_bytes(OLD)
    assert_refused(capsys, out, (tmp_path,), "squares", "extract", paths[0], "--out", out)
    code, _, err = cli(capsys, "squares", "extract", paths[0], "--out", out, "--overwrite")
    assert code == 0, err
    assert "brightness" in pd.read_csv(out).columns


@pytest.fixture
def tiny_square_training(monkeypatch):
    """Square training in a few steps of a narrow network."""
    from napari_cryo.squares import model, training

    monkeypatch.setattr(training, "SquareTrainConfig", functools.partial(training.SquareTrainConfig, batch_size=8, min_steps=1))
    monkeypatch.setattr(model, "XCryoNet", functools.partial(model.XCryoNet, channels=8))


def squares_train(atlases, model: Path, *flags) -> list:
    root, paths, _ = atlases
    return ["squares", "train", paths[0], "--labels", root / "labels.csv", "--out", model, "--epochs", 1, *flags]


def test_squares_train_lists_the_loss_plot(capsys, atlases, tmp_path, tiny_square_training):
    plot = tmp_path / "m_loss.png"
    plot.write_bytes(OLD)
    assert_refused(capsys, plot, (tmp_path, atlases[0]), *squares_train(atlases, tmp_path / "m.pt"))
    code, _, err = cli(capsys, *squares_train(atlases, tmp_path / "m.pt", "--overwrite"))
    assert code == 0, err
    assert plot.read_bytes().startswith(b"\x89PNG")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt", "m_loss.png"]


def test_squares_train_checkpoint_is_resumed_only_when_asked(capsys, atlases, tmp_path, tiny_square_training):
    checkpoint = tmp_path / "m.pt.ckpt"
    checkpoint.write_bytes(OLD)
    assert_refused(capsys, checkpoint, (tmp_path,), *squares_train(atlases, tmp_path / "m.pt"), hint="--resume")
    code, _, err = cli(capsys, *squares_train(atlases, tmp_path / "m.pt", "--resume"))
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt", "m_loss.png"]


def test_squares_score_checks_every_atlas_before_the_first(capsys, atlases, tmp_path):
    _, paths, model = atlases
    out = tmp_path / "scores"
    out.mkdir()
    last = out / "atlas2_attention_contamination.mrc"  # the last file of the last atlas
    last.write_bytes(OLD)
    argv = ["squares", "score", model, *paths, "--out", out]
    assert_refused(capsys, last, (tmp_path,), *argv)
    code, _, err = cli(capsys, *argv, "--overwrite")
    assert code == 0, err
    kinds = ["squares.csv", "squares.star", "attention_cracking.mrc", "attention_contamination.mrc"]
    assert sorted(p.name for p in out.iterdir()) == sorted(f"atlas{i}_{k}" for i in range(3) for k in kinds)
    assert last.read_bytes() != OLD


def test_squares_score_refuses_atlases_of_one_name(capsys, atlases, tmp_path):
    _, paths, model = atlases
    (tmp_path / "other").mkdir()
    twin = tmp_path / "other" / paths[0].name
    twin.write_bytes(paths[0].read_bytes())
    code, _, err = cli(capsys, "squares", "score", model, paths[0], twin, "--out", tmp_path / "scores")
    assert code == 2 and "collide" in err and not (tmp_path / "scores").exists()


@pytest.mark.parametrize("kind", ["mrc", "star"])
def test_convert_checks_its_output(capsys, tmp_path, kind):
    if kind == "mrc":
        src, dst, extra = tmp_path / "in.mrc", tmp_path / "out.mrc", ["--pixel-size", 2.0]
        write_mrc(src, np.ones((8, 8), np.float32), 1.0)
    else:
        src, dst, extra = tmp_path / "in.star", tmp_path / "out.star", ["--layout", "3.0"]
        write_coordinates(src, np.ones((3, 2)), None, 2.0)
    dst.write_bytes(OLD)
    assert_refused(capsys, dst, (tmp_path,), "convert", src, dst, *extra)
    code, _, err = cli(capsys, "convert", src, dst, *extra, "--overwrite")
    assert code == 0 and dst.read_bytes() != OLD, err


# ------------------------------------------------------------------ widgets
def answer(monkeypatch, yes: bool) -> list:
    """Make the replace dialog answer ``yes``; returns the list of the paths it was asked about."""
    import napari_cryo._view

    asked: list = []

    def ask(paths, parent=None):
        asked.append([Path(p) for p in paths])
        return yes

    monkeypatch.setattr(napari_cryo._view, "ask_to_replace", ask)
    return asked


@pytest.fixture
def picking(make_napari_viewer):
    """A picking widget with two hand-made picks on a small micrograph (no network run)."""
    from napari_cryo.picking._widget import PickingWidget
    from napari_cryo.picking.session import MicrographSession

    viewer = make_napari_viewer()
    layer = viewer.add_image(np.zeros((64, 64), np.float32), name="mic", scale=(3.0, 3.0))
    widget = PickingWidget(viewer)
    session = MicrographSession(3.0, 150.0)
    session.manual = np.array([[10.0, 12.0], [30.0, 40.0]])
    widget.controller.images[layer.unique_id] = layer
    widget.controller.sessions[(layer.unique_id, -1)] = session
    return widget


@pytest.mark.gui
def test_picking_export_asks_before_replacing(picking, monkeypatch, tmp_path):
    from napari_cryo.io.star import read_coordinates

    target = tmp_path / "mic_picks.star"
    target.write_bytes(OLD)
    before = snapshot(tmp_path)
    asked = answer(monkeypatch, yes=False)
    assert picking.export(tmp_path) is None
    assert asked == [[target]] and snapshot(tmp_path) == before and target.read_bytes() == OLD
    answer(monkeypatch, yes=True)
    assert picking.export(tmp_path) == [target]
    (cs,) = read_coordinates(target)
    assert len(cs.points) == 2


@pytest.mark.gui
def test_picking_save_model_asks_before_replacing(picking, monkeypatch, qtbot, tmp_path):
    from napari_cryo.picking.model import PickerModel, load_model

    picking.controller.add_model("tiny", PickerModel.new(name="tiny", width=4))
    picking._choose_model("tiny")
    target = tmp_path / "m.pt"
    target.write_bytes(OLD)
    picking._save_path.value = str(target)
    asked = answer(monkeypatch, yes=False)
    assert picking.save_model() is None and picking.worker is None
    assert asked == [[target]] and target.read_bytes() == OLD
    answer(monkeypatch, yes=True)
    worker = picking.save_model()
    with qtbot.waitSignal(worker.finished, timeout=30000):
        pass
    assert load_model(target).name == "tiny"


@pytest.fixture
def squares(make_napari_viewer):
    """A squares widget with two hand-made, scored squares on a small atlas and a tiny model (no extraction)."""
    from napari_cryo.squares._widget import SquaresWidget
    from napari_cryo.squares.extract import Lattice
    from napari_cryo.squares.model import SCORES, SquareModel, XCryoNet
    from napari_cryo.squares.pipeline import AtlasSquares

    viewer = make_napari_viewer()
    layer = viewer.add_image(np.zeros((64, 64), np.float32), name="atlas")
    widget = SquaresWidget(viewer)
    widget._atlas.value = layer
    table = pd.DataFrame(
        {"center_y": [16.0, 40.0], "center_x": [16.0, 40.0], "side": 10.0, "angle": 0.0, "complete": True, "ncc": 0.9,
         "brightness": 2.0, "squareness": 3.0}
    )
    atlas = AtlasSquares("atlas", np.zeros((64, 64), np.float32), None, table, np.zeros((2, 64, 64), np.float32), Lattice(24.0, 0.0, 10.0))
    state = widget.session.add_atlas(layer.unique_id, atlas)
    state.scored = table.assign(**{s: 2.0 for s in SCORES}, rank=[1, 2])
    widget.session.model = SquareModel(XCryoNet(channels=8))
    return widget


@pytest.mark.gui
def test_squares_export_labels_asks_before_replacing(squares, monkeypatch, tmp_path):
    target = tmp_path / "labels.csv"
    target.write_bytes(OLD)
    squares._labels_file.value = str(target)
    asked = answer(monkeypatch, yes=False)
    assert squares.export_labels() is None
    assert asked == [[target]] and target.read_bytes() == OLD
    answer(monkeypatch, yes=True)
    squares.export_labels()
    assert list(pd.read_csv(target)["center_x"]) == [16.0, 40.0]


@pytest.mark.gui
def test_squares_save_model_asks_before_replacing(squares, monkeypatch, tmp_path):
    from napari_cryo.squares.model import SquareModel

    target = tmp_path / "m.pt"
    target.write_bytes(OLD)
    squares._model_file.value = str(target)
    asked = answer(monkeypatch, yes=False)
    assert squares.save_model() is None
    assert asked == [[target]] and target.read_bytes() == OLD
    answer(monkeypatch, yes=True)
    squares.save_model()
    assert SquareModel.load(target).variant == "xcryonet"


@pytest.mark.gui
def test_squares_export_ranked_asks_before_replacing(squares, monkeypatch, tmp_path):
    folder = tmp_path / "ranked"
    folder.mkdir()
    star = folder / "atlas_squares.star"  # written after the CSV
    star.write_bytes(OLD)
    before = snapshot(tmp_path)
    asked = answer(monkeypatch, yes=False)
    assert squares.export_ranked(folder) is None
    assert asked == [[star]] and snapshot(tmp_path) == before
    answer(monkeypatch, yes=True)
    assert [p.name for p in squares.export_ranked(folder)] == ["atlas_squares.csv", "atlas_squares.star"]
    assert star.read_bytes() != OLD
