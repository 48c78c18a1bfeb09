"""The auto-decoding phase (cryoSPIN's semi-amortized phase, used by cryoAI too): per-particle poses.

Each particle's rotation (6-D) and origin are free parameters with their
own Adam moments (:mod:`.particle_adam`), stepped against its own half-set's
volume; the volumes are not stepped but solved again from the poses after
each epoch, while the band compared grows to Nyquist.  cryoSPIN adds global
pose searches (:func:`global_round`), which move the particles the encoder
left far off, where gradient steps only reach the nearest minimum.
"""

from __future__ import annotations

import math
from collections.abc import Generator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..tasks import Progress
from .encoder_run import EncoderRun, angle_between, half_volumes_from_poses
from .models import rotation_from_6d, rotation_to_6d
from .poses import rotation_angles
from .refine import RefineSettings, search_round
from .run import RunControl, RunFolder

#: Cycles/pixel kept beyond the compared band when the half volumes are solved again: the band grows meanwhile.
REFRESH_MARGIN = 0.02


def compared_band(run: EncoderRun, elapsed: float, budget: float) -> float:
    """The band compared (cycles/pixel of the current box): ``shared_radius`` while amortized (the encoder
    and the decoder see every particle); after the switch, from there to Nyquist over half the time left."""
    start = run.shared_band
    if run.phase == "amortized":
        return start
    span = max(1e-6, 0.5 * (budget - run.switched_at))
    # Never below the shared band: an empty band would compare nothing (a loss of 0/0).
    return start + (0.5 - start) * min(1.0, max(0.0, (elapsed - run.switched_at) / span))


def pose_step(run: EncoderRun, images: torch.Tensor, target: torch.Tensor, ctf: torch.Tensor | None, idx: torch.Tensor,
              radius: float, checkpoint: Path | None) -> tuple[float, torch.Tensor]:
    """``pose_steps`` updates of a batch's poses against their half volumes (fixed during an epoch).

    Returns the batch's loss (before the last step: a record, not worth
    another pass) and each particle's pose change (degrees).
    """
    # Each particle's pose: the 6-D rotation and the origin, with its own Adam moments.
    pose = torch.cat([run.rot6d[idx], run.shifts[idx]], dim=1).to(run.device)
    before = rotation_from_6d(pose[:, :6]).cpu()
    halves = run.half_of[idx]
    for _ in range(run.s.pose_steps):
        p = pose.clone().requires_grad_(True)
        err = run.errors(target, run.model_images(rotation_from_6d(p[:, :6]), p[:, 6:], ctf, halves), radius)
        run.check_finite(err.sum(), checkpoint)
        (grad,) = torch.autograd.grad(err.sum(), p)
        pose = run.pose_adam.step(idx, pose, grad)
    rotations, shift = rotation_from_6d(pose[:, :6]), pose[:, 6:]
    loss = err.detach().mean()
    with torch.no_grad():
        change = angle_between(rotations.cpu(), before)
        run.rot6d[idx] = rotation_to_6d(rotations).cpu()
        limit = run.s.max_shift * run.box
        run.shifts[idx] = shift.cpu().clamp(-limit, limit)
    return float(loss.detach()), change


def refresh_band(run: EncoderRun, control: RunControl) -> float:
    """The band (cycles/pixel) the half volumes are solved to: a little beyond the band compared now."""
    return min(0.5, compared_band(run, control.clock(), control.inference_budget) + REFRESH_MARGIN)


def refresh_seconds(band: float, final_seconds: float) -> float:
    """About how long solving the half volumes to ``band`` takes, from the final map's time (a full insertion):
    the insertion's cost goes with the area of the band."""
    return final_seconds * min(1.0, (band / 0.5) ** 2)


def refresh_half_volumes(run: EncoderRun, control: RunControl) -> Generator[Progress, None, None]:
    """The poses moved: solve each half volume again, a little beyond the band compared now."""
    band = refresh_band(run, control)
    run.use_half_volumes((yield from half_volumes_from_poses(run, band)), band)


def global_radius(run: EncoderRun) -> float:
    """The band (pixels of frequency) a global round would compare now: the half volumes' band, at most
    :attr:`~.refine.RefineSettings.global_radius` (the 15° grid is too coarse for more)."""
    band = 0.5 if run.half_band is None else run.half_band
    return float(min(band * run.box, RefineSettings.global_radius))


def global_round_due(run: EncoderRun, change: float) -> bool:
    """Whether the per-particle steps have settled far enough from the last global round to search again."""
    if run.s.method != "cryospin" or len(run.global_radii) >= run.s.global_rounds:
        return False
    last = run.global_radii[-1] if run.global_radii else 0.0
    return not math.isnan(change) and change < run.s.settle_degrees and global_radius(run) >= 1.25 * last


def take_searched_poses(run: EncoderRun, rotations: np.ndarray, shifts: np.ndarray, moved: np.ndarray, radius: float,
                        band: float | None) -> Generator[Progress, None, np.ndarray]:
    """Make searched poses the run's: the particles that ``moved`` lose their Adam moments (their old gradients
    point elsewhere), and the half volumes are solved again at ``band``.  Returns each particle's change (degrees)."""
    change = rotation_angles(rotation_from_6d(run.rot6d).numpy(), rotations)
    run.rot6d = rotation_to_6d(torch.as_tensor(rotations))
    run.shifts = torch.as_tensor(shifts)
    run.pose_adam.reset(torch.as_tensor(np.nonzero(moved)[0]))
    run.global_radii.append(radius)
    run.use_half_volumes((yield from half_volumes_from_poses(run, band)), band)
    return change


def global_round(run: EncoderRun, device) -> Generator[Progress, None, dict[str, Any]]:
    """Every particle's pose searched over SO(3) against its own half-set's volume (:func:`~.refine.search_round`).

    A held pose is kept where it fits better, so the round can only lower
    each particle's error.  The particles that moved lose their Adam moments
    (their old gradients point elsewhere), and the half volumes are solved
    again from the new poses at the same band.  Returns a history record.
    """
    radius = global_radius(run)
    refine = RefineSettings(max_shift=run.s.max_shift * run.box)
    before, held = rotation_from_6d(run.rot6d).numpy(), run.shifts.numpy()
    # search_round pairs data.half_sets(seed) with the maps in order: the same split as run.half_of.
    maps = [h.cpu().numpy() for h in run.halves]
    rot, shifts, _ = yield from search_round(run.data, maps, before, held, radius, refine, local=False, seed=run.s.seed, device=device,
                                             ranks=run.ranks)
    moved = np.any(rot != before, axis=(1, 2)) | np.any(shifts != held, axis=1)
    change = yield from take_searched_poses(run, rot, shifts, moved, radius, run.half_band)
    return {"epoch": run.epoch, "phase": "global search", "loss": float("nan"), "pose_change_deg": float(np.median(change)),
            "moved_fraction": float(np.mean(change > 2 * RefineSettings.global_converged)), "band_px": round(radius, 2)}


def logged_global_round(run: EncoderRun, folder: RunFolder, control: RunControl, device) -> Generator[Progress, None, dict[str, Any]]:
    """A :func:`global_round`, recorded in the run's history and ``progress.csv``; returns its record."""
    yield Progress(0, None, f"global pose search {len(run.global_radii) + 1} of {run.s.global_rounds}")
    record = yield from global_round(run, device)
    control.tick()
    record["elapsed_s"] = round(control.clock(), 1)
    run.elapsed = control.clock()
    return folder.log(run.history, record)
