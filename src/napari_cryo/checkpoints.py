"""Training checkpoints and the learning-rate schedule, shared by every trainer.

A checkpoint holds the network, its optimisers, the epoch reached, the loss
history and a ``run_key`` naming the settings and data it belongs to: a run
resumes only from a checkpoint written by the same settings and data, and
an unreadable or foreign checkpoint is ignored (training starts again).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch


def cosine_lr(base: float, step: int, total: int, floor: float = 0.05) -> float:
    """Learning rate decaying along a cosine from ``base`` to ``floor * base`` over ``total`` steps."""
    return base * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * step / max(1, total))))


def save_checkpoint(
    path: str | os.PathLike,
    net: torch.nn.Module,
    optimizers: Sequence[torch.optim.Optimizer],
    epoch: int,
    history: list[dict[str, Any]],
    run_key: str,
) -> None:
    """Write a checkpoint atomically (an interrupted write keeps the previous one)."""
    from .io.atomic import atomic_path

    state = {
        "model": net.state_dict(),
        "optimizers": [o.state_dict() for o in optimizers],
        "epoch": epoch,
        "history": history,
        "run_key": run_key,
    }
    with atomic_path(path, overwrite=True) as tmp:
        torch.save(state, tmp)


def restore_checkpoint(
    path: str | os.PathLike | None,
    run_key: str,
    net: torch.nn.Module,
    optimizers: Sequence[torch.optim.Optimizer],
) -> tuple[int, list[dict[str, Any]]] | None:
    """Load a matching checkpoint into ``net`` and ``optimizers``; returns (epoch, history) or None."""
    if path is None or not Path(path).exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - an unreadable checkpoint is ignored, training restarts
        return None
    if not isinstance(state, dict) or state.get("run_key") != run_key or len(state.get("optimizers", [])) != len(optimizers):
        return None
    try:
        net.load_state_dict(state["model"])
        for optimizer, saved in zip(optimizers, state["optimizers"]):
            optimizer.load_state_dict(saved)
    except (KeyError, RuntimeError, ValueError):  # written by another layout of the same run: start again
        return None
    return int(state["epoch"]), list(state["history"])
