"""XCryoNet in torch: a primary branch, attention-guided attribute branches and a fusion branch.

* **Primary branch.** A feature network (one convolution, two residual
  blocks) feeds:
  - a classifier: pooling, then two fully connected layers for the four
    attributes, then two more for the overall score from those attributes;
  - a decoder (two transposed convolutions and a convolution) that
    reconstructs the input.
* **Attention.** The primary feature maps are split into two halves, one for
  cracking and one for contamination. Each half is max-pooled over channels,
  upsampled to the input size and passed through a sigmoid.
* **Attribute branches.** Each attention-weighted crop feeds an attribute
  branch. The branches have the same design as the primary one, but predict a
  single attribute, and each has its own decoder.
* **Fusion branch.** Pooled features of all three branches give the final
  attributes and overall score.

Scores are regressed on the 0–4 scale: a sigmoid output scaled by 4.
"""

from __future__ import annotations

import os
import reprlib
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import CryoInputError
from ..io.torch_files import load_model_payload, save_torch

ATTRIBUTES = ("brightness", "squareness", "cracking", "contamination")
SCORES = (*ATTRIBUTES, "overall")
CRACKING, CONTAMINATION = 2, 3
FORMAT = "napari-cryo-squares"
FORMAT_VERSION = 1
VARIANTS = ("xcryonet", "primary")
#: Bounds on what a model file may ask for: generous for real models (32 channels, 64 px crops,
#: under 1 MB), small enough that a crafted file cannot make napari-cryo build a huge network.
#: Channels and crops are multiples of 4: the branches halve the channels for the attention
#: and the decoder quarters them, and the crop is downsampled and upsampled by 4.
MAX_CHANNELS = 256
CROP_SIZES = (16, 1024)
MAX_FILE_BYTES = 256 * 2**20
MAX_NAME_LENGTH = 200


