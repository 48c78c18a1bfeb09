"""Files -> layer data -> files, through the npe2 reader and writer hooks."""

import shutil
import warnings

import numpy as np
import pandas as pd
import pytest

from napari_cryo.errors import CryoInputError
from napari_cryo.io._reader import get_mrc_reader, get_star_reader
from napari_cryo.io._writer import write_image_mrc, write_labels_mrc, write_points_star30, write_points_star31
from napari_cryo.io.layers import MAX_SPLIT_LAYERS, mrc_layer_data, star_layer_data
from napari_cryo.io.mrc import read_mrc, write_mrc
from napari_cryo.io.star import write_coordinates


def test_mrc_layer_conventions(testdata):
    (data, kw, kind), = mrc_layer_data(testdata / "mrc" / "EMD-3001.map")
    assert kind == "image" and isinstance(data, np.memmap)
    assert kw["axis_labels"] == ("z", "y", "x") and kw["units"] == ("angstrom",) * 3
    _, info = read_mrc(testdata / "mrc" / "EMD-3001.map")
    assert kw["scale"] == info.voxel_size and kw["translate"] == info.origin
    assert kw["metadata"]["mrc_header"]["mapc"] == 3
    lo, hi = kw["contrast_limits"]
    assert data.min() <= lo < hi <= data.max()


def test_stack_layer(testdata):
    (data, kw, _), = mrc_layer_data(testdata / "particles" / "toy_projections.mrcs")
    assert kw["axis_labels"] == ("image", "y", "x") and kw["units"][0] == "pixel"
    assert data.shape == (1000, 30, 30)


def test_zero_cell_gives_scale_one_with_a_note(testdata):
    (_, kw, _), = mrc_layer_data(testdata / "particles" / "empiar_10076_7.mrc")
    assert kw["scale"] == (1.0, 1.0, 1.0) and not kw["metadata"]["pixel_size_known"]
    with pytest.warns(UserWarning, match="no voxel size"):
        get_mrc_reader(str(testdata / "particles" / "empiar_10076_7.mrc"))(str(testdata / "particles" / "empiar_10076_7.mrc"))


def test_nan_volume_is_refused(tmp_path):
    data = np.zeros((6, 8, 8), np.float32)
    data[:, 2, 2] = np.nan
    import mrcfile

    with mrcfile.new(tmp_path / "nan.mrc") as m:
        m.set_data(data)
    with pytest.raises(CryoInputError, match="nan.mrc: contains NaN"):
        mrc_layer_data(tmp_path / "nan.mrc")


def test_get_reader_declines_what_it_cannot_read(testdata, tmp_path):
    assert get_mrc_reader(str(testdata / "mrc" / "emd_3197.png")) is None
    fake = tmp_path / "fake.mrc"
    shutil.copy(testdata / "mrc" / "emd_3197.png", fake)
    assert get_mrc_reader(str(fake)) is None
    assert get_star_reader(str(testdata / "star" / "default_pipeline.star")) is None
    assert get_star_reader(str(fake)) is None
    assert get_mrc_reader([str(testdata / "mrc" / "EMD-3197.map"), str(fake)]) is None
    reader = get_mrc_reader([str(testdata / "mrc" / "EMD-3197.map"), str(testdata / "mrc" / "emd_3197.map.gz")])
    assert len(reader([str(testdata / "mrc" / "EMD-3197.map"), str(testdata / "mrc" / "emd_3197.map.gz")])) == 2


def test_every_testdata_file_opens_or_is_declined(testdata):
    """Every real file opens, is declined, or raises the one documented clear error."""
    expected_errors = {"empty_loop.star": "no rows", "toy_projections.star": "not found"}
    for path in sorted(p for p in testdata.rglob("*") if p.is_file() and p.suffix != ".md"):
        reader = get_mrc_reader(str(path)) or get_star_reader(str(path))
        if reader is None:
            continue
        if path.name in expected_errors:
            with pytest.raises(CryoInputError, match=expected_errors[path.name]):
                reader(str(path))
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            layers = reader(str(path))
        assert layers, path
        for data, kw, kind in layers:
            assert kind in ("image", "points", "vectors")
            ndim = {"image": np.ndim(data), "points": np.shape(data)[-1], "vectors": np.shape(data)[-1]}[kind]
            assert len(kw["scale"]) == ndim, path


