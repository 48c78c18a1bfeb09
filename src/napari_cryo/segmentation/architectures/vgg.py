"""VGG-style encoder-decoder without skip connections (the default).

Three max-pooled levels of paired 3x3 convolutions (16, 32, 64 channels), a
64-channel bottleneck at 1/8 resolution, and a mirrored decoder of
transposed-convolution upsampling and 3x3 convolutions. Without skips the
output is smooth, which suits membranes, carbon and other extended
features, and it is the fastest builtin for slice-by-slice inference.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from . import Architecture
from ._layers import SegmentationNet, check_box, conv_bn_relu, initialise, up


class VGGNet(SegmentationNet):
    """VGG encoder-decoder: (B, 1, H, W) -> (B, 1, H, W) logits.

    Parameters
    ----------
    widths : tuple of int
        Channels of the three encoder levels; the bottleneck uses the last.
    """

    def __init__(self, widths: tuple[int, int, int] = (16, 32, 64)) -> None:
        super().__init__()
        a, b, c = widths
        # One batch norm per level: enough to keep training stable, cheap at inference.
        self.encoder = nn.Sequential(
            *conv_bn_relu(1, a), *conv_bn_relu(a, a, norm=True), nn.MaxPool2d(2),
            *conv_bn_relu(a, b), *conv_bn_relu(b, b, norm=True), nn.MaxPool2d(2),
            *conv_bn_relu(b, c), *conv_bn_relu(c, c, norm=True), nn.MaxPool2d(2),
            *conv_bn_relu(c, c), *conv_bn_relu(c, c, norm=True),
        )
        self.decoder = nn.Sequential(
            up(c, c), *conv_bn_relu(c, c, norm=True),
            up(c, b), *conv_bn_relu(b, b, norm=True),
            up(b, a), *conv_bn_relu(a, a, norm=True),
        )
        self.head = nn.Conv2d(a, 1, 1)

    def body(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.decoder(self.encoder(x)))


def build(box: int) -> VGGNet:
    """A new VGG network for training boxes of ``box`` px (a multiple of 16, >= 32)."""
    check_box(box)
    return initialise(VGGNet())


ARCHITECTURE = Architecture(
    name="vgg",
    title="VGGNet encoder-decoder",
    description="Fast VGG-style encoder-decoder without skip connections; smooth masks, the default.",
    build=build,
)
