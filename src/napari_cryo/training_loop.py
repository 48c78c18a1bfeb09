"""The one training loop of the learned parts: epochs, history, checkpoints, resume.

Picking, square scoring and segmentation each say how to train one epoch
and how to measure a validation loss; :func:`run_training` does the rest
the same way for all three:

- a run resumes from a checkpoint written by the same settings and data
  (its ``run_key``), and says so with a :class:`Resumed` event; a checkpoint
  it cannot resume (other settings or data, another network, unreadable)
  changes nothing in the network or its optimisers, is reported with a
  :class:`CheckpointIgnored` event, and the run's first checkpoint replaces it;
- after every epoch it writes a checkpoint atomically and yields one
  :class:`EpochRecord` (epoch, cumulative seconds, train loss, validation
  loss, learning rate);
- it returns the whole history as a list of records.

Events are small frozen dataclasses, so views and the command line test
their type instead of looking into dicts.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, TextIO

import torch

from .checkpoints import restore_checkpoint, save_checkpoint
from .tasks import Progress


@dataclass(frozen=True)
class EpochRecord:
    """One finished epoch.

    Attributes
    ----------
    epoch : int
        Epochs done so far, counting those before a resume (1 after the first).
    seconds : float
        Training time so far in seconds, counting the time before a resume.
    train_loss : float
        Mean training loss of the epoch.
    val_loss : float
        Validation loss after the epoch (NaN without a validation set).
    lr : float
        Learning rate at the end of the epoch.
    """

    epoch: int
    seconds: float
    train_loss: float
    val_loss: float = math.nan
    lr: float = math.nan

    def as_dict(self) -> dict[str, float]:
        """The record as a plain dict (model files and checkpoints keep dicts)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> EpochRecord:
        """A record from a dict written by :meth:`as_dict` (unknown keys are ignored)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})


@dataclass(frozen=True)
class Resumed:
    """Training went on from a checkpoint: ``epoch`` epochs were already done."""

    epoch: int
    history: tuple[EpochRecord, ...]


@dataclass(frozen=True)
class CheckpointIgnored:
    """A checkpoint was found but not resumed, for ``reason``: training starts again and replaces it."""

    path: str
    reason: str


def history_dicts(history: Iterable[EpochRecord]) -> list[dict[str, float]]:
    """A history as plain dicts, for model files."""
    return [r.as_dict() for r in history]


def run_training(
    modules: torch.nn.Module | Sequence[torch.nn.Module],
    optimizers: Sequence[torch.optim.Optimizer],
    epochs: int,
    train_epoch: Callable[[int], Generator[Any, None, float]],
    validate: Callable[[int], float] | None = None,
    checkpoint: str | os.PathLike | None = None,
    run_key: str = "",
) -> Generator[Any, None, list[EpochRecord]]:
    """Train for ``epochs`` epochs, resuming and checkpointing; a generator.

    Parameters
    ----------
    modules : torch.nn.Module or sequence of them
        What the checkpoint saves and restores.
    optimizers : sequence of torch.optim.Optimizer
        Their states are checkpointed too; the first one's learning rate is recorded.
    epochs : int
        Total epochs, counting those done before a resume.
    train_epoch : callable
        ``train_epoch(epoch)`` (0-based) is a generator that trains one epoch: it yields
        :class:`~napari_cryo.tasks.Progress` and anything else the caller wants passed on
        (e.g. previews), and returns the epoch's mean training loss.
    validate : callable, optional
        ``validate(epoch)`` returns the validation loss after the epoch.
    checkpoint : path, optional
        Where to checkpoint after every epoch; an existing checkpoint with the same ``run_key``
        is resumed from, any other is ignored and replaced.
    run_key : str
        Names the settings and data the checkpoint belongs to.

    Yields
    ------
    Progress, Resumed, CheckpointIgnored, EpochRecord or whatever ``train_epoch`` yields

    Returns
    -------
    list of EpochRecord
        The whole history, resumed epochs included.
    """
    module_list = [modules] if isinstance(modules, torch.nn.Module) else list(modules)
    target: torch.nn.Module = module_list[0] if len(module_list) == 1 else torch.nn.ModuleList(module_list)
    history: list[EpochRecord] = []
    start = 0
    reasons: list[str] = []
    restored = restore_checkpoint(checkpoint, run_key, target, optimizers, epochs, reasons.append)
    for reason in reasons:
        yield CheckpointIgnored(os.fspath(checkpoint), reason)
    if restored is not None:
        start, saved = restored
        history = [EpochRecord.from_dict(r) for r in saved]
        yield Resumed(start, tuple(history))
        yield Progress(0, None, f"resumed at epoch {start}")
    earlier = history[-1].seconds if history else 0.0
    t0 = time.perf_counter()
    for epoch in range(start, epochs):
        train_loss = yield from train_epoch(epoch)
        val_loss = math.nan if validate is None else float(validate(epoch))
        lr = float(optimizers[0].param_groups[0]["lr"]) if optimizers else math.nan
        record = EpochRecord(epoch + 1, round(earlier + time.perf_counter() - t0, 3), float(train_loss), val_loss, lr)
        history.append(record)
        if checkpoint is not None:
            save_checkpoint(checkpoint, target, optimizers, epoch + 1, history_dicts(history), run_key)
        yield record
    return history


def describe_event(event: Any) -> str | None:
    """One line for a :class:`Resumed`, :class:`CheckpointIgnored` or :class:`EpochRecord` event (``None`` for anything else)."""
    if isinstance(event, Resumed):
        return f"resuming from the checkpoint at epoch {event.epoch}"
    if isinstance(event, CheckpointIgnored):
        return f"not resuming from {event.path}: {event.reason}; training starts again"
    if isinstance(event, EpochRecord):
        val = "" if math.isnan(event.val_loss) else f", validation loss {event.val_loss:.4f}"
        return f"epoch {event.epoch}: train loss {event.train_loss:.4f}{val}, {event.seconds:.0f} s"
    return None


def print_events(event: Any, stream: TextIO | None = None) -> None:
    """Print training events to ``stream`` (standard error by default), for ``run_with_tqdm``'s ``on_value``."""
    line = describe_event(event)
    if line is not None:
        print(line, file=stream if stream is not None else sys.stderr)
