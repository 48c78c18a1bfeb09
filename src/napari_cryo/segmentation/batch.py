"""Segmenting and picking many tomograms: the per-file steps of ``segment apply`` and ``segment pick``.

:func:`segment_one` and :func:`pick_segmentation` do one file's work; the
commands call them in process, and :func:`apply_batch` and
:func:`pick_particles_batch` run them as one dask.distributed task per file
(see :mod:`napari_cryo.cluster`).  No Qt, no napari.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import CryoInputError

if TYPE_CHECKING:
    from distributed import Client

    from ..cluster import BatchReport, Done, FileJob
    from .files import Volume
    from .group import ModelGroup
    from .particles import PickSettings


def load_group(spec: str) -> ModelGroup:
    """A model (``.scnm``) or group (``.scnmgroup``) file as a group: what ``segment apply`` runs."""
    from .group import load_models

    return load_models([spec])


def segment_one(
    group: ModelGroup,
    vol: Volume,
    paths: dict[str, Path],
    device: Any,
    drive: Callable[[Any, str, Callable[[Any], None]], Any],
    on_effect: Callable[[str], None],
) -> list[Path]:
    """Segment one tomogram and write one file per feature.

    The one per-file step of ``segment apply``, in process and on a cluster, so both write the same bytes.

    Parameters
    ----------
    group : ModelGroup
        The models and their interactions.
    vol : Volume
        The tomogram.
    paths : dict of str to Path
        Feature title -> the segmentation file to write (replaced if it exists).
    device : torch.device or str
        Where the models run.
    drive : callable
        ``drive(generator, label, on_value)`` runs the progress generator and
        returns its result (a tqdm bar in a terminal, none on a worker).
    on_effect : callable
        Receives the lines saying what each interaction removed.

    Returns
    -------
    list of Path
        The files written.
    """
    from .files import write_segmentation
    from .interactions import InteractionEffects

    def report(value) -> None:
        if isinstance(value, InteractionEffects):
            for line in value.describe():
                on_effect(f"{vol.path.name}: {line}")

    result = drive(group.apply(vol.data, vol.pixel_size, device), vol.path.name, report)
    written = []
    for title, probs in result.items():
        write_segmentation(paths[title], probs, vol.pixel_size, vol.origin, title, overwrite=True)
        written.append(paths[title])
    return written


def _drain(gen: Any, label: str, on_value: Callable[[Any], None]) -> Any:
    """Run a progress generator without a bar (on a cluster worker)."""
    from ..tasks import drain

    return drain(gen, on_value)[0]


def _apply_task(job: FileJob, model_spec: str, titles: tuple[str, ...], pixel_size: float | None, device: str) -> Done:
    """One tomogram on a cluster worker: the group comes from the worker's cache."""
    from ..cluster import Done, worker_model
    from ..device import resolve_device
    from .files import load_volume

    group = worker_model(load_group, model_spec)
    vol = load_volume(job.source, pixel_size)
    notes: list[str] = []
    written = segment_one(group, vol, dict(zip(titles, map(Path, job.outputs))), resolve_device(device), _drain, notes.append)
    return Done(len(written), tuple(str(p) for p in written), tuple(notes))


def apply_batch(
    client: Client,
    model: str,
    tomograms: list[str],
    out: str | os.PathLike,
    pixel_size: float | None = None,
    device: str = "auto",
    overwrite: bool = False,
) -> BatchReport:
    """Segment tomograms on a dask.distributed cluster, one task per tomogram.

    Parameters
    ----------
    client : distributed.Client
        The cluster.
    model : str
        A ``.scnm`` or ``.scnmgroup`` file; each worker loads it once.
    tomograms : list of str
        Tomogram MRC files (paths the workers can read).
    out : path
        Output folder (created); each tomogram gets ``<tomogram>__<feature>.mrc`` per feature.
    pixel_size : float, optional
        Pixel size of tomograms whose header has none.
    device : str
        Torch device on the workers.
    overwrite : bool
        Redo tomograms whose segmentations all exist (otherwise skipped).

    Returns
    -------
    napari_cryo.cluster.BatchReport
        Finished, skipped and failed tomograms.
    """
    from ..cluster import FileJob, run_batch

    group = load_group(model)  # a bad model stops before any task, and names the outputs
    out_dir = Path(out)
    if out_dir.exists() and not out_dir.is_dir():
        raise CryoInputError(out_dir, "is a file; --out must be a directory")
    outputs = apply_outputs(out_dir, [Path(t) for t in tomograms], group.titles)
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = [FileJob(str(t), tuple(str(paths[title]) for title in group.titles)) for t, paths in zip(tomograms, outputs)]
    shared = (str(model), tuple(group.titles), pixel_size, device)
    return run_batch(client, _apply_task, jobs, shared, overwrite=overwrite, description="segmenting")


