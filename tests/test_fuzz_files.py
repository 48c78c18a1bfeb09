"""Property tests: damaged and crafted MRC and model files give one clear error, nothing else.

Random bytes, real MRC files from ``../shared/testdata`` with their header
fields set to random or extreme values, flipped bytes and truncated data, and
tiny valid model files (picking, squares, ``.scnm``, ``.scnmgroup``) that are
truncated, bit-flipped or given mutated settings.  Whatever the file, the
only exception that may escape a reader is :class:`CryoInputError` naming the
file; no case may hang (each is given a few seconds) or make the process
grow by gigabytes (a header claiming 10^12 voxels is refused from the header
and the file size, not allocated).
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import io
import json
import math
import signal
import struct
import sys
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from napari_cryo.errors import CryoInputError
from napari_cryo.io._reader import get_mrc_reader
from napari_cryo.io.mrc import MrcInfo, read_header, read_mrc, sample_planes, sniff_mrc
from napari_cryo.picking import model as picking_model
from napari_cryo.picking.model import PickerModel
from napari_cryo.segmentation import group as group_module
from napari_cryo.segmentation import model as segmentation_model
from napari_cryo.segmentation.files import safe_file_stem
from napari_cryo.segmentation.group import ModelGroup
from napari_cryo.segmentation.model import SegmentationModel
from napari_cryo.squares import model as squares_model
from napari_cryo.squares.model import SquareModel, XCryoNet

from conftest import TESTDATA

try:
    import resource
except ImportError:  # Windows: no peak-memory check
    resource = None

TORCH_THREADS = 1


def fuzz(examples: int) -> settings:
    """``examples`` reproducible cases, without hypothesis's per-case deadline (:func:`bounded` catches hangs)."""
    return settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


#: Seconds one case may take before it counts as a hang.
CASE_LIMIT_S = 10
#: Growth of the process's peak memory that counts as an allocation the file should not have caused.
MAX_GROWTH_BYTES = 1 << 30


@contextlib.contextmanager
def bounded(path: Path) -> Iterator[None]:
    """Allow only CryoInputError naming ``path``; fail a case that hangs."""

    def hung(signum: int, frame: Any) -> None:
        raise TimeoutError(f"reading {path.name} took over {CASE_LIMIT_S} s")

    timer = hasattr(signal, "setitimer")  # not on Windows
    if timer:
        previous = signal.signal(signal.SIGALRM, hung)
        signal.setitimer(signal.ITIMER_REAL, CASE_LIMIT_S)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    except CryoInputError as exc:
        assert path.name in str(exc), f"the error does not name the file: {exc}"
        assert "\n" not in str(exc), f"the error is not one line: {exc!r}"
    finally:
        if timer:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)


def _peak_rss_bytes() -> int:
    if resource is None:
        return 0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB, macOS bytes


@pytest.fixture(autouse=True)
def no_huge_allocation():
    """No case may make the process's peak memory grow by a gigabyte."""
    before = _peak_rss_bytes()
    yield
    assert _peak_rss_bytes() - before < MAX_GROWTH_BYTES


# ----------------------------------------------------------------------------- MRC files

MRC_BASES = ("mrc/EMD-3197.map", "mrc/EMD-3001.map", "particles/spike-vol.mrc", "mrc/emd_3197.map.gz")
#: Header words (byte offsets) read as int32: nx, ny, nz, mode, n[xyz]start, m[xyz], mapc/r/s, ispg, nsymbt, IMOD stamp and flags, nlabl.
INT_FIELDS = (0, 4, 8, 12, 16, 20, 24, 28, 32, 36, 64, 68, 72, 88, 92, 152, 156, 220)
#: Header words read as float32: cell lengths and angles, dmin/dmax/dmean, origin, rms.
FLOAT_FIELDS = (40, 44, 48, 52, 56, 60, 76, 80, 84, 196, 200, 204, 216)
EXTREME_INTS = (0, 1, -1, 2, 3, 4, 6, 12, 101, 401, 1024, 2**16, 10**6, 10**9, 2**31 - 1, -(2**31))

int32s = st.one_of(st.sampled_from(EXTREME_INTS), st.integers(-(2**31), 2**31 - 1))
mrc_mutation = st.one_of(
    st.tuples(st.just("int"), st.sampled_from(INT_FIELDS), int32s),
    st.tuples(st.just("float"), st.sampled_from(FLOAT_FIELDS), st.floats(width=32)),
    st.tuples(st.just("byte"), st.integers(0, 1023), st.integers(0, 255)),
    st.tuples(st.just("truncate"), st.floats(0.0, 1.0), st.just(0)),
    st.tuples(st.just("append"), st.integers(1, 4096), st.just(0)),
)


