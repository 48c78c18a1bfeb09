"""Edge cases found in review: each once gave a wrong result or a traceback."""

import numpy as np
import pandas as pd
import pytest
import starfile

from napari_cryo.cli import main
from napari_cryo.errors import CryoInputError
from napari_cryo.io._reader import get_star_reader
from napari_cryo.io._writer import write_image_mrc, write_points_star31
from napari_cryo.io.mrc import read_header, read_mrc, write_mrc
from napari_cryo.io.star import convert_star_layout, read_coordinates, read_star, write_coordinates


def test_ispg0_volume_with_full_cell_is_a_volume(testdata):
    info = read_header(testdata / "particles" / "spike-vol.mrc")
    assert info.kind == "volume" and info.voxel_size == (8.0, 8.0, 8.0)


def test_tilt_series_suffix_is_a_stack(tmp_path):
    write_mrc(tmp_path / "ts.mrc", np.zeros((5, 8, 8), np.float32), 2.0)  # a volume header (ispg 1)
    (tmp_path / "ts.mrc").rename(tmp_path / "ts.st")
    assert read_header(tmp_path / "ts.st").kind == "stack"


def test_single_section_with_permuted_axes(tmp_path):
    import mrcfile

    path = tmp_path / "xz.mrc"
    with mrcfile.new(path) as m:
        m.set_data(np.arange(12, dtype=np.float32).reshape(1, 3, 4))
        m.header.mapc, m.header.mapr, m.header.maps = 1, 3, 2  # rows are Z, sections are Y
    data, info = read_mrc(path)
    assert data.shape == (3, 1, 4) and info.kind == "volume"
    np.testing.assert_array_equal(data[:, 0, :], np.arange(12).reshape(3, 4))


def test_imod_unsigned_bytes(tmp_path):
    path = tmp_path / "imod.mrc"
    write_mrc(path, np.zeros((2, 4, 4)), 1.0, labels=True)
    raw = bytearray(path.read_bytes())
    raw[152:156] = np.int32(1146047817).tobytes()
    raw[156:160] = np.int32(0).tobytes()  # bit 0 clear: unsigned
    raw[1024] = 200
    path.write_bytes(bytes(raw))
    data, info = read_mrc(path)
    assert data.dtype == np.uint8 and data[0, 0, 0] == 200


def test_writer_refuses_a_name_without_its_extension(tmp_path):
    # napari asked the user about exactly this path: the writer must not write another one
    (tmp_path / "map_2.5A.mrc").write_bytes(b"keep")
    with pytest.raises(CryoInputError, match="has no MRC extension"):
        write_image_mrc(str(tmp_path / "map_2.5A"), np.zeros((4, 4), np.float32), {"scale": (1.0, 1.0)})
    with pytest.raises(CryoInputError, match="has no STAR extension"):
        write_points_star31(str(tmp_path / "run.v1"), np.zeros((1, 2)), {"scale": (1.0, 1.0)})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["map_2.5A.mrc"]
    assert (tmp_path / "map_2.5A.mrc").read_bytes() == b"keep"


def test_empty_pick_list_round_trip(tmp_path):
    path = write_points_star31(str(tmp_path / "none.star"), np.zeros((0, 2)), {"scale": (2.0, 2.0)})[0]
    (cs,) = read_coordinates(path)
    assert cs.points.shape == (0, 2) and cs.pixel_size == 2.0


def test_bad_optics_group_is_a_clear_error(tmp_path, capsys):
    p = tmp_path / "g.star"
    p.write_text(
        "data_optics\nloop_\n_rlnOpticsGroup\n_rlnImagePixelSize\n1 1.0\n2 2.0\n\n"
        "data_particles\nloop_\n_rlnCoordinateX\n_rlnCoordinateY\n_rlnOpticsGroup\n1 2 abc\n"
    )
    with pytest.raises(CryoInputError, match="rlnOpticsGroup has a non-numeric value 'abc'"):
        read_coordinates(p)
    capsys.readouterr()
    assert main(["info", str(p)]) == 2  # info validates what the reader validates
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(p) in err[0] and "abc" in err[0], err
    capsys.readouterr()


