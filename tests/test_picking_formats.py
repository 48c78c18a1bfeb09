"""Micrographs as TIFF, PNG and JPEG (denoiser and viewer exports) pick like the MRC they came from."""

from __future__ import annotations

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
from scipy.spatial import cKDTree

from napari_cryo.cli import main
from napari_cryo.errors import CryoInputError
from napari_cryo.io.mrc import write_mrc
from napari_cryo.io.star import read_coordinates
from napari_cryo.picking.data import load_micrograph
from napari_cryo.synthetic import simulate_micrograph


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _eight_bit(image: np.ndarray) -> np.ndarray:
    """The 8-bit export a viewer would write: the 0.5-99.5 % range stretched over 0-255."""
    lo, hi = np.percentile(image, [0.5, 99.5])
    return np.clip(np.round((image - lo) / (hi - lo) * 255), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    root = tmp_path_factory.mktemp("formats")
    image = simulate_micrograph(shape=(512, 512), pixel_size=3.0, diameter=150, n_particles=40, seed=7).image
    write_mrc(root / "mic.mrc", image, 3.0)
    grey = _eight_bit(image)
    (root / "png").mkdir()
    iio.imwrite(root / "png" / "mic.png", grey)
    (root / "jpg").mkdir()
    iio.imwrite(root / "jpg" / "mic.jpg", grey, quality=90)
    (root / "rgb").mkdir()
    iio.imwrite(root / "rgb" / "mic.png", np.repeat(grey[..., None], 3, axis=2))
    (root / "tif").mkdir()
    tifffile.imwrite(root / "tif" / "mic.tif", image.astype(np.float32))
    return root


def _picks(capsys, micrograph, out):
    code, _, err = _run(capsys, "pick", "run", micrograph, "--diameter", 150, "--pixel-size", 3, "--threshold", 0.3, "--out", out)
    assert code == 0, err
    (picks,) = read_coordinates(next(out.glob("*_picks.star")))
    return picks.points


@pytest.mark.parametrize("kind", ["png", "jpg", "rgb", "tif"])
def test_exports_pick_like_the_mrc(capsys, exports, tmp_path, kind):
    reference = _picks(capsys, exports / "mic.mrc", tmp_path / "mrc")
    picks = _picks(capsys, next((exports / kind).iterdir()), tmp_path / kind)
    assert len(reference) >= 10
    # the same particles, within 5 px (a tenth of the 50-px diameter): an 8-bit export loses almost nothing
    dist, _ = cKDTree(reference).query(picks)
    found, _ = cKDTree(picks).query(reference)
    assert np.mean(found < 5) >= 0.85 and np.mean(dist < 5) >= 0.85, (len(reference), len(picks))


def test_colour_is_reduced_to_luminance_and_values_kept(exports):
    grey = load_micrograph(exports / "png" / "mic.png", 3.0)
    rgb = load_micrograph(exports / "rgb" / "mic.png", 3.0)
    assert grey.image.shape == rgb.image.shape == (512, 512)
    np.testing.assert_allclose(rgb.image, grey.image, atol=1e-3)


def test_an_image_without_pixel_size_is_one_line(capsys, exports, tmp_path):
    code, _, err = _run(capsys, "pick", "run", exports / "png" / "mic.png", "--diameter", 150, "--out", tmp_path / "o")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "mic.png" in lines[0] and "--pixel-size" in lines[0], err


def test_bad_images_are_refused_by_name(tmp_path):
    pages = tmp_path / "pages.tif"
    tifffile.imwrite(pages, np.zeros((3, 32, 32), np.float32))
    damaged = tmp_path / "damaged.png"
    damaged.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    for path, problem in ((pages, "single 2D image"), (damaged, "cannot be read as an image"), (tmp_path / "absent.jpg", "not found")):
        with pytest.raises(CryoInputError, match=problem) as caught:
            load_micrograph(path, 3.0)
        assert str(path) in str(caught.value)
