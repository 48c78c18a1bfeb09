"""The segmentation widget in a real viewer: paint, train, preview, interactions, segment, pick, mesh."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.gui


def _wait(qtbot, widget, worker, timeout=300000):
    """Wait for the view's task (a quick one may end before a signal could be waited for)."""
    assert worker is not None
    qtbot.waitUntil(lambda: widget.worker is None, timeout=timeout)


@pytest.fixture
def tomogram_viewer(make_napari_viewer):
    from napari_cryo.synthetic.tomogram import simulate_tomogram

    t = simulate_tomogram(shape=(24, 96, 96), pixel_size=12.0, n_vesicles=2, n_bound=3, n_free=3, n_filaments=0, snr=3.0, seed=5)
    viewer = make_napari_viewer()
    viewer.add_image(t.volume, name="tomo", scale=(12.0, 12.0, 12.0))
    return viewer, t


def test_paint_train_interact_segment_pick_mesh(tomogram_viewer, qtbot, tmp_path):
    from napari_cryo._view import pending_turns
    from napari_cryo.segmentation._widget import SegmentationWidget
    from napari_cryo.segmentation.features import METADATA_KEY

    viewer, t = tomogram_viewer
    widget = SegmentationWidget(viewer)
    widget._tomogram.value = viewer.layers["tomo"]
    labels = widget.new_annotation_layer()
    assert labels.data.shape == t.volume.shape and tuple(labels.scale) == (12.0, 12.0, 12.0)
    assert [f["name"] for f in labels.metadata[METADATA_KEY]] == ["membrane", "carbon", "particle"]
    feature = widget.add_feature("filament")
    assert feature.value == 4 and widget._feature.choices[-1] == "filament"
    widget._feature.value = "carbon"
    assert labels.selected_label == 2  # painting uses the chosen feature's value
    # Paint two slices of membrane and carbon from the ground truth.
    for z in (6, 16):
        labels.data[z] = np.where(np.isin(t.labels[z], (1, 2)), t.labels[z], 0)
    labels.refresh()

    widget._box.value = 32
    widget._epochs.value = 2
    widget._budget.value = 0  # exactly two epochs, however busy the machine
    viewer.dims.set_current_step(0, 10)
    _wait(qtbot, widget, widget.train(["membrane", "carbon"]))
    assert set(widget.session.models) == {"membrane", "carbon"}
    widget.reset_choices()  # what napari does on every layer change: the choices must survive it
    assert set(widget.models.edge_child.choices) == {"membrane", "carbon"} and "membrane" in widget._feature.choices
    assert [h.epoch for h in widget.controller.history["carbon"]] == [1, 2]
    assert "preview membrane" in viewer.layers  # shown during training
    assert viewer.layers["preview membrane"].data.shape == (96, 96)

    # Interaction editor: add an edge, see it in the table and the diagram; edit its radius.
    panel = widget.models
    panel.edge_child.value, panel.edge_kind.value, panel.edge_parent.value = "membrane", "avoid", "carbon"
    panel.edge_radius.value = 5.0
    panel.add_from_controls()
    assert panel.table.rowCount() == 1 and panel.table.item(0, 1).text() == "avoid"
    panel.table.item(0, 4).setText("8")
    assert widget.session.graph.interactions[0].radius_nm == 8.0
    # A cycle is refused with a notification, and the graph stays as it was.
    panel.edge_child.value, panel.edge_parent.value = "carbon", "membrane"
    panel.add_from_controls()
    assert len(widget.session.graph.interactions) == 1 and "cycle" in widget._status.value
    panel.model.value = "carbon"
    panel.emit.value = True
    assert widget.session.graph.emit == {"carbon"}

    # Live preview follows the slice.
    widget._live.value = True
    viewer.dims.set_current_step(0, 12)
    qtbot.waitUntil(lambda: widget.preview.worker is None and viewer.layers["preview membrane"].metadata.get("z") == 12, timeout=60000)

    _wait(qtbot, widget, widget.segment())
    widget.reset_choices()
    assert set(widget._pick_feature.choices) == {"membrane", "carbon"}
    seg = viewer.layers["tomo membrane"]
    assert seg.data.shape == t.volume.shape and tuple(seg.scale) == (12.0, 12.0, 12.0)
    _wait(qtbot, widget, widget.save_segmentations(tmp_path))
    assert sorted(p.name for p in tmp_path.glob("*.mrc")) == ["tomo__carbon.mrc", "tomo__membrane.mrc"]

    widget._pick_feature.value = "membrane"
    widget._pick_threshold.value = 0.3
    _wait(qtbot, widget, widget.pick())
    points = viewer.layers["tomo membrane picks"]
    assert points is not None and points.ndim == 3 and {"volume", "weight"} <= set(points.features)
    assert tuple(points.scale) == (12.0, 12.0, 12.0)
    assert widget.export_picks(tmp_path / "picks.star").exists()
    assert widget.export_picks(tmp_path / "picks.tsv").read_text().startswith("x\ty\tz")

    _wait(qtbot, widget, widget.make_mesh())
    surface = viewer.layers["tomo membrane mesh"]
    assert surface is not None and len(surface.data[1]) > 0
    _wait(qtbot, widget, widget.save_mesh(tmp_path / "membrane.obj"))
    assert (tmp_path / "membrane.obj").exists()

    _wait(qtbot, widget, panel.save_group(tmp_path / "both.scnmgroup"))
    widget.session.models.clear()
    _wait(qtbot, widget, panel.load_models(tmp_path / "both.scnmgroup"))
    assert set(widget.session.models) == {"membrane", "carbon"} and widget.session.graph.emit == {"carbon"}
    assert len(widget.session.graph.interactions) == 1
    # Loading refreshes the live preview; its layers are added a turn of the event loop apart, and one added while
    # the viewer closes at teardown raised in napari's layer controls (seen once in CI).
    qtbot.waitUntil(lambda: widget.preview.worker is None and pending_turns() == 0, timeout=60000)


