"""The picking network and its model file.

A small residual CNN in the spirit of Warp's BoxNet, evaluated fully
convolutionally over a whole micrograph: a stride-4 trunk of residual blocks
(the later ones dilated) gives a receptive field of about 100 working pixels
(five particle diameters), and a 1x1 head gives logits for three classes —
background, particle and junk — upsampled back to the working resolution.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import CryoInputError

CLASSES = ("background", "particle", "junk")
BACKGROUND, PARTICLE, JUNK = 0, 1, 2
FORMAT = "napari-cryo-picker"
FORMAT_VERSION = 1
GENERIC_MODEL = "generic.pt"


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and an identity (or 1x1) shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1, dilation: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = (
            nn.Identity()
            if stride == 1 and c_in == c_out
            else nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + self.shortcut(x))


class PickerNet(nn.Module):
    """Fully convolutional 3-class per-pixel classifier.

    Parameters
    ----------
    width : int
        Channels of the first stage; later stages use 2x and 4x.
    """

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        w = width
        self.stem = nn.Sequential(nn.Conv2d(1, w, 5, padding=2, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True))
        self.trunk = nn.Sequential(
            ResidualBlock(w, 2 * w, stride=2),
            ResidualBlock(2 * w, 4 * w, stride=2),
            ResidualBlock(4 * w, 4 * w, dilation=1),
            ResidualBlock(4 * w, 4 * w, dilation=2),
            ResidualBlock(4 * w, 4 * w, dilation=2),
        )
        self.head = nn.Conv2d(4 * w, len(CLASSES), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) normalised images -> (B, 3, H, W) logits."""
        h, w = x.shape[-2:]
        logits = self.head(self.trunk(self.stem(x)))
        return F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)


@dataclass
class PickerModel:
    """A picking network with what is needed to use it.

    Attributes
    ----------
    net : PickerNet
        The network.
    name : str
        A name shown in the widget and written into pick files' metadata.
    invert : bool
        Whether micrographs are inverted before picking (white particles).
    threshold : float
        Default particle-probability threshold.
    history : list of dict
        Training runs (epochs, losses, data) that produced the weights.
    """

    net: PickerNet
    name: str = "generic"
    invert: bool = False
    threshold: float = 0.5
    history: list[dict[str, Any]] = field(default_factory=list)
    width: int = 16

    def save(self, path: str | os.PathLike, overwrite: bool = False, half: bool = False) -> Path:
        """Write the model file atomically (``half`` stores float16 weights)."""
        from ..io.atomic import atomic_path

        state = {k: (v.half() if half and v.is_floating_point() else v).cpu() for k, v in self.net.state_dict().items()}
        payload = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "name": self.name,
            "width": self.width,
            "invert": self.invert,
            "threshold": self.threshold,
            "history": self.history,
            "classes": list(CLASSES),
            "state_dict": state,
        }
        with atomic_path(path, overwrite=overwrite) as tmp:
            torch.save(payload, tmp)
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "PickerModel":
        """Read a model file, checking that it is one.

        Raises
        ------
        CryoInputError
            If the file is missing, not a torch file, or not a picking model.
        """
        path = Path(path)
        if not path.is_file():
            raise CryoInputError(path, "model file not found")
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - torch raises many kinds for non-model files
            raise CryoInputError(path, f"is not a model file ({type(exc).__name__})") from None
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise CryoInputError(path, "is not a napari-cryo picking model")
        if payload.get("version", 0) > FORMAT_VERSION:
            raise CryoInputError(path, f"was written by a newer napari-cryo (format {payload['version']})")
        net = PickerNet(width=int(payload.get("width", 16)))
        try:
            net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in payload["state_dict"].items()})
        except (RuntimeError, KeyError) as exc:
            raise CryoInputError(path, f"weights do not fit the picking network ({str(exc).splitlines()[0]})") from None
        net.eval()
        return cls(
            net=net,
            name=str(payload.get("name", path.stem)),
            invert=bool(payload.get("invert", False)),
            threshold=float(payload.get("threshold", 0.5)),
            history=list(payload.get("history", [])),
            width=int(payload.get("width", 16)),
        )

    @classmethod
    def generic(cls) -> "PickerModel":
        """The generic model shipped with napari-cryo (trained on simulated data)."""
        ref = resources.files("napari_cryo.picking") / "weights" / GENERIC_MODEL
        with resources.as_file(ref) as path:
            if not Path(path).is_file():
                raise CryoInputError(path, "the generic picking model is missing from this installation")
            return cls.load(path)

    @classmethod
    def new(cls, name: str = "untrained", width: int = 16, seed: int = 0) -> "PickerModel":
        """A freshly initialised model."""
        torch.manual_seed(seed)
        return cls(net=PickerNet(width=width), name=name, width=width)

    def copy(self, name: str | None = None) -> "PickerModel":
        """A deep copy (for fine-tuning without touching the original)."""
        import copy

        new = copy.deepcopy(self)
        if name is not None:
            new.name = name
        return new


def load_model(spec: str | os.PathLike | None) -> PickerModel:
    """``None`` or ``"generic"`` -> the shipped model; else a model file."""
    if spec is None or str(spec) == "generic":
        return PickerModel.generic()
    return PickerModel.load(spec)


def receptive_field(net: nn.Module, size: int = 257) -> int:
    """Measure the receptive field (pixels) of the centre output from gradients."""
    was_training = net.training
    net.eval()
    # Random input: with zeros every ReLU sits at its kink, where torch gives no gradient.
    x = torch.randn(1, 1, size, size, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    out = net(x)
    out[0, PARTICLE, size // 2, size // 2].backward()
    grad = x.grad[0, 0].abs() > 0
    net.train(was_training)
    rows = torch.nonzero(grad.any(dim=1)).flatten()
    return int(rows.max() - rows.min() + 1) if len(rows) else 0
