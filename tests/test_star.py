from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import starfile

from napari_cryo.errors import CryoInputError
from napari_cryo.io.star import (
    convert_star_layout,
    particle_table,
    read_coordinates,
    read_star,
    sniff_star,
    write_coordinates,
)


def all_star_files(testdata: Path) -> list[Path]:
    return sorted((testdata / "star").rglob("*.star")) + sorted((testdata / "particles").glob("*.star"))


def test_every_testdata_star_file_parses(testdata):
    files = all_star_files(testdata)
    assert len(files) >= 20
    for path in files:
        blocks = read_star(path)
        assert blocks, path


def test_relion30_detector_pixel_size(testdata):
    sets = read_coordinates(testdata / "star" / "FinalRefinement-OriginalParticles-PfCRT.star")
    px = {cs.pixel_size for cs in sets}
    table = starfile.read(testdata / "star" / "FinalRefinement-OriginalParticles-PfCRT.star")
    expected = table["rlnDetectorPixelSize"].iloc[0] * 1e4 / table["rlnMagnification"].iloc[0]
    assert len(px) == 1 and px.pop() == pytest.approx(expected)


def test_relion31_optics_before_and_after(testdata):
    a = read_coordinates(testdata / "star" / "relion31.star")
    b = read_coordinates(testdata / "star" / "relion31.v2.star")
    assert len(a) == len(b)
    for ca, cb in zip(a, b):
        np.testing.assert_allclose(ca.points, cb.points)
        # Coordinates run to X = 3406 on a K2 micrograph: movie pixels (1.403 Å), not the
        # rescaled particle pixels (2.806 Å) of rlnImagePixelSize.
        assert ca.pixel_size == cb.pixel_size == pytest.approx(1.403)


def test_six_optics_groups_pixel_size_per_particle(testdata):
    path = testdata / "star" / "relion31.6opticsgroups.star"
    blocks = starfile.read(path)
    optics, particles = blocks["optics"], blocks["particles"]
    sets = read_coordinates(path)
    assert len(sets) == particles["rlnMicrographName"].nunique()  # one layer per micrograph
    lookup = dict(zip(optics["rlnOpticsGroup"], optics["rlnMicrographPixelSize"]))
    for cs in sets:
        rows = particles[particles["rlnMicrographName"] == cs.name]
        assert cs.pixel_size == pytest.approx(lookup[rows["rlnOpticsGroup"].iloc[0]])
        # Refined origins (Å) are taken off the picked coordinates, in micrograph pixels.
        expected_x = rows["rlnCoordinateX"].to_numpy() - rows["rlnOriginXAngst"].to_numpy() / cs.pixel_size
        np.testing.assert_allclose(cs.points[:, 1], expected_x)
        assert "rlnOriginXAngst" not in cs.features.columns
        assert "rlnAutopickFigureOfMerit" in cs.features.columns
        assert cs.euler_angles() is not None


def test_3d_coordinates(testdata):
    sets = read_coordinates(testdata / "star" / "one_loop.star")
    table = starfile.read(testdata / "star" / "one_loop.star")
    points = np.concatenate([cs.points for cs in sets])
    assert points.shape == (len(table), 3)
    np.testing.assert_allclose(np.sort(points[:, 0]), np.sort(table["rlnCoordinateZ"].to_numpy(float)))


def test_sniffer(testdata):
    assert "rlnCoordinateX" in sniff_star(testdata / "star" / "relion31.star")
    assert sniff_star(testdata / "mrc" / "emd_3197.png") == set()
    assert "rlnCoordinateX" not in sniff_star(testdata / "star" / "postprocess.star")


def _write_star(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_missing_coordinate_column(tmp_path):
    p = _write_star(tmp_path / "x.star", "data_\nloop_\n_rlnCoordinateX\n_rlnAutopickFigureOfMerit\n1 0.5\n2 0.6\n")
    with pytest.raises(CryoInputError, match="lacks coordinate column.*rlnCoordinateY"):
        read_coordinates(p)


def test_non_numeric_value(tmp_path):
    p = _write_star(tmp_path / "x.star", "data_\nloop_\n_rlnCoordinateX\n_rlnCoordinateY\n1 2\nabc 4\n")
    with pytest.raises(CryoInputError, match=r"x.star: column rlnCoordinateX has a non-numeric value 'abc' in row 2"):
        read_coordinates(p)


def test_empty_loop(testdata):
    with pytest.raises(CryoInputError, match="no rows"):
        read_coordinates(testdata / "star" / "empty_loop.star")


def test_no_coordinates(testdata):
    with pytest.raises(CryoInputError, match="no particle coordinates"):
        particle_table(testdata / "star" / "postprocess.star")


def test_binary_file_is_not_star(testdata, tmp_path):
    p = tmp_path / "fake.star"
    p.write_bytes((testdata / "mrc" / "emd_3197.png").read_bytes())
    with pytest.raises(CryoInputError, match="fake.star"):
        read_star(p)


def test_text_without_blocks(tmp_path):
    p = _write_star(tmp_path / "t.star", "hello world\n")
    with pytest.raises(CryoInputError, match="no data_ block"):
        read_star(p)


def _features(n: int, rng) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "rlnAutopickFigureOfMerit": rng.random(n),
            "rlnClassNumber": rng.integers(1, 5, n),
            "rlnMicrographName": [f"mic_{i % 2}.mrc" for i in range(n)],
            "score": rng.normal(size=n) * 1e-7,
        }
    )


