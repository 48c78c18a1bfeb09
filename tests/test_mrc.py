import shutil
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from napari_cryo.errors import CryoInputError
from napari_cryo.io.mrc import read_header, read_mrc, sniff_mrc, write_mrc


def test_emd3197_header_and_origin(testdata):
    data, info = read_mrc(testdata / "mrc" / "EMD-3197.map")
    assert isinstance(data, np.memmap)
    assert data.shape == (20, 20, 20) and info.kind == "volume"
    np.testing.assert_allclose(info.voxel_size, (11.4, 11.4, 11.4), rtol=1e-6)
    # nxstart etc. = -2 with no header origin: first voxel at -2 voxels.
    assert info.nstart == (-2, -2, -2) or info.nstart[2] == -2
    np.testing.assert_allclose(info.origin, np.array(info.nstart) * 11.4, rtol=1e-6)
    with mrcfile.open(testdata / "mrc" / "EMD-3197.map", permissive=True) as ref:
        np.testing.assert_array_equal(data, ref.data)


def test_emd3001_axis_order_is_honoured(testdata):
    data, info = read_mrc(testdata / "mrc" / "EMD-3001.map")
    assert info.axis_order == (3, 1, 2)
    assert info.nsymbt == 160
    with mrcfile.open(testdata / "mrc" / "EMD-3001.map", permissive=True) as ref:
        raw = np.asarray(ref.data)  # (sections=Y, rows=X, columns=Z)
        voxel = ref.voxel_size
        starts = (int(ref.header.nxstart), int(ref.header.nystart), int(ref.header.nzstart))
    assert raw.shape == (25, 43, 73)
    np.testing.assert_array_equal(data, np.transpose(raw, (2, 0, 1)))
    assert data.shape == (73, 25, 43)
    np.testing.assert_allclose(info.voxel_size, (voxel.z, voxel.y, voxel.x), rtol=1e-6)
    # nxstart is the first column (Z here), nystart the first row (X), nzstart the first section (Y).
    assert info.nstart == (starts[0], starts[2], starts[1])


@pytest.mark.parametrize("plain, packed", [("EMD-3197.map", "emd_3197.map.gz"), ("EMD-3001.map", "EMD-3001.map.bz2")])
def test_compressed_equals_plain(testdata, plain, packed):
    a, ia = read_mrc(testdata / "mrc" / plain)
    b, ib = read_mrc(testdata / "mrc" / packed)
    assert not isinstance(b, np.memmap) and ib.compressed in ("gzip", "bzip2")
    np.testing.assert_array_equal(a, b)
    assert ia.voxel_size == ib.voxel_size and ia.origin == ib.origin


def test_png_is_declined_and_reported(testdata):
    png = testdata / "mrc" / "emd_3197.png"
    assert sniff_mrc(png) is None
    with pytest.raises(CryoInputError, match="emd_3197.png: .*not an MRC file"):
        read_mrc(png)


def test_particle_files(testdata):
    _, info = read_mrc(testdata / "particles" / "relion31.mrcs")
    assert info.kind == "stack" and info.shape == (5, 256, 256)
    _, info = read_mrc(testdata / "particles" / "empiar_10076_7.mrc")
    assert info.voxel_size == (0.0, 0.0, 0.0)  # zero cell: pixel size only in the STAR file
    data, info = read_mrc(testdata / "particles" / "spike-vol.mrc")
    assert data.shape == (128, 16, 16)


def _copy(testdata, tmp_path, name="EMD-3197.map"):
    dst = tmp_path / name
    shutil.copy(testdata / "mrc" / name, dst)
    return dst


def test_truncated_file(testdata, tmp_path):
    path = _copy(testdata, tmp_path)
    raw = path.read_bytes()
    path.write_bytes(raw[:-100])
    with pytest.raises(CryoInputError, match="truncated") as err:
        read_mrc(path)
    assert str(path) in str(err.value)
    # The sniffer still accepts it, so napari shows this message instead of 'no reader'.
    assert sniff_mrc(path) is not None


def test_header_larger_file(testdata, tmp_path):
    path = _copy(testdata, tmp_path)
    with open(path, "ab") as fh:
        fh.write(b"\0" * 64)
    with pytest.raises(CryoInputError, match="disagrees with the file size"):
        read_header(path)


def test_too_short_for_a_header(tmp_path):
    path = tmp_path / "tiny.mrc"
    path.write_bytes(b"MAP " * 10)
    with pytest.raises(CryoInputError, match="too short"):
        read_mrc(path)


def _patch_header(path: Path, offset: int, value: int):
    raw = bytearray(path.read_bytes())
    raw[offset : offset + 4] = np.int32(value).tobytes()
    path.write_bytes(bytes(raw))


def test_unknown_mode(testdata, tmp_path):
    path = _copy(testdata, tmp_path)
    _patch_header(path, 12, 7)
    with pytest.raises(CryoInputError, match="unknown MRC mode 7"):
        read_mrc(path)
    assert sniff_mrc(path) is None


