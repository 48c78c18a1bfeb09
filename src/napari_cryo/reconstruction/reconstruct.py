"""Ab initio reconstruction: the one entry point, :func:`reconstruct`, for every method.

cryoSPIN and cryoAI infer poses with an encoder, then per particle
(:mod:`.phases`); the ``search`` method searches poses against a stochastic
first map (:mod:`.refine`).  Every run ends with a direct reconstruction of
two half maps from the poses reached (:mod:`.backproject`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Generator

import torch

from ..tasks import Progress
from .encoder_run import amortized_box
from .phases import run_encoder_method
from .ranks import Ranks
from .refine import run_search
from .run import (
    CHECKPOINT,
    MapUpdate,
    ReconstructionDiverged,
    ReconstructionResult,
    RunControl,
    RunFolder,
)
from .settings import METHODS, ReconstructionSettings

__all__ = ["CHECKPOINT", "METHODS", "MapUpdate", "ReconstructionDiverged", "ReconstructionResult", "ReconstructionSettings",
           "amortized_box", "reconstruct"]


def reconstruct(
    data,
    settings: ReconstructionSettings | None = None,
    out_dir: str | os.PathLike | None = None,
    resume: bool = False,
    device: torch.device | str = "cpu",
    stop: Callable[[], bool] | None = None,
    pause: Callable[[], bool] | None = None,
    ranks: Ranks | None = None,
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
    ranks : Ranks, optional
        The processes sharing the particles under ``torchrun`` (:mod:`.ranks`):
        every rank runs this with its own ``device``; rank 0 alone writes
        ``out_dir``, and every rank returns the same result.

    Yields
    ------
    Progress, dict (one per epoch or search round: phase, loss, pose change) or MapUpdate

    Returns
    -------
    ReconstructionResult or None
        None when paused.
    """
    settings = settings or ReconstructionSettings()
    device = torch.device(device)
    ranks = ranks or Ranks.single()
    folder = RunFolder(out_dir, writes=ranks.root)
    control = RunControl(settings.max_minutes, stop=stop, pause=pause, ranks=ranks)
    if settings.method == "search":
        return (yield from run_search(data, settings, folder, control, resume, device))
    return (yield from run_encoder_method(data, settings, folder, control, resume, device))
