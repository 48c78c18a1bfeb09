"""VGG-style encoder-decoder without skip connections (the default).

Three max-pooled levels of paired 3x3 convolutions (16, 32, 64 channels), a
64-channel bottleneck at 1/8 resolution, and a mirrored decoder of
transposed-convolution upsampling and 3x3 convolutions. Without skips the
output is smooth, which suits membranes, carbon and other extended
features, and it is the fastest builtin for slice-by-slice inference.

The last decoder block is leaky (slope 0.1) instead of a ReLU
(:meth:`~._layers.SegmentationNet.use_leak`): on the harder simulated
tomograms a particle model with the ReLU stopped at calibrated
probabilities of 0.50 (held-out Dice 0.54); the leaky block reached 0.62 in
the same 150 s budget.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from . import Architecture
from ._layers import LEAK, SegmentationNet, check_box, conv_bn_relu, initialise, up


class VGGNet(SegmentationNet):
    """VGG encoder-decoder: (B, 1, H, W) -> (B, 1, H, W) logits.

    Parameters
    ----------
    widths : tuple of int
        Channels of the three encoder levels; the bottleneck uses the last.
    """

    legacy_buffers = {"leak": 0.0}  # files without it were trained with a ReLU there

    def __init__(self, widths: tuple[int, int, int] = (16, 32, 64), leak: float = LEAK) -> None:
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
            up(b, a), *conv_bn_relu(a, a, norm=True)[:-1],
        )
        self.use_leak(leak)
        self.head = nn.Conv2d(a, 1, 1)

    def body(self, x: torch.Tensor) -> torch.Tensor:
        h = self.decoder(self.encoder(x))
        return self.head(self.leaky(h))


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
