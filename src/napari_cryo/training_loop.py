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

With an :class:`EarlyStopping` the run also stops before its last epoch,
whichever comes first: when the validation value has not improved for
``patience`` epochs, or when the next epoch would end past a time budget.
It keeps the best epoch's weights (in memory and in every checkpoint, so a
resumed run goes on with its best-so-far and patience), restores them at
the end, can lower the learning rate when the validation value stalls
(reduce on plateau: a schedule that needs no known last epoch), adds the
best value and an ETA to the progress messages, and ends with a
:class:`Stopped` event saying why it stopped.  Without one, a run trains its
``epochs`` and keeps the last weights, as before.

Events are small frozen dataclasses, so views and the command line test
their type instead of looking into dicts.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
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
        Learning rate of the epoch's last step (before a plateau lowers it).
    val_score : float
        A second validation measure, higher is better (picking: the held-out
        particles' recall); NaN where a trainer has none.
    """

    epoch: int
    seconds: float
    train_loss: float
    val_loss: float = math.nan
    lr: float = math.nan
    val_score: float = math.nan

    def as_dict(self) -> dict[str, float]:
        """The record as a plain dict (model files and checkpoints keep dicts); an absent ``val_score`` is left out."""
        values = asdict(self)
        if math.isnan(self.val_score):
            del values["val_score"]
        return values

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


#: Why a run with :class:`EarlyStopping` stopped.
STOP_PATIENCE, STOP_BUDGET, STOP_MAX_EPOCHS, STOP_CANCELLED = "patience", "budget", "max epochs", "cancelled"


def val_loss_of(record: EpochRecord) -> float:
    """The default monitored value: the validation loss (lower is better)."""
    return record.val_loss


@dataclass
class EarlyStopping:
    """When a run stops before ``epochs``, what it keeps, and (filled in by the run) how it ended.

    Attributes
    ----------
    patience : int or None
        Stop once the monitored value has not improved for this many epochs (None or 0: never).
    budget_s : float or None
        Seconds of training, counting those before a resume: the run stops when the next epoch
        (estimated from the mean so far) would end past it.  At least one epoch always runs.
    min_delta : float
        How much lower the monitored value must be to count as an improvement.
    keep_best : bool
        Restore the best epoch's weights at the end (also on a cancel).
    lr_patience : int or None
        Multiply every learning rate by ``lr_factor`` after each ``lr_patience`` epochs without
        improvement (reduce on plateau); None: the trainer's own schedule.
    lr_factor : float
        See ``lr_patience``.
    min_lr : float
        The plateau schedule lowers no learning rate below this.
    monitor : callable
        ``monitor(record)``: the value to minimise (default the validation loss).  Epochs where it
        is NaN (no validation data) count as improvements, so the last epoch is kept.
    best_epoch : int
        Filled in by the run: the best epoch so far (0 before the first).
    best_value : float
        Filled in by the run: its monitored value.
    reason : str or None
        Filled in by the run: one of ``STOP_PATIENCE``, ``STOP_BUDGET``, ``STOP_MAX_EPOCHS``,
        ``STOP_CANCELLED`` once it stopped.
    """

    patience: int | None = 5
    budget_s: float | None = None
    min_delta: float = 0.0
    keep_best: bool = True
    lr_patience: int | None = None
    lr_factor: float = 0.5
    min_lr: float = 1e-6
    monitor: Callable[[EpochRecord], float] = val_loss_of
    best_epoch: int = field(default=0, init=False)
    best_value: float = field(default=math.nan, init=False)
    reason: str | None = field(default=None, init=False)

    def observe(self, history: Sequence[EpochRecord]) -> None:
        """Set ``best_epoch`` and ``best_value`` from a history (after each epoch, and after a resume)."""
        self.best_epoch, self.best_value = 0, math.nan
        for record in history:
            value = float(self.monitor(record))
            if math.isnan(value) or self.best_epoch == 0 or math.isnan(self.best_value) or value < self.best_value - self.min_delta:
                self.best_epoch, self.best_value = record.epoch, value

    def stale(self, history: Sequence[EpochRecord]) -> int:
        """Epochs since the best one."""
        return (history[-1].epoch - self.best_epoch) if history else 0

    def stop_reason(self, history: Sequence[EpochRecord], epochs: int) -> str | None:
        """Why the run must stop after ``history`` (None: go on); call :meth:`observe` first."""
        if not history:
            return None
        if history[-1].epoch >= epochs:
            return STOP_MAX_EPOCHS
        if self.patience and self.stale(history) >= self.patience:
            return STOP_PATIENCE
        if self.budget_s is not None:
            per_epoch = history[-1].seconds / history[-1].epoch
            if history[-1].seconds + per_epoch > self.budget_s:
                return STOP_BUDGET
        return None


@dataclass(frozen=True)
class Stopped:
    """A run with :class:`EarlyStopping` ended: after ``epoch`` epochs, for ``reason``; ``best_epoch``'s weights are kept."""

    reason: str
    epoch: int
    best_epoch: int
    best_value: float
    seconds: float


class _Snapshot(torch.nn.Module):
    """A copy of a module's weights as buffers, so that checkpoints save and restore it with the module."""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        for i, value in enumerate(module.state_dict().values()):
            self.register_buffer(f"w{i}", value.detach().clone())

    @torch.no_grad()
    def take(self, module: torch.nn.Module) -> None:
        """Copy ``module``'s weights in."""
        for buffer, value in zip(self.buffers(), module.state_dict().values()):
            buffer.copy_(value)

    def give(self, module: torch.nn.Module) -> None:
        """Load the copy back into ``module``."""
        module.load_state_dict(dict(zip(module.state_dict().keys(), self.buffers())))


def _clock(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else f"{seconds // 60}:{seconds % 60:02d}"


class _Eta:
    """Rewrites a trainer's progress with an estimated total and an ETA: the budget or the remaining epochs, whichever is sooner."""

    def __init__(self, stopping: EarlyStopping, epochs: int, earlier: float, done_epochs: int) -> None:
        self.stopping, self.epochs = stopping, epochs
        self.earlier, self.done_epochs = earlier, done_epochs
        self.t0 = time.perf_counter()
        self.epoch_start = self.t0

    def start_epoch(self, done_epochs: int, seconds: float) -> None:
        self.done_epochs, self.earlier = done_epochs, seconds
        self.epoch_start = time.perf_counter()

    def rewrite(self, item: Progress, epoch: int) -> Progress:
        now = time.perf_counter()
        in_epoch = now - self.epoch_start
        elapsed = self.earlier + in_epoch
        steps = item.total / self.epochs if item.total else None
        frac = min(1.0, max(0.0, item.done / steps - epoch)) if steps else 0.0
        if self.done_epochs:
            per_epoch = self.earlier / self.done_epochs
        elif frac > 0:
            per_epoch = in_epoch / frac
        else:
            per_epoch = math.nan
        left = (self.epochs - epoch - frac) * per_epoch
        if self.stopping.budget_s is not None:
            left = min(left, max(0.0, self.stopping.budget_s - elapsed)) if not math.isnan(left) else max(0.0, self.stopping.budget_s - elapsed)
        parts = [item.message] if item.message else []
        if self.stopping.best_epoch and not math.isnan(self.stopping.best_value):
            parts.append(f"best val {self.stopping.best_value:.4f} (epoch {self.stopping.best_epoch})")
        total = item.total
        if not math.isnan(left):
            parts.append(f"ETA {_clock(left)}")
            if steps and per_epoch > 0:
                total = max(item.done, int(round(item.done + left / per_epoch * steps)))
        return Progress(item.done, total, ", ".join(parts))


def _relay(inner: Iterator[Any], rewrite: Callable[[Progress], Progress]) -> Generator[Any, None, Any]:
    """``yield from inner`` with its progress rewritten; closing this closes ``inner``."""
    try:
        while True:
            try:
                item = next(inner)
            except StopIteration as stop:
                return stop.value
            yield rewrite(item) if isinstance(item, Progress) else item
    finally:
        close = getattr(inner, "close", None)
        if close is not None:
            close()


def history_dicts(history: Iterable[EpochRecord]) -> list[dict[str, float]]:
    """A history as plain dicts, for model files."""
    return [r.as_dict() for r in history]


def run_training(
    modules: torch.nn.Module | Sequence[torch.nn.Module],
    optimizers: Sequence[torch.optim.Optimizer],
    epochs: int,
    train_epoch: Callable[[int], Generator[Any, None, float]],
    validate: Callable[[int], float | tuple[float, float]] | None = None,
    checkpoint: str | os.PathLike | None = None,
    run_key: str = "",
    stopping: EarlyStopping | None = None,
) -> Generator[Any, None, list[EpochRecord]]:
    """Train for ``epochs`` epochs (or until ``stopping`` says), resuming and checkpointing; a generator.

    Parameters
    ----------
    modules : torch.nn.Module or sequence of them
        What the checkpoint saves and restores.
    optimizers : sequence of torch.optim.Optimizer
        Their states are checkpointed too; the first one's learning rate is recorded.
    epochs : int
        Total epochs (with ``stopping``: at most), counting those done before a resume.
    train_epoch : callable
        ``train_epoch(epoch)`` (0-based) is a generator that trains one epoch: it yields
        :class:`~napari_cryo.tasks.Progress` and anything else the caller wants passed on
        (e.g. previews), and returns the epoch's mean training loss.  With ``stopping``, its
        progress counts steps over all ``epochs`` (``done`` of ``total``), from which the ETA is
        estimated.
    validate : callable, optional
        ``validate(epoch)`` returns the validation loss after the epoch, or a pair
        (loss, score) whose score is recorded as :attr:`EpochRecord.val_score`.
    checkpoint : path, optional
        Where to checkpoint after every epoch; an existing checkpoint with the same ``run_key``
        is resumed from, any other is ignored and replaced.
    run_key : str
        Names the settings and data the checkpoint belongs to.
    stopping : EarlyStopping, optional
        Stop early (patience, time budget), keep the best weights, reduce the learning rate on
        plateaus; filled in with the best epoch and the reason the run stopped.

    Yields
    ------
    Progress, Resumed, CheckpointIgnored, EpochRecord, Stopped or whatever ``train_epoch`` yields
        ``Stopped`` comes last, only with ``stopping``.

    Returns
    -------
    list of EpochRecord
        The whole history, resumed epochs included.
    """
    module_list = [modules] if isinstance(modules, torch.nn.Module) else list(modules)
    target: torch.nn.Module = module_list[0] if len(module_list) == 1 else torch.nn.ModuleList(module_list)
    # With early stopping the best weights travel in the checkpoint beside the current ones.
    best = _Snapshot(target) if stopping is not None and stopping.keep_best else None
    saved_module = target if best is None else torch.nn.ModuleList([target, best])
    history: list[EpochRecord] = []
    start = 0
    reasons: list[str] = []
    restored = restore_checkpoint(checkpoint, run_key, saved_module, optimizers, epochs, reasons.append)
    for reason in reasons:
        yield CheckpointIgnored(os.fspath(checkpoint), reason)
    if restored is not None:
        start, saved = restored
        history = [EpochRecord.from_dict(r) for r in saved]
        yield Resumed(start, tuple(history))
        yield Progress(0, None, f"resumed at epoch {start}")
    earlier = history[-1].seconds if history else 0.0
    t0 = time.perf_counter()
    if stopping is None:
        for epoch in range(start, epochs):
            train_loss = yield from train_epoch(epoch)
            record = _record(epoch, earlier + time.perf_counter() - t0, train_loss, validate, optimizers)
            history.append(record)
            if checkpoint is not None:
                save_checkpoint(checkpoint, target, optimizers, epoch + 1, history_dicts(history), run_key)
            yield record
        return history

    stopping.observe(history)
    stopping.reason = stopping.stop_reason(history, epochs)  # a resumed run may have stopped already
    eta = _Eta(stopping, epochs, earlier, len(history))
    try:
        epoch = start
        while stopping.reason is None:
            eta.start_epoch(len(history), history[-1].seconds if history else earlier)
            train_loss = yield from _relay(train_epoch(epoch), lambda item, e=epoch: eta.rewrite(item, e))
            record = _record(epoch, earlier + time.perf_counter() - t0, train_loss, validate, optimizers)
            history.append(record)
            stopping.observe(history)
            if best is not None and stopping.best_epoch == record.epoch:
                best.take(target)
            stale = stopping.stale(history)
            if stopping.lr_patience and stale and stale % stopping.lr_patience == 0:
                for optimizer in optimizers:
                    for group in optimizer.param_groups:
                        group["lr"] = max(stopping.min_lr, group["lr"] * stopping.lr_factor)
            if checkpoint is not None:
                save_checkpoint(checkpoint, saved_module, optimizers, epoch + 1, history_dicts(history), run_key)
            yield record
            stopping.reason = stopping.stop_reason(history, epochs)
            epoch += 1
    except (GeneratorExit, KeyboardInterrupt):
        stopping.reason = STOP_CANCELLED
        if best is not None and stopping.best_epoch:
            best.give(target)
        raise
    if best is not None and stopping.best_epoch:
        best.give(target)
    seconds = history[-1].seconds if history else 0.0
    yield Stopped(stopping.reason, len(history), stopping.best_epoch, stopping.best_value, seconds)
    return history


def _record(
    epoch: int,
    seconds: float,
    train_loss: float,
    validate: Callable[[int], float | tuple[float, float]] | None,
    optimizers: Sequence[torch.optim.Optimizer],
) -> EpochRecord:
    """The record of a finished epoch (validation is part of its time)."""
    lr = float(optimizers[0].param_groups[0]["lr"]) if optimizers else math.nan
    t = time.perf_counter()
    measured = math.nan if validate is None else validate(epoch)
    loss, score = measured if isinstance(measured, tuple) else (measured, math.nan)
    seconds += time.perf_counter() - t
    return EpochRecord(epoch + 1, round(seconds, 3), float(train_loss), float(loss), lr, float(score))


#: What a :class:`Stopped` event's reason means, for people.
STOP_WORDS = {
    STOP_PATIENCE: "the validation stopped improving",
    STOP_BUDGET: "the time budget is spent",
    STOP_MAX_EPOCHS: "the last epoch is done",
    STOP_CANCELLED: "cancelled",
}


def describe_event(event: Any) -> str | None:
    """One line for a :class:`Resumed`, :class:`CheckpointIgnored`, :class:`EpochRecord` or :class:`Stopped` event (``None`` for anything else)."""
    if isinstance(event, Stopped):
        why = STOP_WORDS.get(event.reason, event.reason)
        best = "" if not event.best_epoch else f"; keeping epoch {event.best_epoch}" + ("" if math.isnan(event.best_value) else f" (validation {event.best_value:.4f})")
        return f"stopped after epoch {event.epoch} ({why}, {event.seconds:.0f} s){best}"
    if isinstance(event, Resumed):
        return f"resuming from the checkpoint at epoch {event.epoch}"
    if isinstance(event, CheckpointIgnored):
        return f"not resuming from {event.path}: {event.reason}; training starts again"
    if isinstance(event, EpochRecord):
        val = "" if math.isnan(event.val_loss) else f", validation loss {event.val_loss:.4f}"
        if not math.isnan(event.val_score):
            val += f", score {event.val_score:.3f}"
        return f"epoch {event.epoch}: train loss {event.train_loss:.4f}{val}, {event.seconds:.0f} s"
    return None


def print_events(event: Any, stream: TextIO | None = None) -> None:
    """Print training events to ``stream`` (standard error by default), for ``run_with_tqdm``'s ``on_value``."""
    line = describe_event(event)
    if line is not None:
        print(line, file=stream if stream is not None else sys.stderr)
