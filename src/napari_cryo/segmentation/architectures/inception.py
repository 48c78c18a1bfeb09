"""Encoder-decoder of inception blocks.

Each inception block runs four branches in parallel — 1x1, 3x3, 5x5 (as two
stacked 3x3, which costs less for the same field) and 3x3 max-pool then
1x1 — and concatenates them, so every level sees several scales at once.
Levels of 16, 32 and 64 channels down to 1/8 resolution; the decoder
upsamples and adds the encoder features of the same resolution.  The last
decoder block is leaky (:meth:`~._layers.SegmentationNet.use_leak`): with a
ReLU, a particle model on the harder simulated tomograms stopped at
calibrated probabilities of 0.50.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import Architecture
from ._layers import LEAK, SegmentationNet, check_box, initialise, up


class InceptionBlock(nn.Module):
    """Parallel 1x1, 3x3, double-3x3 and pool branches, concatenated to ``c_out``.

    Parameters
    ----------
    c_in, c_out : int
        Channels in and out; ``c_out`` must be a multiple of 4.
    """

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        q = c_out // 4
        self.b1 = nn.Conv2d(c_in, q, 1)
        self.b3 = nn.Conv2d(c_in, q, 3, padding=1)
        self.b5 = nn.Sequential(nn.Conv2d(c_in, q, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(q, q, 3, padding=1))
        self.bp = nn.Conv2d(c_in, c_out - 3 * q, 1)
        # One norm over the concatenation instead of one per branch.
        self.norm = nn.BatchNorm2d(c_out)

    def pre_activation(self, x: torch.Tensor) -> torch.Tensor:
        """The block's output before its ReLU."""
        pooled = F.max_pool2d(x, 3, stride=1, padding=1)
        return self.norm(torch.cat([self.b1(x), self.b3(x), self.b5(x), self.bp(pooled)], dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.pre_activation(x), inplace=True)


class InceptionNet(SegmentationNet):
    """Inception encoder-decoder: (B, 1, H, W) -> (B, 1, H, W) logits.

    Parameters
    ----------
    widths : tuple of int
        Channels at full, 1/2 and 1/4 resolution (multiples of 4); 1/8 uses the last.
    """

    legacy_buffers = {"leak": 0.0}  # files without it were trained with a ReLU there

    def __init__(self, widths: tuple[int, int, int] = (16, 32, 64), leak: float = LEAK) -> None:
        super().__init__()
        a, b, c = widths
        self.stem = nn.Sequential(nn.Conv2d(1, a, 3, padding=1), nn.ReLU(inplace=True))
        self.enc1 = InceptionBlock(a, a)
        self.enc2 = nn.Sequential(InceptionBlock(a, b), InceptionBlock(b, b))
        self.enc3 = nn.Sequential(InceptionBlock(b, c), InceptionBlock(c, c))
        self.bottleneck = nn.Sequential(InceptionBlock(c, c), InceptionBlock(c, c))
        self.up3, self.dec3 = up(c, c), InceptionBlock(c, c)
        self.up2, self.dec2 = up(c, b), InceptionBlock(b, b)
        self.up1, self.dec1 = up(b, a), InceptionBlock(a, a)
        self.use_leak(leak)
        self.head = nn.Conv2d(a, 1, 1)

    def body(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(self.stem(x))
        e2 = self.enc2(F.max_pool2d(e1, 2))
        e3 = self.enc3(F.max_pool2d(e2, 2))
        y = self.bottleneck(F.max_pool2d(e3, 2))
        y = self.dec3(self.up3(y) + e3)
        y = self.dec2(self.up2(y) + e2)
        return self.head(self.leaky(self.dec1.pre_activation(self.up1(y) + e1)))


def build(box: int) -> InceptionNet:
    """A new inception encoder-decoder for training boxes of ``box`` px (a multiple of 16, >= 32)."""
    check_box(box)
    return initialise(InceptionNet())


ARCHITECTURE = Architecture(
    name="inception",
    title="InceptionNet encoder-decoder",
    description="Encoder-decoder of multi-scale inception blocks (1x1, 3x3, 5x5 and pooling branches).",
    build=build,
)
