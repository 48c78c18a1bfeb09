"""A trained per-feature model and its file (``.scnm``).

A ``.scnm`` file is one zip archive holding ``metadata.json`` (title,
colour, pixel size, box size, architecture name, training settings,
threshold, overlap, emit/absorb flags, final loss, parameter count, loss
history) and ``weights.pt`` (the torch ``state_dict``).  Loading checks the
archive, the format and that the weights fit the named architecture, and
names the problem otherwise.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import CryoInputError
from ..io.atomic import atomic_path
from . import architectures

FORMAT = "napari-cryo segmentation model"
FORMAT_VERSION = 1
METADATA = "metadata.json"
WEIGHTS = "weights.pt"


def check_format(meta: Any, fmt: str, version: int, source: str | os.PathLike, what: str, member: str) -> None:
    """Refuse archive metadata of another kind or from a newer napari-cryo (``.scnm`` and ``.scnmgroup``)."""
    if not isinstance(meta, dict) or meta.get("format") != fmt:
        raise CryoInputError(source, f"is not a napari-cryo {what} (wrong format in {member})")
    if int(meta.get("version", 0)) > version:
        raise CryoInputError(source, f"was written by a newer napari-cryo (format version {meta['version']})")


@dataclass
class SegmentationModel:
    """One feature's network and everything needed to apply it.

    Attributes
    ----------
    net : torch.nn.Module
        Maps (B, 1, H, W) normalised images to (B, 1, H, W) logits.
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
    training: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def new(cls, architecture: str, title: str, box_size: int = 64, pixel_size: float = 10.0, seed: int = 0, **kwargs: Any) -> "SegmentationModel":
        """A freshly initialised model of the named architecture."""
        arch = architectures.get(architecture)
        if arch.dims != 2:
            raise CryoInputError(None, f"architecture '{arch.name}' is 3D; napari-cryo trains and applies slice-wise (2D) architectures only")
        torch.manual_seed(seed)
        return cls(net=arch.build(box_size), architecture=arch.name, title=title, box_size=box_size, pixel_size=pixel_size, **kwargs)

    @property
    def n_parameters(self) -> int:
        """Number of trainable parameters."""
        return int(sum(p.numel() for p in self.net.parameters() if p.requires_grad))

    @property
    def final_loss(self) -> float | None:
        """Training loss of the last epoch (``None`` before training)."""
        return float(self.history[-1]["train_loss"]) if self.history else None

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
        """Read a model from ``.scnm`` bytes; ``source`` names it in messages."""
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                names = set(archive.namelist())
                if METADATA not in names or WEIGHTS not in names:
                    if "group.json" in names:
                        raise CryoInputError(source, "is a model group (.scnmgroup), not a single model (.scnm)")
                    raise CryoInputError(source, f"is not a segmentation model: the archive lacks {METADATA} or {WEIGHTS}")
                meta = json.loads(archive.read(METADATA).decode("utf-8"))
                weights = archive.read(WEIGHTS)
        except zipfile.BadZipFile:
            raise CryoInputError(source, "is not a segmentation model (.scnm): not a zip archive") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CryoInputError(source, f"has unreadable metadata ({exc})") from None
        check_format(meta, FORMAT, FORMAT_VERSION, source, "segmentation model", METADATA)
        try:
            arch = architectures.get(str(meta["architecture"]))
            if arch.dims != 2:
                raise CryoInputError(source, f"uses the 3D architecture '{arch.name}'; only slice-wise (2D) architectures are supported")
            box = int(meta["box_size"])
            net = arch.build(box)
        except KeyError as exc:
            raise CryoInputError(source, f"metadata lacks {exc}") from None
        except CryoInputError as exc:
            raise CryoInputError(source, exc.problem) from None
        try:
            state = torch.load(io.BytesIO(weights), map_location="cpu", weights_only=True)
            net.load_state_dict(state)
        except Exception as exc:  # noqa: BLE001 - torch raises many kinds for foreign weights
            raise CryoInputError(source, f"weights do not fit the '{arch.name}' architecture ({str(exc).splitlines()[0][:200]})") from None
        net.eval()
        try:
            return cls(
                net=net,
                architecture=arch.name,
                title=str(meta["title"]),
                colour=str(meta.get("colour", "#e69f00")),
                pixel_size=float(meta["pixel_size"]),
                box_size=box,
                threshold=float(meta.get("threshold", 0.5)),
                overlap=float(meta.get("overlap", 0.2)),
                emit=bool(meta.get("emit", False)),
                absorb=bool(meta.get("absorb", False)),
                training=dict(meta.get("training", {})),
                history=list(meta.get("history", [])),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CryoInputError(source, f"has bad metadata ({exc})") from None

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
        return cls.from_bytes(path.read_bytes(), path)
