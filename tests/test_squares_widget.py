"""The square-scoring widget in a real viewer."""

import numpy as np
import pytest

pytestmark = pytest.mark.gui


def _wait(qtbot, worker):
    assert worker is not None
    with qtbot.waitSignal(worker.finished, timeout=300000):
        pass


def test_extract_label_train_score_export(make_napari_viewer, qtbot, tmp_path):
    from napari_cryo.squares._widget import SquaresWidget

    viewer = make_napari_viewer()
    viewer.open_sample("napari-cryo", "atlas")
    widget = SquaresWidget(viewer)
    widget._atlas.value = viewer.layers["atlas"]
    _wait(qtbot, widget.extract())
    shapes = viewer.layers["atlas squares"]
    assert len(shapes.data) > 20 and "measured_brightness" in shapes.features
    np.testing.assert_allclose(shapes.scale, viewer.layers["atlas"].scale)

    # label a few squares with the spin boxes and by key
    shapes.selected_data = {0, 1, 2}
    widget._spins["overall"].value = 3.0
    widget._spins["cracking"].value = 1.0
    widget.apply_scores()
    assert list(shapes.features["label_overall"].iloc[:3]) == [3.0, 3.0, 3.0]
    shapes.selected_data = {5}
    widget.set_selected(viewer.layers["atlas"].unique_id, overall=0.0)
    assert shapes.features["label_overall"].iloc[5] == 0.0

    widget._labels_file.value = str(tmp_path / "labels.csv")
    widget.export_labels()
    assert (tmp_path / "labels.csv").exists()

    widget._epochs.value = 1
    _wait(qtbot, widget.train())
    qtbot.waitUntil(lambda: "atlas attention: cracking" in viewer.layers, timeout=60000)
    assert viewer.layers["atlas attention: cracking"].blending == "additive"
    features = viewer.layers["atlas squares"].features
    assert features.loc[features.complete, "rank"].min() == 1
    assert widget._table.rowCount() == int(features.complete.sum())
    widget._on_table_click(0, 0)
    assert len(viewer.layers["atlas squares"].selected_data) == 1

    written = widget.export_ranked(tmp_path / "ranked")
    assert [p.suffix for p in written] == [".csv", ".star"]
    import pandas as pd

    ranked = pd.read_csv(written[0])
    assert ranked["overall"].is_monotonic_decreasing and "center_x_A" in ranked


def test_train_without_labels_is_a_notification(make_napari_viewer, qtbot, monkeypatch):
    import napari.utils.notifications as notifications

    from napari_cryo.squares._widget import SquaresWidget

    shown = []
    monkeypatch.setattr(notifications, "show_error", shown.append)
    viewer = make_napari_viewer()
    viewer.open_sample("napari-cryo", "atlas")
    widget = SquaresWidget(viewer)
    widget._atlas.value = viewer.layers["atlas"]
    assert widget.train() is None and "extract" in shown[-1]
    _wait(qtbot, widget.extract())
    assert widget.train() is None and "no labelled squares" in shown[-1]
