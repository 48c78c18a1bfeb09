"""The reconstruction session the widget and the command line share (no Qt, no napari).

:func:`run_to_folder` runs :func:`~.reconstruct.reconstruct` and writes the
finished run's maps, poses and plots, so that both front ends write the same
files.  :class:`ReconstructionSession` adds what the widget keeps between
runs (Stop, Pause and Cancel, the history, the result) and turns the run's
values into what the view shows: the map as napari layer data and the
plots as rendered images, both made in the worker.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

# torch imports torch._dynamo lazily, when the first optimiser is made: about a second of imports, much of it
# holding the GIL.  Loaded with the controller (when the widget is made), it no longer stalls the GUI thread
# at the start of a run.
import torch._dynamo

from ..errors import CryoInputError
from ..tasks import Progress
from .data import ParticleData
from .outputs import (
    direction_figure,
    direction_title,
    fsc_note,
    loss_history,
    write_result,
    write_result_poses,
)
from .ranks import Ranks
from .reconstruct import reconstruct
from .run import CHECKPOINT, MapUpdate, ReconstructionResult, RunFolder
from .settings import ReconstructionSettings

#: The name of the map's layer in the viewer.
MAP_LAYER = "reconstruction"
#: Fewer particles give half maps of a handful of images each: no map, and an FSC that means nothing.
MIN_PARTICLES = 10


def particle_data(star: str | os.PathLike | None, layer_metadata: Mapping[str, Any] | None = None,
                  box: int | None = None) -> ParticleData:
    """The particles of a STAR file or, without one, of a stack layer opened from a STAR file.

    Raises
    ------
    CryoInputError
        When neither is given, or the STAR file is unusable.
    """
    if star and Path(star).is_file():
        return ParticleData(star, box=box)
    meta = layer_metadata or {}
    if "source_path" in meta and "star_rows" in meta:
        return ParticleData(meta["source_path"], box=box, rows=meta["star_rows"])
    raise CryoInputError(None, "choose a particle STAR file or a particle stack layer opened from one")


def check_run(data: ParticleData, settings: ReconstructionSettings) -> None:
    """Check, before anything is written, what the run needs of its particles and settings together.

    :class:`~.data.ParticleData` has checked the file itself (stacks, image
    numbers, sizes, CTF values, pixel sizes) and the settings their own
    ranges; this checks that they fit each other.

    Raises
    ------
    CryoInputError
        For too few particles, or an amortized box larger than the working box.
    """
    from .encoder_run import amortized_box

    if len(data) < MIN_PARTICLES:
        raise CryoInputError(data.star_path, f"holds {len(data)} particles; a reconstruction needs at least {MIN_PARTICLES}")
    if settings.method != "search":
        amortized_box(data.box, settings.shared_radius, settings.amortized_box)


def run_files(out: str | os.PathLike) -> list[Path]:
    """Every file a run into ``out`` writes that exists already (what Start would replace)."""
    return [path for path in RunFolder(out, create=False).files() if path.exists()]


def run_to_folder(data: ParticleData, settings: ReconstructionSettings, out: str | os.PathLike, resume: bool = False,
                  device: torch.device | str = "cpu", stop=None, pause=None,
                  overwrite: bool = False, ranks: Ranks | None = None) -> Generator[Any, None, ReconstructionResult | None]:
    """Run a reconstruction into ``out`` and write the finished run's maps, ``poses.star`` and plots there.

    A generator with the values of :func:`~.reconstruct.reconstruct`; returns
    its result (None when paused, and then nothing more is written).  Before
    anything is written the folder goes through the output-folder policy
    (:meth:`~.run.RunFolder.prepare`): an earlier run's files stop the run
    unless it resumes that run or ``overwrite`` deletes them.  Shared by
    several ranks (``ranks``), rank 0 alone applies the policy and writes.
    """
    ranks = ranks or Ranks.single()
    check_run(data, settings)
    if ranks.root:
        RunFolder(out, create=False).prepare(overwrite=overwrite, resume=resume)
    result = yield from reconstruct(data, settings, out, resume=resume, device=device, stop=stop, pause=pause, ranks=ranks)
    if result is not None and ranks.root:
        yield Progress(0, None, "writing the maps, poses and plots")
        write_result(out, data.table, result, settings.method)
    return result


def contrast_limits(volume: np.ndarray) -> tuple[float, float]:
    """Display limits of a map: its 1st and 99.9th percentiles."""
    lo, hi = np.percentile(volume, [1.0, 99.9])
    return (float(lo), float(hi if hi > lo else lo + 1.0))


def map_layer_data(update: MapUpdate) -> tuple[np.ndarray, dict[str, Any], str]:
    """The map as napari layer data: a 3D image in Å, drawn as a maximum intensity projection."""
    kwargs = {
        "name": MAP_LAYER, "scale": (update.pixel_size,) * 3, "units": ("angstrom",) * 3, "rendering": "mip",
        "contrast_limits": contrast_limits(update.volume), "colormap": "gray",
        "metadata": {"pixel_size": update.pixel_size, "pixel_size_known": True},
    }
    return update.volume, kwargs, "image"


@dataclass
class MapLayer:
    """A map the run reached, with its layer data made in the worker."""

    update: MapUpdate
    layer: tuple[np.ndarray, dict[str, Any], str]


@dataclass
class Plot:
    """A figure drawn and rendered in the worker; the view only shows the image."""

    name: str  # "loss", "directions" or "fsc"
    image: np.ndarray  # (H, W, 4) uint8 RGBA
    figure: Any  # the matplotlib Figure it was rendered from


#: Size of the widget's plots (inches at PLOT_DPI).
PLOT_SIZE, PLOT_DPI = (4.0, 2.5), 90


def render(name: str, draw: Callable[[Any], Any]) -> Plot:
    """Draw a plot with ``draw(figure)`` on a new figure of the widget's size and render it to RGBA pixels."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=PLOT_SIZE, dpi=PLOT_DPI)
    canvas = FigureCanvasAgg(figure)
    draw(figure)
    canvas.draw()
    return Plot(name, np.asarray(canvas.buffer_rgba()).copy(), figure)


