"""The plugin inside a real napari viewer (headless under Xvfb)."""

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.gui

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ("atlas", "micrograph", "tomogram", "particles")


def test_manifest_is_valid_and_shipped():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_distribution("napari-cryo")
    assert manifest.name == "napari-cryo"
    packaged = Path(__import__("napari_cryo").__file__).parent / "napari.yaml"
    assert packaged.read_text() == (ROOT / "napari.yaml").read_text()
    assert {s.key for s in manifest.contributions.sample_data} == set(SAMPLES)
    npe2 = shutil.which("npe2")
    cmd = [npe2] if npe2 else [sys.executable, "-m", "npe2"]
    result = subprocess.run([*cmd, "validate", "napari-cryo"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("key", SAMPLES)
def test_samples_open_in_viewer(make_napari_viewer, key):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-cryo", key)
    assert len(viewer.layers) >= 1
    image = viewer.layers[0]
    assert image._type_string == "image"
    assert str(image.units[-1]) == "angstrom" and image.scale[-1] > 1
    for layer in viewer.layers[1:]:
        np.testing.assert_allclose(layer.scale[-2:], image.scale[-2:])


def test_open_mrc_and_star_through_napari(make_napari_viewer, testdata, relion31_dataset):
    viewer = make_napari_viewer()
    viewer.open(str(testdata / "mrc" / "EMD-3001.map"), plugin="napari-cryo")
    layer = viewer.layers["EMD-3001"]
    assert layer.data.shape == (73, 25, 43) and layer.axis_labels == ("z", "y", "x")
    viewer.open(str(relion31_dataset), plugin="napari-cryo")
    stack = viewer.layers["relion31"]
    assert stack.data.shape == (5, 256, 256)
    viewer.dims.set_point(0, 3)  # slicing reads particle 4 lazily
    viewer.open(str(testdata / "star" / "relion31.6opticsgroups.star"), plugin="napari-cryo")
    points = [l for l in viewer.layers if l._type_string == "points"]
    assert points and "rlnAutopickFigureOfMerit" in points[0].features.columns


def test_bad_file_is_declined_with_a_clear_error(make_napari_viewer, testdata, tmp_path):
    viewer = make_napari_viewer()
    fake = tmp_path / "fake.mrc"
    shutil.copy(testdata / "mrc" / "emd_3197.png", fake)
    with pytest.raises(Exception) as err:  # napari: no reader accepts it
        viewer.open(str(fake), plugin="napari-cryo")
    assert "fake.mrc" in str(err.value)
    assert len(viewer.layers) == 0


def test_save_points_and_labels_through_napari(make_napari_viewer, tmp_path):
    from napari_cryo.io.mrc import read_mrc
    from napari_cryo.io.star import read_coordinates

    viewer = make_napari_viewer()
    viewer.open_sample("napari-cryo", "micrograph")
    picks = viewer.layers["micrograph ground truth"]
    picks.features["rlnAutopickFigureOfMerit"] = np.linspace(0, 1, len(picks.data))
    out = tmp_path / "picks.star"
    viewer.layers.selection = {picks}
    written = viewer.layers.save(str(out), selected=True, plugin="napari-cryo")
    assert [Path(p) for p in written] == [out]
    (cs,) = read_coordinates(out)
    np.testing.assert_allclose(cs.points, picks.data)
    assert cs.pixel_size == pytest.approx(picks.scale[-1])
    np.testing.assert_allclose(cs.features["rlnAutopickFigureOfMerit"], picks.features["rlnAutopickFigureOfMerit"])

    junk = viewer.layers["micrograph junk (truth)"]
    viewer.layers.selection = {junk}
    written = viewer.layers.save(str(tmp_path / "junk.mrc"), selected=True, plugin="napari-cryo")
    data, info = read_mrc(written[0])
    np.testing.assert_array_equal(data, junk.data)
    assert info.pixel_size == pytest.approx(junk.scale[-1])


