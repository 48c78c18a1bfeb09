"""What a reconstruction writes: maps, poses as STAR, plots."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from ..geometry import matrix_to_euler
from ..io.star import ParticleTable, write_star
from .coverage import ViewCoverage

#: What :func:`write_result` writes at the end of a run (``loss.png`` only when the run has a history).
RESULT_FILES = ("volume.mrc", "half1.mrc", "half2.mrc", "poses.star", "fsc.png", "directions.png", "loss.png")


def poses_table(table: pd.DataFrame, rotations: np.ndarray, shifts_angst: np.ndarray) -> pd.DataFrame:
    """The particle rows with ``rlnAngleRot/Tilt/Psi`` and ``rlnOriginX/YAngst`` set (replacing any there)."""
    out = table.copy()
    angles = matrix_to_euler(np.asarray(rotations, dtype=float).reshape(-1, 3, 3))
    out["rlnAngleRot"], out["rlnAngleTilt"], out["rlnAnglePsi"] = angles[:, 0], angles[:, 1], angles[:, 2]
    out["rlnOriginXAngst"] = np.asarray(shifts_angst)[:, 0]
    out["rlnOriginYAngst"] = np.asarray(shifts_angst)[:, 1]
    for old in ("rlnOriginX", "rlnOriginY"):  # RELION 3.0 pixel origins would contradict the Å ones
        if old in out.columns:
            out = out.drop(columns=old)
    return out


def write_poses(path: str | os.PathLike, particles: ParticleTable, rotations: np.ndarray, shifts_angst: np.ndarray, overwrite: bool = False) -> Path:
    """Write the input STAR (optics kept) with the estimated poses, atomically."""

    table = poses_table(particles.table, rotations, shifts_angst)
    data = {"optics": particles.optics, "particles": table} if particles.optics is not None else {"particles": table}
    return write_star(data, path, overwrite=overwrite)


def write_result_poses(path: str | os.PathLike, particles: ParticleTable, result, overwrite: bool = False) -> Path:
    """Write a finished run's poses (origins in Å) with :func:`write_poses`."""
    return write_poses(path, particles, result.rotations, result.shifts * result.pixel_size, overwrite=overwrite)


def loss_history(history: list[dict]) -> list[dict]:
    """A run's history as the records :func:`~napari_cryo.plots.loss_figure` draws (epoch, train loss)."""
    return [{"epoch": i + 1, "train_loss": h["loss"]} for i, h in enumerate(history)]


def direction_figure(rotations: np.ndarray, figure=None, title: str = "viewing directions"):
    """A Mollweide histogram of viewing directions (the third row of each RELION matrix)."""
    if figure is None:
        from matplotlib.figure import Figure

        figure = Figure(figsize=(4.5, 2.6), dpi=100)
    figure.clear()
    ax = figure.add_subplot(111, projection="mollweide")
    z = np.asarray(rotations).reshape(-1, 3, 3)[:, 2, :]
    lon = np.arctan2(z[:, 1], z[:, 0])
    lat = np.arcsin(np.clip(z[:, 2], -1, 1))
    h, xe, ye = np.histogram2d(lon, lat, bins=(36, 18), range=((-np.pi, np.pi), (-np.pi / 2, np.pi / 2)))
    ax.pcolormesh(xe, ye, h.T, cmap="viridis", shading="auto")
    ax.set_xticklabels([])
    ax.set_title(title, fontsize=9)
    return figure


def fsc_note(coverage: ViewCoverage) -> str | None:
    """What to print on the half-map FSC plot when the views are too uneven for it to describe the map."""
    if coverage.even:
        return None
    return f"uneven views (SCF {coverage.scf:.2f}): this FSC can overstate the map's resolution"


def direction_title(coverage: ViewCoverage | None, label: str = "") -> str:
    """The viewing-direction plot's title: what the poses are and how evenly they fill Fourier space."""
    where = f" ({label})" if label else ""
    if coverage is None or not coverage.measured:
        return f"viewing directions{where}"
    return f"viewing directions{where}, SCF {coverage.scf:.2f}"


def write_result(out_dir: str | os.PathLike, particles: ParticleTable, result, method: str = "") -> list[Path]:
    """Write a finished run's maps, poses and plots into ``out_dir`` (replacing an earlier run's).

    The result's view coverage titles the direction plot, and uneven coverage is written onto the FSC
    plot, where it changes how to read it.
    """
    from ..io.mrc import write_mrc
    from ..plots import loss_figure, save_figure
    from .fsc import plot_fsc

    out = Path(out_dir)
    px = result.pixel_size
    coverage = result.coverage
    written = [
        write_mrc(out / "volume.mrc", result.volume, px, overwrite=True),
        write_mrc(out / "half1.mrc", result.half1, px, overwrite=True),
        write_mrc(out / "half2.mrc", result.half2, px, overwrite=True),
        write_result_poses(out / "poses.star", particles, result, overwrite=True),
        save_figure(plot_fsc({"half maps": result.fsc}, note=fsc_note(coverage)), out / "fsc.png"),
        save_figure(direction_figure(result.rotations, title=direction_title(coverage)), out / "directions.png"),
    ]
    if result.history:
        written.append(save_figure(loss_figure(loss_history(result.history), title=f"{method} loss".strip()), out / "loss.png"))
    return written
