"""Training checkpoints and the learning-rate schedule, shared by every trainer.

A checkpoint holds the network, its optimisers, the epoch reached, the loss
history and a ``run_key`` naming the settings and data it belongs to: a run
resumes only from a checkpoint written by the same settings and data, and
an unreadable or foreign checkpoint is ignored (training starts again).

Checkpoints are written atomically (:func:`~napari_cryo.io.torch_files.save_torch`): a process killed
while writing one leaves the previous checkpoint whole, and its temporary
file is removed by the next write.  A checkpoint that does not fit the
network is refused before any of it is loaded, so an ignored checkpoint
never leaves the network or the optimisers half changed.
"""

from __future__ import annotations

import copy
import math
import numbers
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from .io.torch_files import archive_problem, save_torch

#: Keys every training checkpoint holds.
CHECKPOINT_KEYS = ("model", "optimizers", "epoch", "history", "run_key")


def cosine_lr(base: float, step: int, total: int, floor: float = 0.05) -> float:
    """Learning rate decaying along a cosine from ``base`` to ``floor * base`` over ``total`` steps."""
    return base * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * step / max(1, total))))


def training_outputs(model: str | os.PathLike, overwrite: bool, resume: bool) -> tuple[Path, Path, Path]:
    """Check every file a training command writes, before it starts; returns the model, checkpoint and loss-plot paths.

    Used by ``pick train`` and ``squares train`` (``MODEL.ckpt`` beside the
    model ``MODEL``).

    The output-folder policy (:func:`~napari_cryo.io.atomic.check_outputs`):
    an existing checkpoint is an interrupted run, which ``resume`` continues
    and ``overwrite`` starts again; the model and its loss plot are replaced
    only with ``overwrite``, or on a resume, where they are the interrupted
    run's own.

    Raises
    ------
    CryoInputError
        Naming the first file that may not be written.
    """
    from .errors import CryoInputError
    from .io.atomic import check_outputs
    from .plots import loss_plot_path

    model = Path(model)
    checkpoint = model.with_name(model.name + ".ckpt")
    check_outputs([checkpoint], overwrite=overwrite, resume=resume, hint="use --resume to continue that run, or --overwrite to start again")
    check_outputs([model, loss_plot_path(model)], overwrite=overwrite, resume=resume and checkpoint.exists())
    if not model.parent.is_dir():
        raise CryoInputError(model, f"directory {model.parent} does not exist")
    return model, checkpoint, loss_plot_path(model)


def save_checkpoint(
    path: str | os.PathLike,
    net: torch.nn.Module,
    optimizers: Sequence[torch.optim.Optimizer],
    epoch: int,
    history: list[dict[str, Any]],
    run_key: str,
) -> None:
    """Write a checkpoint atomically (an interrupted write keeps the previous one).

    Raises
    ------
    CryoInputError
        If the disk refuses the write (one line naming the checkpoint).
    """
    state = {
        "model": net.state_dict(),
        "optimizers": [o.state_dict() for o in optimizers],
        "epoch": epoch,
        "history": history,
        "run_key": run_key,
    }
    save_torch(state, path, overwrite=True)


def _number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _history_problem(history: Any, epoch: int) -> str | None:
    """Why a checkpoint's history cannot be continued (None when it can)."""
    if not isinstance(history, list) or len(history) != epoch:
        return f"its history does not hold its {epoch} epochs"
    for i, record in enumerate(history):
        if not isinstance(record, dict) or record.get("epoch") != i + 1:
            return f"its history record {i + 1} is not epoch {i + 1}"
        if not all(isinstance(k, str) and _number(v) for k, v in record.items()):
            return f"its history record {i + 1} holds values that are not numbers"
    return None


def _model_problem(saved: Any, net: torch.nn.Module) -> str | None:
    """Why the saved weights do not fit ``net`` (None when they do)."""
    own = net.state_dict()
    if not isinstance(saved, dict) or set(saved) != set(own):
        return "it holds the weights of another network"
    for name, tensor in own.items():
        value = saved[name]
        if not isinstance(value, torch.Tensor) or value.shape != tensor.shape:
            return f"its weight {name} does not fit the network"
    return None


