"""Scoring many atlases: the per-atlas steps of ``squares extract`` and ``squares score``.

:func:`extract_one` and :func:`score_one` do one atlas's work; the commands
call them in process, and :func:`extract_batch` and :func:`score_batch` run
them as one dask.distributed task per atlas (see :mod:`napari_cryo.cluster`).
No Qt, no napari.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import CryoInputError

if TYPE_CHECKING:
    import argparse

    import numpy as np
    from distributed import Client

    from ..cluster import BatchReport, Done, FileJob
    from .model import SquareModel
    from .pipeline import AtlasSquares


#: What ``squares extract`` writes per atlas into a directory (``_squares.csv`` is the ranked table of ``score``).
EXTRACT_SUFFIX = "_extracted.csv"


@dataclass(frozen=True)
class AtlasOptions:
    """How atlases are read (``--montage``, ``--overlap``): what a cluster task needs of the options."""

    montage: tuple[int, int] | None = None
    overlap: float = 0.1

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "AtlasOptions":
        """The atlas options of parsed arguments."""
        return cls(tuple(args.montage) if args.montage else None, args.overlap)


def load_atlas_file(path: str, options: AtlasOptions) -> tuple[str, np.ndarray, float | None]:
    """Read an atlas (or a montage of tiles): its name, image and pixel size (``None`` if the file gives none)."""
    from ..io.names import file_stem as stem
    from .atlas import load_atlas, load_montage

    if options.montage:
        image, px = load_montage(path, options.montage[0], options.montage[1], options.overlap)
    else:
        image, px = load_atlas(path)
    return stem(path), image, px


def analyse_atlas_file(path: str, options: AtlasOptions) -> AtlasSquares:
    """Read an atlas and find its lattice and squares.

    Raises
    ------
    CryoInputError
        Naming ``path``, if the file is bad or no lattice is found.
    """
    from .pipeline import analyse_atlas

    name, image, px = load_atlas_file(path, options)
    try:
        return analyse_atlas(image, name, px)
    except CryoInputError as exc:
        raise CryoInputError(path, exc.problem) from None


def score_outputs(directory: str | Path, atlases: list[str], variant: str) -> list[Path]:
    """Every file ``squares score`` writes for the atlas files, in the order it writes them.

    Raises
    ------
    CryoInputError
        If two atlases have the same name (their files would collide).
    """
    from ..io.names import file_stem
    from .pipeline import attention_keys, attention_path
    from .ranked import ranked_paths

    names = [file_stem(path) for path in atlases]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise CryoInputError(atlases[i], f"has the same name as {atlases[names.index(name)]}; their output files would collide")
    return [
        path
        for name in names
        for path in (*ranked_paths(directory, name), *(attention_path(directory, name, key) for key in attention_keys(variant)))
    ]


def extract_targets(atlases: list[str], out: str | os.PathLike) -> tuple[list[Path], bool]:
    """The CSV of each atlas, and whether ``--out`` is a directory.

    One atlas writes ``--out`` itself unless it is a directory; several (or a
    directory) write ``DIR/<atlas>_extracted.csv``.
    """
    from ..cluster import per_input_targets

    return per_input_targets(atlases, out, EXTRACT_SUFFIX, "atlases", (".csv",))


def extract_one(path: str, out: Path, options: AtlasOptions, overwrite: bool) -> str:
    """Find one atlas's squares and write their table (CSV).

    The one per-file step of ``squares extract``, in process and on a cluster, so both write the same bytes.

    Parameters
    ----------
    path : str
        The atlas.
    out : Path
        The CSV to write atomically.
    options : AtlasOptions
        Montage layout and overlap.
    overwrite : bool
        Replace ``out`` if it exists.

    Returns
    -------
    str
        The line that reports it.
    """
    from ..io.atomic import atomic_path

    atlas = analyse_atlas_file(path, options)
    table = atlas.squares.rename(columns={})[["center_x", "center_y", "side", "angle", "complete", "ncc", "brightness", "squareness"]]
    with atomic_path(out, overwrite=overwrite) as tmp:
        table.to_csv(tmp, index=False, float_format="%.3f")
    return f"wrote {out}: {len(table)} squares ({int(table['complete'].sum())} complete), pitch {atlas.lattice.pitch:.1f} px, angle {atlas.lattice.angle:.1f}°"


def _extract_task(job: FileJob, options: AtlasOptions) -> Done:
    """One atlas on a cluster worker."""
    from ..cluster import Done

    return Done(lines=(extract_one(job.source, Path(job.outputs[0]), options, overwrite=True),))


def extract_batch(
    client: Client,
    atlases: list[str],
    out: str | os.PathLike,
    options: AtlasOptions | None = None,
    overwrite: bool = False,
) -> BatchReport:
    """Find the squares of atlases on a dask.distributed cluster, one task per atlas.

    Parameters
    ----------
    client : distributed.Client
        The cluster.
    atlases : list of str
        Atlas files (paths the workers can read).
    out : path
        The CSV of a single atlas, or a folder (created) where each atlas gets ``<atlas>_extracted.csv``.
    options : AtlasOptions, optional
        Montage layout and overlap.
    overwrite : bool
        Redo atlases whose table exists (otherwise skipped).

    Returns
    -------
    napari_cryo.cluster.BatchReport
        Finished, skipped and failed atlases.
    """
    from ..cluster import FileJob, make_out_folder, run_batch

    targets, directory = extract_targets(atlases, out)
    make_out_folder(out, targets, directory)
    jobs = [FileJob(str(p), (str(t),)) for p, t in zip(atlases, targets)]
    return run_batch(client, _extract_task, jobs, (options or AtlasOptions(),), overwrite=overwrite, description="atlases")


def score_one(model: SquareModel, path: str, out: Path, options: AtlasOptions, device: Any, overwrite: bool) -> str:
    """Score one atlas and write its ranked CSV, STAR and attention maps.

    The one per-file step of ``squares score``, in process and on a cluster, so both write the same bytes.

    Parameters
    ----------
    model : SquareModel
        The square scorer.
    path : str
        The atlas.
    out : Path
        The output folder (it must exist).
    options : AtlasOptions
        Montage layout and overlap.
    device : torch.device or str
        Where the model runs.
    overwrite : bool
        Replace files that exist.

    Returns
    -------
    str
        The line that reports it.
    """
    from ..io.mrc import write_mrc
    from .pipeline import attention_path, score_atlas
    from .ranked import write_ranked

    atlas = analyse_atlas_file(path, options)
    table, maps = score_atlas(model, atlas, str(device))
    csv, star = write_ranked(out, table, atlas.name, atlas.pixel_size, overwrite=overwrite)
    for key, m in maps.items():
        write_mrc(attention_path(out, atlas.name, key), m, atlas.pixel_size or 1.0, overwrite=overwrite)
    return f"wrote {csv}, {star.name} ({int(table['complete'].sum())} squares ranked)" + (f" and {len(maps)} attention maps" if maps else "")


def load_square_model(spec: str) -> SquareModel:
    """A square model file, or the shipped default for ``""`` (what a cluster worker loads once)."""
    from .model import SquareModel

    if not spec:
        from .default_model import load_default_model

        return load_default_model()
    return SquareModel.load(spec)


def _score_task(job: FileJob, model_spec: str, options: AtlasOptions, device: str) -> Done:
    """One atlas on a cluster worker: the model comes from the worker's cache."""
    from ..cluster import Done, worker_model
    from ..device import resolve_device

    model = worker_model(load_square_model, model_spec)
    return Done(lines=(score_one(model, job.source, Path(job.outputs[0]).parent, options, resolve_device(device), overwrite=True),))


