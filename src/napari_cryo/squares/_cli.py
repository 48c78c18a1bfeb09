"""Grid-square scoring: ``napari-cryo squares extract | train | score``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import CryoInputError
from .batch import (
    EXTRACT_SUFFIX,
    AtlasOptions,
    analyse_atlas_file,
    extract_batch,
    extract_one,
    extract_targets,
    load_atlas_file,
    score_batch,
    score_one,
    score_outputs,
)

HELP = "grid atlases: extract squares, train the square scorer, score and rank squares"


def _atlas_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--montage", nargs=2, type=int, metavar=("ROWS", "COLS"), help="the atlas is an MRC stack of tiles in this layout (row-major)")
    p.add_argument("--overlap", type=float, default=0.1, help="montage tile overlap as a fraction (default 0.1)")


def add_args(parser: argparse.ArgumentParser) -> None:
    from ..cli import add_device_arg
    from ..cluster import add_scheduler_arg

    sub = parser.add_subparsers(dest="squares_command", metavar="STEP")
    sub.required = True
    e = sub.add_parser(
        "extract", help="find the squares of an atlas and measure brightness and squareness",
        description="Find the squares of atlases. One atlas: --out is the CSV (or a directory); several: --out is a directory "
                    f"and each atlas gets DIR/<atlas>{EXTRACT_SUFFIX}.",
    )
    e.add_argument("atlas", nargs="+", help="atlas: MRC or TIFF (or an MRC stack of tiles with --montage); several with --out DIR")
    e.add_argument("--out", required=True, metavar="CSV|DIR")
    e.add_argument("--overwrite", action="store_true", help="replace CSV if it exists")
    _atlas_args(e)
    add_scheduler_arg(e)
    t = sub.add_parser("train", help="train the square scorer (XCryoNet) from labelled squares")
    t.add_argument("atlases", nargs="+")
    t.add_argument("--labels", nargs="+", required=True, metavar="CSV", help="one labels CSV per atlas, in the same order")
    t.add_argument("--unlabeled", nargs="*", default=[], metavar="ATLAS", help="more atlases whose squares train without labels")
    t.add_argument("--out", required=True, metavar="MODEL")
    t.add_argument("--variant", choices=("xcryonet", "primary"), default="xcryonet")
    t.add_argument("--fully-supervised", action="store_true", help="ignore unlabelled squares (ablation)")
    t.add_argument("--epochs", type=int, default=40)
    t.add_argument("--overwrite", action="store_true", help="replace MODEL, its loss plot and an earlier run's checkpoint (training starts again)")
    t.add_argument("--resume", action="store_true", help="continue an interrupted run from MODEL.ckpt")
    _atlas_args(t)
    add_device_arg(t)
    s = sub.add_parser("score", help="score and rank the squares of atlases; writes CSV, STAR and attention maps")
    s.add_argument(
        "atlases", nargs="+", metavar="[MODEL.pt] ATLAS",
        help="a square model file (.pt) first, then atlases; without a model, the shipped default (trained on synthetic atlases) scores",
    )
    s.add_argument("--out", required=True, metavar="DIR")
    s.add_argument("--overwrite", action="store_true", help="replace files in DIR that exist")
    _atlas_args(s)
    add_device_arg(s)
    add_scheduler_arg(s)


def cmd_extract(args: argparse.Namespace) -> int:
    from ..cluster import make_out_folder
    from ..io.atomic import check_outputs

    if args.scheduler:
        from ..cluster import connect, print_report

        with connect(args.scheduler) as client:
            report = extract_batch(client, args.atlas, args.out, AtlasOptions.from_args(args), args.overwrite)
        return print_report(report, "squares", "atlas")
    targets, directory = extract_targets(args.atlas, args.out)
    check_outputs(targets, overwrite=args.overwrite)
    make_out_folder(args.out, targets, directory)
    if len(args.atlas) > 1:  # every atlas is read once first: a bad file late in the list must not stop the run halfway
        for path in args.atlas:
            load_atlas_file(path, AtlasOptions.from_args(args))
    for path, out in zip(args.atlas, targets):
        print(extract_one(path, out, AtlasOptions.from_args(args), args.overwrite))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from ..checkpoints import training_outputs
    from ..device import resolve_device
    from ..plots import loss_figure, save_figure
    from ..tasks import run_with_tqdm
    from ..training_loop import print_events
    from .labels import match_labels, read_labels
    from .model import SquareModel, XCryoNet
    from .pipeline import training_set
    from .training import SquareTrainConfig, train_squares

    if len(args.labels) != len(args.atlases):
        raise CryoInputError(None, f"{len(args.atlases)} atlases but {len(args.labels)} label files; give one labels CSV per atlas")
    out, checkpoint, plot = training_outputs(args.out, args.overwrite, args.resume)
    # A resume replaces the interrupted run's own model and plot, if it wrote them before it stopped.
    replace = args.overwrite or (args.resume and checkpoint.exists())
    device = resolve_device(args.device)
    atlases = []
    for atlas_path, label_path in zip(args.atlases, args.labels):
        atlas = analyse_atlas_file(atlas_path, AtlasOptions.from_args(args))
        matched, warnings = match_labels(read_labels(label_path), atlas.squares, atlas.lattice.pitch / 2, name=label_path)
        for w in warnings:
            print(f"napari-cryo squares: warning: {w}", file=sys.stderr)
        atlases.append((atlas, matched))
    if not args.fully_supervised:
        atlases += [(analyse_atlas_file(path, AtlasOptions.from_args(args)), None) for path in args.unlabeled]
    crops, labels = training_set(atlases)
    model = SquareModel(XCryoNet(variant=args.variant), name=out.stem)
    config = SquareTrainConfig(epochs=args.epochs, semi_supervised=not args.fully_supervised)
    if not args.resume:  # an earlier run's checkpoint (allowed by --overwrite) must not be continued
        checkpoint.unlink(missing_ok=True)

    model = run_with_tqdm(train_squares(model, crops, labels, config, checkpoint, device), "training", print_events)
    save_figure(loss_figure(model.history[-1]["losses"], title="square scorer training"), plot, overwrite=replace)
    model.save(out, overwrite=replace)
    checkpoint.unlink(missing_ok=True)
    print(f"wrote {out} and {plot}")
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from ..device import resolve_device
    from ..io.atomic import check_outputs
    from .model import SquareModel

    from .default_model import DEFAULT_NAME, load_default_model

    # A first path ending in .pt is the model (atlases are MRC or TIFF); without one the shipped default scores.
    paths = list(args.atlases)
    model_path = paths.pop(0) if paths[0].lower().endswith(".pt") else None
    if not paths:
        raise CryoInputError(None, "give at least one atlas to score")
    args.atlases = paths
    model = SquareModel.load(model_path) if model_path else load_default_model()
    if model_path is None:
        print(f"scoring with the {DEFAULT_NAME} model")
    if args.scheduler:
        from ..cluster import connect, print_report

        with connect(args.scheduler) as client:
            report = score_batch(client, args.atlases, args.out, model_path or "", AtlasOptions.from_args(args), args.device, args.overwrite)
        return print_report(report, "squares", "atlas")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CryoInputError(out, "exists and is not a directory")
    # Every atlas's files are checked before the first is scored: a clash never leaves some atlases written.
    check_outputs(score_outputs(out, args.atlases, model.variant), overwrite=args.overwrite)
    for path in args.atlases:  # every atlas is read once first: a bad file late in the list must not stop the run halfway
        load_atlas_file(path, AtlasOptions.from_args(args))
    device = resolve_device(args.device)
    out.mkdir(parents=True, exist_ok=True)
    for path in args.atlases:
        print(score_one(model, path, out, AtlasOptions.from_args(args), device, args.overwrite))
    return 0


def main(args: argparse.Namespace) -> int:
    return {"extract": cmd_extract, "train": cmd_train, "score": cmd_score}[args.squares_command](args)
