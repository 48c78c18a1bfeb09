import numpy as np
import pandas as pd
import pytest
from scipy.spatial import cKDTree

from napari_cryo.cli import main
from napari_cryo.errors import CryoInputError
from napari_cryo.io.mrc import read_mrc, write_mrc
from napari_cryo.squares.atlas import stitch_montage
from napari_cryo.squares.extract import find_squares, fit_rim, grid_region, normalise_atlas, paste_maps, square_corners
from napari_cryo.squares.labels import match_labels, read_labels, write_labels
from napari_cryo.squares.model import SquareModel, XCryoNet
from napari_cryo.squares.pipeline import analyse_atlas, score_atlas
from napari_cryo.squares.training import SquareTrainConfig, train_squares
from napari_cryo.synthetic.atlas import simulate_atlas
from napari_cryo.training_loop import EpochRecord, Resumed


def _match(found: pd.DataFrame, truth: pd.DataFrame, tol: float):
    d, _ = cKDTree(truth[["center_y", "center_x"]].to_numpy()).query(found[["center_y", "center_x"]].to_numpy())
    d2, _ = cKDTree(found[["center_y", "center_x"]].to_numpy()).query(truth[["center_y", "center_x"]].to_numpy())
    return float(np.mean(d < tol)), float(np.mean(d2 < tol))


@pytest.mark.parametrize("angle", [0.0, 22.5, 45.0, 71.0])
def test_extraction_at_any_rotation(angle):
    atlas = simulate_atlas(seed=3, lattice_angle=angle)
    squares, lattice = find_squares(atlas.image)
    assert abs(((lattice.angle - angle) + 45) % 90 - 45) < 2.0
    assert lattice.pitch == pytest.approx(atlas.pitch, rel=0.05)
    precision, recall = _match(squares[squares.complete], atlas.squares[atlas.squares.complete], atlas.pitch * 0.2)
    assert precision >= 0.9 and recall >= 0.85
    assert square_corners(squares).shape == (len(squares), 4, 2)


@pytest.mark.parametrize("seed", [1029, 1067])
def test_lattice_is_the_mesh_not_a_diagonal_or_half_of_it(seed):
    # These atlases have large, mostly dark holes: the autocorrelation has a peak on the
    # diagonal (1029) or at half the pitch (1067), which once won over the mesh vector.
    atlas = simulate_atlas(seed=seed)
    squares, lattice = find_squares(atlas.image)
    assert lattice.pitch == pytest.approx(atlas.pitch, rel=0.02)
    assert abs(((lattice.angle - atlas.lattice_angle) + 45) % 90 - 45) < 1.0
    assert lattice.side == pytest.approx(float(atlas.squares.side.iloc[0]), abs=1.5)
    precision, recall = _match(squares[squares.complete], atlas.squares[atlas.squares.complete], atlas.pitch * 0.2)
    assert recall >= 0.94 and precision >= 0.97


@pytest.mark.parametrize("seed", [1017, 1053])
def test_rim_fit_follows_the_rim_not_the_hole_edges_inside_it(seed):
    # Where bars or dark squares face the rim, the meshed region ends inside it; a symmetric
    # fit pulled the radius in by 5-10 px and flagged complete squares at the rim as cut.
    atlas = simulate_atlas(seed=seed)
    squares, lattice = find_squares(atlas.image)
    region = grid_region(normalise_atlas(atlas.image)[0], lattice.pitch - lattice.side)
    (cy, cx), radius = fit_rim(region)
    assert radius == pytest.approx(atlas.rim_radius, abs=3.0)
    assert np.hypot(cy - atlas.rim_center[0], cx - atlas.rim_center[1]) < 3.0
    precision, recall = _match(squares[squares.complete], atlas.squares[atlas.squares.complete], atlas.pitch * 0.2)
    assert recall >= 0.97 and precision >= 0.97


def test_no_squares_is_a_clear_error(rng):
    with pytest.raises(CryoInputError):
        find_squares(rng.normal(size=(256, 256)).astype(np.float32) * 0 + 1.0)


def test_montage_stitching_recovers_the_atlas():
    atlas = simulate_atlas(shape=(512, 512), seed=2).image
    rows, cols, tile = 2, 3, 256
    step = int(tile * 0.8)
    tiles = []
    for r in range(rows):
        for c in range(cols):
            y, x = min(r * step, 512 - tile), min(c * int(step * 0.65), 512 - tile)
            tiles.append(atlas[y : y + tile, x : x + tile])
    with pytest.raises(CryoInputError, match="5 tiles do not fit a 2 x 3 layout"):
        stitch_montage(np.stack(tiles[:5]), rows, cols, 0.2)
    exact = [atlas[r * 200 : r * 200 + 256, c * 200 : c * 200 + 256] for r in range(2) for c in range(2)]
    stitched = stitch_montage(np.stack(exact), 2, 2, 0.2)
    crop = stitched[: 456, : 456]
    assert np.corrcoef(crop.ravel(), atlas[:456, :456].ravel())[0, 1] > 0.95


