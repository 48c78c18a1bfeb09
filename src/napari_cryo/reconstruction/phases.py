"""The run of cryoSPIN and cryoAI: epochs of the current phase, then the switch to the next.

:func:`run_encoder_method` trains the amortized phase (:mod:`.amortized`)
until its loss plateaus, half the time for pose inference is spent or the switch is forced,
hands the encoder's poses on to per-particle poses (:mod:`.auto_decoding`),
and ends with a direct reconstruction from the poses reached.  When the
encoder's views collapse or its poses do not settle (cryoSPIN), the run
switches at once and the first poses come instead from a global search
against a stochastic first map.
"""

from __future__ import annotations

import math
from collections.abc import Generator
from typing import Any

import numpy as np
import torch

from ..tasks import Progress
from .amortized import amortized_step, initialise_poses
from .auto_decoding import (
    compared_band,
    global_round_due,
    logged_global_round,
    pose_step,
    refresh_band,
    refresh_half_volumes,
    refresh_seconds,
    take_searched_poses,
)
from .backproject import final_map_seconds, reconstruct_halves
from .coverage import ViewCoverage, view_coverage
from .encoder_run import EncoderRun, batch_ctf
from .models import rotation_from_6d
from .refine import RefineSettings, first_map, first_radius, search_round
from .run import (
    Every,
    MapUpdate,
    ReconstructionDiverged,
    ReconstructionResult,
    RunControl,
    RunFolder,
)
from .settings import ReconstructionSettings

Value = Progress | MapUpdate | dict[str, Any]


def run_encoder_method(data, settings: ReconstructionSettings, folder: RunFolder, control: RunControl, resume: bool,
                       device: torch.device) -> Generator[Value, None, ReconstructionResult | None]:
    """cryoSPIN or cryoAI on ``data``: the contract of :func:`~.reconstruct.reconstruct`.

    Checkpoints every ``checkpoint_minutes``, at each phase change, when
    paused and when the generator is closed or fails (not after a loss that
    is not finite: the last good checkpoint stays).
    """
    run = EncoderRun(data, settings, device, control.ranks)
    state = folder.start_or_resume(run.key, resume, device)
    if state is not None:
        run.load(state)
        yield Progress(0, None, f"resumed: {run.phase}, epoch {run.epoch}, {run.elapsed / 60:.1f} min done")
    control.restart(run.elapsed)
    kept = control.reserve(final_map_seconds(data, run.ranks))
    yield Progress(0, None, f"keeping {kept:.0f} s of the {control.budget / 60:g}-minute budget for the final half maps")
    checkpoints, maps = Every(settings.checkpoint_minutes, control.clock), Every(settings.map_minutes, control.clock)
    try:
        while run.phase != "done" and not control.halted():
            losses, changes = yield from _epoch(run, folder, control, checkpoints, maps)
            if control.paused():
                break
            record = _end_epoch(run, losses, changes, folder, control)
            yield record
            if run.phase == "amortized":
                if not control.halted():  # out of time or stopped: the final map comes from the encoder's poses
                    yield from _switch_from_amortized(run, folder, control)
            else:
                yield from _after_auto_decoding_epoch(run, record["pose_change_deg"], folder, control)
        folder.save(run.state())
    except ReconstructionDiverged:
        raise  # the last good checkpoint stays
    except BaseException as exc:
        # Cancelled (the generator closed) or failed: keep what was learnt so that resume continues from here,
        # unless writing the checkpoint is what failed (a full disk): trying again would only fail again.
        checkpoint_failed = folder.checkpoint is not None and getattr(exc, "path", None) == str(folder.checkpoint)
        # Shared by several ranks, the state would have to be gathered from ranks that may be gone: the last periodic checkpoint stays.
        if run.phase != "done" and run.epoch > 0 and not checkpoint_failed and not run.ranks.shared:
            folder.save_last(run.state())
        raise
    if control.paused():
        return None

    yield Progress(0, None, "direct reconstruction from the estimated poses")
    run.sync_poses()
    rotations = rotation_from_6d(run.rot6d).numpy()
    shifts = run.shifts.numpy()
    result = yield from reconstruct_halves(data, rotations, shifts, seed=settings.seed, ranks=run.ranks)
    return ReconstructionResult(
        volume=result.volume, half1=result.half1, half2=result.half2, pixel_size=data.pixel_size,
        rotations=rotations, shifts=shifts, fsc=result.fsc, resolution=result.resolution, history=run.history,
    )