def test_points_layers_and_orientations(testdata):
    layers = star_layer_data(testdata / "star" / "relion31.6opticsgroups.star")
    points = [l for l in layers if l[2] == "points"]
    vectors = [l for l in layers if l[2] == "vectors"]
    assert len(points) == len(vectors) == 139 or len(points) == 1
    data, kw, _ = points[0]
    assert isinstance(kw["features"], pd.DataFrame) and "rlnClassNumber" in kw["features"].columns
    vdata, vkw, _ = vectors[0]
    assert vdata.shape == (len(data), 2, 2) and not vkw["visible"]
    np.testing.assert_allclose(vdata[:, 0], data)


def test_many_micrographs_become_one_layer(tmp_path, rng):
    n = MAX_SPLIT_LAYERS + 5
    feats = pd.DataFrame({"rlnMicrographName": [f"m{i}.mrc" for i in range(n)]})
    path = write_coordinates(tmp_path / "many.star", rng.uniform(0, 99, (n, 2)), feats, 1.5)
    layers = star_layer_data(path)
    assert len(layers) == 1
    assert list(layers[0][1]["features"]["rlnMicrographName"]) == list(feats["rlnMicrographName"])


def test_image_layer_round_trip_through_writer(testdata, tmp_path):
    (data, kw, _), = mrc_layer_data(testdata / "mrc" / "EMD-3001.map")
    out, = write_image_mrc(str(tmp_path / "copy.mrc"), data, kw)
    (data2, kw2, _), = mrc_layer_data(out)
    np.testing.assert_array_equal(data2, data)
    np.testing.assert_allclose(kw2["scale"], kw["scale"], rtol=1e-6)
    np.testing.assert_allclose(kw2["translate"], kw["translate"], rtol=1e-6, atol=1e-6)


def test_stack_writer_keeps_stack(testdata, tmp_path):
    (data, kw, _), = mrc_layer_data(testdata / "particles" / "toy_projections.mrcs")
    out, = write_image_mrc(str(tmp_path / "copy.mrcs"), data, kw)
    assert out == str(tmp_path / "copy.mrcs")
    (data2, kw2, _), = mrc_layer_data(out)
    assert kw2["axis_labels"][0] == "image"


def test_labels_writer(tmp_path):
    labels = np.zeros((5, 10, 10), np.uint32)
    labels[2, 3:6, 3:6] = 2
    out, = write_labels_mrc(str(tmp_path / "seg.mrc"), labels, {"scale": (7.0, 7.0, 7.0), "translate": (0, 0, 0)})
    data, info = read_mrc(out)
    assert info.mode == 0
    np.testing.assert_array_equal(data, labels)
    assert info.voxel_size == (7.0, 7.0, 7.0)


@pytest.mark.parametrize("writer", [write_points_star31, write_points_star30])
def test_points_layer_round_trip_through_writer(tmp_path, rng, writer):
    pts = rng.uniform(0, 512, (10, 3))
    feats = pd.DataFrame({"rlnAutopickFigureOfMerit": rng.random(10), "rlnClassNumber": np.arange(10)})
    meta = {"scale": (4.2, 4.2, 4.2), "features": feats, "metadata": {"micrograph_name": "TS_01"}}
    out, = writer(str(tmp_path / "picks.star"), pts, meta)
    (data, kw, kind), = star_layer_data(out)
    np.testing.assert_array_equal(data, pts)
    assert kw["scale"] == (4.2, 4.2, 4.2)
    pd.testing.assert_frame_equal(kw["features"][feats.columns], feats, check_dtype=False)


def test_points_writer_refuses_anisotropic(tmp_path):
    with pytest.raises(CryoInputError, match="one pixel size"):
        write_points_star31(str(tmp_path / "p.star"), np.zeros((2, 2)), {"scale": (1.0, 2.0)})


def test_writer_hook_replaces_existing_file(tmp_path):
    write_mrc(tmp_path / "x.mrc", np.zeros((4, 4), np.float32), 1.0)
    write_image_mrc(str(tmp_path / "x.mrc"), np.ones((4, 4), np.float32), {"scale": (2.0, 2.0)})
    assert read_mrc(tmp_path / "x.mrc")[0].max() == 1.0
