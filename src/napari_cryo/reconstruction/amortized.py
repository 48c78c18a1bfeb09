"""The amortized phase of cryoSPIN and cryoAI: an encoder maps each image to a pose.

cryoAI has one rotation head and a symmetrised loss (each image and its
in-plane π turn, the smaller error counts); cryoSPIN has several heads and
keeps the best one per particle (winner takes all).  Every particle trains
the one encoder and decoder here, so images are compared only below the
shared band.  :func:`initialise_poses` hands the encoder's poses on to the
per-particle phase.
"""

from __future__ import annotations

import math
from collections.abc import Generator
from pathlib import Path

import torch

from ..tasks import Progress
from .encoder_run import EncoderRun, angle_between, batch_ctf, half_volumes_from_poses
from .models import rotation_from_6d, rotation_to_6d

#: The pose of an image turned by π in its plane is ``IN_PLANE_PI @ R`` (with the origin negated).
IN_PLANE_PI = torch.diag(torch.tensor([-1.0, -1.0, 1.0]))


def head_errors(run: EncoderRun, target: torch.Tensor, rotations: torch.Tensor, shifts: torch.Tensor, ctf: torch.Tensor | None,
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


def unflip(rotations: torch.Tensor, origins: torch.Tensor, flipped: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The poses of images whose π-turned copy matched the model at (rotation, origin): turned by π, origin negated."""
    turned = torch.where(flipped[:, None, None], IN_PLANE_PI @ rotations, rotations)
    return turned, torch.where(flipped[:, None], -origins, origins)


def amortized_step(run: EncoderRun, images: torch.Tensor, target: torch.Tensor, ctf: torch.Tensor | None, idx: torch.Tensor,
                   radius: float, checkpoint: Path | None) -> tuple[float, torch.Tensor]:
    """One optimiser step of the encoder and the decoder on a batch; the best head's poses become the particles'.

    Returns the batch's loss and each particle's pose change (degrees).  With
    several ranks the batch is this rank's share of one step: the gradients
    are averaged over every rank's images before the step (a rank whose share
    is empty still takes part), so the networks stay the same on every rank.
    """
    ranks = run.ranks
    run.opt_encoder.zero_grad(set_to_none=True)
    run.opt_decoder.zero_grad(set_to_none=True)
    if len(idx) == 0:
        ranks.any(False)  # the others' check of the loss
        change = torch.zeros(0)
        value = float("nan")
    else:
        # Batch norm needs two images to standardise over; a lone last image uses the running statistics.
        run.encoder.train(len(images) > 1)
        rotations, shifts = run.encoder(images)
        err, flip = head_errors(run, target, rotations, shifts, ctf, radius)
        best, which = err.min(dim=1)
        loss = best.mean()
        with torch.no_grad():
            rows = torch.arange(len(idx), device=which.device)
            chosen, origin = unflip(rotations[rows, which].detach().cpu(), shifts.detach().cpu(), flip[rows, which].cpu())
            change = angle_between(chosen, rotation_from_6d(run.rot6d[idx]))
            run.rot6d[idx] = rotation_to_6d(chosen)
            run.shifts[idx] = origin * run.to_full
        value = float(loss.detach())
        # Every rank stops together when any rank's loss is not finite (the last good checkpoint stays).
        if ranks.any(not math.isfinite(value)):
            run.check_finite(torch.tensor(value if not math.isfinite(value) else math.nan), checkpoint)
        loss.backward()
    ranks.average_gradients([*run.encoder.parameters(), *run.decoder.parameters()], len(idx))
    run.opt_encoder.step()
    run.opt_decoder.step()
    return value, change


@torch.no_grad()
def initialise_poses(run: EncoderRun, device) -> Generator[Progress, None, None]:
    """Each particle's pose from the trained encoder's best head, chosen below the shared band.

    Then, at the working box, each half-set's volume is back-projected from
    its own particles and low-passed to that band: poses fitted to one shared
    map at higher frequencies would align both halves to its noise (Einstein
    from noise), and the half maps' FSC would claim a resolution the map does
    not have.
    """
    run.encoder.eval()
    data = run.data
    n = len(run.own)
    done = 0
    for batch in run.batches(256, shuffle=False):
        if len(batch.indices) == 0:
            continue
        images = batch.images.to(device)
        target = torch.fft.rfft2(images)
        ctf = batch_ctf(data, batch, run.box, device)
        rotations, shifts = run.encoder(images)
        err, flip = head_errors(run, target, rotations, shifts, ctf, run.shared_band)
        which = err.argmin(dim=1)
        rows = torch.arange(len(which), device=which.device)
        chosen, origin = unflip(rotations[rows, which].cpu(), shifts.cpu(), flip[rows, which].cpu())
        idx = torch.as_tensor(batch.indices)
        run.rot6d[idx] = rotation_to_6d(chosen)
        run.shifts[idx] = origin * run.to_full
        done += len(idx)
        yield Progress(done, n, "initialising poses")
    run.sync_poses()
    run.use_working_box()
    run.use_half_volumes((yield from half_volumes_from_poses(run, run.shared_band)), run.shared_band)
