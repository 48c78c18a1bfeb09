"""Ab initio reconstruction: amortized pose inference, then per-particle poses, then a direct reconstruction.

:func:`reconstruct` is a generator (progress, loss records, intermediate
maps) returning a :class:`ReconstructionResult`.  The run has three phases:

1. **amortized** — an encoder maps each image to a pose.  ``cryoai``: one
   rotation head, the implicit :class:`~.models.FourierNet` decoder and the
   symmetrised loss (each image and its in-plane π rotation, the smaller
   error counts).  ``cryospin``: ``heads`` rotation hypotheses per image, the
   best head per particle by reconstruction error (winner takes all), and an
   explicit voxel decoder.  Every particle trains the one encoder and
   decoder here, so they compare frequencies only up to ``shared_radius``
   (0.15 cycles/pixel): what the halves of the gold standard share.
2. **auto-decoding** (cryoSPIN's semi-amortized phase) — each particle's
   rotation (6-D) and shift become free parameters initialised from its best
   head (chosen within the shared band), with ``pose_steps`` pose updates per
   visit; each particle keeps its own Adam moments from epoch to epoch
   (:mod:`.particle_adam`).  The volumes are not stepped by gradients here:
   after each epoch each half volume is solved again, by direct (Wiener)
   reconstruction from the poses reached, which is the least-squares volume
   those poses ask for (gradient steps on top of it changed nothing; see
   ``docs/benchmarks.md``).  The switch is automatic when the amortized loss
   plateaus (less than ``plateau`` relative improvement over ``patience`` epochs) or
   after half the time budget, or forced with ``switch_after`` (minutes; 0 =
   start auto-decoding at once).  From the switch on each half-set has its
   own volume, started from its own particles' back-projection low-passed to
   the shared band, and the band compared grows to Nyquist.  Poses fitted to
   one shared map at higher frequencies align both halves to that map's noise
   (Einstein from noise), and the half maps' FSC then claims a resolution the
   map does not have: on pure-noise particles it claimed 4.8 px (see
   ``tests/test_reconstruction_core.py``).  cryoAI switches too: published,
   it stays amortized, and its poses then come from one shared decoder.
   cryoSPIN adds ``global_rounds`` global pose searches (not in the paper):
   gradient steps only reach the nearest minimum, and particles the encoder
   left tens of degrees off stay there (on a rebuilt 1BD2 set, two thirds
   of them, while the map still reached the data's limit from the rest).
   Each round searches every particle over SO(3) against its own half-set's
   volume, keeping the held pose where it fits better: one at the switch,
   then one each time the pose steps settle after the band has grown.
   Also not in the paper: when the encoder's views collapse (an SCF below
   ``collapse_scf``; on a second simulated 1BD2 set, SCF 0 for the whole
   amortized phase), a map from its poses is wrong but self-consistent and
   no search against it repairs them.  So from ``collapse_epochs`` amortized
   epochs on, an SCF below ``collapse_scf`` (default 0.5) makes the run
   switch at once and take its first poses from a global search against a
   stochastic first map.  On that 1BD2 set this took the median pose error
   from 51.7° to 1.6° (both targets of the benchmark met at 14 minutes on 2
   CPU cores); on the first set the views did not collapse (SCF 0.66) and the
   check changed nothing (``docs/benchmarks.md``).
3. **direct reconstruction** — a CTF-corrected, Wiener-filtered Fourier
   reconstruction from the estimated poses of two random half-sets gives the
   half maps, the gold-standard FSC (0.143) and a sharpened, low-passed map
   (:mod:`.backproject`).

The run checkpoints every ``checkpoint_minutes`` and at each phase change;
with ``resume`` it continues from the checkpoint in ``out_dir`` (same data
and settings).  A loss that is not finite stops the run with a message; the
last checkpoint written before it stays.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Generator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import CryoInputError
from ..io.atomic import atomic_path
from ..tasks import Progress
from .coverage import UNEVEN_SCF, ViewCoverage, view_coverage
from .models import FourierNet, PoseEncoder, VoxelVolume, rotation_from_6d, rotation_to_6d
from .particle_adam import ParticleAdam
from .poses import rotation_angles
from .refine import RefineSettings, first_map, first_radius, search_round

METHODS = ("cryospin", "cryoai", "search")
CHECKPOINT = "checkpoint.pt"
#: The pose of an image turned by π in its plane is ``IN_PLANE_PI @ R`` (with the origin negated).
IN_PLANE_PI = torch.diag(torch.tensor([-1.0, -1.0, 1.0]))


class ReconstructionDiverged(CryoInputError):
    """The loss became NaN or infinite."""


@dataclass
class ReconstructionSettings:
    """Settings of a run (defaults are the ones benchmarked).

    Attributes
    ----------
    method : str
        ``"cryospin"`` (multi-head encoder, voxel decoder, then auto-decoding),
        ``"cryoai"`` (one head, FourierNet, symmetrised loss) or ``"search"``
        (a stochastic first map, then global and local pose searches by
        half-sets; see :mod:`.refine`).
    batch_size : int
        Images per step of the amortized phase (32, as in the published cryoSPIN code and as benchmarked).
    pose_batch_size : int
        Images per pose step when auto-decoding.  Each particle's pose and
        Adam moments are its own and the volumes are fixed during an epoch,
        so this sets the speed only (measured at L = 64 on 2 cores: 48 s per
        10,000 particles at 32, 29 s at 256).
    max_minutes : float
        Time budget for phases 1 and 2 (the direct reconstruction comes after).
    heads : int
        Rotation hypotheses per image (cryoSPIN; cryoAI uses 1).
    encoder_lr, volume_lr, pose_lr : float
        Adam learning rates of the encoder, the decoder (amortized phase) and the per-particle poses.
    pose_steps : int
        Pose updates per batch when auto-decoding.
    max_shift : float
        Largest in-plane translation, as a fraction of the box.
    switch_after : float or None
        Force the switch to auto-decoding after this many minutes (None: automatic).
    patience, plateau : int, float
        Automatic switch: relative loss improvement below ``plateau`` over ``patience`` epochs.
    converged_degrees : float
        Auto-decoding stops when the median pose change over an epoch is below this.
    global_rounds : int
        cryoSPIN: global pose searches during auto-decoding (:func:`_global_round`): one at the
        switch, then one each time the per-particle steps settle (median change below
        ``settle_degrees``) once the band has grown by a quarter since the last.  Pose steps
        only reach the nearest minimum; a search over all of SO(3) against the half volumes
        moves the particles the encoder left tens of degrees off.  0: cryoSPIN as published.
    settle_degrees : float
        See ``global_rounds``.
    collapse_scf, collapse_epochs : float, int
        cryoSPIN: from amortized epoch ``collapse_epochs`` on, the SCF of the poses the
        encoder gives (:func:`~.coverage.view_coverage`) is checked after every epoch.  Below
        ``collapse_scf`` the views have collapsed onto a few directions, and a map built
        from them misleads every later search, so the run switches at once and takes its
        first poses from a global search against a stochastic first map (as the ``search``
        method does) instead of from the encoder.  The default, 0.5, is the SCF below which
        every run warns (:data:`~.coverage.UNEVEN_SCF`); 0: no check, cryoSPIN as published.
    shared_radius : float
        cryoSPIN and cryoAI: band (cycles/pixel) below which the two half-sets may share
        information at the switch to per-particle poses; above it the
        gold-standard FSC is independent.
    amortized_box : int or None
        cryoSPIN and cryoAI: box (even pixels) of the amortized phase, which compares
        images only below ``shared_radius`` and so needs no finer sampling.
        None: :func:`amortized_box` chooses it (32 for a 64-px working box);
        the working box turns the Fourier cropping off.
    checkpoint_minutes, map_minutes : float
        How often to checkpoint and to write an intermediate map.
    seed : int
        Random seed.
    first_map_batches : int
        ``search``: batches of the stochastic first map (fewer for small data sets).
    """

    method: str = "cryospin"
    batch_size: int = 32
    pose_batch_size: int = 256
    max_minutes: float = 20.0
    heads: int = 7
    encoder_lr: float = 3e-4
    volume_lr: float = 1e-3
    pose_lr: float = 2e-2
    pose_steps: int = 4
    max_shift: float = 0.1
    switch_after: float | None = None
    patience: int = 3
    plateau: float = 0.005
    converged_degrees: float = 0.2
    global_rounds: int = 2
    settle_degrees: float = 1.0
    collapse_scf: float = UNEVEN_SCF
    collapse_epochs: int = 5
    shared_radius: float = 0.15
    amortized_box: int | None = None
    checkpoint_minutes: float = 2.0
    map_minutes: float = 3.0
    seed: int = 0
    first_map_batches: int = 100

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise CryoInputError(None, f"unknown method '{self.method}' (use {' or '.join(METHODS)})")

    def key(self) -> str:
        """What a checkpoint must match to be resumed (the time budget may change)."""
        d = asdict(self)
        for k in ("max_minutes", "checkpoint_minutes", "map_minutes", "switch_after"):
            d.pop(k)
        return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


@dataclass
class MapUpdate:
    """An intermediate map for the viewer: the volume, its pixel size and where it was written."""

    volume: np.ndarray
    pixel_size: float
    label: str
    path: Path | None = None
    rotations: np.ndarray | None = None  # (N, 3, 3) the poses reached, for direction plots and benchmarks
    elapsed_s: float = 0.0
    coverage: ViewCoverage | None = None

    def __post_init__(self) -> None:
        # Measured here, in the worker that yields the update, not on the GUI thread that draws it.
        if self.rotations is not None and self.coverage is None:
            self.coverage = view_coverage(self.rotations)


@dataclass
class ReconstructionResult:
    """What a run produces."""

    volume: np.ndarray
    half1: np.ndarray
    half2: np.ndarray
    pixel_size: float
    rotations: np.ndarray  # (N, 3, 3) RELION matrices
    shifts: np.ndarray  # (N, 2) origins in pixels (x, y)
    fsc: Any
    resolution: float
    history: list[dict[str, Any]] = field(default_factory=list)
    coverage: ViewCoverage | None = None  # how evenly the poses sample Fourier space: read the FSC with it

    def __post_init__(self) -> None:
        # Measured where the result is made (the worker), not where it is shown.
        if self.coverage is None:
            self.coverage = view_coverage(self.rotations)


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
    from .fsc import uniform_rotations
    from .physics import central_slices, volume_to_fourier

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


class _Run:
    """The state of one run: networks, optimisers, poses, phase, clock."""

    def __init__(self, data, settings: ReconstructionSettings, device: torch.device) -> None:
        self.s, self.device = settings, device
        self.full = data
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
        first, second = data.half_sets(settings.seed)
        self.half_of = torch.zeros(n, dtype=torch.long)
        self.half_of[torch.as_tensor(np.asarray(second), dtype=torch.long)] = 1
        # After the switch: each half-set's volume (real space, masked) and its Fourier transform.
        self.halves: list[torch.Tensor] | None = None
        self.half_fourier: list[torch.Tensor] | None = None
        self.half_band: float | None = None  # their low-pass radius (cycles/pixel), None: not low-passed
        self.phase = "amortized"
        self.switched_at = 0.0  # elapsed seconds at the switch to auto-decoding
        self.global_radii: list[float] = []  # band (pixels of frequency) of each global round so far
        self.diverged = False
        self.epoch = 0
        self.elapsed = 0.0
        self.history: list[dict[str, Any]] = []
        self.maps_written: list[str] = []

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

    # -- checkpoints
    def state(self) -> dict[str, Any]:
        return {
            "key": self.key, "encoder": self.encoder.state_dict(), "decoder": self.decoder.state_dict(),
            "opt_encoder": self.opt_encoder.state_dict(), "opt_decoder": self.opt_decoder.state_dict(),
            "rot6d": self.rot6d, "shifts": self.shifts, "pose_adam": self.pose_adam.state_dict(), "phase": self.phase, "epoch": self.epoch, "switched_at": self.switched_at,
            "global_radii": self.global_radii, "elapsed": self.elapsed, "history": self.history, "maps": self.maps_written,
            "halves": None if self.halves is None else [h.cpu() for h in self.halves], "half_band": self.half_band,
        }

    def load(self, state: dict[str, Any]) -> None:
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
        from .physics import volume_to_fourier

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

    # -- image formation
    def model_images(self, rotations: torch.Tensor, shifts: torch.Tensor, ctf: torch.Tensor | None, halves: torch.Tensor | None = None) -> torch.Tensor:
        """Model spectra (B, L, L//2+1) for RELION rotations and origins (pixels).

        With ``halves`` (each image's half-set) and half volumes, each image is
        modelled from its own half's volume.
        """
        from .physics import central_slices, shift_images, volume_to_fourier

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


def _ctf(data, batch, box: int, device) -> torch.Tensor | None:
    if batch.ctf is None:
        return None
    from .physics import ctf_2d

    return ctf_2d({k: v for k, v in batch.ctf.items()}, box, data.pixel_size).to(device)


#: Bumped when the networks' layers change, so that an older checkpoint is refused with a message, not a traceback.
CHECKPOINT_FORMAT = 4


def _run_key(data, settings: ReconstructionSettings) -> str:
    fingerprint = [str(Path(data.star_path).resolve()), len(data), data.box, data.original_box, settings.key(), CHECKPOINT_FORMAT]
    return hashlib.sha1(json.dumps(fingerprint).encode()).hexdigest()[:16]


def _save_checkpoint(run: _Run, out_dir: Path | None) -> None:
    save_state(out_dir, run.state())


def save_state(out_dir: Path | None, state: dict[str, Any]) -> None:
    """Write a run's checkpoint atomically (nothing without an output folder)."""
    if out_dir is None:
        return
    with atomic_path(out_dir / CHECKPOINT, overwrite=True) as tmp:
        torch.save(state, tmp)


def write_intermediate(out_dir: Path | None, written: list[str], volume: np.ndarray, pixel_size: float) -> Path | None:
    """Write the next ``intermediate_NNN.mrc`` and add its name to ``written`` (nothing without an output folder)."""
    if out_dir is None:
        return None
    from ..io.mrc import write_mrc

    path = out_dir / f"intermediate_{len(written) + 1:03d}.mrc"
    write_mrc(path, volume, pixel_size, overwrite=True)
    written.append(path.name)
    return path


def _write_progress(out_dir: Path | None, row: dict[str, Any]) -> None:
    if out_dir is None:
        return
    path = out_dir / "progress.csv"
    new = not path.exists()
    with open(path, "a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["elapsed_s", "phase", "epoch", "loss", "pose_change_deg", "map", "resolution_A"])
        if new:
            writer.writeheader()
        writer.writerow({k: row.get(k, "") for k in writer.fieldnames})


def _head_errors(run: _Run, target: torch.Tensor, rotations: torch.Tensor, shifts: torch.Tensor, ctf: torch.Tensor | None,
                 radius: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Error of every head's pose (B, heads) and, for cryoAI, whether the image turned by π fitted better.

    cryoAI's symmetrised loss takes the smaller of the two errors; the
    in-plane π turn of a real image centred at L//2 conjugates its spectrum.
    """
    h = rotations.shape[1]
    model = run.model_images(rotations.reshape(-1, 3, 3), shifts.repeat_interleave(h, 0), None if ctf is None else ctf.repeat_interleave(h, 0))
    err = run.errors(target.repeat_interleave(h, 0), model, radius).view(-1, h)
    if run.s.method != "cryoai":
        return err, torch.zeros_like(err, dtype=torch.bool)
    err_flip = run.errors(torch.conj(target).repeat_interleave(h, 0), model, radius).view(-1, h)
    return torch.minimum(err, err_flip), err_flip < err


def _unflip(rotations: torch.Tensor, origins: torch.Tensor, flipped: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The poses of images whose π-turned copy matched the model at (rotation, origin): turned by π, origin negated."""
    turned = torch.where(flipped[:, None, None], IN_PLANE_PI @ rotations, rotations)
    return turned, torch.where(flipped[:, None], -origins, origins)


def _band(run: _Run, elapsed: float, budget: float) -> float:
    """The band compared (cycles/pixel of the current box): ``shared_radius`` while amortized (the encoder
    and the decoder see every particle); after the switch, from there to Nyquist over half the time left."""
    start = run.shared_band
    if run.phase == "amortized":
        return start
    span = max(1e-6, 0.5 * (budget - run.switched_at))
    return start + (0.5 - start) * min(1.0, (elapsed - run.switched_at) / span)


#: Cycles/pixel kept beyond the compared band when the half volumes are solved again: the band grows meanwhile.
REFRESH_MARGIN = 0.02


def _angle_between(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Rotation angle (degrees) of a bᵀ for batches of rotation matrices."""
    cos = ((a * b).sum(dim=(-2, -1)) - 1) / 2
    return torch.rad2deg(torch.acos(cos.clamp(-1, 1)))


@torch.no_grad()
def _initialise_poses(run: _Run, device) -> Generator[Progress, None, None]:
    """Each particle's pose from the trained encoder's best head, chosen below the shared band.

    Then, at the working box, each half-set's volume is back-projected from
    its own particles and low-passed to that band (see the module notes on
    Einstein from noise).
    """
    run.encoder.eval()
    data = run.data
    n = len(data)
    done = 0
    for batch in data.batches(256, shuffle=False):
        images = batch.images.to(device)
        target = torch.fft.rfft2(images)
        ctf = _ctf(data, batch, run.box, device)
        rotations, shifts = run.encoder(images)
        err, flip = _head_errors(run, target, rotations, shifts, ctf, run.shared_band)
        which = err.argmin(dim=1)
        rows = torch.arange(len(which), device=which.device)
        chosen, origin = _unflip(rotations[rows, which].cpu(), shifts.cpu(), flip[rows, which].cpu())
        idx = torch.as_tensor(batch.indices)
        run.rot6d[idx] = rotation_to_6d(chosen)
        run.shifts[idx] = origin * run.to_full
        done += len(idx)
        yield Progress(done, n, "initialising poses")
    run.use_working_box()
    run.use_half_volumes((yield from _half_volumes_from_poses(run, run.shared_band)), run.shared_band)


def _half_volumes_from_poses(run: _Run, band: float) -> Generator[Progress, None, list[np.ndarray]]:
    """Each half-set's Wiener back-projection from the current poses at the current box, low-passed to ``band``.

    The direct reconstruction solves for the volume the loss asks for, given
    the poses, in one pass: a far better start for per-particle pose
    refinement than voxels fitted by gradient steps while the poses moved.
    Each half uses its own particles only, so the half-sets stay independent.
    """
    from .backproject import accumulate, mean_weight, wiener

    rotations = rotation_from_6d(run.rot6d).numpy()
    # Only what the low-pass keeps, plus the two voxels trilinear insertion reaches:
    # at the shared band a tenth of the work of a full insertion.
    inserted = band + LOW_PASS_EDGE + 2.0 / run.box
    volumes = []
    for h in (0, 1):
        rows = torch.nonzero(run.half_of == h).flatten().numpy()
        numerator, weights = yield from accumulate(run.data, rows, rotations, run.shifts.numpy(), fftfreq_max=inserted)
        volume = wiener(numerator, weights, 0.05 * mean_weight(run.data, rows))
        volumes.append(low_pass(volume, band))
    return volumes


def _global_radius(run: _Run) -> float:
    """The band (pixels of frequency) a global round would compare now: the half volumes' band, at most
    :attr:`~.refine.RefineSettings.global_radius` (the 15° grid is too coarse for more)."""
    band = 0.5 if run.half_band is None else run.half_band
    return float(min(band * run.box, RefineSettings.global_radius))


def _global_round(run: _Run, device) -> Generator[Progress, None, dict[str, Any]]:
    """Every particle's pose searched over SO(3) against its own half-set's volume (:func:`~.refine.search_round`).

    A held pose is kept where it fits better, so the round can only lower
    each particle's error.  The particles that moved lose their Adam moments
    (their old gradients point elsewhere), and the half volumes are solved
    again from the new poses at the same band.  Returns a history record.
    """
    radius = _global_radius(run)
    refine = RefineSettings(max_shift=run.s.max_shift * run.box)
    before, held = rotation_from_6d(run.rot6d).numpy(), run.shifts.numpy()
    # search_round pairs data.half_sets(seed) with the maps in order: the same split as run.half_of.
    maps = [h.cpu().numpy() for h in run.halves]
    rot, shifts, _ = yield from search_round(run.data, maps, before, held, radius, refine, local=False, seed=run.s.seed, device=device)
    moved = np.any(rot != before, axis=(1, 2)) | np.any(shifts != held, axis=1)
    change = yield from _take_searched_poses(run, rot, shifts, moved, radius, run.half_band)
    return {"epoch": run.epoch, "phase": "global search", "loss": float("nan"), "pose_change_deg": float(np.median(change)),
            "moved_fraction": float(np.mean(change > 2 * RefineSettings.global_converged)), "band_px": round(radius, 2)}


def _take_searched_poses(run: _Run, rotations: np.ndarray, shifts: np.ndarray, moved: np.ndarray, radius: float,
                         band: float | None) -> Generator[Progress, None, np.ndarray]:
    """Make searched poses the run's: the particles that ``moved`` lose their Adam moments (their old gradients
    point elsewhere), and the half volumes are solved again at ``band``.  Returns each particle's change (degrees)."""
    change = rotation_angles(rotation_from_6d(run.rot6d).numpy(), rotations)
    run.rot6d = rotation_to_6d(torch.as_tensor(rotations))
    run.shifts = torch.as_tensor(shifts)
    run.pose_adam.reset(torch.as_tensor(np.nonzero(moved)[0]))
    run.global_radii.append(radius)
    run.use_half_volumes((yield from _half_volumes_from_poses(run, band)), band)
    return change


def _log(run: _Run, out: Path | None, record: dict[str, Any]) -> dict[str, Any]:
    """A history record, kept in the run and written to ``progress.csv``."""
    run.history.append(record)
    _write_progress(out, record)
    return record


def _collapsed_views(run: _Run) -> ViewCoverage | None:
    """The coverage of the encoder's poses when they have collapsed (SCF below ``collapse_scf``), else None."""
    s = run.s
    if s.method != "cryospin" or s.collapse_scf <= 0 or run.phase != "amortized" or run.epoch < s.collapse_epochs:
        return None
    coverage = view_coverage(rotation_from_6d(run.rot6d).numpy())
    return coverage if coverage.measured and coverage.scf < s.collapse_scf else None


def _poses_from_first_map(run: _Run, device, stop: Callable[[], bool], clock: Callable[[], float],
                          out: Path | None) -> Generator[Progress | MapUpdate | dict[str, Any], None, bool]:
    """First poses without the encoder: a stochastic first map, then a global search of every particle against it.

    For encoders whose views collapsed (:func:`_collapsed_views`).  As in the
    ``search`` method, the first map comes from all particles at a 32-px box
    and the search compares only up to :attr:`~.refine.RefineSettings.start_band`;
    the half volumes are then solved from each half-set's own particles at
    the shared band.  Yields the first map and a history record for each
    step; returns False, having changed nothing, when stopped during the map.
    """
    data = run.full
    volume = yield from first_map(data, run.s.first_map_batches, run.s.seed, stop, device)
    if stop() and clock() < run.s.max_minutes * 60.0:  # stopped or paused by the user: stay amortized
        return False
    run.use_working_box()
    path = write_intermediate(out, run.maps_written, volume, data.pixel_size)
    yield MapUpdate(volume, data.pixel_size, "first map (stochastic search)", path, None, clock())
    yield _log(run, out, {"epoch": run.epoch, "phase": "first map", "loss": float("nan"), "pose_change_deg": float("nan"),
                          "elapsed_s": round(clock(), 1), "map": path.name if path else ""})
    refine = RefineSettings(max_shift=run.s.max_shift * run.box)
    radius = first_radius(run.box, refine)
    yield Progress(0, None, "global pose search against the first map")
    rot, shifts, _ = yield from search_round(data, [volume], None, None, radius, refine, local=False, seed=run.s.seed, device=device)
    change = yield from _take_searched_poses(run, rot, shifts, np.ones(len(data), dtype=bool), radius, run.shared_band)
    yield _log(run, out, {"epoch": run.epoch, "phase": "global search", "loss": float("nan"), "pose_change_deg": float(np.median(change)),
                          "moved_fraction": 1.0, "band_px": round(radius, 2), "elapsed_s": round(clock(), 1)})
    return True


def _global_round_due(run: _Run, change: float) -> bool:
    """Whether the per-particle steps have settled far enough from the last global round to search again."""
    if run.s.method != "cryospin" or len(run.global_radii) >= run.s.global_rounds:
        return False
    last = run.global_radii[-1] if run.global_radii else 0.0
    return change == change and change < run.s.settle_degrees and _global_radius(run) >= 1.25 * last


#: Width (cycles/pixel) of the raised-cosine edge of :func:`low_pass`.
LOW_PASS_EDGE = 0.02


def low_pass(volume: np.ndarray, radius: float, width: float = LOW_PASS_EDGE) -> np.ndarray:
    """``volume`` with a raised-cosine low-pass: 1 below ``radius``, 0 above ``radius + width`` (cycles/pixel)."""
    k = [np.fft.fftfreq(n) for n in volume.shape]
    kr = np.sqrt(k[0][:, None, None] ** 2 + k[1][None, :, None] ** 2 + k[2][None, None, :] ** 2)
    edge = 0.5 + 0.5 * np.cos(np.pi * np.clip((kr - radius) / width, 0.0, 1.0))
    return np.fft.ifftn(np.fft.fftn(volume) * edge).real.astype(np.float32)


def start_or_resume(out: Path | None, key: str, resume: bool, device: torch.device | str = "cpu") -> dict[str, Any] | None:
    """The checkpoint to continue from (``resume``), else None after clearing an old ``progress.csv``.

    Raises
    ------
    CryoInputError
        If the checkpoint cannot be read or belongs to another run (``key``).
    """
    if resume and out is not None and (out / CHECKPOINT).exists():
        try:
            state = torch.load(out / CHECKPOINT, map_location=device, weights_only=False)
        except Exception as exc:  # noqa: BLE001 - a damaged checkpoint is reported, not silently dropped
            raise CryoInputError(out / CHECKPOINT, f"cannot be read to resume ({type(exc).__name__})") from None
        if state.get("key") != key:
            raise CryoInputError(out / CHECKPOINT, "belongs to other particles, other settings or an older napari-cryo; start without --resume or use another --out")
        return state
    if out is not None and (out / "progress.csv").exists():
        (out / "progress.csv").unlink()
    return None


def _check_finite(loss: torch.Tensor, run: _Run, out: Path | None) -> None:
    """Stop before a non-finite loss can reach the parameters (the last checkpoint stays good)."""
    value = float(loss.detach())
    if not math.isfinite(value):
        run.diverged = True
        raise ReconstructionDiverged(
            out / CHECKPOINT if out is not None else None,
            f"the loss became {value} in the {run.phase} phase at epoch {run.epoch + 1}; stopped, the last good checkpoint is kept",
        )


def _search_all(run: _Run, device, clock: Callable[[], float], out: Path | None) -> Generator[Progress, None, dict[str, Any]]:
    """A global round (:func:`_global_round`), recorded in the history and ``progress.csv``."""
    yield Progress(0, None, f"global pose search {len(run.global_radii) + 1} of {run.s.global_rounds}")
    record = yield from _global_round(run, device)
    record["elapsed_s"] = round(clock(), 1)
    run.elapsed = clock()
    return _log(run, out, record)


def reconstruct(
    data,
    settings: ReconstructionSettings | None = None,
    out_dir: str | os.PathLike | None = None,
    resume: bool = False,
    device: torch.device | str = "cpu",
    stop: Callable[[], bool] | None = None,
    pause: Callable[[], bool] | None = None,
) -> Generator[Progress | dict | MapUpdate, None, ReconstructionResult | None]:
    """Reconstruct a map and poses ab initio from a :class:`~.data.ParticleData`.

    Parameters
    ----------
    data : ParticleData
        The particles (Fourier-cropped to the working box).
    settings : ReconstructionSettings, optional
        Method and schedule.
    out_dir : path, optional
        Where checkpoints, ``progress.csv`` and intermediate maps go (none when omitted).
    resume : bool
        Continue from ``out_dir/checkpoint.pt`` if it matches the data and settings.
    device : torch.device or str
        Where to run.
    stop : callable, optional
        Polled every step; when it returns True, pose inference ends and the
        direct reconstruction runs on the poses reached (the widget's Stop).
    pause : callable, optional
        Polled every step; when it returns True, a checkpoint is written and
        the run returns ``None`` (the widget's Pause; resume continues it).
        Closing the generator also keeps a checkpoint.

    Yields
    ------
    Progress, dict (one per epoch: phase, loss, pose change) or MapUpdate

    Returns
    -------
    ReconstructionResult or None
        None when paused.
    """
    from .backproject import reconstruct_halves

    settings = settings or ReconstructionSettings()
    device = torch.device(device)
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    if settings.method == "search":
        from .refine import run_search

        return (yield from run_search(data, settings, out, resume, device, stop, pause, _run_key(data, settings)))
    run = _Run(data, settings, device)
    run.key = _run_key(data, settings)
    state = start_or_resume(out, run.key, resume, device)
    if state is not None:
        run.load(state)
        yield Progress(0, None, f"resumed: {run.phase}, epoch {run.epoch}, {run.elapsed / 60:.1f} min done")

    budget = settings.max_minutes * 60.0
    start = time.perf_counter() - run.elapsed
    last_ckpt = last_map = time.perf_counter()
    n = len(data)

    def clock() -> float:
        return time.perf_counter() - start

    def emit_map(label: str) -> MapUpdate:
        from .physics import fourier_crop_volume

        # Every map at the working box, so the viewer's layer and the files keep one size and pixel size.
        volume = fourier_crop_volume(run.current_volume().cpu(), run.full_box).numpy()
        path = write_intermediate(out, run.maps_written, volume, data.pixel_size)
        return MapUpdate(volume, data.pixel_size, label, path, rotation_from_6d(run.rot6d).numpy(), clock())

    try:
        while clock() < budget and run.phase != "done" and not (stop is not None and stop()):
            epoch_losses, changes = [], []
            size = settings.batch_size if run.phase == "amortized" else settings.pose_batch_size
            total_done = run.epoch * math.ceil(n / size)
            for s, batch in enumerate(run.data.batches(size, shuffle=True, seed=settings.seed, epoch=run.epoch)):
                radius = _band(run, clock(), budget)
                images = batch.images.to(device)
                target = torch.fft.rfft2(images)
                ctf = _ctf(run.data, batch, run.box, device)
                idx = torch.as_tensor(batch.indices)
                if run.phase == "amortized":
                    # Batch norm needs two images to standardise over; a lone last image uses the running statistics.
                    run.encoder.train(len(images) > 1)
                    rotations, shifts = run.encoder(images)
                    err, flip = _head_errors(run, target, rotations, shifts, ctf, radius)
                    best, which = err.min(dim=1)
                    loss = best.mean()
                    with torch.no_grad():
                        rows = torch.arange(len(idx), device=which.device)
                        chosen, origin = _unflip(rotations[rows, which].detach().cpu(), shifts.detach().cpu(), flip[rows, which].cpu())
                        old = rotation_from_6d(run.rot6d[idx])
                        changes.append(_angle_between(chosen, old))
                        run.rot6d[idx] = rotation_to_6d(chosen)
                        run.shifts[idx] = origin * run.to_full
                    _check_finite(loss, run, out)
                    run.opt_encoder.zero_grad(set_to_none=True)
                    run.opt_decoder.zero_grad(set_to_none=True)
                    loss.backward()
                    run.opt_encoder.step()
                    run.opt_decoder.step()
                else:
                    # Auto-decoding: a few pose steps for this batch (the volumes are solved after the epoch).
                    # Each particle's pose: the 6-D rotation and the origin, with its own Adam moments.
                    pose = torch.cat([run.rot6d[idx], run.shifts[idx]], dim=1).to(device)
                    before = rotation_from_6d(pose[:, :6]).cpu()
                    halves = run.half_of[idx]
                    for _ in range(settings.pose_steps):
                        p = pose.clone().requires_grad_(True)
                        err = run.errors(target, run.model_images(rotation_from_6d(p[:, :6]), p[:, 6:], ctf, halves), radius)
                        _check_finite(err.sum(), run, out)
                        (grad,) = torch.autograd.grad(err.sum(), p)
                        pose = run.pose_adam.step(idx, pose, grad)
                    rotations, shift = rotation_from_6d(pose[:, :6]), pose[:, 6:]
                    loss = err.detach().mean()  # before the last pose step: a record, not worth another pass
                    with torch.no_grad():
                        changes.append(_angle_between(rotations.cpu(), before))
                        run.rot6d[idx] = rotation_to_6d(rotations).cpu()
                        run.shifts[idx] = shift.cpu().clamp(-settings.max_shift * run.box, settings.max_shift * run.box)
                value = float(loss.detach())
                epoch_losses.append(value)
                run.elapsed = clock()
                yield Progress(total_done + s + 1, None, f"{run.phase} epoch {run.epoch + 1} loss {np.mean(epoch_losses):.4g}")
                if time.perf_counter() - last_ckpt > settings.checkpoint_minutes * 60:
                    _save_checkpoint(run, out)
                    last_ckpt = time.perf_counter()
                if time.perf_counter() - last_map > settings.map_minutes * 60:
                    update = emit_map(f"{run.phase} epoch {run.epoch + 1}")
                    _write_progress(out, {"elapsed_s": round(clock(), 1), "phase": run.phase, "epoch": run.epoch + 1, "loss": value, "map": update.path.name if update.path else ""})
                    last_map = time.perf_counter()
                    yield update
                if clock() >= budget or (stop is not None and stop()) or (pause is not None and pause()):
                    break
            if pause is not None and pause():
                _save_checkpoint(run, out)
                return None
            run.epoch += 1
            change = float(torch.cat(changes).median()) if changes else float("nan")
            record = {"epoch": run.epoch, "phase": run.phase, "loss": float(np.mean(epoch_losses)) if epoch_losses else float("nan"),
                      "pose_change_deg": change, "elapsed_s": round(clock(), 1)}
            run.history.append(record)
            _write_progress(out, {**record, "elapsed_s": record["elapsed_s"]})
            yield record
            # Phase changes.
            if run.phase == "amortized":
                losses = [r["loss"] for r in run.history if r["phase"] == "amortized"]
                plateau = len(losses) > settings.patience and (losses[-settings.patience - 1] - losses[-1]) < settings.plateau * abs(losses[-settings.patience - 1])
                forced = settings.switch_after is not None and clock() >= settings.switch_after * 60
                collapsed = _collapsed_views(run)
                if collapsed is not None:
                    yield Progress(0, None, f"the encoder's views collapsed (SCF {collapsed.scf:.2f} after {run.epoch} epochs): "
                                            "first poses from a global search against a stochastic first map")

                    def halted() -> bool:
                        return clock() >= budget or (stop is not None and stop()) or (pause is not None and pause())

                    if (yield from _poses_from_first_map(run, device, halted, clock, out)):
                        run.phase = "auto-decoding"
                        run.switched_at = clock()
                        _save_checkpoint(run, out)
                elif forced or plateau or clock() >= 0.5 * budget:
                    yield Progress(0, None, "switching to per-particle poses: best head of every particle")
                    yield from _initialise_poses(run, device)
                    run.phase = "auto-decoding"
                    if settings.method == "cryospin" and settings.global_rounds > 0:
                        yield (yield from _search_all(run, device, clock, out))
                    run.switched_at = clock()
                    _save_checkpoint(run, out)
            elif run.phase == "auto-decoding" and _global_round_due(run, change) and clock() < budget and not (stop is not None and stop()):
                yield (yield from _search_all(run, device, clock, out))
                _save_checkpoint(run, out)
            elif run.phase == "auto-decoding" and change == change and change < settings.converged_degrees:
                run.phase = "done"
            elif run.phase == "auto-decoding" and clock() < budget and not (stop is not None and stop()):
                # The poses moved: solve for the half volumes again (see the module notes).
                band = min(0.5, _band(run, clock(), budget) + REFRESH_MARGIN)
                run.use_half_volumes((yield from _half_volumes_from_poses(run, band)), band)
        _save_checkpoint(run, out)
    finally:
        # Cancelled or stopped: keep what was learnt so that --resume continues from here.
        if run.phase != "done" and out is not None and run.epoch > 0 and not run.diverged:
            try:
                _save_checkpoint(run, out)
            except Exception:  # noqa: BLE001 - never mask the original error
                pass

    yield Progress(0, None, "direct reconstruction from the estimated poses")
    rotations = rotation_from_6d(run.rot6d).numpy()
    shifts = run.shifts.numpy()
    result = yield from reconstruct_halves(data, rotations, shifts, seed=settings.seed)
    return ReconstructionResult(
        volume=result.volume, half1=result.half1, half2=result.half2, pixel_size=data.pixel_size,
        rotations=rotations, shifts=shifts, fsc=result.fsc, resolution=result.resolution, history=run.history,
    )
