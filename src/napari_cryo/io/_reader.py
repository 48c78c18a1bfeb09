"""npe2 reader hooks: decide cheaply, then read with :mod:`napari_cryo.io.layers`."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

from .. import layer_meta as meta
from .layers import LayerData, mrc_layer_data, star_layer_data
from .mrc import MRC_SUFFIXES, sniff_mrc
from .star import CENTERED_COLUMNS, sniff_star

ReaderFunction = Callable[[str | list[str]], list[LayerData]]


def _paths(path: str | list[str]) -> list[str]:
    return [path] if isinstance(path, (str, Path)) else list(path)


def get_mrc_reader(path: str | list[str]) -> ReaderFunction | None:
    """Return a reader if every path has an MRC name and a plausible MRC header."""
    paths = _paths(path)
    if not paths:
        return None
    for p in paths:
        if not str(p).lower().endswith(MRC_SUFFIXES) or sniff_mrc(p) is None:
            return None
    return read_mrc_files


def read_mrc_files(path: str | list[str]) -> list[LayerData]:
    """Read one or more MRC files, one Image layer each."""
    layers: list[LayerData] = []
    for p in _paths(path):
        new = mrc_layer_data(p)
        _warn_notes(p, new)
        layers += new
    return layers


def _warn_notes(path: str, layers: list[LayerData]) -> None:
    notes = dict.fromkeys(n for _, kw, _ in layers for n in kw.get("metadata", {}).get(meta.NOTES, []))
    for note in notes:
        warnings.warn(f"{Path(path).name}: {note}", UserWarning, stacklevel=3)


_STAR_KEYS = {"rlnCoordinateX", "rlnImageName", CENTERED_COLUMNS[0]}


def get_star_reader(path: str | list[str]) -> ReaderFunction | None:
    """Return a reader if every path is a STAR file with coordinates or images.

    Other STAR files (pipelines, postprocess, optimiser files) hold nothing
    to show as a layer, so the reader declines them.
    """
    paths = _paths(path)
    if not paths:
        return None
    for p in paths:
        if not str(p).lower().endswith(".star") or not (sniff_star(p) & _STAR_KEYS):
            return None
    return read_star_files


def read_star_files(path: str | list[str]) -> list[LayerData]:
    """Read one or more STAR files (particle stacks or coordinate Points).

    What the reader had to assume (a missing pixel size, stacks not found)
    is raised as a warning, which napari shows as a notification.
    """
    layers: list[LayerData] = []
    for p in _paths(path):
        new = star_layer_data(p)
        _warn_notes(p, new)
        layers += new
    return layers
