"""The state of a cryoSPIN or cryoAI run and its image formation.

:class:`EncoderRun` holds the encoder, the decoder, every particle's pose
and, after the switch to per-particle poses, each half-set's volume; it
models images from poses and scores them.  The helpers build its masks and
first volume, and solve the half volumes from the poses reached.
"""

from __future__ import annotations

import math
from collections.abc import Generator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import CryoInputError
from ..tasks import Progress
from .backproject import accumulate, mean_weight, wiener
from .fsc import uniform_rotations
from .models import FourierNet, PoseEncoder, VoxelVolume, rotation_from_6d
from .particle_adam import ParticleAdam
from .physics import central_slices, ctf_2d, shift_images, volume_to_fourier
from .ranks import Ranks
from .run import check_finite, run_key
from .settings import ReconstructionSettings

#: Width (cycles/pixel) of the raised-cosine edge of :func:`low_pass`.
LOW_PASS_EDGE = 0.02


def low_pass(volume: np.ndarray, radius: float, width: float = LOW_PASS_EDGE) -> np.ndarray:
    """``volume`` with a raised-cosine low-pass: 1 below ``radius``, 0 above ``radius + width`` (cycles/pixel)."""
    k = [np.fft.fftfreq(n) for n in volume.shape]
    kr = np.sqrt(k[0][:, None, None] ** 2 + k[1][None, :, None] ** 2 + k[2][None, None, :] ** 2)
    edge = 0.5 + 0.5 * np.cos(np.pi * np.clip((kr - radius) / width, 0.0, 1.0))
    return np.fft.ifftn(np.fft.fftn(volume) * edge).real.astype(np.float32)


#: Band of the amortized phase in cycles/pixel of its own box: room to Nyquist for the soft mask's spread.
AMORTIZED_BAND = 0.3
#: Smallest automatic amortized box: the encoder's CNN needs a few pooling levels.
MIN_AMORTIZED_BOX = 32


def amortized_box(box: int, shared_radius: float, requested: int | None = None) -> int:
    """The box of the amortized phase for a working ``box``.

    The amortized phase compares images only below ``shared_radius``
    (cycles/pixel of the working box), so a Fourier-cropped box that holds
    that band at :data:`AMORTIZED_BAND` of its own sampling loses nothing, and
    each epoch costs about (small / box)³ of one at the working box.

    Parameters
    ----------
    box : int
        Working box (pixels).
    shared_radius : float
        The amortized band (cycles/pixel of ``box``).
    requested : int, optional
        A box chosen by the user: even, at least 16 and at most ``box``.

    Returns
    -------
    int

    Raises
    ------
    CryoInputError
        For a requested box that is odd, below 16 or above ``box``.
    """
    if requested is not None:
        if requested % 2 or not 16 <= requested <= box:
            raise CryoInputError(None, f"the amortized box must be even, from 16 to the working box ({box}), got {requested}")
        return int(requested)
    need = math.ceil(box * shared_radius / AMORTIZED_BAND)
    return min(box, max(MIN_AMORTIZED_BOX, need + need % 2))


def sphere_mask(box: int, radius: float | None = None, device: torch.device | str = "cpu") -> torch.Tensor:
    """A soft spherical mask (centre L//2): the particle lives inside the box's inscribed sphere."""
    radius = radius if radius is not None else box / 2 - 2
    r = torch.arange(box, device=device, dtype=torch.float32) - box // 2
    d = torch.sqrt(r[:, None, None] ** 2 + r[None, :, None] ** 2 + r[None, None, :] ** 2)
    return torch.clamp((radius + 2 - d) / 2, 0, 1)


def random_start(box: int, radius: float, mask: torch.Tensor, seed: int = 0, rms: float = 0.3) -> torch.Tensor:
    """cryoSPIN's first volume: white noise low-passed to ``radius`` (cycles/pixel), inside ``mask``.

    The published code starts its Fourier volume from Gaussian noise too.  A
    blank start renders every head's pose as the same empty image, so the
    winner-takes-all choice carries no information in the first steps.  Scaled
    so that projections have an RMS of ``rms`` (images are normalised to unit
    background noise; the per-image scale of the loss absorbs the rest).
    """
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(box, box, box, generator=g)
    volume = torch.as_tensor(low_pass(noise.numpy(), radius)) * mask
    rot = torch.as_tensor(uniform_rotations(8), dtype=torch.float32)
    proj = torch.fft.irfft2(central_slices(volume_to_fourier(volume), rot), s=(box, box))
    return volume * (rms / proj.std().clamp_min(1e-12))


