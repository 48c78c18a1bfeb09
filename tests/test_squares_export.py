"""The ranked squares: one format, written alike by the widget and the command line."""

import numpy as np
import pandas as pd
import pytest

TORCH_THREADS = 1


@pytest.fixture
def atlas_and_model(tmp_path):
    import torch

    from napari_cryo.io.mrc import write_mrc
    from napari_cryo.squares.model import SquareModel, XCryoNet
    from napari_cryo.synthetic.atlas import simulate_atlas

    write_mrc(tmp_path / "grid7.mrc", simulate_atlas(shape=(512, 512), seed=1).image, 5000.0)
    torch.manual_seed(0)
    SquareModel(XCryoNet(channels=16)).save(tmp_path / "m.pt")
    return tmp_path / "grid7.mrc", tmp_path / "m.pt"


@pytest.mark.gui
def test_widget_and_cli_write_identical_ranked_files(make_napari_viewer, qtbot, monkeypatch, tmp_path, atlas_and_model):
    from napari_cryo.cli import main
    from napari_cryo.squares._widget import SquaresWidget

    atlas, model = atlas_and_model
    assert main(["squares", "score", str(model), str(atlas), "--out", str(tmp_path / "cli")]) == 0

    viewer = make_napari_viewer()
    [layer] = viewer.open(str(atlas), plugin="napari-cryo")
    widget = SquaresWidget(viewer)
    widget._atlas.value = layer
    widget.extract()
    qtbot.waitUntil(lambda: widget.worker is None and layer.unique_id in widget.session.atlases, timeout=60000)
    widget._model_file.value = str(model)
    widget.load_model()
    widget.score()
    qtbot.waitUntil(lambda: widget.worker is None and widget.session.atlases[layer.unique_id].scored is not None, timeout=60000)
    written = widget.export_ranked(tmp_path / "gui")

    from_cli = sorted((tmp_path / "cli").glob("*_squares.*"))
    assert [p.name for p in written] == [p.name for p in from_cli] == ["grid7_squares.csv", "grid7_squares.star"]
    for ours, theirs in zip(written, from_cli):
        assert ours.read_bytes() == theirs.read_bytes(), ours.name


def test_ranked_format(tmp_path, atlas_and_model):
    from napari_cryo.errors import CryoInputError
    from napari_cryo.io.star import read_coordinates
    from napari_cryo.squares.atlas import load_atlas
    from napari_cryo.squares.model import SquareModel
    from napari_cryo.squares.pipeline import analyse_atlas, score_atlas
    from napari_cryo.squares.ranked import CSV_COLUMNS, write_ranked

    atlas_path, model_path = atlas_and_model
    atlas = analyse_atlas(load_atlas(atlas_path)[0], "grid7", None)
    table, _ = score_atlas(SquareModel.load(model_path), atlas)
    csv, star = write_ranked(tmp_path / "out", table, "grid7", None)
    ranked = pd.read_csv(csv)
    assert tuple(ranked.columns) == CSV_COLUMNS
    assert list(ranked["rank"]) == list(range(1, int(table["complete"].sum()) + 1))
    assert ranked["overall"].is_monotonic_decreasing and ranked["center_x_A"].isna().all()  # no pixel size: no Å
    [coords] = read_coordinates(star)
    assert coords.name == "grid7" and coords.pixel_size is None
    np.testing.assert_allclose(coords.points[:, -1], ranked["center_x"], atol=1e-3)
    assert list(coords.features["rnkSquareRank"].astype(int)) == list(ranked["rank"])
    with pytest.raises(CryoInputError, match="already exists"):
        write_ranked(tmp_path / "out", table, "grid7", None)
