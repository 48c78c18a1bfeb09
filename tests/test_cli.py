import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from napari_cryo.cli import main
from napari_cryo.io.mrc import read_mrc, write_mrc
from napari_cryo.io.star import particle_table, read_coordinates


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_info_mrc(capsys, testdata):
    code, out, _ = run(capsys, "info", str(testdata / "mrc" / "EMD-3001.map"))
    assert code == 0
    assert "mapc=3, mapr=1, maps=2" in out and "73, 25, 43" in out and "extended header bytes" in out


def test_info_json(capsys, testdata):
    code, out, _ = run(capsys, "info", "--json", str(testdata / "mrc" / "EMD-3197.map"))
    summary = json.loads(out)
    assert code == 0 and summary["shape"] == [20, 20, 20]
    assert summary["voxel_size_A"]["x"] == pytest.approx(11.4)
    assert summary["origin_A"]["x"] == pytest.approx(-22.8)


def test_info_star_files(capsys, testdata):
    code, out, _ = run(capsys, "info", "--json", str(testdata / "star" / "relion31.6opticsgroups.star"))
    summary = json.loads(out)
    assert code == 0 and summary["particles"] == 139 and summary["optics_groups"] == 6
    assert summary["euler_angles"] is True
    for path in sorted((testdata / "star").rglob("*.star")):
        code, out, err = run(capsys, "info", str(path))
        # the napari reader refuses these two (an empty coordinate loop; stacks not beside the file), so info does too
        refused = path.name in {"empty_loop.star", "toy_projections.star"}
        assert code == (2 if refused else 0), (path, err)
        assert ("block" in out) != refused


@pytest.mark.parametrize(
    "name, message",
    [("mrc/emd_3197.png", "unknown file type"), ("star/missing.star", "file not found")],
)
def test_info_bad_input_one_line_exit_2(capsys, testdata, name, message):
    code, out, err = run(capsys, "info", str(testdata / name))
    assert code == 2 and message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_info_truncated(capsys, testdata, tmp_path):
    bad = tmp_path / "cut.mrc"
    bad.write_bytes((testdata / "mrc" / "EMD-3197.map").read_bytes()[:1500])
    code, _, err = run(capsys, "info", str(bad))
    assert code == 2 and "cut.mrc: file is truncated" in err


def test_convert_mrc_pixel_size(capsys, testdata, tmp_path):
    out = tmp_path / "out.mrc"
    code, _, err = run(capsys, "convert", str(testdata / "mrc" / "EMD-3197.map"), str(out), "--pixel-size", "5.7")
    assert code == 0, err
    data, info = read_mrc(out)
    ref, ref_info = read_mrc(testdata / "mrc" / "EMD-3197.map")
    np.testing.assert_array_equal(data, ref)
    assert info.voxel_size == pytest.approx((5.7, 5.7, 5.7))
    assert info.nstart == ref_info.nstart  # the origin keeps its meaning in voxels
    # exists: refused, untouched
    before = out.read_bytes()
    code, _, err = run(capsys, "convert", str(testdata / "mrc" / "EMD-3197.map"), str(out), "--pixel-size", "1")
    assert code == 2 and "--overwrite" in err and out.read_bytes() == before
    code, _, _ = run(capsys, "convert", str(testdata / "mrc" / "EMD-3197.map"), str(out), "--pixel-size", "1", "--overwrite")
    assert code == 0 and read_mrc(out)[1].voxel_size == pytest.approx((1, 1, 1))


def test_convert_mrc_reorders_axes(capsys, testdata, tmp_path):
    out = tmp_path / "std.mrc"
    assert run(capsys, "convert", str(testdata / "mrc" / "EMD-3001.map.bz2"), str(out))[0] == 0
    data, info = read_mrc(out)
    ref, ref_info = read_mrc(testdata / "mrc" / "EMD-3001.map")
    assert info.axis_order == (1, 2, 3)
    np.testing.assert_array_equal(data, ref)
    np.testing.assert_allclose(info.voxel_size, ref_info.voxel_size, rtol=1e-6)
    np.testing.assert_allclose(info.origin, ref_info.origin, rtol=1e-5)


def test_convert_zero_cell_needs_pixel_size(capsys, testdata, tmp_path):
    code, _, err = run(capsys, "convert", str(testdata / "particles" / "empiar_10076_7.mrc"), str(tmp_path / "o.mrc"))
    assert code == 2 and "--pixel-size" in err and not (tmp_path / "o.mrc").exists()


def test_convert_nan_writes_nothing(capsys, tmp_path):
    import mrcfile

    data = np.ones((3, 8, 8), np.float32)
    data[1, 1, 1] = np.nan
    with mrcfile.new(tmp_path / "nan.mrc") as m:
        m.set_data(data)
        m.voxel_size = 1.0
    code, _, err = run(capsys, "convert", str(tmp_path / "nan.mrc"), str(tmp_path / "out.mrc"))
    assert code == 2 and "NaN" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nan.mrc"]


@pytest.mark.parametrize("layout, version", [("3.0", "3.0"), ("3.1", "3.1+")])
def test_convert_star_layouts(capsys, testdata, tmp_path, layout, version):
    src = testdata / "star" / "relion31.6opticsgroups.star"
    out = tmp_path / "out.star"
    code, _, err = run(capsys, "convert", str(src), str(out), "--layout", layout)
    assert code == 0, err
    assert particle_table(out).version == version
    a, b = read_coordinates(src), read_coordinates(out)
    np.testing.assert_allclose(np.concatenate([c.points for c in a]), np.concatenate([c.points for c in b]), atol=1e-4)


def test_convert_mismatched_types(capsys, testdata, tmp_path):
    code, _, err = run(capsys, "convert", str(testdata / "mrc" / "EMD-3197.map"), str(tmp_path / "x.star"))
    assert code == 2 and "cannot convert MRC" in err


def test_star_missing_column_exit_2(capsys, tmp_path):
    p = tmp_path / "bad.star"
    p.write_text("data_\nloop_\n_rlnCoordinateX\n_rlnCoordinateY\n1 2\n3 x\n")
    code, _, err = run(capsys, "convert", str(p), str(tmp_path / "out.star"))
    assert code == 2 and "non-numeric" in err and not (tmp_path / "out.star").exists()


def test_console_script_no_traceback(testdata, tmp_path):
    exe = shutil.which("napari-cryo")
    cmd = [exe] if exe else [sys.executable, "-m", "napari_cryo.cli"]
    bad = tmp_path / "bad.mrc"
    bad.write_bytes(b"\0" * 2000)
    result = subprocess.run([*cmd, "info", str(bad)], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    ok = subprocess.run([*cmd, "--help"], capture_output=True, text=True)
    assert ok.returncode == 0 and "info" in ok.stdout and "convert" in ok.stdout and "demo" in ok.stdout


def test_demo_refuses_non_empty_dir(capsys, tmp_path):
    (tmp_path / "x").write_text("keep me")
    code, _, err = run(capsys, "demo", "--out", str(tmp_path))
    assert code == 2 and "not empty" in err and (tmp_path / "x").read_text() == "keep me"


def test_write_then_info(capsys, tmp_path):
    write_mrc(tmp_path / "s.mrcs", np.zeros((3, 4, 4), np.float32), 2.0)
    code, out, _ = run(capsys, "info", "--json", str(tmp_path / "s.mrcs"))
    assert json.loads(out)["kind"] == "stack"