def apply_outputs(out_dir: Path, tomograms: list[Path], titles: list[str]) -> list[dict[str, Path]]:
    """Per tomogram, feature title -> its segmentation file in ``out_dir``.

    Raises
    ------
    CryoInputError
        If two tomograms would write the same file.
    """
    from .files import segmentation_path

    outputs, seen = [], {}
    for tomogram in tomograms:
        paths = {title: segmentation_path(out_dir, tomogram, title) for title in titles}
        for path in paths.values():
            if path in seen:
                why = "is given twice" if seen[path] == tomogram else f"would write {path.name} as {seen[path]} does; give the tomograms different names"
                raise CryoInputError(tomogram, why)
            seen[path] = tomogram
        outputs.append(paths)
    return outputs


#: What ``segment pick`` writes per segmentation into a directory.
PICKS_SUFFIX = "_particles.star"


def pick_targets(segmentations: list[str], out: str | os.PathLike) -> tuple[list[Path], bool]:
    """The coordinates file of each segmentation, and whether ``--out`` is a directory.

    One segmentation writes ``--out`` itself unless it is a directory; several
    (or a directory) write ``DIR/<segmentation>_particles.star``.
    """
    from ..cluster import per_input_targets

    return per_input_targets(segmentations, out, PICKS_SUFFIX, "segmentations", (".star", ".tsv", ".txt"))


def pick_segmentation(vol: Volume, target: Path, settings: PickSettings, overwrite: bool) -> int:
    """Pick particles from one segmentation and write its coordinates file.

    The one per-file step of ``segment pick``, in process and on a cluster, so both write the same bytes.

    Parameters
    ----------
    vol : Volume
        The segmentation (probabilities).
    target : Path
        The coordinates file (STAR) to write atomically.
    settings : PickSettings
        Threshold, minimum volume and spacing, separation.
    overwrite : bool
        Replace ``target`` if it exists.

    Returns
    -------
    int
        The number of particles written.
    """
    from .files import tomogram_name
    from .particles import pick_particles, write_picks

    picked = pick_particles(vol.data, vol.pixel_size, settings)
    write_picks(target, picked, vol.pixel_size, tomogram_name(vol.path), overwrite=overwrite)
    return len(picked.coordinates)


def _pick_task(job: FileJob, settings: PickSettings, pixel_size: float | None) -> Done:
    """One segmentation on a cluster worker."""
    from ..cluster import Done
    from .files import load_volume

    vol = load_volume(job.source, pixel_size, what="segmentation")
    count = pick_segmentation(vol, Path(job.outputs[0]), settings, overwrite=True)
    return Done(count, (f"{job.outputs[0]}: {count} particles",))


def pick_particles_batch(
    client: Client,
    segmentations: list[str],
    out: str | os.PathLike,
    settings: PickSettings,
    pixel_size: float | None = None,
    overwrite: bool = False,
) -> BatchReport:
    """Pick particles from segmentations on a dask.distributed cluster, one task per segmentation.

    Parameters
    ----------
    client : distributed.Client
        The cluster.
    segmentations : list of str
        Segmentation MRC files (paths the workers can read).
    out : path
        The coordinates file of a single segmentation, or a folder (created) where each
        gets ``<segmentation>_particles.star``.
    settings : napari_cryo.segmentation.particles.PickSettings
        Threshold, minimum volume and spacing, separation.
    pixel_size : float, optional
        Pixel size of segmentations whose header has none.
    overwrite : bool
        Redo segmentations whose coordinates file exists (otherwise skipped).

    Returns
    -------
    napari_cryo.cluster.BatchReport
        Finished (values: particles per segmentation), skipped and failed segmentations.
    """
    from ..cluster import FileJob, make_out_folder, run_batch

    targets, directory = pick_targets(segmentations, out)
    make_out_folder(out, targets, directory)
    jobs = [FileJob(str(p), (str(t),)) for p, t in zip(segmentations, targets)]
    return run_batch(client, _pick_task, jobs, (settings, pixel_size), overwrite=overwrite, description="picking")
