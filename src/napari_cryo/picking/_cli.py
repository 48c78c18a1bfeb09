"""Particle picking: ``napari-cryo pick train | run | evaluate``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from ..errors import CryoInputError
from .batch import PickRunSettings, check_run, mask_for, masks_by_stem, pick_batch, pick_one

HELP = "2D particle picking: train a picker, pick micrographs, evaluate picks"


def add_args(parser: argparse.ArgumentParser) -> None:
    from ..cli import add_device_arg
    from ..cluster import add_scheduler_arg

    sub = parser.add_subparsers(dest="pick_command", metavar="STEP")
    sub.required = True

    t = sub.add_parser(
        "train", help="train or fine-tune a picker on your picks",
        description=(
            "Train or fine-tune a picker from picks (sparse labels are fine), false positives and painted masks. "
            "A fifth of the picks is held out for validation; training stops when they stop improving (--patience), "
            "when the time budget is spent (--budget) or after --max-epochs, whichever comes first, and keeps the best "
            "epoch's weights. Ctrl-C also writes MODEL with the best weights so far, and --resume continues."
        ),
    )
    t.add_argument("micrographs", nargs="+", help="2D micrographs: MRC, or TIFF/PNG/JPEG with --pixel-size")
    t.add_argument("--positives", required=True, metavar="STAR_OR_DIR", help="picked particles: one STAR file (with rlnMicrographName) or a directory of per-micrograph STAR files")
    t.add_argument("--false-positives", metavar="STAR_OR_DIR", help="picks that are not particles (trained as background)")
    t.add_argument("--masks", nargs="+", metavar="MRC", help="painted masks (non-zero = junk, e.g. carbon), one per micrograph, matched by file name")
    t.add_argument("--diameter", type=float, required=True, metavar="A", help="particle diameter in Å")
    t.add_argument("--out", required=True, metavar="MODEL", help="model file to write (.pt)")
    t.add_argument("--from", dest="from_model", metavar="MODEL", default="generic", help="model to fine-tune: 'generic' (default), a model file, or 'scratch'")
    t.add_argument("--expected-particles", type=float, metavar="N", help="particles per micrograph you expect (default: twice the number picked)")
    t.add_argument("--complete", action="store_true", help="the picks are complete: train unlabelled pixels as background")
    t.add_argument("--budget", type=float, default=None, metavar="MINUTES", help="time budget of the training in minutes (default 5; 0: none); the last epoch ends within it")
    t.add_argument("--patience", type=int, default=None, metavar="N", help="stop after N epochs without a better validation (default 6; 0: never)")
    t.add_argument("--max-epochs", type=int, default=None, metavar="N", help="stop after at most N epochs (default 100)")
    t.add_argument("--epochs", type=int, default=None, metavar="N", help="train exactly N epochs with a cosine learning rate: --max-epochs N --patience 0 --budget 0, unless those are given too (the best epoch is still kept)")
    t.add_argument("--steps", type=int, default=None, metavar="N", help="batches per epoch, between two validations (default 25)")
    t.add_argument("--lr", type=float, default=None, help="learning rate (default 3e-4 fine-tuning, 1e-3 from scratch)")
    t.add_argument("--working-pixel-size", type=float, metavar="A", help="override the working pixel size (default diameter/20)")
    t.add_argument("--pixel-size", type=float, metavar="A", help="pixel size in Å of micrographs whose header has none (always needed for TIFF, PNG and JPEG)")
    t.add_argument("--invert", action="store_true", help="particles are white on the micrographs")
    t.add_argument("--name", help="model name (default: the output file stem)")
    t.add_argument("--overwrite", action="store_true", help="replace MODEL, its loss plot and an earlier run's checkpoint (training starts again)")
    t.add_argument("--resume", action="store_true", help="continue an interrupted run from MODEL.ckpt")
    add_device_arg(t)

    r = sub.add_parser("run", help="pick micrographs with a model", description="Pick particles; writes DIR/<micrograph>_picks.star per micrograph.")
    r.add_argument("micrographs", nargs="+", help="2D micrographs: MRC, or TIFF/PNG/JPEG with --pixel-size")
    r.add_argument("--model", default="generic", help="model file, or 'generic' (default) for the model shipped with napari-cryo")
    r.add_argument("--diameter", type=float, required=True, metavar="A", help="particle diameter in Å")
    r.add_argument("--out", required=True, metavar="DIR", help="output directory")
    r.add_argument("--threshold", type=float, default=None, help="particle probability threshold (default: the model's)")
    r.add_argument("--min-distance", type=float, default=None, metavar="A", help="minimum distance between picks in Å (default: the radius)")
    r.add_argument("--border", type=float, default=None, metavar="A", help="margin from the edge in Å (default: the radius)")
    r.add_argument("--masks", nargs="+", metavar="MRC", help="exclusion masks (non-zero = do not pick), matched by file name")
    r.add_argument("--keep-junk", action="store_true", help="also pick where the model sees junk")
    r.add_argument("--working-pixel-size", type=float, metavar="A")
    r.add_argument("--pixel-size", type=float, metavar="A", help="pixel size in Å of micrographs whose header has none (always needed for TIFF, PNG and JPEG)")
    r.add_argument("--invert", action="store_true", default=None, help="particles are white (default: the model's setting)")
    r.add_argument("--overwrite", action="store_true", help="replace pick files that exist")
    add_device_arg(r)
    add_scheduler_arg(r)

    e = sub.add_parser("evaluate", help="precision and recall of picks against ground truth")
    e.add_argument("picks", help="picked coordinates: STAR file or directory (with rlnAutopickFigureOfMerit)")
    e.add_argument("truth", help="true coordinates: STAR file or directory")
    e.add_argument("--diameter", type=float, required=True, metavar="A", help="particle diameter in Å")
    e.add_argument("--pixel-size", type=float, metavar="A", help="pixel size of the coordinates if the files give none")
    e.add_argument("--json", action="store_true", help="print the scores as JSON")


def _warn(messages: list[str]) -> None:
    for m in messages:
        print(f"napari-cryo pick: warning: {m}", file=sys.stderr)


def cmd_train(args: argparse.Namespace) -> int:
    from ..checkpoints import training_outputs
    from ..device import resolve_device
    from ..tasks import run_with_tqdm
    from ..training_loop import print_events
    from .data import load_micrograph, match_picks
    from .labels import prepare_training_micrograph
    from .model import PickerModel, load_model
    from .preprocess import working_pixel_size
    from .training import train

    config = train_config(args, args.lr or (1e-3 if args.from_model == "scratch" else 3e-4))
    config.check()  # before anything is read
    out, checkpoint, plot = training_outputs(args.out, args.overwrite, args.resume)
    # A resume replaces the interrupted run's own model and plot, if it wrote them before it stopped.
    replace = args.overwrite or (args.resume and checkpoint.exists())
    device = resolve_device(args.device)
    mics = [load_micrograph(p, args.pixel_size) for p in args.micrographs]
    positives = match_picks(args.positives, mics, "picks")
    _warn(positives.warnings)
    false_pos = match_picks(args.false_positives, mics, "false positives") if args.false_positives else None
    if false_pos:
        _warn(false_pos.warnings)
    masks = masks_by_stem(args.masks)
    if args.from_model == "scratch":
        model = PickerModel.new(name=args.name or out.stem)
    else:
        model = load_model(args.from_model).copy(name=args.name or out.stem)
    if args.invert:
        model.invert = True
    data = []
    for m in mics:
        wpx = working_pixel_size(args.diameter, m.pixel_size, args.working_pixel_size)
        data.append(
            prepare_training_micrograph(
                m.image,
                m.pixel_size,
                wpx,
                positives.by_stem.get(m.stem, np.zeros((0, 2))),
                None if false_pos is None else false_pos.by_stem.get(m.stem),
                mask_for(masks, m.stem, m.image.shape, m.path),
                complete=args.complete,
                expected_particles=args.expected_particles,
                invert=model.invert,
                name=m.stem,
            )
        )
    if not args.resume:  # an earlier run's checkpoint (allowed by --overwrite) must not be continued
        checkpoint.unlink(missing_ok=True)

    runs_before = len(model.history)
    gen = train(model, data, config, checkpoint, device)
    try:
        model = run_with_tqdm(gen, "training", print_events)
    except KeyboardInterrupt:
        gen.close()  # the model gets the best weights so far and a 'cancelled' history entry
        if len(model.history) == runs_before or not model.history[-1]["best_epoch"]:
            raise  # no epoch finished: nothing worth writing
        _write_model(model, out, plot, replace)
        print(f"napari-cryo pick: interrupted: wrote {out} with the best weights so far (epoch {model.history[-1]['best_epoch']}); "
              f"the checkpoint {checkpoint} is kept: continue with --resume", file=sys.stderr)
        return 130
    _write_model(model, out, plot, replace)
    checkpoint.unlink(missing_ok=True)
    print(f"wrote {out}" + (f" and {plot}" if plot.exists() else ""))
    return 0


def train_config(args: argparse.Namespace, lr: float):
    """The training settings of ``pick train``'s options.

    ``--epochs N`` asks for exactly N epochs (no patience, no budget, a cosine
    schedule); ``--patience``, ``--budget`` and ``--max-epochs`` given beside it
    still apply.  Zero patience or budget means none.
    """
    from .training import TrainConfig

    base = TrainConfig() if args.epochs is None else TrainConfig.fixed(args.epochs)
    changes: dict = {"lr": lr}
    if args.max_epochs is not None:
        changes["epochs"] = args.max_epochs
    if args.patience is not None:
        changes["patience"] = args.patience or None
    if args.budget is not None:
        if args.budget < 0:
            raise CryoInputError(None, f"--budget must be 0 (none) or more minutes, got {args.budget:g}")
        changes["budget_s"] = args.budget * 60.0 if args.budget else None
    if args.steps is not None:
        changes["steps_per_epoch"] = args.steps
    from dataclasses import replace

    return replace(base, **changes)


def _write_model(model, out: Path, plot: Path, replace: bool) -> None:
    """Save the trained model and its loss plot."""
    if model.history:
        from ..plots import loss_figure, save_figure

        save_figure(loss_figure(model.history[-1]["losses"], title="picker training"), plot, overwrite=replace)
    model.save(out, overwrite=replace)


def cmd_run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..device import resolve_device
    from .data import check_micrographs
    from .export import check_targets
    from .model import load_model

    out = Path(args.out)
    settings = PickRunSettings.from_args(args)
    if args.scheduler:
        from ..cluster import connect, print_report

        with connect(args.scheduler) as client:
            report = pick_batch(client, args.micrographs, out, settings, args.model, args.masks, args.overwrite)
        print(f"{sum(report.values())} picks in {len(report.finished)} new pick file(s) in {out}")
        return print_report(report, "pick", "micrograph")
    if out.exists() and not out.is_dir():
        raise CryoInputError(out, "exists and is not a directory")
    device = resolve_device(args.device)
    model = load_model(args.model)
    targets = check_run(out, model, settings, args.micrographs)
    masks = masks_by_stem(args.masks)
    check_targets(targets, args.overwrite)
    check_micrographs(args.micrographs, args.pixel_size)  # a bad file late in the list must not stop the run halfway
    out.mkdir(parents=True, exist_ok=True)
    total = 0
    for path, target in zip(tqdm(args.micrographs, desc="picking", unit="micrograph", disable=None), targets):
        total += pick_one(model, path, target, settings, device, masks)
    print(f"wrote {len(targets)} pick file(s) with {total} picks to {out}")
    return 0


def _read_pick_sets(spec: str, pixel_size: float | None) -> dict[str, tuple[np.ndarray, np.ndarray, float | None]]:
    from ..io.star import read_coordinates
    from .data import _pick_files, stem_of

    result: dict[str, tuple[np.ndarray, np.ndarray, float | None]] = {}
    for file in _pick_files(Path(spec)):
        for cs in read_coordinates(file):
            key = stem_of(cs.name) if cs.name else stem_of(file).removesuffix("_picks").removesuffix("_autopick")
            score = (
                cs.features["rlnAutopickFigureOfMerit"].to_numpy(dtype=float)
                if "rlnAutopickFigureOfMerit" in cs.features.columns
                else np.ones(len(cs.points))
            )
            prev = result.get(key)
            pts = cs.points if prev is None else np.concatenate([prev[0], cs.points])
            sc = score if prev is None else np.concatenate([prev[1], score])
            result[key] = (pts, sc, pixel_size or cs.pixel_size)
    return result


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluate import score_picks

    picks = _read_pick_sets(args.picks, args.pixel_size)
    truth = _read_pick_sets(args.truth, args.pixel_size)
    common = sorted(set(picks) & set(truth))
    if not common:
        raise CryoInputError(args.picks, f"no micrograph in common with {args.truth} (matched by micrograph name)")
    px = next((truth[k][2] for k in common if truth[k][2]), None) or next((picks[k][2] for k in common if picks[k][2]), None)
    if px is None:
        raise CryoInputError(args.truth, "gives no pixel size; pass --pixel-size")
    radius_px = args.diameter / 4.0 / px  # half the particle radius
    scores = score_picks([picks[k][0] for k in common], [picks[k][1] for k in common], [truth[k][0] for k in common], radius_px)
    summary = {"micrographs": len(common), "match_radius_A": args.diameter / 4.0, **scores.as_dict()}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        for key, value in summary.items():
            print(f"{key.replace('_', ' '):<26}{value:.4g}" if isinstance(value, float) else f"{key.replace('_', ' '):<26}{value}")
    return 0


def main(args: argparse.Namespace) -> int:
    return {"train": cmd_train, "run": cmd_run, "evaluate": cmd_evaluate}[args.pick_command](args)