def _epoch(run: EncoderRun, folder: RunFolder, control: RunControl, checkpoints: Every,
           maps: Every) -> Generator[Value, None, tuple[list[tuple[float, int]], list[tuple[torch.Tensor, torch.Tensor]]]]:
    """One pass over this rank's particles in the current phase (until halted).

    Returns each batch's loss and size, and each batch's particles and pose changes.
    Shared by several ranks, the amortized phase's batch is split between them
    (one optimiser step averages all their gradients), so that an epoch takes
    the same steps as in one process, in about 1/K of the time.
    """
    s = run.s
    amortized = run.phase == "amortized"
    step = amortized_step if amortized else pose_step
    size = s.batch_size if amortized else s.pose_batch_size
    local_size = -(-size // run.ranks.size) if amortized else size
    total_done = run.epoch * run.ranks.steps(len(run.full), local_size)
    losses: list[tuple[float, int]] = []
    changes: list[tuple[torch.Tensor, torch.Tensor]] = []
    for i, batch in enumerate(run.batches(local_size, shuffle=True, epoch=run.epoch)):
        radius = compared_band(run, control.clock(), control.inference_budget)
        idx = torch.as_tensor(batch.indices)
        if len(idx) or amortized:  # an empty share still joins the amortized step's all-reduce
            images = batch.images.to(run.device)
            target = torch.fft.rfft2(images)
            ctf = batch_ctf(run.data, batch, run.box, run.device) if len(idx) else None
            loss, change = step(run, images, target, ctf, idx, radius, folder.checkpoint)
            if len(idx):
                losses.append((loss, len(idx)))
                changes.append((idx, change))
        run.elapsed = control.clock()
        shown = sum(l * n for l, n in losses) / max(1, sum(n for _, n in losses))
        yield Progress(total_done + i + 1, None, f"{run.phase} epoch {run.epoch + 1} loss {shown:.4g}")
        if checkpoints.due():
            folder.save(run.state())
            checkpoints.reset()
        if maps.due():
            update = _map_update(run, folder, control, f"{run.phase} epoch {run.epoch + 1}")
            folder.write_progress({"elapsed_s": round(control.clock(), 1), "phase": run.phase, "epoch": run.epoch + 1, "loss": shown,
                                   "map": update.path.name if update.path else ""})
            maps.reset()
            yield update
        if control.halted():
            break
    return losses, changes


def _end_epoch(run: EncoderRun, losses: list[tuple[float, int]], changes: list[tuple[torch.Tensor, torch.Tensor]], folder: RunFolder,
               control: RunControl) -> dict[str, Any]:
    """The epoch's record (mean loss, median pose change over every rank's particles), kept in the history and ``progress.csv``.

    With several ranks, the poses are gathered and rank 0's batch-norm
    statistics shared, so that every rank holds the same run and takes the same decisions.
    """
    run.epoch += 1
    ranks = run.ranks
    loss = ranks.mean(sum(l * n for l, n in losses), sum(n for _, n in losses)) if ranks.shared else (
        float(np.mean([l for l, _ in losses])) if losses else float("nan"))
    if ranks.shared:
        moved = torch.full((len(run.full),), float("nan"))
        for idx, change in changes:
            moved[idx] = change.float()
        moved = ranks.gather_rows(torch.nan_to_num(moved, nan=-1.0))
        moved = moved[moved >= 0]  # particles not visited (the epoch was cut short) are left out
        change = float(moved.median()) if len(moved) else float("nan")
        run.sync_poses()
        ranks.broadcast_buffers(run.encoder)
    else:
        change = float(torch.cat([c for _, c in changes]).median()) if changes else float("nan")
    record = {"epoch": run.epoch, "phase": run.phase, "loss": loss, "pose_change_deg": change, "elapsed_s": round(control.clock(), 1)}
    return folder.log(run.history, record)


def _map_update(run: EncoderRun, folder: RunFolder, control: RunControl, label: str) -> MapUpdate:
    """The map as it stands, written as the next intermediate map."""
    from .physics import fourier_crop_volume

    # Every map at the working box, so the viewer's layer and the files keep one size and pixel size.
    run.sync_poses()
    volume = fourier_crop_volume(run.current_volume().cpu(), run.full_box).numpy()
    path = folder.write_map(run.maps_written, volume, run.full.pixel_size)
    return MapUpdate(volume, run.full.pixel_size, label, path, rotation_from_6d(run.rot6d).numpy(), control.clock())


def _switch_from_amortized(run: EncoderRun, folder: RunFolder, control: RunControl) -> Generator[Value, None, None]:
    """Switch to per-particle poses when the views collapsed or the poses are not settling (from a first map), the loss
    plateaued, the switch is forced or half the time for pose inference is spent (from the encoder's poses)."""
    s = run.s
    losses = [r["loss"] for r in run.history if r["phase"] == "amortized"]
    plateau = len(losses) > s.patience and (losses[-s.patience - 1] - losses[-1]) < s.plateau * abs(losses[-s.patience - 1])
    forced = s.switch_after is not None and control.clock() >= s.switch_after * 60
    collapsed = collapsed_views(run)
    unsettled = None if collapsed is not None else unsettled_poses(run)
    if collapsed is not None or unsettled is not None:
        why = (f"the encoder's views collapsed (SCF {collapsed.scf:.2f} after {run.epoch} epochs)" if collapsed is not None else
               f"the encoder's poses are not settling ({', '.join(f'{c:.0f}' for c in unsettled)}° per epoch)")
        yield Progress(0, None, f"{why}: first poses from a global search against a stochastic first map")
        if (yield from poses_from_first_map(run, folder, control)):
            run.phase = "auto-decoding"
            run.switched_at = run.elapsed = control.clock()
            folder.save(run.state())
    elif forced or plateau or control.clock() >= 0.5 * control.inference_budget:
        yield Progress(0, None, "switching to per-particle poses: best head of every particle")
        yield from initialise_poses(run, run.device)
        run.phase = "auto-decoding"
        if s.method == "cryospin" and s.global_rounds > 0:
            yield (yield from logged_global_round(run, folder, control, run.device))
        # The checkpoint's clock is the switch's: a resumed run must not start before it (the band grows from it).
        run.switched_at = run.elapsed = control.clock()
        folder.save(run.state())


def _after_auto_decoding_epoch(run: EncoderRun, change: float, folder: RunFolder, control: RunControl) -> Generator[Value, None, None]:
    """After an epoch of pose steps: a global round when one is due, done when the poses settled, else new half volumes."""
    if global_round_due(run, change) and not control.halted() and control.fits(last_global_seconds(run.history)):
        yield (yield from logged_global_round(run, folder, control, run.device))
        folder.save(run.state())
    elif not math.isnan(change) and change < run.s.converged_degrees:
        run.phase = "done"
    elif not control.halted() and control.fits(2 * refresh_seconds(refresh_band(run, control), control.reserved)):
        # New half volumes only serve the next epoch: not worth it when they would take half the time left.
        yield from refresh_half_volumes(run, control)


def last_global_seconds(history: list[dict[str, Any]]) -> float:
    """Seconds the last global round took (from the history's clock; 0 before any): the next takes about as long."""
    for before, row in zip(reversed(history[:-1]), reversed(history)):
        if row["phase"] == "global search":
            return float(row["elapsed_s"]) - float(before["elapsed_s"])
    return 0.0


def collapsed_views(run: EncoderRun) -> ViewCoverage | None:
    """The coverage of the encoder's poses when they have collapsed (SCF below ``collapse_scf``), else None."""
    s = run.s
    if s.method != "cryospin" or s.collapse_scf <= 0 or run.phase != "amortized" or run.epoch < s.collapse_epochs:
        return None
    coverage = view_coverage(rotation_from_6d(run.rot6d).numpy())
    return coverage if coverage.measured and coverage.scf < s.collapse_scf else None


def unsettled_poses(run: EncoderRun) -> list[float] | None:
    """The last amortized epochs' median pose changes (degrees) when the encoder's poses are not settling, else None.

    Not settling: from amortized epoch ``collapse_epochs`` on, each of the last
    ``patience`` epochs moved the median particle by more than ``unsettled_degrees``,
    and the last moved it by more than ``unsettled_ratio`` of the first of them.
    An encoder that is learning the map moves its poses less and less; one that
    keeps moving them by tens of degrees an epoch is not converging on any map,
    and the time it takes is better spent on a first map and global searches.
    """
    s = run.s
    if s.method != "cryospin" or s.unsettled_degrees <= 0 or run.phase != "amortized" or run.epoch < max(s.collapse_epochs, s.patience):
        return None
    changes = [r["pose_change_deg"] for r in run.history if r["phase"] == "amortized"][-s.patience:]
    if len(changes) < s.patience or not all(math.isfinite(c) and c > s.unsettled_degrees for c in changes):
        return None
    return changes if changes[-1] > s.unsettled_ratio * changes[0] else None


def poses_from_first_map(run: EncoderRun, folder: RunFolder, control: RunControl) -> Generator[Value, None, bool]:
    """First poses without the encoder: a stochastic first map, then a global search of every particle against it.

    For encoders whose views collapsed (:func:`collapsed_views`): a map from
    their poses is wrong but self-consistent, and no search against it
    repairs them.  As in the ``search`` method, the first map comes from all
    particles at a 32-px box and the search compares only up to
    :attr:`~.refine.RefineSettings.start_band`; the half volumes are then
    solved from each half-set's own particles at the shared band.  Yields
    the first map and a history record for each step; returns False, having
    changed nothing, when stopped or paused during the map.
    """
    data, device = run.full, run.device
    volume = yield from first_map(data, run.s.first_map_batches, run.s.seed, control.halted, device, run.ranks, run.s.max_shift)
    if control.halted() and not control.out_of_time():  # stopped or paused by the user: stay amortized
        return False
    run.use_working_box()
    path = folder.write_map(run.maps_written, volume, data.pixel_size)
    yield MapUpdate(volume, data.pixel_size, "first map (stochastic search)", path, None, control.clock())
    yield folder.log(run.history, {"epoch": run.epoch, "phase": "first map", "loss": float("nan"), "pose_change_deg": float("nan"),
                                   "elapsed_s": round(control.clock(), 1), "map": path.name if path else ""})
    refine = RefineSettings(max_shift=run.s.max_shift * run.box)
    radius = first_radius(run.box, refine)
    yield Progress(0, None, "global pose search against the first map")
    rot, shifts, _ = yield from search_round(data, [volume], None, None, radius, refine, local=False, seed=run.s.seed, device=device,
                                             ranks=run.ranks)
    change = yield from take_searched_poses(run, rot, shifts, np.ones(len(data), dtype=bool), radius, run.shared_band)
    control.tick()
    yield folder.log(run.history, {"epoch": run.epoch, "phase": "global search", "loss": float("nan"), "pose_change_deg": float(np.median(change)),
                                   "moved_fraction": 1.0, "band_px": round(radius, 2), "elapsed_s": round(control.clock(), 1)})
    return True
