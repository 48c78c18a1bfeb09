"""UNet: three down-levels with concatenated skip connections.

Encoder levels of 16, 32 and 64 channels and a 64-channel bottleneck at 1/8
resolution; each decoder level upsamples, concatenates the encoder features
of the same resolution and applies two 3x3 convolutions. The skips carry
fine detail to the output, for thin or small features.  The last decoder
level is leaky (:meth:`~._layers.SegmentationNet.use_leak`): with a ReLU, a
particle model on the harder simulated tomograms stopped at calibrated
probabilities of 0.50.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import Architecture
from ._layers import LEAK, SegmentationNet, check_box, conv_bn_relu, initialise, up


def _double(c_in: int, c_out: int, activate: bool = True) -> nn.Sequential:
    """Two 3x3 convolutions; without ``activate``, the second's ReLU is left to the caller."""
    layers = [*conv_bn_relu(c_in, c_out), *conv_bn_relu(c_out, c_out, norm=True)]
    return nn.Sequential(*(layers if activate else layers[:-1]))


class UNet(SegmentationNet):
    """UNet: (B, 1, H, W) -> (B, 1, H, W) logits.

    Parameters
    ----------
    widths : tuple of int
        Channels of the three encoder levels; the bottleneck uses the last.
    """

    legacy_buffers = {"leak": 0.0}  # files without it were trained with a ReLU there

    def __init__(self, widths: tuple[int, int, int] = (16, 32, 64), leak: float = LEAK) -> None:
        super().__init__()
        a, b, c = widths
        self.enc1, self.enc2, self.enc3 = _double(1, a), _double(a, b), _double(b, c)
        self.bottleneck = _double(c, c)
        self.up3, self.dec3 = up(c, c), _double(2 * c, c)
        self.up2, self.dec2 = up(c, b), _double(2 * b, b)
        self.up1, self.dec1 = up(b, a), _double(2 * a, a, activate=False)
        self.use_leak(leak)
        self.head = nn.Conv2d(a, 1, 1)

    def body(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(F.max_pool2d(e1, 2))
        e3 = self.enc3(F.max_pool2d(e2, 2))
        y = self.bottleneck(F.max_pool2d(e3, 2))
        y = self.dec3(torch.cat([self.up3(y), e3], dim=1))
        y = self.dec2(torch.cat([self.up2(y), e2], dim=1))
        y = self.dec1(torch.cat([self.up1(y), e1], dim=1))
        return self.head(self.leaky(y))


def build(box: int) -> UNet:
    """A new UNet for training boxes of ``box`` px (a multiple of 16, >= 32)."""
    check_box(box)
    return initialise(UNet())


ARCHITECTURE = Architecture(
    name="unet",
    title="UNet",
    description="Encoder-decoder with skip connections that keep fine detail, for thin or small features.",
    build=build,
)
