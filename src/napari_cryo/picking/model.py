"""The picking network and its model file.

A small residual CNN in the spirit of Warp's BoxNet, evaluated fully
convolutionally over a whole micrograph: a stride-4 trunk of residual blocks
(the later ones dilated) gives a receptive field of about 100 working pixels
(five particle diameters), and a 1x1 head gives logits for three classes —
background, particle and junk — upsampled back to the working resolution.
"""

from __future__ import annotations

import math
import os
import reprlib
import unicodedata
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import CryoInputError
from ..io.torch_files import load_model_payload, save_torch

CLASSES = ("background", "particle", "junk")
BACKGROUND, PARTICLE, JUNK = 0, 1, 2
FORMAT = "napari-cryo-picker"
FORMAT_VERSION = 1
GENERIC_MODEL = "generic.pt"
#: Bounds on what a model file may ask for: generous for real models (width 16, about 1 MB),
#: small enough that a crafted file cannot make napari-cryo build a huge network.
MAX_WIDTH = 128
MAX_FILE_BYTES = 256 * 2**20
MAX_NAME_LENGTH = 200
#: Local background removed by new models, in working pixels (two particle diameters).
DEFAULT_HIGHPASS = 40.0
MAX_HIGHPASS = 1000.0


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


class LocalBackground(nn.Module):
    """Subtracts a Gaussian-smoothed copy of the image: a fixed, not learned, high-pass.

    Ice-thickness gradients, charging and the 1/f noise of real detectors put
    most of a micrograph's power at scales far above a particle; removing what
    varies more slowly than ``sigma`` working pixels (two diameters by default)
    makes the network's input look alike across micrographs.  The blur runs on
    a 4x-shrunk copy, so it costs almost nothing on a 4k micrograph.
    """

    def __init__(self, sigma: float) -> None:
        super().__init__()
        self.sigma = float(sigma)
        small = max(self.sigma / 4.0, 0.5)
        radius = int(math.ceil(3 * small))
        t = torch.arange(-radius, radius + 1, dtype=torch.float32)
        kernel = torch.exp(-0.5 * (t / small) ** 2)
        self.register_buffer("kernel", (kernel / kernel.sum()).view(1, 1, 1, -1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        small = F.avg_pool2d(x, 4, ceil_mode=True) if min(h, w) >= 8 else x
        r = self.kernel.shape[-1] // 2
        pad_mode = "reflect" if min(small.shape[-2:]) > r else "replicate"
        small = F.conv2d(F.pad(small, (r, r, 0, 0), mode=pad_mode), self.kernel)
        small = F.conv2d(F.pad(small, (0, 0, r, r), mode=pad_mode), self.kernel.transpose(-1, -2))
        return x - F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)


class PickerNet(nn.Module):
    """Fully convolutional 3-class per-pixel classifier.

    Parameters
    ----------
    width : int
        Channels of the first stage; later stages use 2x and 4x.
    highpass : float
        Sigma in working pixels of the :class:`LocalBackground` removed first (0: none,
        as in models before version 1.1 of the model file).
    """

    def __init__(self, width: int = 16, highpass: float = 0.0) -> None:
        super().__init__()
        w = width
        self.highpass = float(highpass)
        self.background = LocalBackground(highpass) if highpass > 0 else nn.Identity()
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
        logits = self.head(self.trunk(self.stem(self.background(x))))
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

    @property
    def highpass(self) -> float:
        """Sigma (working pixels) of the local background the network removes first (0: none)."""
        return self.net.highpass

    def save(self, path: str | os.PathLike, overwrite: bool = False, half: bool = False) -> Path:
        """Write the model file atomically (``half`` stores float16 weights)."""

        state = {k: (v.half() if half and v.is_floating_point() else v).cpu() for k, v in self.net.state_dict().items()}
        payload = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "name": self.name,
            "width": self.width,
            "highpass": self.highpass,
            "invert": self.invert,
            "threshold": self.threshold,
            "history": self.history,
            "classes": list(CLASSES),
            "state_dict": state,
        }
        return save_torch(payload, path, overwrite=overwrite)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "PickerModel":
        """Read a model file, checking that it is one.

        The file is read with ``weights_only`` (tensors and plain values,
        never code), and every setting is checked before a network is built.

        Raises
        ------
        CryoInputError
            If the file is missing, not a torch file, not a picking model,
            from a newer napari-cryo, or holds settings or weights out of range.
        """
        path = Path(path)
        payload = _read_payload(path)
        width = _integer(payload, "width", 16, 1, MAX_WIDTH, path)
        highpass = _real(payload, "highpass", 0.0, 0.0, MAX_HIGHPASS, path)
        settings = {
            "name": _name(payload.get("name", path.stem), path),
            "invert": _flag(payload, "invert", path),
            "threshold": _real(payload, "threshold", 0.5, 0.0, 1.0, path),
            "history": _records(payload, "history", path),
        }
        state = payload.get("state_dict")
        if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
            raise CryoInputError(path, "holds no weights (state_dict is not a set of named tensors)")
        net = PickerNet(width=width, highpass=highpass)
        try:
            net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
        except RuntimeError as exc:
            raise CryoInputError(path, f"weights do not fit the picking network ({str(exc).splitlines()[0][:200]})") from None
        net.eval()
        return cls(net=net, width=width, **settings)

    @classmethod
    def generic(cls) -> "PickerModel":
        """The generic model shipped with napari-cryo (trained on simulated data)."""
        ref = resources.files("napari_cryo.picking") / "weights" / GENERIC_MODEL
        with resources.as_file(ref) as path:
            if not Path(path).is_file():
                raise CryoInputError(path, "the generic picking model is missing from this installation")
            return cls.load(path)

    @classmethod
    def new(cls, name: str = "untrained", width: int = 16, seed: int = 0, highpass: float = DEFAULT_HIGHPASS) -> "PickerModel":
        """A freshly initialised model."""
        torch.manual_seed(seed)
        return cls(net=PickerNet(width=width, highpass=highpass), name=name, width=width)

    def copy(self, name: str | None = None) -> "PickerModel":
        """A deep copy (for fine-tuning without touching the original)."""
        import copy

        new = copy.deepcopy(self)
        if name is not None:
            new.name = name
        return new