def test_bad_input_is_a_notification(tomogram_viewer, qtbot, tmp_path, monkeypatch):
    from napari.utils import notifications

    from napari_cryo.segmentation._widget import SegmentationWidget

    errors = []
    monkeypatch.setattr(notifications, "show_error", lambda message: errors.append(message))
    viewer, _ = tomogram_viewer
    widget = SegmentationWidget(viewer)
    widget._tomogram.value = viewer.layers["tomo"]
    widget.new_annotation_layer()
    _wait(qtbot, widget, widget.train(["membrane"]))  # nothing painted: the worker says so before training anything
    assert "no annotation" in errors[-1] and not widget.session.models and widget._train.enabled
    assert widget.segment() is None and "no models" in errors[-1]
    (tmp_path / "x.scnm").write_text("junk")
    _wait(qtbot, widget, widget.models.load_models(tmp_path / "x.scnm"))
    assert "x.scnm" in errors[-1]
    widget.add_feature("membrane")
    assert "name" in errors[-1]


def test_annotations_of_several_tomograms_are_pooled(tomogram_viewer):
    from napari_cryo.segmentation._widget import SegmentationWidget
    from napari_cryo.segmentation.features import METADATA_KEY, features_to_metadata, make_features

    viewer, t = tomogram_viewer
    viewer.add_image(t.volume[::-1].copy(), name="tomo2", scale=(12.0, 12.0, 12.0))
    widget = SegmentationWidget(viewer)
    widget._tomogram.value = viewer.layers["tomo"]
    first = widget.new_annotation_layer()
    first.data[6] = np.where(t.labels[6] == 1, 1, 0)
    # The second tomogram's annotations number the features the other way round.
    second_table = make_features(["carbon", "membrane"])
    labels2 = np.zeros_like(t.labels)
    labels2[3] = np.where(t.labels[3] == 1, 2, 0)
    viewer.add_labels(labels2, name="tomo2 annotations", metadata={METADATA_KEY: features_to_metadata(second_table), "tomogram": "tomo2"})
    widget._annotation.value = first
    sources = widget.controller.annotation_sources(viewer.layers, viewer.layers["tomo"], first)
    pooled = widget.controller.annotated_tomograms(sources, {f.name: f for f in widget.features()})
    assert [p.name for p in pooled] == ["tomo", "tomo2"]
    assert set(np.unique(pooled[1].labels[3])) == {0, 1}  # membrane is 1 in the chosen table


def test_live_preview_shows_what_each_interaction_removes(tomogram_viewer, qtbot):
    from napari_cryo.segmentation._models_widget import COLUMNS
    from napari_cryo.segmentation._widget import SegmentationWidget
    from napari_cryo.segmentation.model import SegmentationModel

    viewer, _ = tomogram_viewer
    widget = SegmentationWidget(viewer)
    widget._tomogram.value = viewer.layers["tomo"]
    for title in ("membrane", "particle"):  # untrained: the counts only need some output
        widget.session.add_model(SegmentationModel.new("vgg", title, box_size=32, pixel_size=12.0))
    panel = widget.models
    panel.refresh()
    panel.edge_child.value, panel.edge_kind.value, panel.edge_parent.value = "particle", "colocalize", "membrane"
    panel.add_from_controls()
    removes = lambda: panel.table.item(0, len(COLUMNS) - 1)  # noqa: E731
    assert removes().text() == ""
    viewer.dims.set_current_step(0, 10)
    widget._live.value = True
    qtbot.waitUntil(lambda: widget.preview.worker is None and " of " in removes().text(), timeout=60000)
    assert removes().toolTip().endswith("(slice 10)")
    _wait(qtbot, widget, widget.segment())
    assert "tomo, whole tomogram" in removes().toolTip() and " of " in removes().text()