def frequency_radius(box: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """|k| in cycles per pixel on the rfft2 grid (L, L//2+1)."""
    ky = torch.fft.fftfreq(box, device=device)[:, None]
    kx = torch.fft.rfftfreq(box, device=device)[None, :]
    return torch.sqrt(kx**2 + ky**2)


class EncoderRun:
    """The state of one cryoSPIN or cryoAI run: networks, optimisers, poses, phase, time spent.

    Parameters
    ----------
    data : ParticleData
        The particles at the working box.
    settings : ReconstructionSettings
    device : torch.device
    ranks : Ranks, optional
        The processes sharing the particles (:mod:`.ranks`): this one steps
        the poses of its own share, and :meth:`sync_poses` gathers them all.
    """

    def __init__(self, data, settings: ReconstructionSettings, device: torch.device, ranks: Ranks | None = None) -> None:
        self.s, self.device = settings, device
        self.ranks = ranks or Ranks.single()
        self.full = data
        self.own = self.ranks.own(np.arange(len(data)))  # this rank's particles
        self.full_box = data.box or data.original_box
        small = amortized_box(self.full_box, settings.shared_radius, settings.amortized_box)
        # The amortized phase runs on Fourier-cropped images; per-particle poses on the working box.
        self._use(data if small == self.full_box else data.at_box(small))
        box = self.box
        torch.manual_seed(settings.seed)
        heads = settings.heads if settings.method == "cryospin" else 1
        self.encoder = PoseEncoder(box, heads=heads, max_shift=settings.max_shift * box).to(device)
        if settings.method == "cryospin":
            self.decoder = VoxelVolume(box, random_start(box, self.shared_band, self.mask.cpu(), settings.seed)).to(device)
        else:
            self.decoder = FourierNet().to(device)
        self.opt_encoder = torch.optim.Adam(self.encoder.parameters(), lr=settings.encoder_lr)
        self.opt_decoder = torch.optim.Adam(self.decoder.parameters(), lr=settings.volume_lr if settings.method == "cryospin" else 1e-4)
        n = len(data)
        self.rot6d = torch.zeros(n, 6)
        self.rot6d[:, 0] = 1.0
        self.rot6d[:, 4] = 1.0
        self.shifts = torch.zeros(n, 2)
        self.pose_adam = ParticleAdam(n, 8, settings.pose_lr)
        # Gold standard: once poses are refined per particle, each half-set has its own volume, so the
        # two halves of the final FSC never saw each other's particles through a shared map.
        _, second = data.half_sets(settings.seed)
        self.half_of = torch.zeros(n, dtype=torch.long)
        self.half_of[torch.as_tensor(np.asarray(second), dtype=torch.long)] = 1
        # After the switch: each half-set's volume (real space, masked) and its Fourier transform.
        self.halves: list[torch.Tensor] | None = None
        self.half_fourier: list[torch.Tensor] | None = None
        self.half_band: float | None = None  # their low-pass radius (cycles/pixel), None: not low-passed
        self.phase = "amortized"
        self.switched_at = 0.0  # elapsed seconds at the switch to auto-decoding
        self.global_radii: list[float] = []  # band (pixels of frequency) of each global round so far
        self.epoch = 0
        self.elapsed = 0.0
        self.history: list[dict[str, Any]] = []
        self.maps_written: list[str] = []
        self.key = run_key(data, settings)  # what a checkpoint must match to be resumed

    def _use(self, data) -> None:
        """Work on ``data``'s box: the amortized one, then the working one."""
        self.data = data
        self.box = data.box or data.original_box
        self.mask = sphere_mask(self.box, device=self.device)
        # Model images get the mask the data got, else poses bend to explain the missing corners.
        self.image_mask = torch.as_tensor(np.asarray(data.image_mask), dtype=torch.float32, device=self.device)
        self.kr = frequency_radius(self.box, self.device)

    @property
    def shared_band(self) -> float:
        """``shared_radius`` in cycles/pixel of the current box."""
        return self.s.shared_radius * self.full_box / self.box

    @property
    def to_full(self) -> float:
        """Pixels of the working box per pixel of the current box (origins are kept in working-box pixels)."""
        return self.full_box / self.box

    def use_working_box(self) -> None:
        """Leave the amortized box for the working box (the encoder is done with)."""
        self._use(self.full)

    # -- the particles' shares
    def sync_poses(self) -> None:
        """Every particle's pose and origin from the rank that steps it (a collective; nothing to do alone)."""
        self.rot6d = self.ranks.gather_rows(self.rot6d)
        self.shifts = self.ranks.gather_rows(self.shifts)

    def batches(self, batch_size: int, shuffle: bool = True, epoch: int = 0):
        """This rank's particles, ``batch_size`` at a time; with several ranks, the same number of batches on each."""
        if not self.ranks.shared:
            return self.data.batches(batch_size, shuffle=shuffle, seed=self.s.seed, epoch=epoch)
        steps = self.ranks.steps(len(self.full), batch_size)
        return self.data.batches(batch_size, shuffle=shuffle, seed=self.s.seed, epoch=epoch, rows=self.own, count=steps)

    # -- checkpoints
    def state(self) -> dict[str, Any]:
        """Everything a checkpoint keeps (with several ranks, a collective that gathers every particle's state)."""
        self.sync_poses()
        adam = self.pose_adam.state_dict()
        if self.ranks.shared:
            adam = {k: self.ranks.gather_rows(v) for k, v in adam.items()}
        return {
            "key": self.key, "encoder": self.encoder.state_dict(), "decoder": self.decoder.state_dict(),
            "opt_encoder": self.opt_encoder.state_dict(), "opt_decoder": self.opt_decoder.state_dict(),
            "rot6d": self.rot6d, "shifts": self.shifts, "pose_adam": adam, "phase": self.phase, "epoch": self.epoch, "switched_at": self.switched_at,
            "global_radii": self.global_radii, "elapsed": self.elapsed, "history": self.history, "maps": self.maps_written,
            "halves": None if self.halves is None else [h.cpu() for h in self.halves], "half_band": self.half_band,
        }

    def load(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint's :meth:`state`."""
        self.encoder.load_state_dict(state["encoder"])
        self.decoder.load_state_dict(state["decoder"])
        self.rot6d, self.shifts = state["rot6d"], state["shifts"]
        self.pose_adam.load_state_dict(state["pose_adam"])
        self.phase, self.epoch, self.elapsed = state["phase"], int(state["epoch"]), float(state["elapsed"])
        if state.get("halves") is not None:
            self.use_working_box()
            self.use_half_volumes(state["halves"], state.get("half_band"))
        self.opt_encoder.load_state_dict(state["opt_encoder"])
        self.opt_decoder.load_state_dict(state["opt_decoder"])
        self.switched_at = float(state["switched_at"])
        self.global_radii = list(state["global_radii"])
        self.history, self.maps_written = list(state["history"]), list(state["maps"])

    def use_half_volumes(self, volumes, band: float | None = None) -> None:
        """Model each half-set's images from its own volume (auto-decoding), until the next call.

        ``band``: the radius (cycles/pixel) the volumes were low-passed to with :func:`low_pass`, if they were.
        """
        self.half_band = band
        self.halves = [torch.as_tensor(v, dtype=torch.float32, device=self.device) * self.mask for v in volumes]
        # Fixed between calls, so transformed once rather than at every pose step.
        self.half_fourier = [volume_to_fourier(v) for v in self.halves]

    @property
    def slice_limit(self) -> float | None:
        """Where the half volumes' slices may stop (cycles/pixel): beyond their low-pass edge and the two
        voxels trilinear interpolation reaches, they hold only what the real-space mask spreads there
        (measured: a 3e-4 relative change of the pose gradients), and the pose steps take a third of the time."""
        return None if self.half_band is None else self.half_band + LOW_PASS_EDGE + 2.0 / self.box

    def current_volume(self) -> torch.Tensor:
        """The map as it stands (the average of the half volumes once there are two)."""
        if self.halves is not None:
            return 0.5 * (self.halves[0] + self.halves[1])
        if isinstance(self.decoder, VoxelVolume):
            return self.decoder.voxels.detach() * self.mask
        return self.decoder.volume(self.box)

    def check_finite(self, loss: torch.Tensor, checkpoint: Path | None) -> None:
        """Raise :class:`~.run.ReconstructionDiverged` for a loss that is not finite, naming the phase and epoch."""
        check_finite(loss, checkpoint, f"the {self.phase} phase at epoch {self.epoch + 1}")

    # -- image formation
    def model_images(self, rotations: torch.Tensor, shifts: torch.Tensor, ctf: torch.Tensor | None, halves: torch.Tensor | None = None) -> torch.Tensor:
        """Model spectra (B, L, L//2+1) for RELION rotations and origins (pixels).

        With ``halves`` (each image's half-set) and half volumes, each image is
        modelled from its own half's volume.
        """
        if self.half_fourier is not None and halves is not None:
            parts, order = [], []
            for h, volume_ft in enumerate(self.half_fourier):
                sel = torch.nonzero(halves == h).flatten()
                if len(sel):
                    parts.append(central_slices(volume_ft, rotations[sel.to(rotations.device)], fftfreq_max=self.slice_limit))
                    order.append(sel)
            inverse = torch.argsort(torch.cat(order))
            slices = torch.cat(parts)[inverse.to(parts[0].device)]
        elif isinstance(self.decoder, VoxelVolume):
            slices = central_slices(volume_to_fourier(self.decoder.voxels * self.mask), rotations)
        else:
            slices = self.decoder.slices(rotations, self.box)
        if ctf is not None:
            slices = slices * ctf
        images = torch.fft.irfft2(shift_images(slices, shifts, self.box), s=(self.box, self.box))
        return torch.fft.rfft2(images * self.image_mask)

    def errors(self, target: torch.Tensor, model: torch.Tensor, radius: float) -> torch.Tensor:
        """Mean squared error per image over frequencies below ``radius`` (cycles/pixel)."""
        band = (self.kr <= radius).float()
        # rfft2 halves the spectrum; columns 1..L/2-1 stand for two frequencies each.
        weight = band.clone()
        weight[:, 1 : self.box // 2] *= 2
        # Each image gets its least-squares scale (images are normalised one by one, and ice varies):
        # without it, poses bend to make the projected density brighter or dimmer.  Detached and
        # clamped around 1, so the decoder still learns the overall scale, even from an empty volume.
        with torch.no_grad():
            cross = (torch.real(torch.conj(model) * target) * weight).sum(dim=(-2, -1))
            power = ((model.abs() ** 2) * weight).sum(dim=(-2, -1))
            scale = (cross / power.clamp_min(1e-12)).clamp(0.2, 5.0)
        residual = target - scale[..., None, None] * model
        return (residual.abs() ** 2 * weight).sum(dim=(-2, -1)) / weight.sum() / self.box**2


def batch_ctf(data, batch, box: int, device) -> torch.Tensor | None:
    """The CTF of each image of ``batch`` on the rfft2 grid of ``box`` (None for data without CTF columns)."""
    if batch.ctf is None:
        return None
    return ctf_2d({k: v for k, v in batch.ctf.items()}, box, data.pixel_size).to(device)


def angle_between(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Rotation angle (degrees) of a bᵀ for batches of rotation matrices."""
    cos = ((a * b).sum(dim=(-2, -1)) - 1) / 2
    return torch.rad2deg(torch.acos(cos.clamp(-1, 1)))


def half_volumes_from_poses(run: EncoderRun, band: float) -> Generator[Progress, None, list[np.ndarray]]:
    """Each half-set's Wiener back-projection from the current poses at the current box, low-passed to ``band``.

    The direct reconstruction solves for the volume the loss asks for, given
    the poses, in one pass: a far better start for per-particle pose
    refinement than voxels fitted by gradient steps while the poses moved.
    Each half uses its own particles only, so the half-sets stay independent.
    Each rank back-projects its own particles, and the sums are all-reduced.
    """
    rotations = rotation_from_6d(run.rot6d).numpy()
    # Only what the low-pass keeps, plus the two voxels trilinear insertion reaches:
    # at the shared band a tenth of the work of a full insertion.
    inserted = band + LOW_PASS_EDGE + 2.0 / run.box
    volumes = []
    for h in (0, 1):
        rows = torch.nonzero(run.half_of == h).flatten().numpy()
        numerator, weights = yield from accumulate(run.data, run.ranks.own(rows), rotations, run.shifts.numpy(), fftfreq_max=inserted,
                                                   ranks=run.ranks)
        volume = wiener(numerator, weights, 0.05 * mean_weight(run.data, rows))
        volumes.append(low_pass(volume, band))
    return volumes