@functools.cache
def _mrc_base(name: str) -> bytes:
    data = (TESTDATA / name).read_bytes()
    return gzip.decompress(data) if name.endswith(".gz") else data


def _mutate_mrc(data: bytes, mutations: list[tuple[str, Any, Any]]) -> bytes:
    out = bytearray(data)
    # Header edits first, then size changes, so that every edit lands in the header it names.
    for kind, where, value in sorted(mutations, key=lambda m: m[0] in ("truncate", "append")):
        if kind == "int":
            out[where : where + 4] = struct.pack("<i", value)
        elif kind == "float":
            out[where : where + 4] = struct.pack("<f", value)
        elif kind == "byte":
            out[where] = value
        elif kind == "truncate":
            del out[int(where * len(out)) :]
        else:
            out += bytes(where)
    return bytes(out)


def _touch(data: Any) -> None:
    """Read the first and last values, and a sample, as napari would."""
    arr = np.asarray(data[(0,) * data.ndim]), np.asarray(data[(-1,) * data.ndim])
    assert all(a.size == 1 for a in arr)
    sample_planes(data)


def _open_every_way(path: Path) -> None:
    """Every way the package opens an MRC file; each may only refuse it with CryoInputError."""
    info = sniff_mrc(path)  # a sniffer never raises
    assert info is None or isinstance(info, MrcInfo)
    with bounded(path):
        header = read_header(path)
        assert all(math.isfinite(v) and v >= 0 for v in header.voxel_size)
        assert all(math.isfinite(v) for v in header.origin)
    for mmap in (True, False):
        with bounded(path):
            _touch(read_mrc(path, mmap=mmap)[0])
    reader = get_mrc_reader(str(path))
    if reader is not None:
        with bounded(path):
            for data, kwargs, kind in reader(str(path)):
                assert kind == "image" and all(math.isfinite(s) and s > 0 for s in kwargs["scale"])
                _touch(data)


@fuzz(700)
@given(base=st.sampled_from(MRC_BASES), mutations=st.lists(mrc_mutation, min_size=1, max_size=4))
def test_mrc_files_with_mutated_headers_and_sizes_are_read_or_refused(base, mutations):
    data = _mutate_mrc(_mrc_base(base), mutations)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / Path(base).name
        path.write_bytes(gzip.compress(data, compresslevel=1) if base.endswith(".gz") else data)
        _open_every_way(path)


@fuzz(150)
@given(flips=st.lists(st.tuples(st.integers(0, 2**31), st.integers(1, 255)), min_size=1, max_size=6), cut=st.integers(0, 64))
def test_damaged_compressed_mrc_files_are_refused(flips, cut):
    data = bytearray((TESTDATA / "mrc/emd_3197.map.gz").read_bytes())
    for where, xor in flips:
        data[where % len(data)] ^= xor
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "damaged.map.gz"
        path.write_bytes(bytes(data[: len(data) - cut]))
        _open_every_way(path)


@fuzz(200)
@given(data=st.binary(max_size=2048), stamp=st.booleans(), name=st.sampled_from(["x.mrc", "x.mrcs", "x.map.gz", "x.st"]))
def test_random_bytes_named_as_mrc_are_refused(data, stamp, name):
    if stamp and len(data) >= 212:
        data = data[:208] + b"MAP " + data[212:]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        path.write_bytes(data)
        _open_every_way(path)


def test_a_header_claiming_a_terabyte_is_refused_from_the_header(tmp_path):
    header = bytearray(_mrc_base("mrc/EMD-3197.map")[:1024])
    header[0:12] = struct.pack("<3i", 10_000, 10_000, 10_000)  # 4e12 bytes of float32
    for name, data in (("big.mrc", bytes(header)), ("big.mrc.gz", gzip.compress(bytes(header)))):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(CryoInputError, match="truncated"):
            read_mrc(tmp_path / name)


# ----------------------------------------------------------------------------- model files


@functools.cache
def _picking_file() -> bytes:
    buffer = io.BytesIO()
    model = PickerModel.new(width=1)
    torch.save(_picking_payload(model), buffer)
    return buffer.getvalue()


