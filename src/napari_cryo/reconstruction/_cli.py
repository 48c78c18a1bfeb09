"""Ab initio reconstruction: ``napari-cryo reconstruct PARTICLES.star --out DIR``.

Writes ``DIR/volume.mrc`` (sharpened, low-passed at the FSC 0.143 resolution), ``DIR/half1.mrc`` and
``DIR/half2.mrc``, ``DIR/poses.star`` (the input rows with the estimated angles and origins),
``DIR/checkpoint.pt``, ``DIR/progress.csv``, intermediate maps, ``DIR/fsc.png``, ``DIR/loss.png`` and
``DIR/directions.png``.

Every input is checked before anything is written (particles, stacks, CTF and
pixel sizes, boxes, settings), and so is the folder: a file of an earlier run
there stops the command unless ``--resume`` continues that run or
``--overwrite`` deletes the earlier run's files first.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

from ..errors import CryoInputError

HELP = "ab initio 3D reconstruction from a particle STAR file (cryoSPIN or cryoAI)"


def add_args(parser: argparse.ArgumentParser) -> None:
    from ..cli import add_device_arg
    from .settings import METHODS, ReconstructionSettings

    d = ReconstructionSettings()
    parser.add_argument("particles", help="RELION particle STAR file (rlnImageName, CTF columns)")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="output directory; a file of an earlier run there (maps, plots, poses.star, checkpoint.pt, progress.csv, "
                             "intermediate_*.mrc) stops the command unless --resume or --overwrite is given")
    parser.add_argument("--method", choices=METHODS, default=d.method,
                        help="cryospin (default: multi-head encoder, then per-particle poses), cryoai (one head, implicit decoder; "
                             "found no poses on the 2-CPU benchmark, see the user guide), or search (stochastic first map, then pose searches)")
    parser.add_argument("--box", type=int, metavar="L",
                        help="working box size in pixels (Fourier cropping; even; default: the image size, less the last row and column when it is odd)")
    parser.add_argument("--max-minutes", type=float, default=d.max_minutes, metavar="T", help=f"time budget of the run, the final half maps included (default {d.max_minutes:g})")
    parser.add_argument("--batch-size", type=int, default=d.batch_size)
    parser.add_argument("--heads", type=int, default=d.heads, help=f"cryoSPIN encoder heads (default {d.heads})")
    parser.add_argument("--amortized-box", type=int, metavar="L",
                        help="cryospin/cryoai: box of the amortized phase (even; default: the smallest that holds its band, at least 32)")
    parser.add_argument("--switch-after", type=float, metavar="MIN", help="force the switch to per-particle poses after MIN minutes (default: automatic)")
    parser.add_argument("--pose-steps", type=int, default=d.pose_steps, help="pose updates per batch when auto-decoding")
    parser.add_argument("--global-rounds", type=int, default=d.global_rounds, metavar="N",
                        help=f"cryospin: global pose searches while auto-decoding, the first at the switch (default {d.global_rounds}; 0: as published)")
    parser.add_argument("--collapse-scf", type=float, default=d.collapse_scf, metavar="SCF",
                        help=f"cryospin: when the encoder's views reach an SCF below this (checked from amortized epoch {d.collapse_epochs}), "
                             f"take the first poses from a stochastic first map instead (default {d.collapse_scf:g}; 0: as published)")
    parser.add_argument("--unsettled-degrees", type=float, default=d.unsettled_degrees, metavar="DEG",
                        help=f"cryospin: when the encoder's poses still move the median particle by more than DEG per epoch over "
                             f"{d.patience} epochs without falling (checked from amortized epoch {d.collapse_epochs}), switch at once "
                             f"and take the first poses from a stochastic first map (default {d.unsettled_degrees:g}; 0: as published)")
    parser.add_argument("--first-map-batches", type=int, default=d.first_map_batches, help=f"batches of the stochastic first map (search, and cryoSPIN when its encoder does not settle; default {d.first_map_batches})")
    parser.add_argument("--invert", action="store_true", help="invert the contrast: the particles are dark on a light background (RELION-extracted particles are white)")
    parser.add_argument("--phase-flip", action="store_true", help="phase-flip the images first (off by default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint-minutes", type=float, default=d.checkpoint_minutes, help=f"minutes between checkpoints (default {d.checkpoint_minutes:g})")
    parser.add_argument("--map-minutes", type=float, default=d.map_minutes, help=f"minutes between intermediate maps (default {d.map_minutes:g})")
    parser.add_argument("--resume", action="store_true",
                        help="continue from DIR/checkpoint.pt after an interruption (the run's files are kept and rewritten)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an earlier run in DIR: once every input is checked, its files (final maps, plots, poses.star, "
                             "checkpoint.pt, progress.csv and all intermediate_*.mrc) are deleted, so DIR never mixes two runs; "
                             "other files are left alone")
    add_device_arg(parser)


def report_step(item) -> None:
    """One line per epoch, round or map of a run (above the bar on a terminal; the log's record of the run)."""
    from tqdm import tqdm

    if isinstance(item, dict) and "phase" in item:
        change = item.get("pose_change_deg")
        moved = "" if change is None or change != change else f", poses moved {change:.2f}° (median)"
        loss = item.get("loss")
        loss_text = "" if loss is None or loss != loss else f", loss {loss:.4g}"
        tqdm.write(f"{item.get('elapsed_s', 0):.0f} s: {item['phase']}, epoch {item.get('epoch', '')}{loss_text}{moved}", file=sys.stderr)
    elif getattr(item, "path", None) is not None and hasattr(item, "label"):
        tqdm.write(f"map ({item.label}): {item.path}", file=sys.stderr)


def main(args: argparse.Namespace) -> int:
    """Run a reconstruction, alone or as one of the ranks ``torchrun`` started."""
    from .ranks import is_quiet_rank, start_ranks, stop_ranks

    try:
        out, settings, device = _settings(args)
    except CryoInputError:
        if is_quiet_rank():  # every rank found the same problem: rank 0 reports it
            raise SystemExit(2) from None
        raise
    ranks, device = start_ranks(device)
    code = _run(args, out, settings, device, ranks)
    stop_ranks(ranks)
    return code


def _settings(args: argparse.Namespace):
    """The output folder, settings and device of the command line, checked."""
    from ..device import resolve_device
    from .settings import ReconstructionSettings

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CryoInputError(out, "is a file; --out must be a directory")
    settings = ReconstructionSettings(
        method=args.method, batch_size=args.batch_size, max_minutes=args.max_minutes, heads=args.heads,
        switch_after=args.switch_after, amortized_box=args.amortized_box, pose_steps=args.pose_steps, seed=args.seed,
        global_rounds=args.global_rounds, collapse_scf=args.collapse_scf,
        unsettled_degrees=args.unsettled_degrees,
        checkpoint_minutes=args.checkpoint_minutes, map_minutes=args.map_minutes, first_map_batches=args.first_map_batches,
    )
    return out, settings, resolve_device(args.device)


def _run(args: argparse.Namespace, out: Path, settings, device, ranks) -> int:
    """Check every input (on every rank), then run; rank 0 alone reports and writes."""
    from ..device import describe_device
    from ..tasks import drain, run_with_tqdm
    from .controller import check_run, run_to_folder
    from .data import ParticleData
    from .run import RunFolder

    folder = RunFolder(out, create=False)
    problem = None
    try:
        # The folder first (cheap and the likeliest clash), then every input, and only then is anything deleted or written.
        if ranks.root and not args.overwrite:
            folder.prepare(resume=args.resume)
        data = ParticleData(args.particles, box=args.box, invert=args.invert, phase_flip=args.phase_flip)
        check_run(data, settings)
    except CryoInputError as exc:
        problem = exc
    ranks.raise_together(problem)
    gen = run_to_folder(data, settings, out, resume=args.resume, device=device, overwrite=args.overwrite, ranks=ranks)
    if not ranks.root:
        drain(gen)
        return 0
    for warning in data.warnings:
        print(f"napari-cryo reconstruct: warning: {warning}", file=sys.stderr)
    removed = folder.prepare(overwrite=args.overwrite, resume=args.resume)
    if removed:
        print(f"napari-cryo reconstruct: deleted the earlier run's {len(removed)} files in {out} (--overwrite)", file=sys.stderr)
    shared = (f"; {ranks.size} ranks share the particles (about {-(-len(data) // ranks.size)} each, each reads only its own)"
              if ranks.shared else "")
    print(f"{len(data)} particles, box {data.box} at {data.pixel_size:.3g} Å; {settings.method} on {describe_device(device)}{shared}",
          file=sys.stderr)
    out.mkdir(parents=True, exist_ok=True)
    with _checkpoint_warnings_as_lines():
        result = run_with_tqdm(gen, "reconstruct", report_step, budget_s=settings.max_minutes * 60)
    px = result.pixel_size
    coverage = result.coverage
    if coverage.warning():
        print(f"napari-cryo reconstruct: warning: {coverage.warning()}", file=sys.stderr)
    print(f"{out / 'volume.mrc'}: resolution {result.resolution:.2f} Å at FSC 0.143 (half maps), {px:.3g} Å/px; {coverage.describe()}")
    return 0


@contextlib.contextmanager
def _checkpoint_warnings_as_lines() -> Iterator[None]:
    """Print a checkpoint that could not be written as one warning line (before the run's own error, if any)."""
    from .run import CheckpointNotSaved

    shown = warnings.showwarning

    def show(message, category, *rest, **kwargs) -> None:
        if issubclass(category, CheckpointNotSaved):
            print(f"napari-cryo reconstruct: warning: {message}", file=sys.stderr)
        else:
            shown(message, category, *rest, **kwargs)

    with warnings.catch_warnings():
        warnings.simplefilter("always", CheckpointNotSaved)
        warnings.showwarning = show
        yield
