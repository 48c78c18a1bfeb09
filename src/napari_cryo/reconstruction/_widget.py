"""The reconstruction widget: choose particles, run, watch the map form in 3D, save.

Thin by design: the run is :func:`.reconstruct.reconstruct` in a napari
thread worker; the map layer is updated only from what the worker yields
(on the main thread).  Pause closes the run (a checkpoint is kept), Resume
continues it from the checkpoint, Stop ends pose inference and computes
the final map from the poses reached.
"""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import ComboBox, Container, FileEdit, FloatSpinBox, Label, PushButton, SpinBox, create_widget

from ..errors import CryoInputError
from .reconstruct import METHODS, MapUpdate, ReconstructionResult, ReconstructionSettings

if TYPE_CHECKING:  # pragma: no cover
    import napari


class ReconstructionWidget(Container):
    """Ab initio reconstruction from a particle STAR file or an open particle stack."""

    def __init__(self, napari_viewer: "napari.Viewer") -> None:
        super().__init__(labels=True)
        self.viewer = napari_viewer
        self.worker = None
        self.result: ReconstructionResult | None = None
        self.history: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._pause_flag = threading.Event()
        self._data = None
        self._star = FileEdit(label="particles STAR", mode="r", filter="*.star")
        self._layer = create_widget(label="or stack layer", annotation="napari.layers.Image", options={"nullable": True})
        self._method = ComboBox(label="method", choices=list(METHODS), value="cryospin")
        self._method.tooltip = ("cryospin: several encoder heads, then per-particle poses with global pose searches (the default); cryoai: one head and an "
                                "implicit Fourier decoder, which found no poses on the 2-CPU benchmark; search: classical pose searches")
        self._box = SpinBox(label="box (0 = full)", min=0, max=1024, step=2, value=0)
        self._minutes = FloatSpinBox(label="time budget (min)", min=0.1, max=10000.0, step=1.0, value=20.0)
        self._device = ComboBox(label="device", choices=["auto", "cpu", "cuda"], value="auto")
        self._map_every = FloatSpinBox(label="map every (min)", min=0.05, max=120.0, step=0.5, value=ReconstructionSettings().map_minutes)
        self._out = FileEdit(label="output folder", mode="d")
        self._start = PushButton(text="Start")
        self._pause = PushButton(text="Pause", enabled=False)
        self._resume = PushButton(text="Resume", enabled=False)
        self._stop_button = PushButton(text="Stop (finish now)", enabled=False)
        self._status = Label(value="")
        self.extend([self._star, self._layer, self._method, self._box, self._minutes, self._device, self._map_every, self._out,
                     self._start, self._pause, self._resume, self._stop_button, self._status])
        from ..plots import qt_figure_canvas

        self._loss_fig, self._loss_canvas = qt_figure_canvas(150, "loss appears while running")
        self._fsc_fig, self._fsc_canvas = qt_figure_canvas(170, "FSC appears at the end")
        self._dir_fig, self._dir_canvas = qt_figure_canvas(150, "viewing directions appear at the end")
        for canvas in (self._loss_canvas, self._fsc_canvas, self._dir_canvas):
            if canvas is not None:
                self.native.layout().addWidget(canvas)
        self._start.changed.connect(lambda: self.start(resume=False))
        self._resume.changed.connect(lambda: self.start(resume=True))
        self._pause.changed.connect(self.pause)
        self._stop_button.changed.connect(self.stop)

    def _notify(self, message: str, error: bool = False, warning: bool = False) -> None:
        from napari.utils.notifications import show_error, show_info, show_warning

        self._status.value = message[:120]
        (show_error if error else show_warning if warning else show_info)(message)

    def _particles(self):
        from .data import ParticleData

        box = int(self._box.value) or None
        star = str(self._star.value or "")
        if star and Path(star).is_file():
            return ParticleData(star, box=box)
        layer = self._layer.value
        meta = (layer.metadata or {}) if layer is not None else {}
        if "source_path" in meta and "star_rows" in meta:
            return ParticleData(meta["source_path"], box=box, rows=meta["star_rows"])
        raise CryoInputError(None, "choose a particle STAR file or a particle stack layer opened from one")

    def _out_dir(self) -> Path:
        value = str(self._out.value or "")
        if value and value != ".":
            return Path(value)
        path = Path(tempfile.mkdtemp(prefix="napari-cryo-reconstruction-"))
        self._out.value = path
        return path

    def _buttons(self, state: str) -> None:
        running = state == "running"
        self._start.enabled = not running
        self._pause.enabled = running
        self._stop_button.enabled = running
        self._resume.enabled = state == "paused"

    def start(self, resume: bool = False):
        """Start (or resume) a run in the background."""
        from ..device import resolve_device
        from ..tasks import start_worker
        from .reconstruct import reconstruct

        try:
            data = self._particles()
            settings = ReconstructionSettings(
                method=str(self._method.value), max_minutes=float(self._minutes.value), map_minutes=float(self._map_every.value),
            )
            device = resolve_device(str(self._device.value))
            out = self._out_dir()
        except CryoInputError as exc:
            self._notify(str(exc), error=True)
            return None
        for warning in data.warnings:
            self._notify(warning)
        self._data = data
        self._stop.clear()
        self._pause_flag.clear()
        if not resume:
            self.history = []
        self._paused = False

        def done(result: ReconstructionResult | None):
            from .outputs import write_result

            if result is None:  # paused: the checkpoint is in the output folder
                self._notify(f"paused; Resume continues from {out / 'checkpoint.pt'}")
                return
            self.result = result
            self._show_map(MapUpdate(result.volume, result.pixel_size, "final"))
            try:
                write_result(out, data.table, result, settings.method)
            except CryoInputError as exc:
                self._notify(str(exc), error=True)
            coverage = result.coverage
            self._draw_final(result)
            if coverage.warning():
                self._notify(coverage.warning(), warning=True)
            self._notify(f"done: {result.resolution:.2f} Å at FSC 0.143 ({coverage.describe()}); outputs in {out}")

        def finished():
            self.worker = None
            self._buttons("paused" if self._paused else "idle")

        self.worker = start_worker(
            reconstruct, data, settings, out, resume, device, self._stop.is_set, self._pause_flag.is_set,
            description="reconstructing", on_yield=self._on_value, on_returned=done, on_finished=finished,
        )
        self._buttons("running")
        return self.worker

    def pause(self) -> None:
        """Stop now and keep a checkpoint; Resume continues from it."""
        if self.worker is not None:
            self._paused = True
            self._pause_flag.set()

    def stop(self) -> None:
        """End pose inference and compute the final map from the poses reached."""
        self._stop.set()

    def _on_value(self, value: Any) -> None:
        if isinstance(value, MapUpdate):
            self._show_map(value)
            if value.rotations is not None and self._dir_fig is not None:
                from .outputs import direction_figure, direction_title

                direction_figure(value.rotations, self._dir_fig, title=direction_title(value.coverage, value.label))
                self._dir_canvas.draw_idle()
        elif isinstance(value, dict) and "loss" in value:
            self.history.append(value)
            self._draw_loss()

    def _show_map(self, update: MapUpdate) -> None:
        name = "reconstruction"
        if name in self.viewer.layers:
            layer = self.viewer.layers[name]
            layer.data = update.volume
            layer.contrast_limits = _limits(update.volume)
        else:
            self.viewer.add_image(
                update.volume, name=name, scale=(update.pixel_size,) * 3, units=("angstrom",) * 3,
                rendering="mip", contrast_limits=_limits(update.volume), colormap="gray",
                metadata={"pixel_size": update.pixel_size, "pixel_size_known": True},
            )
            self.viewer.dims.ndisplay = 3
        self._status.value = f"map: {update.label}"

    def _draw_loss(self) -> None:
        if self._loss_fig is None:
            return
        from ..plots import loss_figure

        loss_figure([{"epoch": i + 1, "train_loss": h["loss"]} for i, h in enumerate(self.history)], self._loss_fig, title="loss")
        self._loss_canvas.draw_idle()

    def _draw_final(self, result: ReconstructionResult) -> None:
        from .fsc import plot_fsc
        from .outputs import direction_figure, direction_title, fsc_note

        coverage = result.coverage

        if self._fsc_fig is not None:
            plot_fsc({"half maps": result.fsc}, self._fsc_fig, note=fsc_note(coverage))
            self._fsc_canvas.draw_idle()
        if self._dir_fig is not None:
            direction_figure(result.rotations, self._dir_fig, title=direction_title(coverage))
            self._dir_canvas.draw_idle()

    def save_poses(self, path) -> Path | None:
        """Write the estimated poses as a STAR file (the input rows plus angles and origins)."""
        from .outputs import write_poses

        if self.result is None or self._data is None:
            self._notify("no finished reconstruction yet", error=True)
            return None
        try:
            return write_poses(path, self._data.table, self.result.rotations, self.result.shifts * self.result.pixel_size, overwrite=True)
        except CryoInputError as exc:
            self._notify(str(exc), error=True)
            return None


def _limits(volume: np.ndarray) -> tuple[float, float]:
    lo, hi = np.percentile(volume, [1.0, 99.9])
    return (float(lo), float(hi if hi > lo else lo + 1.0))