def _picking_payload(model: PickerModel) -> dict[str, Any]:
    return {"format": picking_model.FORMAT, "version": 1, "name": "tiny", "width": 1, "invert": False, "threshold": 0.5,
            "history": [], "classes": list(picking_model.CLASSES), "state_dict": model.net.state_dict()}


def _squares_payload(variant: str = "primary") -> dict[str, Any]:
    net = XCryoNet(4, variant)
    return {"format": squares_model.FORMAT, "version": 1, "name": "tiny", "variant": variant, "channels": 4, "crop_size": 64,
            "history": [], "state_dict": net.state_dict()}


@functools.cache
def _squares_file() -> bytes:
    buffer = io.BytesIO()
    torch.save(_squares_payload(), buffer)
    return buffer.getvalue()


@functools.cache
def _segmentation_model() -> SegmentationModel:
    torch.manual_seed(0)
    return SegmentationModel.new("inception", "membrane", box_size=32, pixel_size=10.0)


@functools.cache
def _scnm_file() -> bytes:
    return _segmentation_model().to_bytes()


@functools.cache
def _weights() -> bytes:
    with zipfile.ZipFile(io.BytesIO(_scnm_file())) as archive:
        return archive.read("weights.pt")


@functools.cache
def _group_file() -> bytes:
    with tempfile.TemporaryDirectory() as folder:
        path = ModelGroup([_segmentation_model()]).save(Path(folder) / "g.scnmgroup")
        return path.read_bytes()


def _check_picking(model: PickerModel) -> None:
    assert 1 <= model.width <= picking_model.MAX_WIDTH and 0 <= model.threshold <= 1


def _check_squares(model: SquareModel) -> None:
    assert model.variant in squares_model.VARIANTS and model.net.channels <= squares_model.MAX_CHANNELS


def _check_segmentation(model: SegmentationModel) -> None:
    assert 0 < model.pixel_size < math.inf and 1 <= model.box_size <= segmentation_model.MAX_BOX
    assert 0 <= model.overlap <= segmentation_model.MAX_OVERLAP and 0 <= model.threshold <= 1
    stem = safe_file_stem(model.title)
    assert stem and "/" not in stem and not stem.startswith(".")


def _check_group(group: ModelGroup) -> None:
    assert 1 <= len(group.models) <= group_module.MAX_MODELS
    for model in group.models:
        _check_segmentation(model)


# name: (file name, valid bytes, loader, check of what loads)
MODEL_KINDS: dict[str, tuple[str, Callable[[], bytes], Callable[[Path], Any], Callable[[Any], None]]] = {
    "picking": ("tiny.pt", _picking_file, PickerModel.load, _check_picking),
    "squares": ("tiny_squares.pt", _squares_file, SquareModel.load, _check_squares),
    "segmentation": ("tiny.scnm", _scnm_file, SegmentationModel.load, _check_segmentation),
    "group": ("tiny.scnmgroup", _group_file, ModelGroup.load, _check_group),
}


def _load_bytes(kind: str, data: bytes) -> None:
    """Write ``data`` under the kind's file name and load it: a checked model or a CryoInputError naming the file."""
    name, _, load, check = MODEL_KINDS[kind]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        path.write_bytes(data)
        with bounded(path):
            check(load(path))


def test_the_tiny_valid_model_files_load():
    for kind, (_, valid, _, _) in MODEL_KINDS.items():
        name, _, load, check = MODEL_KINDS[kind]
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / name
            path.write_bytes(valid())
            check(load(path))


@fuzz(300)
@given(kind=st.sampled_from(sorted(MODEL_KINDS)), data=st.binary(max_size=4096), zip_magic=st.booleans())
def test_random_bytes_are_not_model_files(kind, data, zip_magic):
    _load_bytes(kind, (b"PK\x03\x04" + data) if zip_magic else data)


@fuzz(200)
@given(kind=st.sampled_from(sorted(MODEL_KINDS)), fraction=st.floats(0.0, 1.0, exclude_max=True))
def test_truncated_model_files_are_refused(kind, fraction):
    data = MODEL_KINDS[kind][1]()
    _load_bytes(kind, data[: int(fraction * len(data))])


# Flips land anywhere, or where the structure is: the local headers and pickle at the start, the central directory at the end.
flip_position = st.one_of(st.floats(0.0, 1.0, exclude_max=True), st.integers(0, 4095), st.integers(-4096, -1))


