"""Small matplotlib figures shared by the command line (PNG files) and the widgets (Qt canvases)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def loss_figure(history: Sequence[Any], figure=None, title: str = "training"):
    """Plot train and validation loss per epoch on a (new or given) matplotlib Figure.

    ``history`` holds :class:`~napari_cryo.training_loop.EpochRecord` objects or their dicts
    (as model files keep them).
    """
    history = [h.as_dict() if hasattr(h, "as_dict") else h for h in history]
    if figure is None:
        from matplotlib.figure import Figure

        figure = Figure(figsize=(4.5, 3.0), dpi=100)
    figure.clear()
    ax = figure.add_subplot(111)
    epochs = [h["epoch"] for h in history]
    ax.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    val = [h.get("val_loss", float("nan")) for h in history]
    if any(v == v for v in val):  # any non-NaN
        ax.plot(epochs, val, "s--", label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend(loc="upper right")
    ax.grid(alpha=0.3)
    figure.tight_layout()
    return figure


def loss_plot_path(model: str | os.PathLike) -> Path:
    """The loss-curve PNG a training command writes beside a model file (``NAME.pt`` -> ``NAME_loss.png``)."""
    model = Path(model)
    return model.with_name(model.stem + "_loss.png")


def save_figure(figure, path: str | os.PathLike, overwrite: bool = True) -> Path:
    """Save a figure as PNG atomically.

    Parameters
    ----------
    figure : matplotlib.figure.Figure
        The figure.
    path : str or os.PathLike
        The PNG file.
    overwrite : bool
        Whether an existing file may be replaced.  A command lists the PNG
        with its other outputs (:func:`~napari_cryo.io.atomic.check_outputs`)
        before it starts, and passes its ``--overwrite`` here.

    Returns
    -------
    pathlib.Path
        The file written.
    """
    from .io.atomic import atomic_path

    with atomic_path(path, overwrite=overwrite) as tmp:
        figure.savefig(tmp, format="png")
    return Path(path)


def qt_figure_canvas(height: int = 180, placeholder: str | None = None):
    """A matplotlib Figure and its Qt canvas for a widget; (None, None) without a Qt backend."""
    try:
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure
    except ImportError:  # pragma: no cover
        return None, None
    figure = Figure(figsize=(4, 2.5), dpi=90)
    if placeholder:
        ax = figure.add_subplot(111)
        ax.text(0.5, 0.5, placeholder, ha="center", va="center", color="0.5")
        ax.set_axis_off()
    canvas = FigureCanvasQTAgg(figure)
    canvas.setMinimumHeight(height)
    return figure, canvas
