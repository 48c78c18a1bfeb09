"""Grid-square scoring: ``napari-cryo squares extract | train | score``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import CryoInputError

HELP = "grid atlases: extract squares, train the square scorer, score and rank squares"


def _atlas_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--montage", nargs=2, type=int, metavar=("ROWS", "COLS"), help="the atlas is an MRC stack of tiles in this layout (row-major)")
    p.add_argument("--overlap", type=float, default=0.1, help="montage tile overlap as a fraction (default 0.1)")


def add_args(parser: argparse.ArgumentParser) -> None:
    from ..cli import add_device_arg

    sub = parser.add_subparsers(dest="squares_command", metavar="STEP")
    sub.required = True
    e = sub.add_parser("extract", help="find the squares of an atlas and measure brightness and squareness")
    e.add_argument("atlas", help="atlas: MRC or TIFF (or an MRC stack of tiles with --montage)")
    e.add_argument("--out", required=True, metavar="CSV")
    e.add_argument("--overwrite", action="store_true", help="replace CSV if it exists")
    _atlas_args(e)
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
    s.add_argument("model")
    s.add_argument("atlases", nargs="+")
    s.add_argument("--out", required=True, metavar="DIR")
    s.add_argument("--overwrite", action="store_true", help="replace files in DIR that exist")
    _atlas_args(s)
    add_device_arg(s)


def _load(path: str, args: argparse.Namespace):
    from .atlas import load_atlas, load_montage
    from ..io.names import file_stem as stem

    if args.montage:
        image, px = load_montage(path, args.montage[0], args.montage[1], args.overlap)
    else:
        image, px = load_atlas(path)
    return stem(path), image, px


def _analyse(path: str, args: argparse.Namespace):
    from .pipeline import analyse_atlas

    name, image, px = _load(path, args)
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


def cmd_extract(args: argparse.Namespace) -> int:
    from ..io.atomic import atomic_path, check_outputs

    (out,) = check_outputs([args.out], overwrite=args.overwrite)
    if not out.parent.is_dir():
        raise CryoInputError(out, f"directory {out.parent} does not exist")
    atlas = _analyse(args.atlas, args)
    table = atlas.squares.rename(columns={})[["center_x", "center_y", "side", "angle", "complete", "ncc", "brightness", "squareness"]]
    with atomic_path(out, overwrite=args.overwrite) as tmp:
        table.to_csv(tmp, index=False, float_format="%.3f")
    print(f"wrote {out}: {len(table)} squares ({int(table['complete'].sum())} complete), pitch {atlas.lattice.pitch:.1f} px, angle {atlas.lattice.angle:.1f}°")
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
        atlas = _analyse(atlas_path, args)
        matched, warnings = match_labels(read_labels(label_path), atlas.squares, atlas.lattice.pitch / 2, name=label_path)
        for w in warnings:
            print(f"napari-cryo squares: warning: {w}", file=sys.stderr)
        atlases.append((atlas, matched))
    if not args.fully_supervised:
        atlases += [(_analyse(path, args), None) for path in args.unlabeled]
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
    from ..io.mrc import write_mrc
    from .model import SquareModel
    from .pipeline import attention_path, score_atlas
    from .ranked import write_ranked

    model = SquareModel.load(args.model)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CryoInputError(out, "exists and is not a directory")
    # Every atlas's files are checked before the first is scored: a clash never leaves some atlases written.
    check_outputs(score_outputs(out, args.atlases, model.variant), overwrite=args.overwrite)
    for path in args.atlases:  # every atlas is read once first: a bad file late in the list must not stop the run halfway
        _load(path, args)
    device = resolve_device(args.device)
    out.mkdir(parents=True, exist_ok=True)
    for path in args.atlases:
        atlas = _analyse(path, args)
        table, maps = score_atlas(model, atlas, str(device))
        csv, star = write_ranked(out, table, atlas.name, atlas.pixel_size, overwrite=args.overwrite)
        for key, m in maps.items():
            write_mrc(attention_path(out, atlas.name, key), m, atlas.pixel_size or 1.0, overwrite=args.overwrite)
        print(f"wrote {csv}, {star.name} ({int(table['complete'].sum())} squares ranked)" + (f" and {len(maps)} attention maps" if maps else ""))
    return 0


def main(args: argparse.Namespace) -> int:
    return {"extract": cmd_extract, "train": cmd_train, "score": cmd_score}[args.squares_command](args)
