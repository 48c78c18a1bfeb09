import shutil

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile

from napari_cryo.errors import CryoInputError
from napari_cryo.io.layers import star_layer_data
from napari_cryo.io.particles import ParticleStack, parse_image_names, resolve_stack_path
from napari_cryo.io.star import particle_table
from napari_cryo.synthetic import simulate_particles, write_particle_dataset


def test_relion31_stack_resolved_by_file_name(relion31_dataset, testdata):
    table = starfile.read(relion31_dataset)["particles"]
    stack = ParticleStack(relion31_dataset)
    assert len(stack) == 5 and stack.image_shape == (256, 256)
    assert stack.pixel_size == pytest.approx(2.806)
    with mrcfile.open(testdata / "particles" / "relion31.mrcs", permissive=True) as m:
        ref = np.asarray(m.data)
    idx = [int(n.split("@")[0]) - 1 for n in table["rlnImageName"]]
    np.testing.assert_array_equal(stack.read(range(5)), ref[idx])
    np.testing.assert_array_equal(np.asarray(stack.as_dask(chunk=2)), ref[idx])


def test_relion30_stack_pixel_size_from_detector(tmp_path, testdata):
    for name in ("empiar_10076_7.star", "empiar_10076_7.mrc"):
        shutil.copy(testdata / "particles" / name, tmp_path / name)
    stack = ParticleStack(tmp_path / "empiar_10076_7.star")
    assert len(stack) == 7
    assert stack.pixel_size == pytest.approx(5 * 1e4 / 38168)
    layers = star_layer_data(tmp_path / "empiar_10076_7.star")
    (data, kwargs, kind), = layers
    assert kind == "image" and data.shape == (7, 320, 320)
    assert kwargs["scale"][1] == pytest.approx(5 * 1e4 / 38168)
    assert len(kwargs["metadata"]["star_table"]) == 7


def test_toy_projections_with_extra_column(tmp_path, testdata):
    shutil.copy(testdata / "star" / "toy_projections.star", tmp_path)
    shutil.copy(testdata / "particles" / "toy_projections.mrcs", tmp_path)
    (data, kwargs, _), = star_layer_data(tmp_path / "toy_projections.star")
    assert data.shape == (1000, 30, 30)
    assert "_dummyVariable" in kwargs["metadata"]["star_table"].columns or "dummyVariable" in kwargs["metadata"]["star_table"].columns


def test_missing_stack_is_a_clear_error(testdata):
    with pytest.raises(CryoInputError, match=r"toy_projections.star: referenced stack 'toy_projections.mrcs' not found"):
        star_layer_data(testdata / "star" / "toy_projections.star")


def test_missing_stack_with_coordinates_falls_back_to_points(testdata):
    layers = star_layer_data(testdata / "star" / "relion31.star")
    assert {kind for _, _, kind in layers} <= {"points", "vectors"}
    notes = layers[0][1]["metadata"]["notes"]
    assert any("particle images not opened" in n for n in notes)


def test_index_past_end_of_stack(relion31_dataset):
    blocks = starfile.read(relion31_dataset)
    blocks["particles"].loc[0, "rlnImageName"] = "000009@relion31.mrcs"
    starfile.write(blocks, relion31_dataset, overwrite=True)
    with pytest.raises(CryoInputError, match="image 9 of relion31.mrcs requested, the stack has 5"):
        ParticleStack(relion31_dataset)


def test_inconsistent_image_sizes(tmp_path):
    for name, size in (("a.mrcs", 16), ("b.mrcs", 20)):
        with mrcfile.new(tmp_path / name) as m:
            m.set_data(np.zeros((2, size, size), np.float32))
    df = pd.DataFrame({"rlnImageName": ["1@a.mrcs", "1@b.mrcs"]})
    starfile.write(df, tmp_path / "p.star")
    with pytest.raises(CryoInputError, match="different image sizes"):
        ParticleStack(tmp_path / "p.star")


def test_bad_image_names(tmp_path):
    with pytest.raises(CryoInputError, match="not of the form N@stack"):
        parse_image_names(pd.Series(["x@a.mrcs"]), tmp_path / "p.star")
    with pytest.raises(CryoInputError, match="start at 1"):
        parse_image_names(pd.Series(["0@a.mrcs"]), tmp_path / "p.star")
    index, names = parse_image_names(pd.Series(["3@a.mrcs", "single.mrc"]), tmp_path / "p.star")
    assert list(index) == [2, 0] and list(names) == ["a.mrcs", "single.mrc"]


def test_project_relative_paths(tmp_path):
    (tmp_path / "Extract" / "job007").mkdir(parents=True)
    (tmp_path / "Select" / "job009").mkdir(parents=True)
    with mrcfile.new(tmp_path / "Extract" / "job007" / "mic1.mrcs") as m:
        m.set_data(np.arange(2 * 8 * 8, dtype=np.float32).reshape(2, 8, 8))
    star = tmp_path / "Select" / "job009" / "particles.star"
    starfile.write(pd.DataFrame({"rlnImageName": ["2@Extract/job007/mic1.mrcs"]}), star)
    assert resolve_stack_path("Extract/job007/mic1.mrcs", star) == tmp_path / "Extract" / "job007" / "mic1.mrcs"
    np.testing.assert_array_equal(ParticleStack(star)[0], np.arange(64, 128).reshape(8, 8))


def test_nan_particles_are_refused(tmp_path):
    parts = simulate_particles(n=8, box=16, seed=3)
    parts.images[0, 3, 3] = np.nan
    with pytest.raises(CryoInputError, match="NaN"):
        write_particle_dataset(tmp_path, parts)
    assert not (tmp_path / "particles.star").exists() and not (tmp_path / "particles.mrcs").exists()


def test_synthetic_dataset_round_trip(tmp_path):
    parts = simulate_particles(n=12, box=24, pixel_size=4.0, seed=1)
    star = write_particle_dataset(tmp_path, parts)
    pt = particle_table(star)
    assert pt.version == "3.1+"
    stack = ParticleStack(star)
    np.testing.assert_allclose(stack.read(range(12)), parts.images)
    assert stack.pixel_size == 4.0
    np.testing.assert_allclose(pt.table["rlnAngleTilt"].to_numpy(), parts.table["rlnAngleTilt"].to_numpy(), atol=1e-5)
