"""The shipped default square model: it loads, it ranks squares, and `squares score` uses it without a model file."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.spatial import cKDTree
from scipy.stats import spearmanr

from napari_cryo.cli import main
from napari_cryo.io.mrc import write_mrc
from napari_cryo.squares.default_model import load_default_model
from napari_cryo.squares.pipeline import analyse_atlas, score_atlas
from napari_cryo.synthetic.atlas import simulate_atlas

TORCH_THREADS = 1  # restored by conftest; set here it leaked into every later module


def test_default_model_is_small_and_documents_its_training():
    model = load_default_model()
    assert model.variant == "xcryonet"
    record = model.history[-1]
    assert record["training_atlas_seeds"] and 0 not in record["training_atlas_seeds"]  # not the demo's atlas sample
    assert record["held_out"]["spearman_overall"] > 0.5


@pytest.fixture(scope="module")
def atlas():
    return simulate_atlas(seed=7)  # neither a training nor a held-out atlas of the shipped model


def test_default_model_ranks_squares_of_an_unseen_atlas(atlas):
    pytest.importorskip("torch")
    found = analyse_atlas(atlas.image, "a7")
    table, maps = score_atlas(load_default_model(), found)
    scored = table[table["rank"] > 0]
    dist, idx = cKDTree(atlas.squares[["center_y", "center_x"]].to_numpy()).query(scored[["center_y", "center_x"]].to_numpy())
    ok = dist < 0.2 * atlas.pitch
    rho = spearmanr(scored["overall"].to_numpy()[ok], atlas.squares["overall"].to_numpy(float)[idx[ok]]).statistic
    assert ok.sum() >= 20 and rho > 0.4, rho
    assert set(maps) == {"cracking", "contamination"}


def test_squares_score_without_a_model_uses_the_default(atlas, tmp_path, capsys):
    path = tmp_path / "grid.mrc"
    write_mrc(path, atlas.image.astype(np.float32), 5000.0)
    assert main(["squares", "score", str(path), "--out", str(tmp_path / "scores")]) == 0
    assert "default" in capsys.readouterr().out
    ranked = pd.read_csv(tmp_path / "scores" / "grid_squares.csv")
    assert ranked["overall"].notna().sum() >= 20
