"""The reconstruction widget: choose particles, run, watch the map form in 3D, save.

A thin view over :class:`~.controller.ReconstructionSession`: the run (and
the writing of its outputs) goes on in a worker; the map layer and the plots
are updated on the main thread from what the worker yields.  Pause ends the
run with a checkpoint, Resume continues it, Stop ends pose inference and
makes the final map from the poses reached, Cancel abandons the run (its
checkpoint stays).  Start into a folder that holds an earlier run asks before
deleting that run's files; Resume continues the run there without asking.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import (
    ComboBox,
    FileEdit,
    FloatSpinBox,
    PushButton,
    SpinBox,
    create_widget,
)

from .._view import CryoView, reports_input_errors
from .controller import (
    MapLayer,
    Plot,
    ReconstructionSession,
    check_run,
    particle_data,
    placeholder,
    run_files,
)
from .run import ReconstructionResult
from .settings import METHODS, ReconstructionSettings

if TYPE_CHECKING:  # pragma: no cover
    import napari


class ReconstructionWidget(CryoView):
    """Ab initio reconstruction from a particle STAR file or an open particle stack."""

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__(napari_viewer)
        self.session = ReconstructionSession()
        self.shown_plots: dict[str, Any] = {}  # name -> the matplotlib Figure whose image is shown
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
        self.extend([self._star, self._layer, self._method, self._box, self._minutes, self._device, self._map_every, self._out,
                     self._start, self._pause, self._resume, self._stop_button])
        self.add_task_panel([self._start, self._resume])
        # The plots are drawn and rendered in the worker; here they are only shown.  The placeholders are
        # rendered here, once: the first render loads matplotlib's fonts, too slow for the middle of a run.
        self._plots = {}
        for name, text in (("loss", "loss appears while running"), ("fsc", "FSC appears at the end"),
                           ("directions", "viewing directions appear at the end")):
            self._plots[name] = _image_label()
            _show_image(self._plots[name], placeholder(name, text).image)
            self.native.layout().addWidget(self._plots[name])
        self._start.changed.connect(lambda: self.start(resume=False))
        self._resume.changed.connect(lambda: self.start(resume=True))
        self._pause.changed.connect(self.pause)
        self._stop_button.changed.connect(self.stop)

    @property
    def result(self) -> ReconstructionResult | None:
        """The last finished run's result."""
        return self.session.result

    @property
    def history(self) -> list[dict[str, Any]]:
        """The run's records (one per epoch or search round)."""
        return self.session.history

    def _out_dir(self) -> Path:
        value = str(self._out.value or "")
        if value and value != ".":
            return Path(value)
        path = Path(tempfile.mkdtemp(prefix="napari-cryo-reconstruction-"))
        self._out.value = path
        return path

    @reports_input_errors
    def start(self, resume: bool = False):
        """Start (or resume) a run in the background; returns its worker (None when refused).

        Every input is checked first (one notification for a bad one).  A
        new run into a folder that holds an earlier run's files asks before
        deleting them (see :meth:`~.run.RunFolder.prepare`); Resume continues
        that run and asks nothing.
        """
        from ..device import resolve_device

        layer = self._layer.value
        data = particle_data(str(self._star.value or ""), layer.metadata if layer is not None else None, int(self._box.value) or None)
        settings = ReconstructionSettings(
            method=str(self._method.value), max_minutes=float(self._minutes.value), map_minutes=float(self._map_every.value),
        )
        check_run(data, settings)
        device = resolve_device(str(self._device.value))
        out = self._out_dir()
        if not resume and not self.confirm_replace(run_files(out)):
            return None
        for warning in data.warnings:
            self.notify(warning)
        self.session.prepare(data, out, resume)
        return self.run(self.session.run, settings, resume, device, overwrite=not resume, description="reconstructing",
                        on_yield=self._on_value, on_returned=self._done)

    def pause(self) -> None:
        """Stop now and keep a checkpoint; Resume continues from it."""
        if self.worker is not None:
            self.session.pause()

    def stop(self) -> None:
        """End pose inference and compute the final map from the poses reached."""
        self.session.stop()

    def cancel(self) -> None:
        """Abandon the run at its next step (in the worker, so that its checkpoint is kept)."""
        if self.worker is not None:
            self.session.cancel()

    def on_busy_changed(self, busy: bool) -> None:
        self._pause.enabled = busy
        self._stop_button.enabled = busy
        self._resume.enabled = not busy and self.session.resumable

    @reports_input_errors
    def save_poses(self, path) -> Path | None:
        """Write the estimated poses as a STAR file (the input rows plus angles and origins); asks before replacing one."""
        if not self.confirm_replace([path]):
            return None
        return self.session.save_poses(path)

    def _done(self, result: ReconstructionResult | None) -> None:
        if result is None:  # paused or cancelled: the checkpoint is in the output folder
            what = "cancelled" if self.session.cancelled else "paused"
            where = f"; Resume continues from {self.session.out / 'checkpoint.pt'}" if self.session.resumable else ""
            self.notify(what + where)
            return
        self.session.result = result
        coverage = result.coverage
        if coverage.warning():
            self.notify(coverage.warning(), warning=True)
        self.notify(f"done: {result.resolution:.2f} Å at FSC 0.143 ({coverage.describe()}); outputs in {self.session.out}")

    def _on_value(self, value: Any) -> None:
        if isinstance(value, MapLayer):
            self._show_map(value)
        elif isinstance(value, Plot):
            _show_image(self._plots[value.name], value.image)
            self.shown_plots[value.name] = value.figure

    def _show_map(self, shown: MapLayer) -> None:
        data, kwargs, _ = shown.layer
        name = kwargs["name"]
        if name in self.viewer.layers:
            layer = self.viewer.layers[name]
            layer.data = data
            layer.contrast_limits = kwargs["contrast_limits"]
        else:
            self.viewer.add_image(data, **kwargs)
            self.viewer.dims.ndisplay = 3
        self._status.value = f"map: {shown.update.label}"


def _image_label():
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QLabel

    label = QLabel()
    label.setAlignment(Qt.AlignmentFlag.AlignCenter)
    return label


def _show_image(label, rgba: np.ndarray) -> None:
    from qtpy.QtGui import QImage, QPixmap

    height, width = rgba.shape[:2]
    image = QImage(rgba.data, width, height, 4 * width, QImage.Format.Format_RGBA8888)
    label.setPixmap(QPixmap.fromImage(image))  # QPixmap copies the pixels