def _read_payload(path: Path) -> dict[str, Any]:
    """The model file's contents, unpickled without running code; its format and version checked."""
    return load_model_payload(path, FORMAT, FORMAT_VERSION, "picking model", MAX_FILE_BYTES)


def _integer(payload: dict[str, Any], key: str, default: int, low: int, high: int, path: Path) -> int:
    """``payload[key]``, a whole number from ``low`` to ``high``."""
    value = payload.get(key, default)
    if type(value) is not int or not low <= value <= high:
        raise CryoInputError(path, f"{key} must be a whole number from {low} to {high}, not {reprlib.repr(value)}")
    return value


def _real(payload: dict[str, Any], key: str, default: float, low: float, high: float, path: Path) -> float:
    """``payload[key]``, a number from ``low`` to ``high`` (NaN and infinities fail the range test)."""
    value = payload.get(key, default)
    if type(value) not in (int, float) or not low <= value <= high:
        raise CryoInputError(path, f"{key} must be a number from {low:g} to {high:g}, not {reprlib.repr(value)}")
    return float(value)


def _flag(payload: dict[str, Any], key: str, path: Path) -> bool:
    value = payload.get(key, False)
    if not isinstance(value, bool):
        raise CryoInputError(path, f"{key} must be true or false, not {reprlib.repr(value)}")
    return value


def _name(value: Any, path: Path) -> str:
    """A model name: text without control characters (it is shown and written into pick files)."""
    if not isinstance(value, str) or len(value) > MAX_NAME_LENGTH or any(unicodedata.category(c) in ("Cc", "Cs") for c in value):
        raise CryoInputError(path, f"name must be text of at most {MAX_NAME_LENGTH} characters without control characters, not {reprlib.repr(value)}")
    return value


def _records(payload: dict[str, Any], key: str, path: Path) -> list[dict[str, Any]]:
    value = payload.get(key, [])
    if not isinstance(value, list) or not all(isinstance(r, dict) for r in value):
        raise CryoInputError(path, f"{key} must be a list of records")
    return value


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