class Residual(nn.Module):
    """Residual block: two 3x3 convolutions with batch norm, 1x1 shortcut when the shape changes."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out),
        )
        self.skip = nn.Identity() if (c_in == c_out and stride == 1) else nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.skip(x))


class FeatureNet(nn.Module):
    """One convolution and two residual blocks: (B,1,S,S) -> (B,C,S/4,S/4)."""

    def __init__(self, channels: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, channels // 2, 3, 1, 1, bias=False), nn.BatchNorm2d(channels // 2), nn.ReLU(inplace=True),
            Residual(channels // 2, channels, 2),
            Residual(channels, channels, 2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Decoder(nn.Module):
    """Two transposed convolutions and a convolution: features back to the crop."""

    def __init__(self, channels: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.ConvTranspose2d(channels, channels // 2, 4, 2, 1), nn.ReLU(inplace=True),
            nn.ConvTranspose2d(channels // 2, channels // 4, 4, 2, 1), nn.ReLU(inplace=True),
            nn.Conv2d(channels // 4, 1, 3, 1, 1),
        )

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.net(f)


def _score(x: torch.Tensor) -> torch.Tensor:
    return 4.0 * torch.sigmoid(x)


class Branch(nn.Module):
    """Features, a classifier for ``n_out`` attributes (plus overall when ``overall``), a decoder."""

    def __init__(self, channels: int, n_out: int, overall: bool) -> None:
        super().__init__()
        self.features = FeatureNet(channels)
        self.fc = nn.Sequential(nn.Linear(channels, 64), nn.ReLU(inplace=True), nn.Linear(64, n_out))
        self.overall = nn.Sequential(nn.Linear(n_out, 16), nn.ReLU(inplace=True), nn.Linear(16, 1)) if overall else None
        self.decoder = Decoder(channels)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.features(x)
        pooled = F.adaptive_avg_pool2d(f, 1).flatten(1)
        attrs = _score(self.fc(pooled))
        out = {"features": f, "pooled": pooled, "attributes": attrs, "reconstruction": self.decoder(f)}
        if self.overall is not None:
            out["overall"] = _score(self.overall(attrs / 4.0))[:, 0]
        return out


class XCryoNet(nn.Module):
    """The full network, or the primary branch alone (``variant="primary"``)."""

    def __init__(self, channels: int = 32, variant: str = "xcryonet") -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        self.variant = variant
        self.channels = channels
        self.primary = Branch(channels, len(ATTRIBUTES), overall=True)
        if variant == "xcryonet":
            self.cracking = Branch(channels, 1, overall=False)
            self.contamination = Branch(channels, 1, overall=False)
            self.fusion = nn.Sequential(nn.Linear(3 * channels, 64), nn.ReLU(inplace=True), nn.Linear(64, len(SCORES)))

    def attention(self, features: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Cracking and contamination attention maps (B,1,S,S) in [0, 1]."""
        half = features.shape[1] // 2
        maps = []
        for part in (features[:, :half], features[:, half:]):
            pooled = part.max(dim=1, keepdim=True).values
            maps.append(torch.sigmoid(F.interpolate(pooled, size=(size, size), mode="bilinear", align_corners=False)))
        return maps[0], maps[1]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B,1,S,S) crops -> dict of predictions, reconstructions and attention maps."""
        p = self.primary(x)
        out = {
            "primary_attributes": p["attributes"],
            "primary_overall": p["overall"],
            "primary_reconstruction": p["reconstruction"],
            "primary_pooled": p["pooled"],
        }
        if self.variant == "primary":
            out["scores"] = torch.cat([p["attributes"], p["overall"][:, None]], dim=1)
            return out
        att_crack, att_cont = self.attention(p["features"], x.shape[-1])
        c = self.cracking(x * att_crack)
        m = self.contamination(x * att_cont)
        fused = self.fusion(torch.cat([p["pooled"], c["pooled"], m["pooled"]], dim=1))
        out.update(
            {
                "attention_cracking": att_crack,
                "attention_contamination": att_cont,
                "cracking": c["attributes"][:, 0],
                "contamination": m["attributes"][:, 0],
                "cracking_reconstruction": c["reconstruction"],
                "contamination_reconstruction": m["reconstruction"],
                "cracking_input": x * att_crack,
                "contamination_input": x * att_cont,
                "cracking_pooled": c["pooled"],
                "contamination_pooled": m["pooled"],
                "scores": _score(fused),
            }
        )
        return out


@dataclass
class SquareModel:
    """A square-scoring network with its settings and training history."""

    net: XCryoNet
    crop_size: int = 64
    name: str = "squares"
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def variant(self) -> str:
        return self.net.variant

    def save(self, path: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write the model file atomically."""

        payload = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "name": self.name,
            "variant": self.net.variant,
            "channels": self.net.channels,
            "crop_size": self.crop_size,
            "history": self.history,
            "state_dict": {k: v.cpu() for k, v in self.net.state_dict().items()},
        }
        return save_torch(payload, path, overwrite=overwrite)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "SquareModel":
        """Read a model file, checking that it is one.

        The file is read with ``weights_only`` (tensors and plain values,
        never code), and every setting is checked before a network is built.

        Raises
        ------
        CryoInputError
            If the file is missing, not a torch file, not a square-scoring
            model, from a newer napari-cryo, or holds settings or weights out of range.
        """
        path = Path(path)
        payload = _read_payload(path)
        variant = payload.get("variant", "xcryonet")
        if not isinstance(variant, str) or variant not in VARIANTS:
            raise CryoInputError(path, f"variant must be one of {', '.join(VARIANTS)}, not {reprlib.repr(variant)}")
        channels = _multiple_of_4(payload, "channels", 32, 4, MAX_CHANNELS, path)
        crop_size = _multiple_of_4(payload, "crop_size", 64, *CROP_SIZES, path)
        name = payload.get("name", path.stem)
        if not isinstance(name, str) or len(name) > MAX_NAME_LENGTH or any(unicodedata.category(c) in ("Cc", "Cs") for c in name):
            raise CryoInputError(path, f"name must be text of at most {MAX_NAME_LENGTH} characters without control characters, not {reprlib.repr(name)}")
        history = payload.get("history", [])
        if not isinstance(history, list) or not all(isinstance(r, dict) for r in history):
            raise CryoInputError(path, "history must be a list of records")
        state = payload.get("state_dict")
        if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
            raise CryoInputError(path, "holds no weights (state_dict is not a set of named tensors)")
        net = XCryoNet(channels, variant)
        try:
            net.load_state_dict(state)
        except RuntimeError as exc:
            raise CryoInputError(path, f"weights do not fit the network ({str(exc).splitlines()[0][:200]})") from None
        net.eval()
        return cls(net, crop_size, name, history)


def _read_payload(path: Path) -> dict[str, Any]:
    """The model file's contents, unpickled without running code; its format and version checked."""
    return load_model_payload(path, FORMAT, FORMAT_VERSION, "square-scoring model", MAX_FILE_BYTES)


def _multiple_of_4(payload: dict[str, Any], key: str, default: int, low: int, high: int, path: Path) -> int:
    """``payload[key]``, a multiple of 4 from ``low`` to ``high``."""
    value = payload.get(key, default)
    if type(value) is not int or not low <= value <= high or value % 4:
        raise CryoInputError(path, f"{key} must be a multiple of 4 from {low} to {high}, not {reprlib.repr(value)}")
    return value
