"""Model, group and checkpoint files from elsewhere: they can hold weights and settings, never code.

Every loader the package has is given a pickle that would create a file if it
were unpickled with ``weights_only=False`` (as a bare pickle and inside a
``torch.save`` archive): each refuses it, naming the file, and nothing is
created.  Sizes, counts and numbers read from a file are bounded before a
network is built, and names read from a file cannot lead a path out of the
output folder.
"""

from __future__ import annotations

import io
import json
import math
import pickle
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from napari_cryo.checkpoints import restore_checkpoint
from napari_cryo.errors import CryoInputError
from napari_cryo.picking import model as picking_model
from napari_cryo.picking.model import PickerModel, load_model
from napari_cryo.reconstruction.run import CHECKPOINT, load_checkpoint
from napari_cryo.segmentation import group as group_module
from napari_cryo.segmentation import model as segmentation_model
from napari_cryo.segmentation.files import safe_file_stem, segmentation_path, write_segmentation
from napari_cryo.segmentation.group import ModelGroup, load_models
from napari_cryo.segmentation.model import SegmentationModel
from napari_cryo.squares import model as squares_model
from napari_cryo.squares.model import SquareModel, XCryoNet

TORCH_THREADS = 1


class _Payload:
    """Unpickling this runs code: it creates the file ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _tiny_segmentation(title: str = "membrane") -> SegmentationModel:
    return SegmentationModel.new("inception", title, box_size=32, pixel_size=10.0)


def _write(path: Path, obj: Any, how: str) -> Path:
    """``obj`` as a bare pickle or as a torch.save archive."""
    if how == "pickle":
        path.write_bytes(pickle.dumps(obj))
    else:
        torch.save(obj, path)
    return path


def _scnm_bytes(weights: bytes, meta: dict[str, Any] | None = None) -> bytes:
    """A .scnm archive with valid metadata and the given weights.pt."""
    meta = meta if meta is not None else _tiny_segmentation().metadata()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("metadata.json", json.dumps(meta))
        archive.writestr("weights.pt", weights)
    return buffer.getvalue()


def _group_file(path: Path, members: dict[str, bytes], meta: dict[str, Any] | None = None) -> Path:
    meta = meta if meta is not None else {"format": group_module.FORMAT, "version": 1, "models": [], "graph": {}}
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("group.json", json.dumps(meta))
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def _evil_weights(marker: Path, how: str) -> bytes:
    state = {"stem.weight": _Payload(marker)}
    if how == "pickle":
        return pickle.dumps(state)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def _picking_file(folder: Path, marker: Path, how: str) -> Path:
    payload = {"format": picking_model.FORMAT, "version": 1, "width": 1, "state_dict": {"stem.0.weight": _Payload(marker)}}
    return _write(folder / "evil.pt", payload, how)


def _squares_file(folder: Path, marker: Path, how: str) -> Path:
    payload = {"format": squares_model.FORMAT, "version": 1, "channels": 4, "state_dict": {"x": _Payload(marker)}}
    return _write(folder / "evil_squares.pt", payload, how)


def _scnm_file(folder: Path, marker: Path, how: str) -> Path:
    path = folder / "evil.scnm"
    path.write_bytes(_scnm_bytes(_evil_weights(marker, how)))
    return path


def _group(folder: Path, marker: Path, how: str) -> Path:
    return _group_file(folder / "evil.scnmgroup", {"models/00_membrane.scnm": _scnm_bytes(_evil_weights(marker, how))})


def _training_checkpoint(folder: Path, marker: Path, how: str) -> Path:
    state = {"model": {"weight": _Payload(marker)}, "optimizers": [], "epoch": 1, "history": [], "run_key": "k"}
    return _write(folder / "train.ckpt", state, how)


def _run_checkpoint(folder: Path, marker: Path, how: str) -> Path:
    return _write(folder / CHECKPOINT, {"key": "k", "payload": _Payload(marker), "_numpy_keys": []}, how)


def _restore(path: Path) -> None:
    assert restore_checkpoint(path, "k", torch.nn.Linear(1, 1), []) is None  # an unsafe checkpoint is ignored


# (name, writes the file, loads it): every model or checkpoint file the package reads.
LOADERS: list[tuple[str, Callable[[Path, Path, str], Path], Callable[[Path], Any]]] = [
    ("picking model", _picking_file, PickerModel.load),
    ("picking load_model", _picking_file, load_model),
    ("squares model", _squares_file, SquareModel.load),
    ("segmentation model", _scnm_file, SegmentationModel.load),
    ("segmentation from_bytes", _scnm_file, lambda p: SegmentationModel.from_bytes(p.read_bytes(), p)),
    ("segmentation group", _group, ModelGroup.load),
    ("segmentation load_models", _group, lambda p: load_models([p])),
    ("training checkpoint", _training_checkpoint, _restore),
    ("reconstruction checkpoint", _run_checkpoint, load_checkpoint),
]


@pytest.mark.parametrize("how", ["pickle", "torch.save"])
@pytest.mark.parametrize("name, write, load", LOADERS, ids=[entry[0] for entry in LOADERS])
def test_a_file_that_would_run_code_is_refused_and_runs_nothing(tmp_path, name, write, load, how):
    marker = tmp_path / "executed"
    path = write(tmp_path, marker, how)
    assert not marker.exists()
    if load is _restore:
        load(path)
    else:
        with pytest.raises(CryoInputError) as caught:
            load(path)
        assert path.name in str(caught.value) and "\n" not in str(caught.value)
    assert not marker.exists(), f"loading a {name} ran code from the file"


def _picking_payload(**changes: Any) -> dict[str, Any]:
    model = PickerModel.new(width=1)
    payload = {"format": picking_model.FORMAT, "version": 1, "name": "m", "width": 1, "invert": False, "threshold": 0.5,
               "history": [], "state_dict": model.net.state_dict()}
    payload.update(changes)
    return payload


def _squares_payload(**changes: Any) -> dict[str, Any]:
    net = XCryoNet(4, "primary")
    payload = {"format": squares_model.FORMAT, "version": 1, "name": "s", "variant": "primary", "channels": 4, "crop_size": 64,
               "history": [], "state_dict": net.state_dict()}
    payload.update(changes)
    return payload


def _forbid(monkeypatch, module: Any, name: str) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"{name} was called for a file that should have been refused first")

    monkeypatch.setattr(module, name, refuse)


@pytest.mark.parametrize(
    "changes, problem",
    [
        ({"width": 10**6}, "width must be"),
        ({"width": 0}, "width must be"),
        ({"width": 16.0}, "width must be"),
        ({"width": True}, "width must be"),
        ({"threshold": float("nan")}, "threshold must be"),
        ({"threshold": 2.0}, "threshold must be"),
        ({"invert": "yes"}, "invert must be"),
        ({"name": "a\nb"}, "name must be"),
        ({"history": "many"}, "history must be"),
        ({"version": 2}, "newer napari-cryo"),
        ({"version": "1"}, "bad format version"),
        ({"state_dict": {"stem.0.weight": 1}}, "holds no weights"),
    ],
)
def test_picking_settings_out_of_range_are_refused_before_a_network_is_built(tmp_path, monkeypatch, changes, problem):
    path = tmp_path / "m.pt"
    torch.save(_picking_payload(**changes), path)
    _forbid(monkeypatch, picking_model, "PickerNet")
    with pytest.raises(CryoInputError, match=problem) as caught:
        PickerModel.load(path)
    assert str(caught.value).startswith(str(path))


@pytest.mark.parametrize(
    "changes, problem",
    [
        ({"channels": 10**6}, "channels must be"),
        ({"channels": 30}, "channels must be"),
        ({"channels": -4}, "channels must be"),
        ({"crop_size": 10**9}, "crop_size must be"),
        ({"crop_size": 62}, "crop_size must be"),
        ({"variant": "evil"}, "variant must be"),
        ({"name": "\x1b[2J"}, "name must be"),
        ({"history": [1, 2]}, "history must be"),
        ({"version": 2}, "newer napari-cryo"),
        ({"state_dict": None}, "holds no weights"),
    ],
)
def test_squares_settings_out_of_range_are_refused_before_a_network_is_built(tmp_path, monkeypatch, changes, problem):
    path = tmp_path / "s.pt"
    torch.save(_squares_payload(**changes), path)
    _forbid(monkeypatch, squares_model, "XCryoNet")
    with pytest.raises(CryoInputError, match=problem) as caught:
        SquareModel.load(path)
    assert str(caught.value).startswith(str(path))


def test_tiny_picking_and_squares_models_still_round_trip(tmp_path):
    torch.save(_picking_payload(), tmp_path / "m.pt")
    torch.save(_squares_payload(), tmp_path / "s.pt")
    assert PickerModel.load(tmp_path / "m.pt").width == 1
    assert SquareModel.load(tmp_path / "s.pt").variant == "primary"


@pytest.mark.parametrize(
    "changes, problem",
    [
        ({"box_size": 10**9}, "box_size must be"),
        ({"box_size": 0}, "box_size must be"),
        ({"box_size": "64"}, "box_size must be"),
        ({"box_size": 64.5}, "box_size must be"),
        ({"pixel_size": -1.0}, "pixel_size must be"),
        ({"pixel_size": 0}, "pixel_size must be"),
        ({"pixel_size": float("nan")}, "pixel_size must be"),
        ({"pixel_size": float("inf")}, "pixel_size must be"),
        ({"pixel_size": 1e9}, "pixel_size must be"),
        ({"threshold": 1.5}, "threshold must be"),
        ({"overlap": 1.0}, "overlap must be"),
        ({"overlap": -0.1}, "overlap must be"),
        ({"title": "a\rb"}, "title must be"),
        ({"title": ""}, "title must be"),
        ({"title": "x" * 500}, "title must be"),
        ({"title": 5}, "title must be"),
        ({"colour": "red"}, "colour must be"),
        ({"emit": "yes"}, "emit must be"),
        ({"training": "x"}, "training must be"),
        ({"training": {"epochs": 10**12}}, "epochs must be"),
        ({"history": [{"train_loss": "low"}]}, "train_loss"),
        ({"architecture": ["vgg"]}, "architecture must be"),
        ({"version": 2}, "newer napari-cryo"),
        ({"version": "1"}, "bad format version"),
        ({"version": 10**400}, "newer napari-cryo"),
        ({"title": None}, "title must be"),
    ],
)
def test_segmentation_metadata_is_checked_before_a_network_is_built_or_a_tensor_read(tmp_path, monkeypatch, changes, problem):
    model = _tiny_segmentation()
    meta = {**model.metadata(), **changes}
    weights = io.BytesIO()
    torch.save(model.net.state_dict(), weights)
    path = tmp_path / "m.scnm"
    path.write_bytes(_scnm_bytes(weights.getvalue(), meta))
    _forbid(monkeypatch, segmentation_model.architectures, "get")
    _forbid(monkeypatch, segmentation_model.torch, "load")
    started = time.perf_counter()
    with pytest.raises(CryoInputError, match=problem) as caught:
        SegmentationModel.load(path)
    assert str(caught.value).startswith(str(path)) and "\n" not in str(caught.value)
    assert time.perf_counter() - started < 1.0


@pytest.mark.parametrize("missing", ["title", "pixel_size", "box_size", "architecture"])
def test_segmentation_metadata_lacking_a_setting_is_refused(tmp_path, missing):
    meta = _tiny_segmentation().metadata()
    del meta[missing]
    with pytest.raises(CryoInputError, match=missing):
        SegmentationModel.from_bytes(_scnm_bytes(b"", meta), tmp_path / "m.scnm")


def test_a_metadata_zip_bomb_is_refused_unpacked(tmp_path):
    path = tmp_path / "bomb.scnm"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("metadata.json", " " * (segmentation_model.MAX_METADATA_BYTES + 1))
        archive.writestr("weights.pt", b"")
    assert path.stat().st_size < 50_000
    with pytest.raises(CryoInputError, match="metadata.json would unpack to"):
        SegmentationModel.load(path)


def _deflated(data: bytes) -> bytes:
    """The same torch archive with compressed members, which torch.save never writes (and torch unpacks whatever their size)."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as source, zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as target:
        for info in source.infolist():
            target.writestr(info.filename, source.read(info))
    return out.getvalue()


