"""The settings of a reconstruction run, for every method (cryoSPIN, cryoAI, search)."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass

from ..errors import CryoInputError
from .coverage import UNEVEN_SCF

METHODS = ("cryospin", "cryoai", "search")


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
        so this sets the speed only (see ``docs/benchmarks.md``).
    max_minutes : float
        Time budget of the whole run, in minutes.  cryoSPIN and cryoAI keep
        the time the final half maps will take (timed on one batch at the
        start) and end pose inference before it; the search method starts
        a round only when the last one's duration still fits.
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
        cryoSPIN: global pose searches during auto-decoding (:func:`~.auto_decoding.global_round`): one at the
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
    unsettled_degrees, unsettled_ratio : float
        cryoSPIN: from amortized epoch ``collapse_epochs`` on, when each of the last
        ``patience`` epochs moved the median particle's pose by more than ``unsettled_degrees``
        and the last by more than ``unsettled_ratio`` of the first of them, the encoder is
        not settling: the run switches at once, its first poses from a global search against a
        stochastic first map, as after a collapse (:func:`~.phases.unsettled_poses`).
        0 degrees: no check, cryoSPIN as published.
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
        Batches of the stochastic first map (``search``, and cryoSPIN when its encoder does not settle; fewer for small data sets).
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
    unsettled_degrees: float = 10.0
    unsettled_ratio: float = 0.8
    shared_radius: float = 0.15
    amortized_box: int | None = None
    checkpoint_minutes: float = 2.0
    map_minutes: float = 3.0
    seed: int = 0
    first_map_batches: int = 100

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise CryoInputError(None, f"unknown method '{self.method}' (use {' or '.join(METHODS)})")
        self._check_ranges()

    def _check_ranges(self) -> None:
        """Refuse values no run can use, at once rather than minutes into the run."""
        at_least = {"batch_size": (1, "--batch-size"), "pose_batch_size": (1, ""), "heads": (1, "--heads"),
                    "pose_steps": (1, "--pose-steps"), "global_rounds": (0, "--global-rounds"),
                    "first_map_batches": (1, "--first-map-batches"), "patience": (1, "")}
        for name, (low, option) in at_least.items():
            value = getattr(self, name)
            if int(value) != value or value < low:
                raise CryoInputError(None, f"{option or name.replace('_', ' ')} must be a whole number of at least {low}, got {value}")
        positive = {"max_minutes": "--max-minutes", "checkpoint_minutes": "--checkpoint-minutes", "map_minutes": "--map-minutes"}
        for name, option in positive.items():
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise CryoInputError(None, f"{option} must be a positive number of minutes, got {value}")
        if self.switch_after is not None and not (math.isfinite(self.switch_after) and self.switch_after >= 0):
            raise CryoInputError(None, f"--switch-after must be zero or more minutes, got {self.switch_after}")
        if self.amortized_box is not None and (int(self.amortized_box) != self.amortized_box or self.amortized_box % 2 or self.amortized_box < 16):
            raise CryoInputError(None, f"--amortized-box must be an even number of pixels from 16 to the working box, got {self.amortized_box}")

    def key(self) -> str:
        """What a checkpoint must match to be resumed (the time budget may change)."""
        d = asdict(self)
        for k in ("max_minutes", "checkpoint_minutes", "map_minutes", "switch_after"):
            d.pop(k)
        return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]