@pytest.mark.parametrize("layout", ["3.1", "3.0"])
@pytest.mark.parametrize("ndim", [2, 3])
def test_points_star_points_is_exact(tmp_path, rng, layout, ndim):
    n = 25
    points = rng.uniform(0, 4000, (n, ndim)) + rng.random((n, ndim)) * 1e-9
    feats = _features(n, rng).drop(columns="rlnMicrographName")
    path = write_coordinates(tmp_path / "p.star", points, feats, 1.0765432123, layout=layout, micrograph_name="mic.mrc")
    (cs,) = read_coordinates(path)
    np.testing.assert_array_equal(cs.points, points)
    assert cs.pixel_size == 1.0765432123
    for column in feats.columns:
        np.testing.assert_array_equal(cs.features[column].to_numpy(), feats[column].to_numpy())
    assert cs.name == "mic.mrc"
    blocks = read_star(path)
    assert (("optics" in blocks) and ("particles" in blocks)) == (layout == "3.1")


def test_write_refuses_overwrite_and_bad_values(tmp_path):
    path = write_coordinates(tmp_path / "p.star", np.zeros((2, 2)), None, 1.0)
    with pytest.raises(CryoInputError, match="already exists"):
        write_coordinates(path, np.ones((2, 2)), None, 1.0)
    with pytest.raises(CryoInputError, match="finite"):
        write_coordinates(tmp_path / "q.star", np.array([[np.nan, 1.0]]), None, 1.0)
    assert not (tmp_path / "q.star").exists()


@pytest.mark.parametrize("source", ["FinalRefinement-OriginalParticles-PfCRT.star", "relion31.6opticsgroups.star", "relion31.star"])
def test_layout_conversion_keeps_particles(testdata, tmp_path, source):
    src = testdata / "star" / source
    before = read_coordinates(src)
    convert_star_layout(src, tmp_path / "v30.star", "3.0")
    convert_star_layout(tmp_path / "v30.star", tmp_path / "v31.star", "3.1")
    for path, version in ((tmp_path / "v30.star", "3.0"), (tmp_path / "v31.star", "3.1+")):
        assert particle_table(path).version == version
        after = read_coordinates(path)
        assert [c.name for c in after] == [c.name for c in before]
        for a, b in zip(before, after):
            np.testing.assert_allclose(a.points, b.points, atol=1e-4)
            assert a.pixel_size == pytest.approx(b.pixel_size, rel=1e-5)


def test_many_micrographs_in_one_file(tmp_path, rng):
    n = 40
    points = rng.uniform(0, 100, (n, 2))
    feats = pd.DataFrame({"rlnMicrographName": [f"m{i}.mrc" for i in range(n)]})
    path = write_coordinates(tmp_path / "many.star", points, feats, 2.0)
    sets = read_coordinates(path)
    assert len(sets) == n and all(len(cs.points) == 1 for cs in sets)


def test_relion5_centred_coordinates(tmp_path):
    tomos = pd.DataFrame(
        {"rlnTomoName": ["TS_01"], "rlnTomoSizeX": [4000], "rlnTomoSizeY": [4000], "rlnTomoSizeZ": [1000],
         "rlnTomoTiltSeriesPixelSize": [1.5], "rlnTomoTomogramBinning": [4.0]}
    )
    starfile.write({"global": tomos}, tmp_path / "tomograms.star")
    optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnTomoTiltSeriesPixelSize": [1.5]})
    parts = pd.DataFrame(
        {"rlnTomoName": ["TS_01"] * 2, "rlnCenteredCoordinateXAngst": [0.0, 150.0],
         "rlnCenteredCoordinateYAngst": [0.0, -300.0], "rlnCenteredCoordinateZAngst": [0.0, 60.0],
         "rlnOpticsGroup": [1, 1]}
    )
    starfile.write({"optics": optics, "particles": parts}, tmp_path / "particles.star")
    (cs,) = read_coordinates(tmp_path / "particles.star")
    # pixel = (Å / tilt-series pixel + size / 2) / binning, as RELION 5 computes it
    np.testing.assert_allclose(cs.points[0], [500 / 4, 2000 / 4, 2000 / 4])
    np.testing.assert_allclose(cs.points[1], [(40 + 500) / 4, (-200 + 2000) / 4, (100 + 2000) / 4])
    assert cs.pixel_size == pytest.approx(6.0)
    (tmp_path / "tomograms.star").unlink()
    (cs,) = read_coordinates(tmp_path / "particles.star")
    assert any("relative to the tomogram centre" in n for n in cs.notes)


def test_the_same_table_writes_the_same_bytes(tmp_path):
    import time

    from napari_cryo.io.star import write_star

    table = pd.DataFrame({"rlnCoordinateX": [1.5, 2.0], "rlnCoordinateY": [3.0, 4.25], "rlnMicrographName": ["a.mrc", "a.mrc"]})
    first = write_star({"particles": table}, tmp_path / "a.star")
    time.sleep(1.1)  # starfile's own header carries the time of writing to the second
    second = write_star({"particles": table}, tmp_path / "b.star")
    assert first.read_bytes() == second.read_bytes()
    assert b"written by napari-cryo" in first.read_bytes()
    pd.testing.assert_frame_equal(starfile.read(first), table)
