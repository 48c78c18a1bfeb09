"""A trained per-feature model and its file (``.scnm``).

A ``.scnm`` file is one zip archive holding ``metadata.json`` (title,
colour, pixel size, box size, architecture name, training settings,
threshold, overlap, emit/absorb flags, slices of context, calibration offset,
final loss, parameter count, loss history) and ``weights.pt`` (the torch
``state_dict``).  Files written before context and calibration existed load
as one slice and no offset.  Loading checks the
archive, the format and version, every setting (sizes and numbers in range,
a title without control characters), then reads the weights with
``weights_only`` (tensors, never code) and checks that they fit the named
architecture, and names the problem otherwise.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import reprlib
import unicodedata
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import CryoInputError
from ..io.torch_files import archive_problem
from ..io.atomic import atomic_path
from . import architectures
from .architectures._layers import fill_legacy_buffers

FORMAT = "napari-cryo segmentation model"
FORMAT_VERSION = 1
METADATA = "metadata.json"
WEIGHTS = "weights.pt"
#: Bounds on what a model file may hold or ask for: generous for real models (about 1 MB of
#: weights, 64 px boxes, 1-30 Å pixels), small enough that a crafted file cannot make
#: napari-cryo unpack gigabytes or build a huge network.
MAX_METADATA_BYTES = 4 * 2**20
MAX_WEIGHTS_BYTES = 256 * 2**20
MAX_FILE_BYTES = MAX_WEIGHTS_BYTES + MAX_METADATA_BYTES
MAX_BOX = 1024
PIXEL_SIZES = (0.01, 10_000.0)
#: Tiles overlapping by nearly a whole tile would never cover a slice.
MAX_OVERLAP = 0.75
MAX_TITLE_LENGTH = 100
MAX_CONTEXT = 15
MAX_LOGIT_OFFSET = 20.0
MAX_COUNT = 10**7
_COLOUR = re.compile(r"#[0-9a-fA-F]{6}")


def check_format(meta: Any, fmt: str, version: int, source: str | os.PathLike, what: str, member: str) -> None:
    """Refuse archive metadata of another kind or from a newer napari-cryo (``.scnm`` and ``.scnmgroup``)."""
    if not isinstance(meta, dict) or meta.get("format") != fmt:
        raise CryoInputError(source, f"is not a napari-cryo {what} (wrong format in {member})")
    found = meta.get("version", 0)
    if type(found) is not int or found < 0:
        raise CryoInputError(source, f"has a bad format version {reprlib.repr(found)} in {member}")
    if found > version:
        raise CryoInputError(source, f"was written by a newer napari-cryo (format version {found}; this one reads up to {version})")


@contextlib.contextmanager
def open_archive(file: bytes | os.PathLike, source: str | os.PathLike, not_zip: str) -> Iterator[zipfile.ZipFile]:
    """A model archive (bytes or a file) open for reading; ``not_zip`` is the problem when it is not a zip archive.

    Raises
    ------
    CryoInputError
        Naming ``source``, if it is not a zip archive or is damaged.
    """
    try:
        archive = zipfile.ZipFile(io.BytesIO(file) if isinstance(file, bytes) else file)
    except zipfile.BadZipFile:
        raise CryoInputError(source, not_zip) from None
    except Exception as exc:  # noqa: BLE001 - a crafted central directory fails in many ways
        raise CryoInputError(source, f"is a damaged archive ({type(exc).__name__})") from None
    with archive:
        yield archive


def read_member(archive: zipfile.ZipFile, name: str, limit: int, source: str | os.PathLike) -> bytes:
    """One member of a model archive, refused unread when it would unpack to more than ``limit`` bytes.

    Raises
    ------
    CryoInputError
        Naming ``source``, if the member is too large or damaged (bad
        compressed data, a wrong checksum, an unknown compression method).
    """
    size = archive.getinfo(name).file_size
    if size > limit:
        raise CryoInputError(source, f"{name} would unpack to {size} bytes (at most {limit})")
    try:
        with archive.open(name) as fh:
            return fh.read(limit + 1)[:limit]
    except Exception as exc:  # noqa: BLE001 - a damaged member fails in zlib, bz2, lzma or zipfile itself
        raise CryoInputError(source, f"is a damaged archive: {name} cannot be unpacked ({type(exc).__name__})") from None


def read_json(data: bytes, source: str | os.PathLike, member: str) -> Any:
    """Parse a JSON member; anything unreadable (bad text, huge numbers, deep nesting) is an input error."""
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CryoInputError(source, f"has unreadable {member} ({type(exc).__name__}: {str(exc)[:100]})") from None


def check_title(title: Any, source: str | os.PathLike) -> str:
    """A feature title: shown, printed and (made safe, see :func:`napari_cryo.io.names.safe_file_stem`) part of file names.

    Raises
    ------
    CryoInputError
        Unless it is non-blank text of at most :data:`MAX_TITLE_LENGTH`
        characters without control characters (which could rewrite a terminal
        line) or lone surrogates (which cannot be printed).
    """
    if not isinstance(title, str) or not title.strip() or len(title) > MAX_TITLE_LENGTH or any(unicodedata.category(c) in ("Cc", "Cs") for c in title):
        raise CryoInputError(source, f"title must be text of 1 to {MAX_TITLE_LENGTH} characters without control characters, not {reprlib.repr(title)}")
    return title


def _number(meta: dict[str, Any], key: str, default: float | None, low: float, high: float, source: str | os.PathLike, whole: bool = False) -> Any:
    """``meta[key]`` as a number from ``low`` to ``high`` (NaN and infinities fail the range test)."""
    if key not in meta and default is None:
        raise CryoInputError(source, f"metadata lacks '{key}'")
    value = meta.get(key, default)
    kinds = (int,) if whole else (int, float)
    if type(value) not in kinds or not low <= value <= high:
        raise CryoInputError(source, f"{key} must be a {'whole ' if whole else ''}number from {low:g} to {high:g}, not {reprlib.repr(value)}")
    return value if whole else float(value)


def _flag(meta: dict[str, Any], key: str, source: str | os.PathLike) -> bool:
    value = meta.get(key, False)
    if not isinstance(value, bool):
        raise CryoInputError(source, f"{key} must be true or false, not {reprlib.repr(value)}")
    return value


def _training(meta: dict[str, Any], source: str | os.PathLike) -> dict[str, Any]:
    training = meta.get("training", {})
    if not isinstance(training, dict):
        raise CryoInputError(source, "training must be a mapping of settings")
    for key in ("epochs", "batch_size"):
        if key in training:
            _number(training, key, 0, 0, MAX_COUNT, source, whole=True)
    return training


def _history(meta: dict[str, Any], source: str | os.PathLike) -> list[dict[str, Any]]:
    history = meta.get("history", [])
    if not isinstance(history, list) or not all(isinstance(r, dict) for r in history):
        raise CryoInputError(source, "history must be a list of records")
    if any(type(r.get("train_loss", 0.0)) not in (int, float) for r in history):
        raise CryoInputError(source, "history holds a train_loss that is not a number")
    return history


def model_settings(meta: dict[str, Any], source: str | os.PathLike) -> dict[str, Any]:
    """Every setting of ``.scnm`` metadata, checked, as :class:`SegmentationModel` fields (no network yet).

    Raises
    ------
    CryoInputError
        Naming ``source`` and the first setting that is missing, of the
        wrong type or out of range.
    """
    if "title" not in meta:
        raise CryoInputError(source, "metadata lacks 'title'")
    colour = meta.get("colour", "#e69f00")
    if not isinstance(colour, str) or not _COLOUR.fullmatch(colour):
        raise CryoInputError(source, f"colour must be #rrggbb, not {reprlib.repr(colour)}")
    return {
        "title": check_title(meta["title"], source),
        "colour": colour,
        "pixel_size": _number(meta, "pixel_size", None, *PIXEL_SIZES, source),
        "box_size": _number(meta, "box_size", None, 1, MAX_BOX, source, whole=True),
        "threshold": _number(meta, "threshold", 0.5, 0.0, 1.0, source),
        "overlap": _number(meta, "overlap", 0.2, 0.0, MAX_OVERLAP, source),
        "emit": _flag(meta, "emit", source),
        "absorb": _flag(meta, "absorb", source),
        "context": _context(meta, source),
        "logit_offset": _number(meta, "logit_offset", 0.0, -MAX_LOGIT_OFFSET, MAX_LOGIT_OFFSET, source),
        "training": _training(meta, source),
        "history": _history(meta, source),
    }


def _context(meta: dict[str, Any], source: str | os.PathLike) -> int:
    context = _number(meta, "context", 1, 1, MAX_CONTEXT, source, whole=True)
    if context % 2 == 0:
        raise CryoInputError(source, f"context must be an odd number of slices, not {context}")
    return int(context)


class ContextNet(torch.nn.Module):
    """A 2D architecture fed several neighbouring slices: ``(B, C, H, W)`` in, the centre slice's logits out.

    A small learned mix of the slices (a 3x3 convolution over all of them, then one
    output channel) is added to the centre slice before the 2D network.  Its output
    layer starts at zero, so training starts from the plain 2D model and learns how
    much the neighbours help (membranes blurred by the missing wedge in one slice
    are reinforced by the next).
    """

    def __init__(self, inner: torch.nn.Module, slices: int, width: int = 16) -> None:
        super().__init__()
        self.centre = slices // 2
        self.mix = torch.nn.Sequential(
            torch.nn.Conv2d(slices, width, 3, padding=1), torch.nn.ReLU(inplace=True), torch.nn.Conv2d(width, 1, 1)
        )
        torch.nn.init.zeros_(self.mix[2].weight)
        torch.nn.init.zeros_(self.mix[2].bias)
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x[:, self.centre : self.centre + 1] + self.mix(x))


def build_net(architecture: str, box_size: int, context: int = 1) -> torch.nn.Module:
    """A new network of the named 2D architecture, wrapped in :class:`ContextNet` for ``context`` > 1 slices."""
    arch = architectures.get(architecture)
    if arch.dims != 2:
        raise CryoInputError(None, f"architecture '{arch.name}' is 3D; napari-cryo trains and applies slice-wise (2D) architectures only")
    net = arch.build(box_size)
    return ContextNet(net, context) if context > 1 else net


@dataclass
class SegmentationModel:
    """One feature's network and everything needed to apply it.

    Attributes
    ----------
    net : torch.nn.Module
        Maps (B, ``context``, H, W) normalised slices to (B, 1, H, W) logits of the centre one.
    architecture : str
        Registry name of the architecture (:mod:`.architectures`).
    title : str
        The feature's name (e.g. ``membrane``).
    colour : str
        Display colour ``#rrggbb``.
    pixel_size : float
        Å per pixel the model works at.
    box_size : int
        Training box size in pixels.
    threshold : float
        Default threshold on the output probability.
    overlap : float
        Tile overlap (fraction of a tile) at inference.
    emit, absorb : bool
        Competition flags (see :mod:`.interactions`).
    context : int
        Slices the network sees (odd; the centre one is segmented), one model pixel apart.
    logit_offset : float
        Added to the network's logits before the sigmoid: calibration that puts the best
        threshold found on the validation slices at probability 0.5.
    training : dict
        Epochs, batch size, learning rate and box sampling used.
    history : list of dict
        Per-epoch losses.
    """

    net: torch.nn.Module
    architecture: str
    title: str
    colour: str = "#e69f00"
    pixel_size: float = 10.0
    box_size: int = 64
    threshold: float = 0.5
    overlap: float = 0.2
    emit: bool = False
    absorb: bool = False
    context: int = 1
    logit_offset: float = 0.0
    training: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def new(cls, architecture: str, title: str, box_size: int = 64, pixel_size: float = 10.0, seed: int = 0, **kwargs: Any) -> "SegmentationModel":
        """A freshly initialised model of the named architecture (``context`` among ``kwargs``: slices it sees)."""
        torch.manual_seed(seed)
        net = build_net(architecture, box_size, int(kwargs.get("context", 1)))
        return cls(net=net, architecture=architectures.get(architecture).name, title=title, box_size=box_size, pixel_size=pixel_size, **kwargs)

    @property
    def n_parameters(self) -> int:
        """Number of trainable parameters."""
        return int(sum(p.numel() for p in self.net.parameters() if p.requires_grad))

    @property
    def final_loss(self) -> float | None:
        """Training loss of the last epoch (``None`` before training)."""
        loss = self.history[-1].get("train_loss") if self.history else None
        return None if loss is None else float(loss)

    def metadata(self) -> dict[str, Any]:
        """The JSON metadata written into the ``.scnm`` file."""
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "title": self.title,
            "colour": self.colour,
            "pixel_size": self.pixel_size,
            "box_size": self.box_size,
            "architecture": self.architecture,
            "epochs": int(self.training.get("epochs", len(self.history))),
            "batch_size": int(self.training.get("batch_size", 0)),
            "threshold": self.threshold,
            "overlap": self.overlap,
            "emit": self.emit,
            "absorb": self.absorb,
            "context": self.context,
            "logit_offset": self.logit_offset,
            "final_loss": self.final_loss,
            "n_parameters": self.n_parameters,
            "training": self.training,
            "history": self.history,
        }

    def to_bytes(self) -> bytes:
        """The ``.scnm`` archive as bytes (also how a model group embeds it)."""
        weights = io.BytesIO()
        torch.save({k: v.detach().cpu() for k, v in self.net.state_dict().items()}, weights)
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            archive.writestr(METADATA, json.dumps(self.metadata(), indent=1))
            archive.writestr(WEIGHTS, weights.getvalue())
        return buffer.getvalue()

    def save(self, path: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write the model to a ``.scnm`` file, atomically."""
        with atomic_path(path, overwrite=overwrite) as tmp:
            tmp.write_bytes(self.to_bytes())
        return Path(path)

    @classmethod
    def from_bytes(cls, data: bytes, source: str | os.PathLike = "model") -> "SegmentationModel":
        """Read a model from ``.scnm`` bytes; ``source`` names it in messages.

        The metadata (format, version, every setting) is checked before a
        network is built or a tensor read; the weights load with ``weights_only``.

        Raises
        ------
        CryoInputError
            For anything but a readable model of this or an older format.
        """
        meta, weights = _read_archive(data, source)
        check_format(meta, FORMAT, FORMAT_VERSION, source, "segmentation model", METADATA)
        settings = model_settings(meta, source)
        name = meta.get("architecture")
        if not isinstance(name, str) or len(name) > MAX_TITLE_LENGTH:
            raise CryoInputError(source, f"architecture must be a name, not {reprlib.repr(name)}")
        try:
            arch = architectures.get(name)
            if arch.dims != 2:
                raise CryoInputError(source, f"uses the 3D architecture '{arch.name}'; only slice-wise (2D) architectures are supported")
            net = build_net(arch.name, settings["box_size"], settings["context"])
        except CryoInputError as exc:
            raise CryoInputError(source, exc.problem) from None
        state = fill_legacy_buffers(net, _read_weights(weights, source))
        try:
            net.load_state_dict(state)
        except Exception as exc:  # noqa: BLE001 - torch raises many kinds for foreign weights
            raise CryoInputError(source, f"weights do not fit the '{arch.name}' architecture ({str(exc).splitlines()[0][:200]})") from None
        net.eval()
        return cls(net=net, architecture=arch.name, **settings)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "SegmentationModel":
        """Read a ``.scnm`` file.

        Raises
        ------
        CryoInputError
            If the file is missing, not a model archive, or its weights do
            not fit its architecture.
        """
        path = Path(path)
        if not path.is_file():
            raise CryoInputError(path, "model file not found")
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise CryoInputError(path, f"is too large for a segmentation model ({size} bytes, at most {MAX_FILE_BYTES})")
        return cls.from_bytes(path.read_bytes(), path)


