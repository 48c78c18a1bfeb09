"""The square scorer learns: on squares of atlases it never saw, it beats predicting the training mean."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial import cKDTree
from scipy.stats import spearmanr

from napari_cryo.squares.model import SCORES, SquareModel, XCryoNet
from napari_cryo.squares.pipeline import analyse_atlas
from napari_cryo.squares.training import SquareTrainConfig, predict, train_squares
from napari_cryo.synthetic.atlas import simulate_atlas

OVERALL = SCORES.index("overall")
TRAIN_SEEDS = (31, 32, 33, 34, 35, 36)
HELD_OUT_SEEDS = (41, 42, 43)


def _labelled_squares(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Crops, measured (automatic) labels and true scores of the complete squares found in a simulated atlas."""
    atlas = simulate_atlas(seed=seed)
    found = analyse_atlas(atlas.image, f"a{seed}")
    keep = found.squares["complete"].to_numpy(bool)
    dist, idx = cKDTree(atlas.squares[["center_y", "center_x"]].to_numpy()).query(
        found.squares.loc[keep, ["center_y", "center_x"]].to_numpy()
    )
    ok = dist < 0.2 * atlas.pitch  # extracted squares matched to the simulator's own
    truth = atlas.squares.iloc[idx[ok]][list(SCORES)].to_numpy(float)
    return found.crops[keep][ok], found.auto_labels()[keep][ok], truth


@pytest.fixture(scope="module")
def scored_held_out():
    crops, labels = [], []
    for seed in TRAIN_SEEDS:
        c, auto, truth = _labelled_squares(seed)
        auto[:, 2:] = truth[:, 2:]  # as a user would: cracking, contamination and overall scored by eye
        crops.append(c)
        labels.append(auto)
    crops, labels = np.concatenate(crops), np.concatenate(labels)
    model = SquareModel(XCryoNet(channels=32))
    for _ in train_squares(model, crops, labels, SquareTrainConfig(epochs=8, batch_size=32, semi_supervised=False, seed=0)):
        pass
    held_out = [_labelled_squares(seed) for seed in HELD_OUT_SEEDS]  # atlases the model never saw
    test_crops = np.concatenate([h[0] for h in held_out])
    truth = np.concatenate([h[2] for h in held_out])
    return predict(model, test_crops)["scores"], truth, labels


def test_scorer_beats_the_mean_predictor_on_held_out_atlases(scored_held_out):
    predicted, truth, train_labels = scored_held_out
    assert len(truth) >= 60
    errors = {}
    for j, name in enumerate(SCORES):
        mean_error = float(np.abs(np.nanmean(train_labels[:, j]) - truth[:, j]).mean())
        model_error = float(np.abs(predicted[:, j] - truth[:, j]).mean())
        errors[name] = (round(model_error, 3), round(mean_error, 3))
        assert model_error < mean_error, errors
    # the overall score is what squares are ranked by: a clear margin, and the right order
    assert errors["overall"][0] < 0.85 * errors["overall"][1], errors
    assert spearmanr(predicted[:, OVERALL], truth[:, OVERALL]).statistic > 0.5
