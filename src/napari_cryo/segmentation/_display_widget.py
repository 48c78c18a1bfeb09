"""Showing the segmentation controller's results in napari: output layers and the live preview.

Output layers carry an id in their metadata (:data:`napari_cryo.layer_meta.OUTPUT`), so a result
replaces the layer made before for the same tomogram and feature even after a rename.
:class:`LivePreview` runs the controller's preview jobs one at a time in a napari
``thread_worker``; a request made while one runs becomes one more run when it ends.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

from .._view import find_layer, in_turns, put_layer
from ..errors import CryoInputError
from ..layer_meta import OUTPUT, LayerData
from .controller import SegmentationController, TomogramRef
from .interactions import InteractionEffects


def find_output(viewer: Any, key: str):
    """The layer made under output id ``key``, renamed or not (``None`` if gone)."""
    return find_layer(viewer, **{OUTPUT: key})


def show(viewer: Any, data: Any, kwargs: dict, layer_type: str, replace: bool = False):
    """Add a layer from a layer-data tuple, or update (with ``replace``: re-add) the one made before."""
    old = find_output(viewer, kwargs["metadata"][OUTPUT])
    if old is not None and replace:
        viewer.layers.remove(old)
        old = None
    layer = put_layer(viewer, (data, kwargs, layer_type), old)
    if old is not None:
        layer.metadata = {**old.metadata, **kwargs["metadata"]}
    return layer


def show_all(viewer: Any, layer_data: Sequence[LayerData], later: bool = False, then: Callable[[], Any] | None = None) -> None:
    """Show several layers, one per turn of the event loop (adding one takes a good part of 0.1 s).

    With ``later`` the first one waits for the next turn too, so the caller returns at once;
    ``then`` is called after the last one.
    """
    steps = [functools.partial(show, viewer, *item) for item in layer_data] + ([then] if then is not None else [])
    in_turns(steps, delay_ms=1, now=not later)


class LivePreview:
    """The current slice segmented by every model, recomputed in the background on request.

    Parameters
    ----------
    viewer : napari.Viewer
        Where the preview layers go.
    controller : SegmentationController
        Makes the preview jobs and layers.
    tomogram : callable
        Returns the chosen tomogram (raises CryoInputError when there is none).
    z : callable
        Returns the slice to preview.
    notify : callable
        ``notify(message, error=True)`` for a failed preview.
    on_effects : callable, optional
        ``on_effects(effects, where)`` with what each interaction removed on the slice shown
        (``where`` is e.g. ``"slice 12"``).
    """

    def __init__(self, viewer: Any, controller: SegmentationController, tomogram: Callable[[], TomogramRef],
                 z: Callable[[], int], notify: Callable[..., None],
                 on_effects: Callable[[InteractionEffects, str], Any] | None = None) -> None:
        self.viewer, self.controller, self.tomogram, self.z, self.notify = viewer, controller, tomogram, z, notify
        self.on_effects = on_effects
        self.worker = None
        self._pending = False

    def request(self):
        """Start a preview (or queue one more after the running one); returns the worker or ``None``."""
        if not self.controller.session.models:
            return None
        try:
            tomo = self.tomogram()
        except CryoInputError:
            return None
        if self.worker is not None:
            self._pending = True
            return self.worker
        from napari.qt.threading import thread_worker

        worker = thread_worker(self.controller.preview(tomo, self.z()), start_thread=False, ignore_errors=True)()
        worker.returned.connect(lambda result: self.show(tomo, *result))
        worker.errored.connect(lambda exc: self.notify(f"preview failed: {exc}", error=True))
        worker.finished.connect(self._finished)
        self.worker = worker
        worker.start()
        return worker

    def _finished(self) -> None:
        self.worker = None
        if self._pending:
            self._pending = False
            self.request()

    def show(self, tomo: TomogramRef, z: int, probabilities: dict, effects: InteractionEffects | None = None) -> None:
        """Show slice ``z``'s probabilities, one overlay per feature, and what the interactions removed (nothing once the tomogram is gone)."""
        if any(str(layer.unique_id) == tomo.key for layer in self.viewer.layers):
            show_all(self.viewer, self.controller.preview_layers(tomo, z, probabilities))
            if effects is not None and self.on_effects is not None:
                self.on_effects(effects, f"slice {z}")