def _read_archive(data: bytes, source: str | os.PathLike) -> tuple[Any, bytes]:
    """The parsed metadata and the raw weights of ``.scnm`` bytes, each member size-checked before it is unpacked."""
    with open_archive(data, source, "is not a segmentation model (.scnm): not a zip archive") as archive:
        names = set(archive.namelist())
        if METADATA not in names or WEIGHTS not in names:
            if "group.json" in names:
                raise CryoInputError(source, "is a model group (.scnmgroup), not a single model (.scnm)")
            raise CryoInputError(source, f"is not a segmentation model: the archive lacks {METADATA} or {WEIGHTS}")
        meta = read_member(archive, METADATA, MAX_METADATA_BYTES, source)
        weights = read_member(archive, WEIGHTS, MAX_WEIGHTS_BYTES, source)
    return read_json(meta, source, METADATA), weights


def _read_weights(weights: bytes, source: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The ``state_dict`` in ``weights.pt``, unpickled without running code (see :mod:`napari_cryo.io.torch_files`)."""
    problem = archive_problem(weights)
    if problem:
        raise CryoInputError(source, f"{WEIGHTS} cannot be read safely ({problem})")
    try:
        state = torch.load(io.BytesIO(weights), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds for foreign or unsafe weights
        raise CryoInputError(source, f"{WEIGHTS} cannot be read safely ({type(exc).__name__})") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise CryoInputError(source, f"{WEIGHTS} is not a set of named tensors")
    return state