def placeholder(name: str, text: str) -> Plot:
    """A plot's stand-in before there is anything to draw: grey text (the first render also loads the fonts)."""

    def draw(figure) -> None:
        ax = figure.add_subplot(111)
        ax.text(0.5, 0.5, text, ha="center", va="center", color="0.5")
        ax.set_axis_off()

    return render(name, draw)


def final_plots(result: ReconstructionResult) -> list[Plot]:
    """The half-map FSC and the viewing directions of a finished run (how evenly they fill Fourier space)."""
    from .fsc import plot_fsc

    return [render("fsc", lambda f: plot_fsc({"half maps": result.fsc}, f, note=fsc_note(result.coverage))),
            render("directions", lambda f: direction_figure(result.rotations, f, title=direction_title(result.coverage)))]


class ReconstructionSession:
    """What the widget keeps: the particles, Stop and Pause, the history, the result, the output folder."""

    def __init__(self) -> None:
        self.data: ParticleData | None = None
        self.out: Path | None = None
        self.result: ReconstructionResult | None = None
        self.history: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._pause = threading.Event()
        self._cancel = threading.Event()

    def prepare(self, data: ParticleData, out: str | os.PathLike, resume: bool) -> None:
        """Take the particles and folder of a new run (or of the one resumed); Stop and Pause are cleared."""
        self.data, self.out, self.result = data, Path(out), None
        for flag in (self._stop, self._pause, self._cancel):
            flag.clear()
        if not resume:
            self.history = []

    def run(self, settings: ReconstructionSettings, resume: bool, device,
            overwrite: bool = False) -> Generator[Any, None, ReconstructionResult | None]:
        """The run (for a worker): :func:`run_to_folder`, its maps as :class:`MapLayer`, its plots as :class:`Plot`.

        History records are kept in :attr:`history` as they come.  Returns
        the result, or None when paused or cancelled.  A cancelled run is
        closed here, in the worker, at its next value: it keeps its
        checkpoint, and the final files are written whole or not at all.
        ``overwrite``: the user agreed to replace an earlier run in the folder.
        """
        gen = run_to_folder(self.data, settings, self.out, resume, device, self._stop.is_set, self._pause.is_set, overwrite=overwrite)
        try:
            while not self._cancel.is_set():
                try:
                    value = next(gen)
                except StopIteration as end:
                    result = end.value
                    break
                yield from self._shown(value)
            else:
                return None
        finally:
            gen.close()
        if result is not None:
            final = MapUpdate(result.volume, result.pixel_size, "final")
            yield MapLayer(final, map_layer_data(final))
            yield from final_plots(result)
        return result

    def _shown(self, value: Any) -> Generator[Any, None, None]:
        """What the view shows for a value of the run."""
        from ..plots import loss_figure

        if isinstance(value, MapUpdate):
            yield MapLayer(value, map_layer_data(value))
            if value.rotations is not None:
                yield render("directions", lambda f: direction_figure(value.rotations, f, title=direction_title(value.coverage, value.label)))
        elif isinstance(value, dict) and "loss" in value:
            self.history.append(value)
            yield value
            yield render("loss", lambda f: loss_figure(loss_history(self.history), f, title="loss"))
        else:
            yield value

    def stop(self) -> None:
        """End pose inference; the final map is made from the poses reached."""
        self._stop.set()

    def pause(self) -> None:
        """End the run with a checkpoint; a resumed run continues from it."""
        self._pause.set()

    def cancel(self) -> None:
        """Abandon the run at its next value; its checkpoint stays."""
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        """Whether the last run was cancelled."""
        return self._cancel.is_set()

    @property
    def resumable(self) -> bool:
        """Whether the last run ended without a result (paused, cancelled, failed) and left a checkpoint."""
        return self.result is None and self.out is not None and (self.out / CHECKPOINT).exists()

    def save_poses(self, path: str | os.PathLike) -> Path:
        """Write the estimated poses as a STAR file (the input rows plus angles and origins), as the run folder's ``poses.star``.

        Raises
        ------
        CryoInputError
            Before a run has finished.
        """
        if self.result is None or self.data is None:
            raise CryoInputError(None, "no finished reconstruction yet")
        return write_result_poses(path, self.data.table, self.result, overwrite=True)
