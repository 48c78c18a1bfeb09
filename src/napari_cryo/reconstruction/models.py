"""Networks of the two reconstruction methods: pose encoders and volume decoders.

* :class:`PoseEncoder` (cryoAI, Levy et al. 2022): a bank of Gaussian
  low-pass filters, then a VGG-like CNN, then heads that predict a rotation
  in the 6-D (S² × S²) parametrisation and a 2-D translation.  With
  ``heads > 1`` it is cryoSPIN's multi-head encoder (Shekarforoush et al.
  2024): several rotation hypotheses per image, the best one chosen by
  reconstruction error.
* :class:`FourierNet` (cryoAI): an implicit Fourier-space volume, amplitude
  ``exp(SIREN_a(k))`` times phase ``exp(i SIREN_p(k))``.  Hermitian symmetry
  holds by construction: the log-amplitude is symmetrised and the phase
  anti-symmetrised over ``k`` and ``-k``, so ``V(-k) = conj(V(k))`` exactly.
* :class:`VoxelVolume` (cryoSPIN): an explicit voxel volume whose Fourier
  transform is sliced (torch-fourier-slice through :mod:`.physics`).

Both decoders render central slices on the ``rfft2`` grid of an image whose
centre is pixel ``L // 2``, the layout :mod:`.physics` uses for images.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def rotation_from_6d(x: torch.Tensor) -> torch.Tensor:
    """(…, 6) -> (…, 3, 3) rotation matrices by Gram-Schmidt (Zhou et al. 2019).

    The two 3-vectors become the first two rows; the third is their cross
    product.  Continuous over SO(3), which is why it trains better than Euler
    angles or quaternions.
    """
    a, b = x[..., :3], x[..., 3:]
    r1 = F.normalize(a, dim=-1)
    r2 = F.normalize(b - (r1 * b).sum(-1, keepdim=True) * r1, dim=-1)
    r3 = torch.cross(r1, r2, dim=-1)
    return torch.stack([r1, r2, r3], dim=-2)


def rotation_to_6d(r: torch.Tensor) -> torch.Tensor:
    """(…, 3, 3) -> (…, 6): the first two rows (the inverse of :func:`rotation_from_6d`)."""
    return torch.cat([r[..., 0, :], r[..., 1, :]], dim=-1)


def gaussian_bank(images: torch.Tensor, sigmas: tuple[float, ...]) -> torch.Tensor:
    """Stack low-passed copies of (B, L, L) images as channels (B, len(sigmas), L, L).

    Filtering in Fourier space keeps it exact for any sigma; sigma 0 is the
    image itself.  Low-passed channels let the encoder see the overall shape
    through the noise, as in cryoAI.
    """
    n = images.shape[-1]
    ft = torch.fft.rfft2(images)
    ky = torch.fft.fftfreq(n, device=images.device)[:, None]
    kx = torch.fft.rfftfreq(n, device=images.device)[None, :]
    k2 = kx**2 + ky**2
    out = []
    for s in sigmas:
        if s <= 0:
            out.append(images)
        else:
            out.append(torch.fft.irfft2(ft * torch.exp(-2.0 * math.pi**2 * s**2 * k2), s=images.shape[-2:]))
    return torch.stack(out, dim=1)


class PoseEncoder(nn.Module):
    """Images -> rotations (one per head) and a translation.

    Parameters
    ----------
    box : int
        Image size (a multiple of 8).
    heads : int
        Rotation hypotheses per image (1: cryoAI; cryoSPIN uses 7).
    width : int
        Channels of the first convolution (doubled at each level).
    sigmas : tuple of float
        Gaussian filter bank (pixels).
    max_shift : float
        Largest translation in pixels (the head's tanh range).
    """

    def __init__(self, box: int, heads: int = 1, width: int = 16, sigmas: tuple[float, ...] = (0.0, 1.0, 2.0, 4.0), max_shift: float = 0.0) -> None:
        super().__init__()
        self.heads, self.sigmas, self.max_shift = heads, tuple(sigmas), float(max_shift)
        layers: list[nn.Module] = []
        c_in, c = len(self.sigmas), width
        size = box
        while size > 8:
            layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.BatchNorm2d(c), nn.LeakyReLU(0.1),
                       nn.Conv2d(c, c, 3, padding=1), nn.LeakyReLU(0.1), nn.MaxPool2d(2)]
            c_in, c, size = c, min(2 * c, 128), size // 2
        self.cnn = nn.Sequential(*layers)
        features = c_in * size * size
        # Batch norm in the fully connected layers, as in cryoSPIN's regressors: it standardises each
        # feature over the batch, so the heads cannot settle on one pose for every image (measured: without
        # it each head's viewing direction was the same for all images of 1BD2, |mean direction| 0.95).
        self.trunk = nn.Sequential(nn.Flatten(), nn.Linear(features, 256), nn.BatchNorm1d(256), nn.LeakyReLU(0.1),
                                   nn.Linear(256, 256), nn.BatchNorm1d(256), nn.LeakyReLU(0.1))
        self.rotation = nn.Linear(256, 6 * heads)
        self.translation = nn.Linear(256, 2)
        # Start at zero shift: a translation head initialised off-centre drags every image.
        nn.init.zeros_(self.translation.weight)
        nn.init.zeros_(self.translation.bias)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L, L) images -> rotations (B, heads, 3, 3) and shifts (B, 2) in pixels (x, y)."""
        h = self.trunk(self.cnn(gaussian_bank(images, self.sigmas)))
        rot = rotation_from_6d(self.rotation(h).view(-1, self.heads, 6))
        shift = self.max_shift * torch.tanh(self.translation(h)) if self.max_shift > 0 else torch.zeros(len(images), 2, device=images.device)
        return rot, shift


class Sine(nn.Module):
    """A SIREN layer: ``sin(w0 * (W x + b))`` with the initialisation of Sitzmann et al. (2020)."""

    def __init__(self, n_in: int, n_out: int, w0: float = 30.0, first: bool = False) -> None:
        super().__init__()
        self.w0 = w0
        self.linear = nn.Linear(n_in, n_out)
        bound = 1.0 / n_in if first else math.sqrt(6.0 / n_in) / w0
        nn.init.uniform_(self.linear.weight, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(self.w0 * self.linear(x))


def siren(n_in: int, hidden: int, layers: int, n_out: int, w0: float) -> nn.Sequential:
    """A SIREN MLP with a linear output layer."""
    mods: list[nn.Module] = [Sine(n_in, hidden, w0, first=True)]
    mods += [Sine(hidden, hidden, 1.0) for _ in range(layers - 1)]
    last = nn.Linear(hidden, n_out)
    nn.init.uniform_(last.weight, -math.sqrt(6.0 / hidden), math.sqrt(6.0 / hidden))
    mods.append(last)
    return nn.Sequential(*mods)


def slice_coordinates(rotations: torch.Tensor, box: int) -> torch.Tensor:
    """3-D frequencies (cycles per pixel, XYZ) of the central slices on the rfft2 grid.

    The slice of a map posed by RELION matrix ``A`` samples the map's
    transform at ``Aᵀ (kx, ky, 0)``.  Returns (B, L, L//2+1, 3).
    """
    ky = torch.fft.fftfreq(box, device=rotations.device)
    kx = torch.fft.rfftfreq(box, device=rotations.device)
    grid = torch.stack(torch.meshgrid(kx, ky, indexing="xy"), dim=-1)  # (L, L//2+1, 2) as (kx, ky)
    plane = torch.cat([grid, torch.zeros_like(grid[..., :1])], dim=-1)
    return torch.einsum("bji,hwj->bhwi", rotations, plane)


def centre_phase(box: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(L, L//2+1) factor taking a spectrum about the box centre to the rfft2 layout (centre L//2).

    Shifting the origin by ``L // 2`` multiplies frequency ``j`` by
    ``exp(-2πi j (L//2) / L)``, which is ``(-1)^j`` for an even box.
    """
    ky = torch.fft.fftfreq(box, device=device) * box
    kx = torch.fft.rfftfreq(box, device=device) * box
    c = box // 2
    phase = -2.0 * math.pi * c * (ky[:, None] + kx[None, :]) / box
    return torch.polar(torch.ones_like(phase), phase)


class FourierNet(nn.Module):
    """cryoAI's implicit Fourier volume: amplitude SIREN (exponentiated) times phase SIREN.

    Parameters
    ----------
    hidden : int
        Width of both SIRENs.
    layers : int
        Sine layers of each SIREN.
    w0 : float
        Frequency of the first layer (coordinates are in cycles per pixel, in [-0.5, 0.5]).
    """

    def __init__(self, hidden: int = 128, layers: int = 3, w0: float = 30.0) -> None:
        super().__init__()
        self.amplitude = siren(3, hidden, layers, 1, w0)
        self.phase = siren(3, hidden, layers, 1, w0)

    def forward(self, k: torch.Tensor) -> torch.Tensor:
        """Complex values at frequencies ``k`` (…, 3); Hermitian: ``V(-k) = conj(V(k))``."""
        both = torch.stack([k, -k])
        log_amp = self.amplitude(both)[..., 0]
        phase = self.phase(both)[..., 0]
        amp = torch.exp(0.5 * (log_amp[0] + log_amp[1]))
        return torch.polar(amp, 0.5 * (phase[0] - phase[1]))

    def slices(self, rotations: torch.Tensor, box: int) -> torch.Tensor:
        """Central slices (B, L, L//2+1) on the rfft2 grid of images centred at L//2."""
        return self(slice_coordinates(rotations, box)) * centre_phase(box, rotations.device)

    def volume(self, box: int, chunk: int = 65536) -> torch.Tensor:
        """Render the real-space (L, L, L) volume (ZYX, centre L//2) on the rfftn grid."""
        kz = torch.fft.fftfreq(box)
        ky = torch.fft.fftfreq(box)
        kx = torch.fft.rfftfreq(box)
        zz, yy, xx = torch.meshgrid(kz, ky, kx, indexing="ij")
        coords = torch.stack([xx, yy, zz], dim=-1).reshape(-1, 3)
        with torch.no_grad():
            values = torch.cat([self(coords[i : i + chunk]) for i in range(0, len(coords), chunk)])
        # Move the origin from the box centre to voxel 0, as irfftn expects.
        phase = -2.0 * math.pi * (box // 2) * (zz + yy + xx).reshape(-1)
        ft = (values * torch.polar(torch.ones_like(phase), phase)).reshape(zz.shape)
        return torch.fft.irfftn(ft, s=(box, box, box)).float()


class VoxelVolume(nn.Module):
    """cryoSPIN's explicit decoder: an (L, L, L) real-space volume, sliced in Fourier space."""

    def __init__(self, box: int, init: torch.Tensor | None = None) -> None:
        super().__init__()
        self.box = box
        self.voxels = nn.Parameter(init.clone().float() if init is not None else torch.zeros(box, box, box))

    def slices(self, rotations: torch.Tensor, box: int | None = None) -> torch.Tensor:
        """Central slices (B, L, L//2+1) on the rfft2 grid of images centred at L//2."""
        from .physics import central_slices, volume_to_fourier

        return central_slices(volume_to_fourier(self.voxels), rotations)

    def volume(self, box: int | None = None) -> torch.Tensor:
        """The real-space volume (ZYX, centre L//2)."""
        return self.voxels.detach().clone()