def checkpoint_problem(
    state: Any,
    run_key: str,
    net: torch.nn.Module,
    optimizers: Sequence[torch.optim.Optimizer],
    epochs: int | None = None,
) -> str | None:
    """Why a loaded checkpoint cannot be resumed by this run, or None when it can.

    Parameters
    ----------
    state : object
        What ``torch.load`` returned.
    run_key : str
        The run's settings and data; the checkpoint must have been written with the same.
    net : torch.nn.Module
        The network the weights must fit (names and shapes).
    optimizers : sequence of torch.optim.Optimizer
        As many saved optimiser states are needed.
    epochs : int, optional
        The run's total epochs: a checkpoint further on cannot be continued.
    """
    if not isinstance(state, dict) or not all(key in state for key in CHECKPOINT_KEYS):
        return "it is not a training checkpoint"
    if state["run_key"] != run_key:
        return "it was written with other settings or data"
    epoch = state["epoch"]
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0 or (epochs is not None and epoch > epochs):
        return f"its epoch ({epoch!r}) is not one of this run's"
    saved_optimizers = state["optimizers"]
    if not isinstance(saved_optimizers, list) or len(saved_optimizers) != len(optimizers):
        return "it holds the state of other optimisers"
    return _history_problem(state["history"], epoch) or _model_problem(state["model"], net)


def restore_checkpoint(
    path: str | os.PathLike | None,
    run_key: str,
    net: torch.nn.Module,
    optimizers: Sequence[torch.optim.Optimizer],
    epochs: int | None = None,
    on_ignored: Callable[[str], None] | None = None,
) -> tuple[int, list[dict[str, Any]]] | None:
    """Load a matching checkpoint into ``net`` and ``optimizers``; returns (epoch, history) or None.

    The file is read with ``weights_only`` (tensors and plain values, never
    code) and checked whole (:func:`checkpoint_problem`) before any of it is
    loaded; if loading still fails, the network and optimisers are put back
    as they were, so that training starts again from where it would have.

    Parameters
    ----------
    path : path or None
        The checkpoint; None or a missing file: nothing to resume.
    run_key : str
        The run's settings and data.
    net : torch.nn.Module
        Receives the weights.
    optimizers : sequence of torch.optim.Optimizer
        Receive their states.
    epochs : int, optional
        The run's total epochs (a checkpoint beyond them is ignored).
    on_ignored : callable, optional
        Called with the reason when a checkpoint exists but is not resumed.
    """
    if path is None or not Path(path).exists():
        return None

    def ignored(reason: str) -> None:
        if on_ignored is not None:
            on_ignored(reason)

    problem = archive_problem(path)
    if problem:
        ignored(f"it is {problem}" if problem.startswith(("not", "a ")) else f"it cannot be read safely ({problem})")
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - an unreadable or unsafe checkpoint is ignored, training restarts
        ignored(f"it cannot be read ({type(exc).__name__})")
        return None
    problem = checkpoint_problem(state, run_key, net, optimizers, epochs)
    if problem is not None:
        ignored(problem)
        return None
    before = ({k: v.detach().clone() for k, v in net.state_dict().items()}, [copy.deepcopy(o.state_dict()) for o in optimizers])
    try:
        net.load_state_dict(state["model"])
        for optimizer, saved in zip(optimizers, state["optimizers"]):
            optimizer.load_state_dict(saved)
    except Exception as exc:  # noqa: BLE001 - written by another layout of the same run: start again, unchanged
        net.load_state_dict(before[0])
        for optimizer, saved in zip(optimizers, before[1]):
            optimizer.load_state_dict(saved)
        ignored(f"it does not fit this run's network or optimisers ({type(exc).__name__})")
        return None
    return int(state["epoch"]), list(state["history"])