@fuzz(400)
@given(kind=st.sampled_from(sorted(MODEL_KINDS)), flips=st.lists(st.tuples(flip_position, st.integers(1, 255)), min_size=1, max_size=8))
def test_bit_flipped_model_files_load_or_are_refused(kind, flips):
    data = bytearray(MODEL_KINDS[kind][1]())
    for where, xor in flips:
        index = int(where * len(data)) if isinstance(where, float) else where % len(data)
        data[index] ^= xor
    _load_bytes(kind, bytes(data))


json_values = st.recursive(
    st.one_of(
        st.none(), st.booleans(),
        st.sampled_from([0, 1, -1, 16, 32, 64, 10**6, 10**9, 10**20, -(10**20), 10**400]),
        st.integers(),
        st.floats(allow_nan=True, allow_infinity=True),
        st.sampled_from(["", "vgg", "inception", "../../x", "a/b", ".hidden", "\n", "\x1b[2J", "x" * 1000, "#123456", "red", "\ud800"]),
        st.text(max_size=20),
    ),
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(st.text(max_size=8), children, max_size=4)),
    max_leaves=8,
)
SCNM_KEYS = ("format", "version", "title", "colour", "pixel_size", "box_size", "architecture", "threshold", "overlap",
             "emit", "absorb", "training", "history", "epochs", "batch_size", "final_loss", "n_parameters")
json_edit = st.tuples(st.sampled_from(SCNM_KEYS) | st.text(max_size=8), st.one_of(st.just("delete"), json_values))


def _apply(meta: dict[str, Any], edits: list[tuple[str, Any]]) -> dict[str, Any]:
    meta = dict(meta)
    for key, value in edits:
        if isinstance(value, str) and value == "delete":
            meta.pop(key, None)
        else:
            meta[key] = value
    return meta


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _dumps(value: Any) -> bytes:
    return json.dumps(value).encode("utf-8", "surrogatepass")


@fuzz(300)
@given(edits=st.lists(json_edit, min_size=1, max_size=4), whole=st.one_of(st.none(), json_values))
def test_scnm_files_with_mutated_metadata_load_or_are_refused(edits, whole):
    meta = _apply(_segmentation_model().metadata(), edits) if whole is None else whole
    _load_bytes("segmentation", _zip({"metadata.json": _dumps(meta), "weights.pt": _weights()}))


GROUP_KEYS = ("format", "version", "models", "graph")
graph_values = st.fixed_dictionaries(
    {},
    optional={
        "interactions": st.lists(st.dictionaries(st.sampled_from(["child", "parent", "kind", "threshold", "radius_nm", "x"]), json_values, max_size=5), max_size=3) | json_values,
        "emit": st.lists(st.sampled_from(["membrane", "other", ""]) | json_values, max_size=3) | json_values,
        "absorb": st.lists(st.sampled_from(["membrane", "other"]), max_size=3) | json_values,
    },
)


@fuzz(150)
@given(edits=st.lists(st.tuples(st.sampled_from(GROUP_KEYS), st.one_of(st.just("delete"), json_values, graph_values)), min_size=1, max_size=3),
       members=st.integers(0, 2))
def test_groups_with_mutated_group_json_load_or_are_refused(edits, members):
    meta = _apply({"format": group_module.FORMAT, "version": 1, "models": ["membrane"], "graph": {}}, edits)
    files = {"group.json": _dumps(meta)} | {f"models/{i:02d}_m{i}.scnm": _scnm_file() for i in range(members)}
    _load_bytes("group", _zip(files))


torch_values = st.one_of(
    json_values,
    st.sampled_from([b"bytes", (1, 2), torch.zeros(2), torch.zeros(0), {"a": torch.ones(1)}, [torch.ones(1)], float("nan"), 10**30, True]),
)
PAYLOAD_KEYS = ("format", "version", "name", "width", "invert", "threshold", "history", "classes", "state_dict", "variant", "channels", "crop_size")


@fuzz(250)
@given(kind=st.sampled_from(["picking", "squares"]),
       edits=st.lists(st.tuples(st.sampled_from(PAYLOAD_KEYS), st.one_of(st.just("delete"), torch_values)), min_size=1, max_size=3))
def test_torch_model_files_with_mutated_settings_load_or_are_refused(kind, edits):
    payload = _picking_payload(PickerModel.new(width=1)) if kind == "picking" else _squares_payload()
    buffer = io.BytesIO()
    torch.save(_apply(payload, edits), buffer)
    _load_bytes(kind, buffer.getvalue())
