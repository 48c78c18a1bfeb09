"""TIFF, PNG and JPEG micrographs in the picking widget: opened by napari's own reader, with no pixel size."""

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile

from napari_cryo.layer_meta import scale_is_placeholder
from napari_cryo.synthetic.micrograph import simulate_micrograph

pytestmark = pytest.mark.gui

PIXEL = 3.0


@pytest.fixture(scope="module")
def micrograph():
    return simulate_micrograph(shape=(384, 384), pixel_size=PIXEL, diameter=150, n_particles=25, carbon_fraction=0,
                               n_contamination=0, seed=3)


def _eight_bit(image):
    return np.clip(np.round((image - image.mean()) / (8 * image.std()) * 255 + 127.5), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("suffix", [".png", ".tif", ".jpg"])
def test_plain_image_needs_a_pixel_size_then_picks(make_napari_viewer, qtbot, tmp_path, micrograph, suffix, monkeypatch):
    from napari_cryo.picking import _widget

    path = tmp_path / f"mic{suffix}"
    if suffix == ".tif":
        tifffile.imwrite(path, micrograph.image)
    else:
        iio.imwrite(path, _eight_bit(micrograph.image), **({"quality": 95} if suffix == ".jpg" else {}))
    viewer = make_napari_viewer()
    [layer] = viewer.open(str(path), plugin="napari")  # napari's builtin reader: scale 1, no metadata
    assert scale_is_placeholder(layer)
    messages = []
    monkeypatch.setattr("napari_cryo._view.notify", lambda message, **kw: messages.append(message))
    widget = _widget.PickingWidget(viewer)
    widget._image.value = layer
    widget._diameter.value = 150.0

    assert widget.pick() is None  # refused, with a message naming the layer and the field
    assert messages and layer.name in messages[-1] and "pixel size (Å)" in messages[-1]
    assert f"{layer.name} picks" not in viewer.layers

    widget._pixel.value = PIXEL
    worker = widget.pick()
    with qtbot.waitSignal(worker.finished, timeout=120000):
        pass
    picks = viewer.layers[f"{layer.name} picks"]
    truth = micrograph.picks
    d = np.linalg.norm(picks.data[:, None, :] - truth[None], axis=2)
    found = np.mean(d.min(axis=0) < 150 / 4 / PIXEL)
    assert found > 0.8, f"{found:.2f} of the particles picked in the {suffix} micrograph"
    # The particle size drawn follows the pixel size given, not the placeholder scale.
    assert picks.size[0] == pytest.approx(150 / PIXEL)


def test_which_scales_are_placeholders():
    from types import SimpleNamespace as L

    assert scale_is_placeholder(L(scale=(1.0, 1.0), metadata={}))
    assert not scale_is_placeholder(L(scale=(1.0, 1.0), metadata={"pixel_size_known": True}))  # a real 1 Å file
    assert scale_is_placeholder(L(scale=(1.0, 1.0), metadata={"pixel_size_known": False}))
    assert not scale_is_placeholder(L(scale=(2.1, 2.1), metadata={}))  # another plugin's real pixel size