def score_batch(
    client: Client,
    atlases: list[str],
    out: str | os.PathLike,
    model: str = "",
    options: AtlasOptions | None = None,
    device: str = "auto",
    overwrite: bool = False,
) -> BatchReport:
    """Score and rank the squares of atlases on a dask.distributed cluster, one task per atlas.

    Parameters
    ----------
    client : distributed.Client
        The cluster.
    atlases : list of str
        Atlas files (paths the workers can read).
    out : path
        Output folder (created): ranked CSV and STAR and attention maps per atlas.
    model : str
        A square model file; ``""`` for the shipped default.  Each worker loads it once.
    options : AtlasOptions, optional
        Montage layout and overlap.
    device : str
        Torch device on the workers.
    overwrite : bool
        Redo atlases whose files all exist (otherwise skipped).

    Returns
    -------
    napari_cryo.cluster.BatchReport
        Finished, skipped and failed atlases.
    """
    from ..cluster import FileJob, run_batch

    variant = load_square_model(model).variant  # a bad model stops before any task, and names the outputs
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CryoInputError(out, "exists and is not a directory")
    files = score_outputs(out, atlases, variant)
    per_atlas = len(files) // len(atlases)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [FileJob(str(p), tuple(str(f) for f in files[i * per_atlas:(i + 1) * per_atlas])) for i, p in enumerate(atlases)]
    return run_batch(client, _score_task, jobs, (model, options or AtlasOptions(), device), overwrite=overwrite, description="scoring")
