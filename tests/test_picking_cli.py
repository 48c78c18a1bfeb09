import numpy as np
import pandas as pd
import pytest

from napari_cryo.cli import main
from napari_cryo.io.mrc import write_mrc
from napari_cryo.io.star import read_coordinates, write_coordinates
from napari_cryo.synthetic import simulate_micrograph


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Three small simulated micrographs with ground-truth and sparse pick files."""
    root = tmp_path_factory.mktemp("picking")
    (root / "truth").mkdir()
    (root / "sparse").mkdir()
    mics = []
    for i in range(3):
        m = simulate_micrograph(shape=(512, 512), pixel_size=3.0, diameter=150, n_particles=40, seed=100 + i)
        path = root / f"mic{i:02d}.mrc"
        write_mrc(path, m.image, 3.0)
        write_coordinates(root / "truth" / f"mic{i:02d}.star", m.picks, None, 3.0, micrograph_name=path.name)
        write_coordinates(root / "sparse" / f"mic{i:02d}_manual.star", m.picks[::3], None, 3.0)
        mics.append((path, m))
    return root, mics


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_run_and_evaluate_with_generic_model(capsys, dataset, tmp_path):
    root, mics = dataset
    code, out, err = run(capsys, "pick", "run", *[p for p, _ in mics], "--diameter", 150, "--out", tmp_path / "picks", "--threshold", 0.2)
    assert code == 0, err
    files = sorted((tmp_path / "picks").glob("*_picks.star"))
    assert [f.name for f in files] == ["mic00_picks.star", "mic01_picks.star", "mic02_picks.star"]
    (cs,) = read_coordinates(files[0])
    assert cs.name.endswith("mic00.mrc") and "rlnAutopickFigureOfMerit" in cs.features
    assert cs.pixel_size == 3.0 and len(cs.points) > 10
    code, out, err = run(capsys, "pick", "evaluate", tmp_path / "picks", root / "truth", "--diameter", 150, "--json")
    assert code == 0, err
    import json

    scores = json.loads(out)
    assert scores["micrographs"] == 3 and scores["average_precision"] > 0.5
    # a second run refuses to overwrite
    code, _, err = run(capsys, "pick", "run", mics[0][0], "--diameter", 150, "--out", tmp_path / "picks")
    assert code == 2 and "--overwrite" in err


def test_train_from_sparse_picks_then_pick(capsys, dataset, tmp_path):
    root, mics = dataset
    model = tmp_path / "mine.pt"
    code, out, err = run(
        capsys, "pick", "train", *[p for p, _ in mics], "--positives", root / "sparse", "--diameter", 150,
        "--out", model, "--epochs", 1, "--steps", 3,
    )
    assert code == 0, err
    assert model.exists() and (tmp_path / "mine_loss.png").exists() and not (tmp_path / "mine.pt.ckpt").exists()
    code, _, err = run(capsys, "pick", "run", mics[0][0], "--model", model, "--diameter", 150, "--out", tmp_path / "o")
    assert code == 0, err


def test_train_reports_unmatched_and_outside_picks(capsys, dataset, tmp_path):
    root, mics = dataset
    path, m = mics[0]
    pts = np.concatenate([m.picks[:5], [[-50.0, 10.0], [10.0, 9999.0]]])
    names = [path.name] * 7 + ["elsewhere.mrc"]
    pts = np.concatenate([pts, [[5.0, 5.0]]])
    write_coordinates(tmp_path / "p.star", pts, pd.DataFrame({"rlnMicrographName": names}), 3.0)
    code, _, err = run(
        capsys, "pick", "train", path, "--positives", tmp_path / "p.star", "--diameter", 150, "--out", tmp_path / "m.pt",
        "--epochs", 1, "--steps", 1, "--from", "scratch",
    )
    assert code == 0, err
    assert "2 picks lie outside mic00.mrc" in err and "were not given (elsewhere)" in err


def test_bad_inputs(capsys, dataset, tmp_path):
    root, mics = dataset
    (tmp_path / "fake.pt").write_text("hello")
    code, _, err = run(capsys, "pick", "run", mics[0][0], "--model", tmp_path / "fake.pt", "--diameter", 150, "--out", tmp_path / "x")
    assert code == 2 and "fake.pt: is not a model file" in err and "Traceback" not in err
    write_mrc(tmp_path / "blank.mrc", np.zeros((64, 64), np.float32), 2.0)
    code, _, err = run(capsys, "pick", "run", tmp_path / "blank.mrc", "--diameter", 150, "--out", tmp_path / "y")
    assert code == 2 and "empty" in err
    write_coordinates(tmp_path / "other.star", np.ones((3, 2)), pd.DataFrame({"rlnMicrographName": ["zzz.mrc"] * 3}), 3.0)
    code, _, err = run(capsys, "pick", "train", mics[0][0], "--positives", tmp_path / "other.star", "--diameter", 150, "--out", tmp_path / "m.pt")
    assert code == 2 and "none of its picks belong to the given micrographs" in err
    assert not (tmp_path / "m.pt").exists()
