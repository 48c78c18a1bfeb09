"""Picking many micrographs: the per-micrograph step of ``pick run`` and its batch on a cluster.

:func:`pick_one` picks one micrograph and writes its pick file; ``pick run``
calls it in process, and :func:`pick_batch` runs it as one dask.distributed
task per micrograph (see :mod:`napari_cryo.cluster`).  No Qt, no napari.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import CryoInputError

if TYPE_CHECKING:
    import argparse

    from distributed import Client

    from ..cluster import BatchReport, Done, FileJob


def masks_by_stem(paths: list[str] | None) -> dict[str, np.ndarray]:
    """Exclusion masks read from MRC files, keyed by file stem (nonzero voxels exclude)."""
    from ..io.mrc import read_mrc
    from .data import stem_of

    masks = {}
    for p in paths or []:
        data, _ = read_mrc(p)
        masks[stem_of(p)] = np.asarray(data) > 0
    return masks


def mask_key(keys: Iterable[str], stem: str) -> str | None:
    """The first mask stem that belongs to the micrograph ``stem`` (one is a prefix of the other)."""
    for key in keys:
        if stem == key or stem.startswith(key) or key.startswith(stem):
            return key
    return None


def mask_for(masks: dict[str, np.ndarray], stem: str, shape: tuple[int, ...], path: Path) -> np.ndarray | None:
    """The mask of micrograph ``stem`` (read from ``path``), or ``None``.

    Raises
    ------
    CryoInputError
        If the mask's shape differs from the micrograph's.
    """
    key = mask_key(masks, stem)
    if key is None:
        return None
    mask = masks[key]
    if mask.shape != shape:
        raise CryoInputError(path, f"mask {key} has shape {mask.shape}, the micrograph {shape}")
    return mask


@dataclass(frozen=True)
class PickRunSettings:
    """The settings of ``pick run`` that every micrograph shares (see its options).

    ``threshold`` and ``invert`` of ``None`` take the model's own.
    """

    diameter: float
    threshold: float | None = None
    min_distance: float | None = None
    border: float | None = None
    working_pixel_size: float | None = None
    pixel_size: float | None = None
    invert: bool | None = None
    keep_junk: bool = False
    device: str = "auto"

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "PickRunSettings":
        """The settings of parsed ``pick run`` options."""
        return cls(args.diameter, args.threshold, args.min_distance, args.border, args.working_pixel_size, args.pixel_size,
                   args.invert, args.keep_junk, args.device)


def pick_one(
    model: Any,
    path: str | os.PathLike,
    target: Path,
    settings: PickRunSettings,
    device: Any,
    masks: dict[str, np.ndarray],
) -> int:
    """Pick one micrograph and write its pick file.

    The one per-file step of ``pick run``, in process and on a cluster, so both write the same bytes.

    Parameters
    ----------
    model : napari_cryo.picking.model.PickerModel
        The picker.
    path : path
        The micrograph.
    target : Path
        The pick file to write (atomically; it is replaced if it exists).
    settings : PickRunSettings
        Diameter, threshold and the other ``pick run`` settings.
    device : torch.device or str
        Where the picker runs.
    masks : dict of str to ndarray
        Exclusion masks by stem; only the micrograph's own is used.

    Returns
    -------
    int
        The number of picks written.
    """
    from .data import load_micrograph
    from .export import micrograph_file_name, write_picks
    from .picks import pick_micrograph

    mic = load_micrograph(path, settings.pixel_size)
    result = pick_micrograph(
        model,
        mic.image,
        mic.pixel_size,
        settings.diameter,
        working_px=settings.working_pixel_size,
        invert=settings.invert,
        exclude_mask=mask_for(masks, mic.stem, mic.image.shape, mic.path),
        exclude_junk=not settings.keep_junk,
        device=device,
        name=str(path),
    )
    threshold = model.threshold if settings.threshold is None else settings.threshold
    yx, scores = result.picks(threshold, settings.min_distance, settings.border)
    write_picks(target, yx, scores, mic.pixel_size, micrograph_file_name(path))
    return len(yx)


def _pick_task(job: FileJob, model_spec: str, settings: PickRunSettings, mask_paths: dict[str, str]) -> Done:
    """One micrograph on a cluster worker: the model comes from the worker's cache, the mask is read here."""
    from ..cluster import Done, worker_model
    from ..device import resolve_device
    from .data import stem_of
    from .model import load_model

    model = worker_model(load_model, model_spec)
    key = mask_key(mask_paths, stem_of(job.source))
    masks = {} if key is None else masks_by_stem([mask_paths[key]])  # keyed by its stem, which is key
    return Done(pick_one(model, job.source, Path(job.outputs[0]), settings, resolve_device(settings.device), masks))


def check_run(out: Path, model: Any, settings: PickRunSettings, micrographs: list[str]) -> list[Path]:
    """The pick file of each micrograph, after what both ways of running check first.

    Raises
    ------
    CryoInputError
        If ``out`` is a file or the threshold is outside [0, 1].
    """
    from .export import picks_path

    if out.exists() and not out.is_dir():
        raise CryoInputError(out, "exists and is not a directory")
    threshold = model.threshold if settings.threshold is None else settings.threshold
    if not 0 <= threshold <= 1:
        raise CryoInputError(None, f"--threshold must be between 0 and 1, got {threshold}")
    return [picks_path(out, p) for p in micrographs]


def pick_batch(
    client: Client,
    micrographs: list[str],
    out: str | os.PathLike,
    settings: PickRunSettings,
    model: str = "generic",
    masks: list[str] | None = None,
    overwrite: bool = False,
) -> BatchReport:
    """Pick micrographs on a dask.distributed cluster, one task per micrograph.

    Parameters
    ----------
    client : distributed.Client
        The cluster.
    micrographs : list of str
        Micrograph files (paths the workers can read).
    out : path
        Output folder (created); each micrograph gets ``<stem>_picks.star``.
    settings : PickRunSettings
        Diameter, threshold and the other ``pick run`` settings.
    model : str
        A model file or ``"generic"``; each worker loads it once.
    masks : list of str, optional
        Exclusion masks, matched to micrographs by file name.
    overwrite : bool
        Redo micrographs whose pick file exists (otherwise skipped).

    Returns
    -------
    napari_cryo.cluster.BatchReport
        Finished (values: picks per micrograph), skipped and failed micrographs.
    """
    from ..cluster import FileJob, run_batch
    from .data import stem_of
    from .model import load_model

    out = Path(out)
    targets = check_run(out, load_model(model), settings, micrographs)  # a bad model or threshold stops before any task
    if len(set(targets)) < len(targets):
        raise CryoInputError(None, "two micrographs have the same file name; their pick files would collide")
    out.mkdir(parents=True, exist_ok=True)
    jobs = [FileJob(str(p), (str(t),)) for p, t in zip(micrographs, targets)]
    mask_paths = {stem_of(p): str(p) for p in masks or []}
    return run_batch(client, _pick_task, jobs, (str(model), settings, mask_paths), overwrite=overwrite, description="picking")
