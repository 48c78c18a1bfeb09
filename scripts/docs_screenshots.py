"""Regenerate the screenshots in docs/images from the sample data (run under xvfb-run).

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python scripts/docs_screenshots.py
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parents[1] / "docs" / "images"


def wait(widget) -> None:
    from qtpy.QtWidgets import QApplication

    while widget.worker is not None:
        QApplication.processEvents()
        time.sleep(0.02)
    for _ in range(20):
        QApplication.processEvents()
        time.sleep(0.02)


def save(img: np.ndarray, name: str) -> None:
    from skimage.io import imsave

    OUT.mkdir(parents=True, exist_ok=True)
    imsave(OUT / name, np.asarray(img)[..., :3], check_contrast=False)
    print("wrote", OUT / name)


def picking() -> None:
    import napari

    from napari_cryo.picking._widget import PickingWidget

    viewer = napari.Viewer(title="napari-cryo: particle picking")
    viewer.window._qt_window.resize(1500, 950)
    viewer.open_sample("napari-cryo", "micrograph")
    viewer.layers["micrograph ground truth"].visible = False
    widget = PickingWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Particle picking", area="right")
    widget._image.value = viewer.layers["micrograph"]
    widget._diameter.value = 150.0
    widget.pick()
    wait(widget)
    widget._threshold.value = 0.6
    viewer.reset_view()
    save(viewer.screenshot(canvas_only=False, flash=False), "picking_picks.png")

    widget._brush.value = 400.0
    widget.paint_mask()
    junk = viewer.layers["micrograph junk (truth)"].data
    viewer.layers["micrograph exclusions"].data = (junk == 1).astype(np.uint8)  # 'painted' carbon
    save(viewer.screenshot(canvas_only=False, flash=False), "picking_mask.png")

    widget._show_prob.value = True
    viewer.layers["micrograph exclusions"].visible = False
    save(viewer.screenshot(canvas_only=True, flash=False), "picking_probability.png")
    viewer.close()


def squares() -> None:
    import napari

    from napari_cryo.squares._widget import SquaresWidget

    viewer = napari.Viewer(title="napari-cryo: grid square scoring")
    viewer.window._qt_window.resize(1500, 1000)
    viewer.open_sample("napari-cryo", "atlas")
    truth = viewer.layers["atlas ground truth"]
    widget = SquaresWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Grid square scoring", area="right")
    widget._atlas.value = viewer.layers["atlas"]
    widget.extract()
    wait(widget)
    # Label 25 squares from the sample's ground truth, as a user would by eye.
    from scipy.spatial import cKDTree

    atlas = widget.atlases["atlas"]
    d, idx = cKDTree(truth.data).query(atlas.squares[["center_y", "center_x"]].to_numpy())
    for i in np.flatnonzero(atlas.squares["complete"].to_numpy())[:25]:
        row = truth.features.iloc[idx[i]]
        widget.square_labels["atlas"][i, 2:] = [row["cracking"], row["contamination"], row["overall"]]
    widget._epochs.value = 15
    widget.train()
    wait(widget)
    wait(widget)
    viewer.reset_view()
    save(viewer.screenshot(canvas_only=False, flash=False), "squares_scored.png")
    viewer.close()


def segmentation() -> None:
    import napari

    from napari_cryo.segmentation._widget import SegmentationWidget

    viewer = napari.Viewer(title="napari-cryo: tomogram segmentation")
    viewer.window._qt_window.resize(1600, 1000)
    viewer.open_sample("napari-cryo", "tomogram")
    truth = viewer.layers["tomogram features (truth)"].data
    widget = SegmentationWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Tomogram segmentation", area="right")
    widget._tomogram.value = viewer.layers["tomogram"]
    labels = widget.new_annotation_layer()
    # 'Paint' six slices from the ground truth, as a user would by hand.
    # Where a user would paint: the slice showing most of each feature, plus a few spread through the volume.
    slices = {int(np.argmax([(truth[z] == v).sum() for z in range(truth.shape[0])])) for v in (1, 2, 3)}
    slices |= {int(z) for z in np.linspace(30, truth.shape[0] - 11, 3).round()}
    for z in sorted(slices):
        labels.data[z] = np.where(np.isin(truth[z], (1, 2, 3)), truth[z], 0)
    labels.refresh()
    viewer.dims.set_current_step(0, max(slices))
    viewer.reset_view()
    save(viewer.screenshot(canvas_only=False, flash=False), "segmentation_painting.png")

    widget._epochs.value = 12
    if widget.train(["membrane", "carbon", "particle"]) is None:
        raise RuntimeError(f"training did not start: {widget._status.value}")
    wait(widget)
    widget._child.value, widget._kind.value, widget._parent.value = "membrane", "avoid", "carbon"
    widget._radius.value = 10.0
    widget.add_interaction_from_controls()
    widget._child.value, widget._kind.value, widget._parent.value = "particle", "colocalize", "membrane"
    widget._radius.value = 25.0
    widget.add_interaction_from_controls()
    labels.visible = False
    widget._live.value = True
    viewer.dims.set_current_step(0, 48)
    wait(widget)
    from qtpy.QtWidgets import QApplication

    while widget._preview_worker is not None:
        QApplication.processEvents()
        time.sleep(0.05)
    wait(widget)
    # Scroll the dock to the interaction editor.
    scroll = widget.native.parent()
    while scroll is not None and not hasattr(scroll, "ensureWidgetVisible"):
        scroll = scroll.parent()
    if scroll is not None:
        scroll.ensureWidgetVisible(widget._graph_canvas)
    wait(widget)
    save(viewer.screenshot(canvas_only=False, flash=False), "segmentation_interactions.png")

    widget._live.value = False
    for layer in [l for l in viewer.layers if l.name.startswith("preview ")]:
        viewer.layers.remove(layer)
    widget.segment()
    wait(widget)
    widget._pick_feature.value = "particle"
    widget._pick_threshold.value = 0.3  # this quick 12-epoch model is under-confident on particles
    widget._min_volume.value = 1000.0
    widget._min_spacing.value = 160.0
    widget.pick()
    for name in ("tomogram carbon", "tomogram particle"):
        viewer.layers[name].visible = False
    viewer.layers["tomogram membrane"].visible = False
    viewer.layers["tomogram particles (truth)"].visible = False
    viewer.dims.ndisplay = 3
    viewer.layers["tomogram"].rendering = "minip"
    viewer.layers["tomogram"].opacity = 0.6
    viewer.reset_view()
    viewer.camera.angles = (0, 35, 60)
    wait(widget)
    save(viewer.screenshot(canvas_only=False, flash=False), "segmentation_picks_3d.png")

    widget._pick_feature.value = "membrane"
    widget._min_volume.value = 50000.0
    widget.make_mesh()
    viewer.layers["tomogram"].visible = False
    wait(widget)
    save(viewer.screenshot(canvas_only=False, flash=False), "segmentation_mesh.png")
    viewer.close()


def reconstruction() -> None:
    import tempfile

    import napari
    from qtpy.QtWidgets import QApplication

    from napari_cryo.cli import main as cli
    from napari_cryo.reconstruction._widget import ReconstructionWidget

    work = Path(tempfile.mkdtemp(prefix="napari-cryo-shots-"))
    hand = Path(__file__).resolve().parents[2] / "shared" / "testdata" / "particles" / "hand-vol.mrc"
    cli(["simulate", "particles", str(hand), "--n", "3000", "--box", "32", "--snr", "0.5", "--out", str(work / "set"), "--device", "cpu"])
    viewer = napari.Viewer(title="napari-cryo: ab initio reconstruction")
    viewer.window._qt_window.resize(1500, 1000)
    widget = ReconstructionWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Ab initio reconstruction", area="right")
    widget._star.value = work / "set" / "particles.star"
    widget._minutes.value = 2.0
    widget._out.value = work / "run"
    widget._map_every.value = 0.2
    widget.start()
    while ("reconstruction" not in viewer.layers or len(widget.history) < 6) and widget.worker is not None:
        QApplication.processEvents()
        time.sleep(0.05)
    save(viewer.screenshot(canvas_only=False, flash=False), "reconstruction_running.png")
    wait(widget)
    viewer.layers["reconstruction"].rendering = "iso"
    viewer.layers["reconstruction"].iso_threshold = float(np.percentile(viewer.layers["reconstruction"].data, 97))
    wait(widget)
    save(viewer.screenshot(canvas_only=False, flash=False), "reconstruction_final.png")
    viewer.close()


if __name__ == "__main__":
    import sys

    targets = sys.argv[1:] or ["picking", "squares", "segmentation", "reconstruction"]
    for name in targets:
        globals()[name]()
