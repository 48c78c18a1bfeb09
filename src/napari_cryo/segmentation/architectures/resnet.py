"""Residual encoder-decoder (LinkNet-like).

A 3x3 stem and residual blocks at 16, 32 and 64 channels, downsampling by
strided residual blocks to 1/8 resolution, the last one dilated to widen
the receptive field. The decoder upsamples and *adds* the
encoder features of the same resolution (cheaper than concatenation) before
a residual block per level.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import Architecture
from ._layers import SegmentationNet, check_box, initialise, up


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with an identity, or strided 1x1, shortcut.

    Parameters
    ----------
    c_in, c_out : int
        Channels in and out.
    stride : int
        1, or 2 to halve the resolution.
    dilation : int
        Dilation of both convolutions.
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1, dilation: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=dilation, dilation=dilation)
        # Batch norm only before the sum: one per block keeps training stable at half the cost.
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=dilation, dilation=dilation, bias=False)
        self.norm = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Identity() if stride == 1 and c_in == c_out else nn.Conv2d(c_in, c_out, 1, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(self.conv2(F.relu(self.conv1(x), inplace=True)))
        return F.relu(y + self.shortcut(x), inplace=True)


class ResNet(SegmentationNet):
    """Residual encoder-decoder: (B, 1, H, W) -> (B, 1, H, W) logits.

    Parameters
    ----------
    widths : tuple of int
        Channels at full, 1/2 and 1/4 resolution; 1/8 uses the last.
    """

    def __init__(self, widths: tuple[int, int, int] = (16, 32, 64)) -> None:
        super().__init__()
        a, b, c = widths
        self.stem = nn.Sequential(nn.Conv2d(1, a, 3, padding=1), nn.ReLU(inplace=True))
        self.enc1 = ResidualBlock(a, a)
        self.enc2 = ResidualBlock(a, b, stride=2)
        self.enc3 = ResidualBlock(b, c, stride=2)
        self.enc4 = ResidualBlock(c, c, stride=2, dilation=2)
        self.up3, self.dec3 = up(c, c), ResidualBlock(c, c)
        self.up2, self.dec2 = up(c, b), ResidualBlock(b, b)
        self.up1, self.dec1 = up(b, a), ResidualBlock(a, a)
        self.head = nn.Conv2d(a, 1, 1)

    def body(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(self.stem(x))
        e2 = self.enc2(e1)
        e3 = self.enc3(e2)
        y = self.enc4(e3)
        y = self.dec3(self.up3(y) + e3)
        y = self.dec2(self.up2(y) + e2)
        y = self.dec1(self.up1(y) + e1)
        return self.head(y)


def build(box: int) -> ResNet:
    """A new residual encoder-decoder for training boxes of ``box`` px (a multiple of 16, >= 32)."""
    check_box(box)
    net = initialise(ResNet())
    for block in net.modules():
        if isinstance(block, ResidualBlock):
            # Zero-init residual branches (Goyal et al. 2017): each block starts as its
            # shortcut, so activations do not grow with depth and the head starts at its prior.
            nn.init.zeros_(block.norm.weight)
    return net


ARCHITECTURE = Architecture(
    name="resnet",
    title="ResNet encoder-decoder",
    description="Encoder-decoder of residual blocks with additive skips and a dilated bottleneck.",
    build=build,
)