def test_complex_mode_is_refused(tmp_path):
    path = tmp_path / "fft.mrc"
    with mrcfile.new(path) as m:
        m.set_data(np.zeros((4, 4, 4), dtype=np.complex64))
    with pytest.raises(CryoInputError, match="complex"):
        read_mrc(path)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(CryoInputError, match="file not found"):
        read_mrc(tmp_path / "nope.mrc")
    with pytest.raises(CryoInputError, match="directory"):
        read_mrc(tmp_path)


def test_big_endian(tmp_path, rng):
    data = rng.normal(size=(3, 5, 7)).astype(np.float32)
    path = tmp_path / "be.mrc"
    with mrcfile.new(path) as m:
        m.set_data(data.astype(">f4"))
        m.voxel_size = 2.5
    out, info = read_mrc(path)
    assert info.big_endian
    np.testing.assert_array_equal(out, data)
    out2, _ = read_mrc(path, mmap=False)
    assert out2.dtype.byteorder in ("=", "<", "|")


@pytest.mark.parametrize("shape, stack", [((32, 48), False), ((6, 32, 48), False), ((5, 16, 16), True)])
def test_write_read_round_trip(tmp_path, rng, shape, stack):
    data = rng.normal(size=shape).astype(np.float32)
    voxel = (1.5, 2.0, 2.5)[-len(shape) :] if not stack else (2.0, 2.5)
    origin = tuple(-3 * v for v in voxel)  # whole voxels -> nstart
    path = tmp_path / ("out.mrcs" if stack else "out.mrc")
    write_mrc(path, data, voxel, origin)
    back, info = read_mrc(path)
    np.testing.assert_array_equal(back, data)
    assert info.kind == ("stack" if stack else ("image" if len(shape) == 2 else "volume"))
    np.testing.assert_allclose(info.voxel_size[-len(voxel) :], voxel, rtol=1e-6)
    np.testing.assert_allclose(info.origin[-len(origin) :], origin, rtol=1e-6)
    with mrcfile.open(path) as m:  # valid for mrcfile too
        assert m.validate(print_file=open("/dev/null", "w"))


def test_fractional_origin_goes_to_origin_field(tmp_path, rng):
    data = rng.normal(size=(4, 8, 8)).astype(np.float32)
    write_mrc(tmp_path / "o.mrc", data, 1.2, (0.5, -7.3, 100.25))
    _, info = read_mrc(tmp_path / "o.mrc")
    np.testing.assert_allclose(info.origin, (0.5, -7.3, 100.25), rtol=1e-6)
    assert info.nstart == (0, 0, 0)


def test_labels_use_small_integer_modes(tmp_path):
    labels = np.zeros((4, 8, 8), dtype=np.int64)
    labels[1, 2:4, 2:4] = 3
    write_mrc(tmp_path / "l.mrc", labels, 10.0, labels=True)
    back, info = read_mrc(tmp_path / "l.mrc")
    assert info.mode == 0 and back.dtype == np.int8
    np.testing.assert_array_equal(back, labels)
    labels[0, 0, 0] = 1000
    write_mrc(tmp_path / "l2.mrc", labels, 10.0, labels=True)
    assert read_header(tmp_path / "l2.mrc").mode == 6


def test_nan_data_write_nothing(tmp_path):
    data = np.ones((3, 4, 4), dtype=np.float32)
    data[2, 1, 1] = np.nan
    with pytest.raises(CryoInputError, match="NaN"):
        write_mrc(tmp_path / "bad.mrc", data, 1.0)
    assert list(tmp_path.iterdir()) == []  # no partial or temporary file left


def test_no_overwrite_without_permission(tmp_path):
    data = np.ones((4, 4), dtype=np.float32)
    write_mrc(tmp_path / "a.mrc", data, 1.0)
    before = (tmp_path / "a.mrc").read_bytes()
    with pytest.raises(CryoInputError, match="already exists"):
        write_mrc(tmp_path / "a.mrc", data * 2, 1.0)
    assert (tmp_path / "a.mrc").read_bytes() == before
    write_mrc(tmp_path / "a.mrc", data * 2, 1.0, overwrite=True)
    np.testing.assert_array_equal(read_mrc(tmp_path / "a.mrc")[0], data * 2)


def test_failed_write_keeps_old_file(tmp_path):
    data = np.ones((3, 4, 4), dtype=np.float32)
    write_mrc(tmp_path / "keep.mrc", data, 1.0)
    bad = data.copy()
    bad[1] = np.inf
    with pytest.raises(CryoInputError):
        write_mrc(tmp_path / "keep.mrc", bad, 1.0, overwrite=True)
    np.testing.assert_array_equal(read_mrc(tmp_path / "keep.mrc")[0], data)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.mrc"]


def test_four_bit_mode(tmp_path):
    # Mode 101 packs two 4-bit values per byte, low nibble first.
    path = tmp_path / "m101.mrc"
    values = np.arange(16, dtype=np.uint8).reshape(1, 2, 8) % 16
    with mrcfile.new(path) as m:
        m.set_data(np.zeros((1, 2, 8), dtype=np.int8))
    raw = bytearray(path.read_bytes())
    raw[12:16] = np.int32(101).tobytes()
    packed = (values[..., 0::2] | (values[..., 1::2] << 4)).astype(np.uint8).tobytes()
    path.write_bytes(bytes(raw[:1024]) + packed)
    data, info = read_mrc(path)
    np.testing.assert_array_equal(data, values[0])
