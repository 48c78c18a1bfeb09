"""Batch commands read every input before they work on the first: a bad file late in the list writes nothing."""

from __future__ import annotations

import numpy as np
import pytest

from napari_cryo.cli import main
from napari_cryo.io.mrc import write_mrc
from napari_cryo.synthetic import simulate_micrograph
from napari_cryo.synthetic.atlas import simulate_atlas


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("problem", ["not an MRC file", "no pixel size", "a volume"])
def test_pick_run_checks_every_micrograph_first(capsys, tmp_path, problem):
    good = []
    for i in range(2):
        m = simulate_micrograph(shape=(256, 256), pixel_size=3.0, diameter=150, n_particles=10, seed=i)
        write_mrc(tmp_path / f"mic{i}.mrc", m.image, 3.0)
        good.append(tmp_path / f"mic{i}.mrc")
    bad = tmp_path / "mic9.mrc"
    if problem == "not an MRC file":
        bad.write_bytes(b"not an image" * 100)
    elif problem == "no pixel size":
        write_mrc(bad, np.random.default_rng(0).normal(size=(64, 64)).astype(np.float32), 0.0)
    else:
        write_mrc(bad, np.random.default_rng(0).normal(size=(4, 64, 64)).astype(np.float32), 3.0)
    out = tmp_path / "picks"
    code, _, err = _run(capsys, "pick", "run", *good, bad, "--diameter", 150, "--out", out)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and str(bad) in lines[0], err
    assert not out.exists() or list(out.iterdir()) == []


def test_squares_score_checks_every_atlas_first(capsys, tmp_path):
    from napari_cryo.squares.model import SquareModel, XCryoNet

    model = tmp_path / "m.pt"
    SquareModel(XCryoNet(channels=8)).save(model)
    good = tmp_path / "atlas0.mrc"
    write_mrc(good, simulate_atlas(shape=(512, 512), seed=3).image, 5000.0)
    bad = tmp_path / "atlas1.mrc"
    bad.write_bytes(b"\0" * 100)  # truncated: no MRC header
    out = tmp_path / "ranked"
    code, _, err = _run(capsys, "squares", "score", model, good, bad, "--out", out)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and str(bad) in lines[0], err
    assert not out.exists() or list(out.iterdir()) == []
