"""Picking plots: the training loss."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..plots import loss_figure, save_figure


def save_loss_plot(history: list[dict[str, Any]], path: str | os.PathLike) -> Path:
    """Write the loss curve of a training run as PNG."""
    return save_figure(loss_figure(history, title="picker training"), path)