def test_zero_magnification_is_refused(tmp_path):
    p = tmp_path / "m.star"
    p.write_text("data_\nloop_\n_rlnCoordinateX\n_rlnCoordinateY\n_rlnDetectorPixelSize\n_rlnMagnification\n1 2 5 0\n")
    with pytest.raises(CryoInputError, match="pixel size is missing, zero, infinite"):
        read_coordinates(p)


def test_awkward_strings_survive(tmp_path):
    names = ["my data/mic 1.mrc", "#c", "loop_x", "_rlnFoo", "data_x", "plain.mrc"]
    feats = pd.DataFrame({"rlnMicrographName": names, "note": names})
    path = write_coordinates(tmp_path / "s.star", np.arange(12.0).reshape(6, 2), feats, 1.0)
    sets = read_coordinates(path)
    assert [cs.name for cs in sets] == names
    assert [str(cs.features["note"].iloc[0]) for cs in sets] == names


def test_sniffer_reads_past_long_optics_blocks(tmp_path):
    optics = pd.DataFrame({"rlnOpticsGroup": np.arange(1, 451), "rlnImagePixelSize": 1.0})
    parts = pd.DataFrame({"rlnCoordinateX": [1.0], "rlnCoordinateY": [2.0], "rlnOpticsGroup": [3]})
    starfile.write({"optics": optics, "particles": parts}, tmp_path / "afis.star")
    assert get_star_reader(str(tmp_path / "afis.star")) is not None
    bom = tmp_path / "bom.star"
    bom.write_bytes(b"\xef\xbb\xbf" + (tmp_path / "afis.star").read_bytes())
    assert get_star_reader(str(bom)) is not None


def test_layout_conversion_converts_origins(tmp_path):
    p = tmp_path / "v30.star"
    p.write_text(
        "data_\nloop_\n_rlnCoordinateX\n_rlnCoordinateY\n_rlnOriginX\n_rlnOriginY\n_rlnDetectorPixelSize\n_rlnMagnification\n"
        "100 200 2 -4 5 50000\n"
    )
    before = read_coordinates(p)[0].points
    convert_star_layout(p, tmp_path / "v31.star", "3.1")
    blocks = read_star(tmp_path / "v31.star")
    assert "rlnOriginXAngst" in blocks["particles"] and "rlnOriginX" not in blocks["particles"]
    assert blocks["particles"]["rlnOriginXAngst"].iloc[0] == pytest.approx(2.0)  # 2 px * 1 Å/px
    np.testing.assert_allclose(read_coordinates(tmp_path / "v31.star")[0].points, before)
    convert_star_layout(tmp_path / "v31.star", tmp_path / "back.star", "3.0")
    np.testing.assert_allclose(read_coordinates(tmp_path / "back.star")[0].points, before)


def test_non_utf8_is_named(tmp_path):
    p = tmp_path / "latin.star"
    p.write_bytes("data_\nloop_\n_rlnMicrographName\n_rlnCoordinateX\n_rlnCoordinateY\nmicé.mrc 1 2\n".encode("latin-1"))
    with pytest.raises(CryoInputError, match="not UTF-8"):
        read_star(p)


def test_label_nan_and_list_inputs(tmp_path):
    with pytest.raises(CryoInputError, match="NaN"):
        write_mrc(tmp_path / "l.mrc", np.full((2, 2), np.nan), 1.0, labels=True)
    write_mrc(tmp_path / "list.mrc", [[1.0, 2.0], [3.0, 4.0]], 1.0)
    assert read_mrc(tmp_path / "list.mrc")[0].shape == (2, 2)


def test_cli_rejects_infinite_pixel_size(testdata, tmp_path, capsys):
    code = main(["convert", str(testdata / "mrc" / "EMD-3197.map"), str(tmp_path / "o.mrc"), "--pixel-size", "inf"])
    assert code == 2 and "--pixel-size" in capsys.readouterr().err