def _torch_bytes(obj: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def test_torch_archives_with_compressed_members_are_refused_unread(tmp_path, monkeypatch):
    model = _tiny_segmentation()
    files = {
        "m.pt": (_deflated(_torch_bytes(_picking_payload())), PickerModel.load),
        "s.pt": (_deflated(_torch_bytes(_squares_payload())), SquareModel.load),
        "m.scnm": (_scnm_bytes(_deflated(_torch_bytes(model.net.state_dict()))), SegmentationModel.load),
        CHECKPOINT: (_deflated(_torch_bytes({"key": "k"})), load_checkpoint),
    }
    _forbid(monkeypatch, torch, "load")
    for name, (data, load) in files.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(CryoInputError, match="compressed") as caught:
            load(tmp_path / name)
        assert str(caught.value).startswith(str(tmp_path / name))


def test_a_group_is_checked_before_its_models_are_read(tmp_path, monkeypatch):
    member = _tiny_segmentation().to_bytes()
    newer = _group_file(tmp_path / "newer.scnmgroup", {"models/00_a.scnm": member}, {"format": group_module.FORMAT, "version": group_module.FORMAT_VERSION + 1})
    many = _group_file(tmp_path / "many.scnmgroup", {f"models/{i:03d}_a.scnm": b"" for i in range(group_module.MAX_MODELS + 1)})
    empty = _group_file(tmp_path / "empty.scnmgroup", {})
    _forbid(monkeypatch, SegmentationModel, "from_bytes")
    for path, problem in ((newer, "newer napari-cryo"), (many, "holds 65 models"), (empty, "holds 0 models")):
        with pytest.raises(CryoInputError, match=problem) as caught:
            ModelGroup.load(path)
        assert str(caught.value).startswith(str(path))


def test_a_bad_model_inside_a_group_is_named_with_the_group(tmp_path):
    meta = {**_tiny_segmentation().metadata(), "box_size": 10**9}
    path = _group_file(tmp_path / "g.scnmgroup", {"models/00_a.scnm": _scnm_bytes(b"", meta)})
    with pytest.raises(CryoInputError, match="box_size must be") as caught:
        ModelGroup.load(path)
    assert f"{path}:models/00_a.scnm" in str(caught.value)


ESCAPING_TITLES = ["../../escaped", "a/b", "a\\b", "..", ".", ".hidden", "C:evil", "x" * 100 + "/" + "y" * 200, "é" * 99, "CON", "a.", " "]


@pytest.mark.parametrize("title", ESCAPING_TITLES)
def test_a_title_becomes_one_safe_file_name_in_the_output_folder(tmp_path, title):
    out = tmp_path / "out"
    path = segmentation_path(out, tmp_path / "tomo.mrc", title)
    assert path.parent == out
    assert not path.name.startswith(".") and len(path.name.encode()) <= 255
    assert path.name.startswith("tomo__") and path.name.endswith(".mrc")
    stem = safe_file_stem(title)
    assert stem and stem not in (".", "..") and not any(c in stem for c in '/\\:*?"<>|')


def test_plain_titles_keep_their_names_and_different_titles_keep_different_files():
    for plain in ("membrane", "ice contamination", "actin_2", "ribosome-80S", "карбон"):
        assert safe_file_stem(plain) == plain
    stems = [safe_file_stem(t) for t in ["a/b", "a_b", "a\\b", "a:b", "../x", "_.._x", "..x"]]
    assert len(set(stems)) == len(stems)


def test_a_model_titled_with_a_path_writes_inside_the_output_folder(tmp_path):
    from napari_cryo.cli import main

    tomogram = tmp_path / "tomo.mrc"
    write_segmentation(tomogram, np.random.default_rng(0).normal(size=(2, 32, 32)).astype(np.float32), 10.0)
    group = ModelGroup([_tiny_segmentation("../../escaped"), _tiny_segmentation("sub/dir")])
    group.save(tmp_path / "g.scnmgroup")
    with zipfile.ZipFile(tmp_path / "g.scnmgroup") as archive:
        members = [name.split("/") for name in archive.namelist() if name != "group.json"]
        assert all(len(parts) == 2 and parts[1] not in ("", ".", "..") and not parts[1].startswith(".") for parts in members)
    loaded = ModelGroup.load(tmp_path / "g.scnmgroup")
    assert loaded.titles == ["../../escaped", "sub/dir"]  # kept for display
    out = tmp_path / "deep" / "out"
    before = {p for p in tmp_path.rglob("*")}
    assert main(["segment", "apply", str(tmp_path / "g.scnmgroup"), str(tomogram), "--out", str(out)]) == 0
    new = {p for p in tmp_path.rglob("*")} - before
    written = {p for p in new if p.is_file()}
    assert len(written) == 2 and all(p.parent == out for p in written), sorted(map(str, new))


def test_a_title_in_any_script_is_written_into_the_segmentation_header(tmp_path):
    from napari_cryo.io.mrc import read_header

    path = write_segmentation(segmentation_path(tmp_path, "tomo.mrc", "карбон"), np.zeros((2, 4, 4), np.float32), 10.0, feature="карбон")
    assert path.name == "tomo__карбон.mrc" and read_header(path).labels[-1] == "napari-cryo segmentation: ??????"


def test_a_title_with_control_characters_is_refused_at_load(tmp_path):
    meta = {**_tiny_segmentation().metadata(), "title": "ok\x1b]0;owned\x07"}
    with pytest.raises(CryoInputError, match="control characters"):
        SegmentationModel.from_bytes(_scnm_bytes(b"", meta), tmp_path / "m.scnm")


def test_a_reconstruction_checkpoint_with_a_wrong_array_list_is_refused(tmp_path):
    torch.save({"key": "k", "_numpy_keys": ["missing"]}, tmp_path / CHECKPOINT)
    with pytest.raises(CryoInputError, match="list of arrays"):
        load_checkpoint(tmp_path / CHECKPOINT)
    with pytest.raises(CryoInputError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "none.pt")


def test_loaded_settings_are_finite_numbers(tmp_path):
    model = SegmentationModel.from_bytes(_tiny_segmentation().to_bytes(), tmp_path / "m.scnm")
    assert math.isfinite(model.pixel_size) and model.box_size == 32 and model.final_loss is None
