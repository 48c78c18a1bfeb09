"""Building blocks shared by the builtin architectures.

Every builtin network derives from :class:`SegmentationNet`, which pads
inputs to a multiple of its total stride and crops the logits back, so a
network trained on 64 px boxes also runs on 128 or 256 px tiles, or on an
odd-sized slice edge, and always returns logits of the input's size.
"""

from __future__ import annotations

import math
from typing import TypeVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...errors import CryoInputError

MULTIPLE = 16
MIN_BOX = 32
PRIOR = 0.2
#: Negative slope of the activation the head reads, in new networks (see :meth:`SegmentationNet.use_leak`).
LEAK = 0.1

Net = TypeVar("Net", bound=nn.Module)


def check_box(box: int) -> int:
    """Validate a training box size.

    Parameters
    ----------
    box : int
        Box edge in pixels.

    Returns
    -------
    int
        ``box`` as an int.

    Raises
    ------
    CryoInputError
        If ``box`` is not a multiple of 16 of at least 32 px.
    """
    try:
        value = int(box)
    except (TypeError, ValueError):
        raise CryoInputError(None, f"box size must be an integer, not {box!r}") from None
    # Four halvings (pix2pix) must leave at least 2 px so that 4x4 kernels see real data.
    if value != box or value < MIN_BOX or value % MULTIPLE:
        raise CryoInputError(None, f"box size must be a multiple of {MULTIPLE} of at least {MIN_BOX} px, not {box}")
    return value


def conv_bn_relu(c_in: int, c_out: int, norm: bool = False) -> list[nn.Module]:
    """A 3x3 'same' convolution, optionally batch-normalised, then ReLU."""
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=not norm)]
    if norm:
        layers.append(nn.BatchNorm2d(c_out))
    layers.append(nn.ReLU(inplace=True))
    return layers


def up(c_in: int, c_out: int) -> nn.Module:
    """Double the resolution with a 2x2 stride-2 transposed convolution.

    Non-overlapping kernels avoid the checkerboard of 3x3 stride-2 ones and
    cost only ``c_in * c_out`` multiply-adds per output pixel.
    """
    return nn.ConvTranspose2d(c_in, c_out, 2, stride=2)


class SegmentationNet(nn.Module):
    """Base class: (B, 1, H, W) image -> (B, 1, H, W) logits for any H, W.

    Subclasses implement :meth:`body` for inputs whose sides are multiples of
    :attr:`multiple` and name their final layer ``head``.
    """

    multiple: int = MULTIPLE
    #: Buffers that model files written before they existed lack, and the value that reproduces those
    #: files' networks (filled in by :func:`fill_legacy_buffers` when such a file is loaded).
    legacy_buffers: dict[str, float] = {}

    def use_leak(self, leak: float = LEAK) -> None:
        """Make :meth:`leaky` the activation the head reads, with negative slope ``leak``.

        With a ReLU there, a model can settle on "the feature is where no unit
        fires": its logit on the feature is then the head's bias, a ceiling no
        gradient lifts, because zero units pass none.  On the harder simulated
        tomograms, particle models of vgg, unet and inception did exactly that (calibrated
        probabilities never above 0.50).  The slope is a buffer, so it travels
        with the weights it was trained with; files written before it existed
        load with slope 0, their ReLU (list it in :attr:`legacy_buffers`).
        """
        self.register_buffer("leak", torch.tensor(float(leak)))

    def leaky(self, h: torch.Tensor) -> torch.Tensor:
        """``h`` where it is positive, ``leak * h`` elsewhere (see :meth:`use_leak`)."""
        return torch.where(h >= 0, h, h * self.leak)

    def body(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """Logits for an input whose sides are multiples of :attr:`multiple`."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Per-pixel logits of the same height and width as ``x``.

        Parameters
        ----------
        x : torch.Tensor
            (B, 1, H, W) normalised images.

        Returns
        -------
        torch.Tensor
            (B, 1, H, W) logits (apply a sigmoid for probabilities).
        """
        if x.ndim != 4 or x.shape[1] != 1:
            raise ValueError(f"expected a (B, 1, H, W) batch, got shape {tuple(x.shape)}")
        h, w = x.shape[-2:]
        m = self.multiple
        ph, pw = (-h) % m, (-w) % m
        if ph or pw:
            # Replicate (not zero) padding: a zero border is a fake edge in normalised data.
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        # oneDNN runs these small-channel convolutions about twice as fast in NHWC.
        y = self.body(x.contiguous(memory_format=torch.channels_last))
        if ph or pw:
            y = y[..., :h, :w]
        return y.contiguous()


def initialise(net: Net, prior: float = PRIOR, head: nn.Module | None = None) -> Net:
    """He-initialise convolutions and bias the head towards ``prior``.

    A head with tiny weights and bias ``logit(prior)`` starts every pixel at
    probability ``prior``: features are rare, so a 0.5 start would spend the
    first epochs only learning the class balance.

    Parameters
    ----------
    net : torch.nn.Module
        The network, initialised in place; also converted to channels-last.
    prior : float
        Initial foreground probability of every pixel.
    head : torch.nn.Module, optional
        The final layer (default: ``net.head``).

    Returns
    -------
    torch.nn.Module
        ``net``.
    """
    for module in net.modules():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    head = net.head if head is None else head
    nn.init.normal_(head.weight, std=0.01)
    nn.init.constant_(head.bias, math.log(prior / (1.0 - prior)))
    return net.to(memory_format=torch.channels_last)


def fill_legacy_buffers(net: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` plus the legacy value of every :attr:`SegmentationNet.legacy_buffers` buffer it lacks.

    Parameters
    ----------
    net : torch.nn.Module
        The network the state is for (possibly wrapping a :class:`SegmentationNet`).
    state : dict of str to torch.Tensor
        A ``state_dict`` read from a model file.

    Returns
    -------
    dict of str to torch.Tensor
        A new dict; ``state`` itself is not modified.
    """
    filled = dict(state)
    for prefix, module in net.named_modules():
        for name, value in getattr(module, "legacy_buffers", {}).items():
            key = f"{prefix}.{name}" if prefix else name
            if key not in filled:
                filled[key] = torch.tensor(float(value))
    return filled
