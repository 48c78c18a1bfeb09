"""pix2pix: a UNet generator trained against a PatchGAN discriminator.

The generator follows Isola et al. (2017): 4x4 stride-2 convolutions with
leaky ReLU down to 1/16 resolution (16, 32, 64, 64 channels), and 4x4
stride-2 transposed convolutions back up, each concatenated with the
encoder features of the same resolution. The discriminator sees the image
and a probability map together and scores overlapping patches as real
(annotation) or generated, which pushes masks towards crisp, annotation-like
shapes; training adds its adversarial loss to the usual per-pixel loss.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from . import Architecture
from ._layers import SegmentationNet, check_box, initialise


def _down(c_in: int, c_out: int, norm: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1, bias=not norm)]
    if norm:
        layers.append(nn.BatchNorm2d(c_out))
    layers.append(nn.LeakyReLU(0.2, inplace=True))
    return nn.Sequential(*layers)


def _up(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)
    )


class Pix2PixGenerator(SegmentationNet):
    """pix2pix UNet generator: (B, 1, H, W) -> (B, 1, H, W) logits.

    Parameters
    ----------
    widths : tuple of int
        Channels at 1/2, 1/4, 1/8 and 1/16 resolution.
    """

    def __init__(self, widths: tuple[int, int, int, int] = (16, 32, 64, 64)) -> None:
        super().__init__()
        a, b, c, d = widths
        # As in pix2pix: no norm on the first layer (it would normalise away the input contrast)
        # nor on the innermost one (2x2 maps at 32 px boxes leave little to normalise over).
        self.down1, self.down2, self.down3, self.down4 = _down(1, a, norm=False), _down(a, b), _down(b, c), _down(c, d, norm=False)
        self.up4, self.up3, self.up2 = _up(d, c), _up(2 * c, b), _up(2 * b, a)
        self.head = nn.ConvTranspose2d(2 * a, 1, 4, stride=2, padding=1)

    def body(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.down1(x)
        e2 = self.down2(e1)
        e3 = self.down3(e2)
        y = self.up4(self.down4(e3))
        y = self.up3(torch.cat([y, e3], dim=1))
        y = self.up2(torch.cat([y, e2], dim=1))
        return self.head(torch.cat([y, e1], dim=1))


class PatchDiscriminator(nn.Module):
    """Conditional PatchGAN: (B, 2, H, W) image and probability -> (B, 1, H/4 - 2, W/4 - 2) logits.

    Each output scores a patch of about 34 px (half a training box), so the
    discriminator judges local shape rather than the whole box.

    Parameters
    ----------
    widths : tuple of int
        Channels of the three feature layers.
    """

    def __init__(self, widths: tuple[int, int, int] = (16, 32, 64)) -> None:
        super().__init__()
        a, b, c = widths
        self.features = nn.Sequential(
            _down(2, a, norm=False),
            _down(a, b),
            nn.Conv2d(b, c, 4, stride=1, padding=1, bias=False), nn.BatchNorm2d(c), nn.LeakyReLU(0.2, inplace=True),
        )
        self.head = nn.Conv2d(c, 1, 4, stride=1, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Patch logits (real annotation vs generated) for ``torch.cat([image, probability], 1)``."""
        if x.ndim != 4 or x.shape[1] != 2:
            raise ValueError(f"expected a (B, 2, H, W) image+probability batch, got shape {tuple(x.shape)}")
        return self.head(self.features(x.contiguous(memory_format=torch.channels_last))).contiguous()


def build(box: int) -> Pix2PixGenerator:
    """A new pix2pix generator for training boxes of ``box`` px (a multiple of 16, >= 32)."""
    check_box(box)
    return initialise(Pix2PixGenerator())


def build_discriminator(box: int) -> PatchDiscriminator:
    """A new PatchGAN discriminator for training boxes of ``box`` px (a multiple of 16, >= 32)."""
    check_box(box)
    # Prior 0.5: the discriminator starts undecided.
    return initialise(PatchDiscriminator(), prior=0.5)


ARCHITECTURE = Architecture(
    name="pix2pix",
    title="pix2pix (UNet generator + PatchGAN)",
    description="UNet generator trained with a PatchGAN discriminator for crisp, annotation-like masks.",
    build=build,
    discriminator=build_discriminator,
)