def test_labels_csv_round_trip_and_matching(tmp_path):
    atlas = simulate_atlas(seed=4)
    squares, lattice = find_squares(atlas.image)
    scores = np.full((len(squares), 5), np.nan)
    scores[:3, 4] = [4, 2, 0]
    path = write_labels(tmp_path / "l.csv", squares, scores)
    labels = read_labels(path)
    matched, warnings = match_labels(labels, squares, lattice.pitch / 2)
    np.testing.assert_allclose(matched[:3, 4], [4, 2, 0])
    assert np.isnan(matched[3:, 4]).all() and not warnings
    far = labels.copy()
    far["center_x"] += 10_000
    with pytest.raises(CryoInputError, match="within"):
        match_labels(far, squares, lattice.pitch / 2, name="far.csv")
    (tmp_path / "bad.csv").write_text("center_x,center_y,overall\n1,2,7\n")
    with pytest.raises(CryoInputError, match="scores are 0-4"):
        read_labels(tmp_path / "bad.csv")


def test_model_shapes_and_attention():
    import torch

    net = XCryoNet()
    out = net(torch.rand(3, 1, 64, 64))
    assert out["scores"].shape == (3, 5) and float(out["scores"].min()) >= 0 and float(out["scores"].max()) <= 4
    assert out["attention_cracking"].shape == (3, 1, 64, 64)
    assert out["primary_reconstruction"].shape == (3, 1, 64, 64)
    prim = XCryoNet(variant="primary")(torch.rand(2, 1, 64, 64))
    assert prim["scores"].shape == (2, 5) and "attention_cracking" not in prim


def test_train_score_and_resume(tmp_path):
    atlas = analyse_atlas(simulate_atlas(seed=5).image, "a")
    complete = atlas.squares.complete.to_numpy()
    labels = atlas.auto_labels()
    labels[:10, 2:] = 2.0
    model = SquareModel(XCryoNet(channels=16))
    ckpt = tmp_path / "s.ckpt"
    config = SquareTrainConfig(epochs=2, batch_size=16)
    gen = train_squares(model, atlas.crops[complete], labels[complete], config, ckpt)
    for item in gen:
        if isinstance(item, EpochRecord) and item.epoch == 1:
            gen.close()
            break
    resumed = [i for i in train_squares(SquareModel(XCryoNet(channels=16)), atlas.crops[complete], labels[complete], config, ckpt) if isinstance(i, (Resumed, EpochRecord))]
    assert isinstance(resumed[0], Resumed) and resumed[0].epoch == 1 and resumed[-1].epoch == 2
    model.save(tmp_path / "m.pt")
    back = SquareModel.load(tmp_path / "m.pt")
    table, maps = score_atlas(back, atlas)
    ranks = table.loc[table.complete, "rank"].to_numpy()
    assert sorted(ranks) == list(range(1, complete.sum() + 1))
    assert (table.loc[~table.complete, "rank"] == 0).all()
    assert set(maps) == {"cracking", "contamination"} and maps["cracking"].shape == atlas.image.shape


def test_no_labels_refused():
    atlas = analyse_atlas(simulate_atlas(seed=6).image, "a")
    with pytest.raises(CryoInputError, match="no labelled squares"):
        list(train_squares(SquareModel(XCryoNet(channels=16)), atlas.crops, atlas.auto_labels(), SquareTrainConfig(epochs=1)))


def test_paste_maps_places_values_on_their_square():
    atlas = simulate_atlas(seed=7)
    squares, _ = find_squares(atlas.image)
    maps = np.ones((len(squares), 64, 64), np.float32)
    pasted = paste_maps(maps, squares, atlas.image.shape)
    r = squares.iloc[len(squares) // 2]
    assert pasted[int(r.center_y), int(r.center_x)] == 1.0


def test_cli_extract_train_score(tmp_path, capsys):
    for i in range(2):
        write_mrc(tmp_path / f"atlas{i}.mrc", simulate_atlas(seed=10 + i).image, 5000.0)
    assert main(["squares", "extract", str(tmp_path / "atlas0.mrc"), "--out", str(tmp_path / "sq.csv")]) == 0
    table = pd.read_csv(tmp_path / "sq.csv")
    assert {"center_x", "center_y", "brightness", "squareness", "complete"} <= set(table.columns)
    labels = table[["center_x", "center_y"]].iloc[:12].copy()
    labels["overall"] = np.arange(12) % 5
    labels["cracking"] = 0
    labels.to_csv(tmp_path / "labels.csv", index=False)
    code = main(["squares", "train", str(tmp_path / "atlas0.mrc"), "--labels", str(tmp_path / "labels.csv"), "--unlabeled",
                 str(tmp_path / "atlas1.mrc"), "--out", str(tmp_path / "m.pt"), "--epochs", "1"])
    assert code == 0, capsys.readouterr().err
    code = main(["squares", "score", str(tmp_path / "m.pt"), str(tmp_path / "atlas1.mrc"), "--out", str(tmp_path / "scores")])
    assert code == 0
    scored = pd.read_csv(tmp_path / "scores" / "atlas1_squares.csv")
    assert list(scored["rank"].iloc[:3]) == [1, 2, 3] and "center_x_A" in scored
    att, info = read_mrc(tmp_path / "scores" / "atlas1_attention_cracking.mrc")
    assert att.shape == (1024, 1024) and info.pixel_size == pytest.approx(5000.0)
    capsys.readouterr()
    code = main(["squares", "train", str(tmp_path / "atlas0.mrc"), "--labels", str(tmp_path / "sq.csv"), str(tmp_path / "labels.csv"), "--out", str(tmp_path / "x.pt")])
    assert code == 2 and "one labels CSV per atlas" in capsys.readouterr().err
