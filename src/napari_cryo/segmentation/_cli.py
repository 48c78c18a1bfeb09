"""Tomogram segmentation: ``napari-cryo segment train | group | apply | pick | mesh``.

Every step lists every file it will write and checks its inputs before it
writes any: a file that exists stops it (exit 2, one line naming the file)
unless ``--overwrite`` (or, for ``train``, ``--resume``) is given.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import CryoInputError
from ..io.names import safe_file_stem
from .batch import apply_batch, apply_outputs, load_group, pick_particles_batch, pick_segmentation, pick_targets, segment_one

HELP = "tomogram segmentation: train per-feature models, group them with interactions, apply, pick, mesh"


def add_args(parser: argparse.ArgumentParser) -> None:
    from ..cli import add_device_arg
    from ..cluster import add_scheduler_arg
    from . import architectures

    sub = parser.add_subparsers(dest="segment_command", metavar="STEP")
    sub.required = True

    t = sub.add_parser(
        "train",
        help="train one model per feature from painted slices",
        description="Train one model per feature from painted tomogram slices. With several --feature, writes one model per feature (OUT_<feature>.scnm) "
                    "unless --out is a directory. Beside each model: its loss plot (.loss.png) and, while training, its checkpoint (.ckpt).",
    )
    t.add_argument("tomograms", nargs="+", help="tomogram MRC files")
    t.add_argument("--labels", nargs="+", required=True, metavar="MRC", help="painted label volumes, one per tomogram, in the same order")
    t.add_argument("--feature", action="append", required=True, metavar="NAME=VALUE", help="a feature and its label value, e.g. membrane=1 (repeat for several)")
    t.add_argument("--architecture", default=architectures.DEFAULT, help=f"network architecture by name (default {architectures.DEFAULT}; see --list-architectures)")
    t.add_argument("--out", required=True, metavar="MODEL.scnm", help="model file (one feature) or directory / name prefix (several)")
    t.add_argument("--box", type=int, default=64, help="training box size in pixels (multiple of 16; default 64)")
    t.add_argument("--epochs", type=int, default=100, help="most epochs (default 100); training stops sooner when the validation loss stops improving or the budget is spent")
    t.add_argument("--budget", type=float, default=150.0, metavar="SECONDS", help="training time per feature (default 150; 0: no limit)")
    t.add_argument("--patience", type=int, default=6, help="stop after this many epochs without a better validation loss (default 6; 0: never)")
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--lr", type=float, default=2e-3)
    t.add_argument("--context", type=int, default=5, metavar="SLICES", help="slices the model sees around each one it segments (odd; default 5; 1: single slices)")
    t.add_argument("--no-augment", action="store_true", help="train on the boxes as painted (no random rotation, zoom, blur, noise or contrast)")
    t.add_argument("--copies", type=int, default=1, help="copies of each box per epoch (default 1; each is augmented afresh)")
    t.add_argument("--negative-ratio", type=float, default=1.3, help="negative boxes per positive box (default 1.3)")
    t.add_argument("--boxes-per-slice", type=int, default=24, help="positive boxes per annotated slice (default 24)")
    t.add_argument("--validation", type=float, default=0.2, metavar="FRACTION",
                   help="fraction of the painted slices held out to stop early and calibrate the output (default 0.2; 0: none)")
    t.add_argument("--model-pixel-size", type=float, metavar="A", help="pixel size the model works at (default: the first tomogram's)")
    t.add_argument("--pixel-size", type=float, metavar="A", help="pixel size of tomograms whose header has none")
    t.add_argument("--threshold", type=float, default=0.5, help="default threshold stored in the model")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--resume", action="store_true",
                   help="continue an interrupted training: a feature whose model was written is kept, the others resume from their .ckpt")
    t.add_argument("--overwrite", action="store_true", help="replace existing models, loss plots and checkpoints (training starts afresh)")
    add_device_arg(t)

    a = sub.add_parser("architectures", help="list the available architectures")
    a.set_defaults(segment_command="architectures")

    g = sub.add_parser("group", help="combine models into a group with interactions")
    g.add_argument("models", nargs="+", help=".scnm files (or .scnmgroup files, whose interactions are kept)")
    g.add_argument("--interaction", action="append", default=[], metavar="'CHILD avoids|colocalizes PARENT radius=NM [threshold=T|auto] [mode=robust|plain]'",
                   help="an interaction (repeat for several); threshold defaults to auto (the parent model's own), mode to robust "
                        "(the parent's mask without specks; the child's objects kept or removed whole; plain: voxel by voxel)")
    g.add_argument("--emit", action="append", default=[], metavar="MODEL", help="a model that competes by emitting (repeat)")
    g.add_argument("--absorb", action="append", default=[], metavar="MODEL", help="a model zeroed where any emitting model scores higher (repeat)")
    g.add_argument("--out", required=True, metavar="GROUP.scnmgroup")
    g.add_argument("--overwrite", action="store_true", help="replace an existing group file")

    p = sub.add_parser("apply", help="segment tomograms with a model or a group", description="Segment tomograms; writes DIR/<tomogram>__<feature>.mrc per tomogram and feature, after interactions.")
    p.add_argument("model", help=".scnm or .scnmgroup file")
    p.add_argument("tomograms", nargs="+", help="tomogram MRC files")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory (created if needed)")
    p.add_argument("--pixel-size", type=float, metavar="A", help="pixel size of tomograms whose header has none")
    p.add_argument("--overwrite", action="store_true", help="replace existing segmentations (all are checked before the first is written)")
    add_device_arg(p)
    add_scheduler_arg(p)

    k = sub.add_parser("pick", help="pick particles from a segmentation",
                       description="Pick particles from segmentations. One segmentation: --out is the coordinates file (or a directory); "
                                   "several: --out is a directory and each gets DIR/<segmentation>_particles.star.")
    k.add_argument("segmentation", nargs="+", help="segmentation MRC (probabilities); several with --out DIR")
    k.add_argument("--threshold", type=float, default=0.5)
    k.add_argument("--min-volume", type=float, default=0.0, metavar="A3", help="smallest particle volume in Å³")
    k.add_argument("--min-spacing", type=float, default=0.0, metavar="A", help="minimum distance between particles in Å (the heavier is kept)")
    k.add_argument("--no-separate", action="store_true", help="do not split touching particles (plain connected components)")
    k.add_argument("--out", required=True, metavar="COORDS.star|DIR",
                   help="STAR (.star, rlnCoordinateX/Y/Z in pixels) or tab-separated text (.tsv/.txt); a directory for several segmentations")
    k.add_argument("--pixel-size", type=float, metavar="A")
    k.add_argument("--overwrite", action="store_true", help="replace an existing coordinates file")
    add_scheduler_arg(k)

    m = sub.add_parser("mesh", help="surface mesh (.obj, in Å) of a segmentation")
    m.add_argument("segmentation", help="segmentation MRC (probabilities)")
    m.add_argument("--level", type=float, default=0.5, help="iso-surface level (default 0.5)")
    m.add_argument("--min-volume", type=float, default=0.0, metavar="A3", help="drop blobs smaller than this (Å³)")
    m.add_argument("--step", type=int, default=1, help="marching-cubes step (2+ gives coarser, smaller meshes)")
    m.add_argument("--out", required=True, metavar="MESH.obj")
    m.add_argument("--pixel-size", type=float, metavar="A")
    m.add_argument("--overwrite", action="store_true", help="replace an existing mesh file")


def _model_paths(out: str, features: list) -> list[Path]:
    """The model file of each feature: ``--out`` itself (one feature), ``DIR/<feature>.scnm`` or ``OUT_<feature>.scnm``."""
    target = Path(out)
    if len(features) == 1 and not target.is_dir():
        return [target if target.suffix == ".scnm" else target.with_suffix(".scnm")]
    if target.is_dir():
        return [target / f"{safe_file_stem(f.name)}.scnm" for f in features]
    stem = target.with_suffix("") if target.suffix == ".scnm" else target
    return [stem.parent / f"{stem.name}_{safe_file_stem(f.name)}.scnm" for f in features]


def _training_files(model: Path) -> tuple[Path, Path, Path]:
    """What training one feature writes: the model, its loss plot and (while it trains) its checkpoint."""
    return model, model.with_suffix(".loss.png"), model.with_suffix(".ckpt")


def _trained_before(model: Path, resume: bool) -> bool:
    """Whether ``--resume`` keeps this feature: its model was written and no checkpoint says training went on."""
    return resume and model.is_file() and not model.with_suffix(".ckpt").exists()


def cmd_train(args: argparse.Namespace) -> int:
    from ..device import describe_device, resolve_device
    from ..io.atomic import check_outputs
    from ..plots import loss_figure, save_figure
    from ..tasks import run_with_tqdm
    from ..training_loop import print_events
    from . import architectures
    from .augment import Augmentation
    from .dataset import AnnotatedTomogram, BoxSettings
    from .features import check_unique, parse_feature
    from .files import load_labels, load_volume
    from .training import TrainSettings, train_feature

    features = check_unique(parse_feature(f, i) for i, f in enumerate(args.feature))
    arch = architectures.get(args.architecture)
    if len(args.labels) != len(args.tomograms):
        raise CryoInputError(None, f"{len(args.tomograms)} tomograms but {len(args.labels)} label volumes; give one --labels file per tomogram")
    models = _model_paths(args.out, features)
    for model in models:
        if not model.parent.is_dir():
            raise CryoInputError(model, f"directory {model.parent} does not exist")
    check_outputs([f for m in models for f in _training_files(m)], overwrite=args.overwrite, resume=args.resume,
                  hint="use --overwrite to train again, or --resume to continue an interrupted training")
    device = resolve_device(args.device)
    tomograms = []
    for tomo_path, label_path in zip(args.tomograms, args.labels):
        vol = load_volume(tomo_path, args.pixel_size)
        labels = load_labels(label_path, vol.data.shape, tomo_path)
        tomograms.append(AnnotatedTomogram(vol.data, labels, vol.pixel_size, str(tomo_path)))
    if args.context < 1 or args.context % 2 == 0:
        raise CryoInputError(None, f"--context must be an odd number of slices, not {args.context}")
    if args.budget < 0 or args.patience < 0 or args.epochs < 1:
        raise CryoInputError(None, "--epochs must be at least 1, --budget and --patience not negative")
    settings = TrainSettings(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        val_fraction=args.validation,
        boxes=BoxSettings(box=args.box, positives_per_slice=args.boxes_per_slice, negative_ratio=args.negative_ratio, copies=args.copies,
                          seed=args.seed, context=args.context),
        seed=args.seed,
        patience=args.patience,
        budget_s=args.budget or None,
        augmentation=Augmentation.none() if args.no_augment else Augmentation(),
    )
    print(f"training {len(features)} model(s) ({arch.name}) on {describe_device(device)}", file=sys.stderr)
    for feature, out in zip(features, models):
        if _trained_before(out, args.resume):
            print(f"{out}: {feature.name}, trained before; kept (--overwrite trains it again)")
            continue
        _, loss_png, checkpoint = _training_files(out)
        if not args.resume:
            # --overwrite: an old checkpoint with the same settings would otherwise be resumed from.
            checkpoint.unlink(missing_ok=True)
        gen = train_feature(tomograms, feature, arch.name, settings, args.model_pixel_size, checkpoint, device)
        model = run_with_tqdm(gen, f"{feature.name}", print_events)
        model.threshold = args.threshold
        model.save(out, overwrite=True)  # the policy was applied above, for every file at once
        figure = loss_figure(model.history, title=f"{feature.name} ({arch.name})")
        save_figure(figure, loss_png, overwrite=True)
        checkpoint.unlink(missing_ok=True)
        print(f"{out}: {feature.name}, final loss {model.final_loss:.4f}, {model.n_parameters} parameters")
    return 0


def cmd_architectures(args: argparse.Namespace) -> int:
    from . import architectures

    for name, arch in architectures.available().items():
        flag = " (default)" if name == architectures.DEFAULT else ""
        print(f"{name}{flag}: {arch.title}. {arch.description}")
    return 0


def cmd_group(args: argparse.Namespace) -> int:
    from ..io.atomic import check_outputs, check_writable
    from .group import ModelGroup, load_models
    from .interactions import InteractionGraph, parse_interaction

    check_outputs([args.out], overwrite=args.overwrite)
    check_writable(args.out, overwrite=args.overwrite)
    group = load_models(args.models)
    graph = InteractionGraph(
        group.graph.interactions + [parse_interaction(text) for text in args.interaction],
        set(group.graph.emit) | set(args.emit),
        set(group.graph.absorb) | set(args.absorb),
    )
    group = ModelGroup(group.models, graph)
    group.save(args.out, overwrite=args.overwrite)
    print(f"{args.out}: {len(group.models)} models ({', '.join(group.titles)}), {len(graph.interactions)} interactions")
    return 0


def cmd_apply(args: argparse.Namespace) -> int:
    from ..device import resolve_device
    from ..io.atomic import check_outputs
    from ..tasks import run_with_tqdm
    from .files import load_volume

    if args.scheduler:
        from ..cluster import connect, print_report

        with connect(args.scheduler) as client:
            report = apply_batch(client, args.model, args.tomograms, args.out, args.pixel_size, args.device, args.overwrite)
        return print_report(report, "segment", "tomogram")
    group = load_group(args.model)
    out_dir = Path(args.out)
    if out_dir.exists() and not out_dir.is_dir():
        raise CryoInputError(out_dir, "is a file; --out must be a directory")
    # Every input and every output of every tomogram is checked before the long work, so a bad file or a clash
    # on the last tomogram fails at once and writes nothing.
    volumes = [load_volume(p, args.pixel_size) for p in args.tomograms]
    outputs = apply_outputs(out_dir, [vol.path for vol in volumes], group.titles)
    check_outputs([path for per_tomogram in outputs for path in per_tomogram.values()], overwrite=args.overwrite)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(args.device)
    for vol, paths in zip(volumes, outputs):
        for path in segment_one(group, vol, paths, device, run_with_tqdm, lambda line: print(line, file=sys.stderr)):
            print(path)
    return 0


def cmd_pick(args: argparse.Namespace) -> int:
    from ..io.atomic import check_outputs, check_writable
    from .files import load_volume
    from .particles import PickSettings

    if args.scheduler:
        from ..cluster import connect, print_report

        settings = PickSettings(threshold=args.threshold, min_volume=args.min_volume, min_spacing=args.min_spacing, separate=not args.no_separate)
        with connect(args.scheduler) as client:
            report = pick_particles_batch(client, args.segmentation, args.out, settings, args.pixel_size, args.overwrite)
        return print_report(report, "segment", "segmentation")
    targets, directory = pick_targets(args.segmentation, args.out)
    check_outputs(targets, overwrite=args.overwrite)
    if directory:
        Path(args.out).mkdir(parents=True, exist_ok=True)
    for target in targets:
        check_writable(target, overwrite=args.overwrite)
    # Every segmentation is opened (its header read) before the first is picked: a bad file late in the list writes nothing.
    volumes = [load_volume(p, args.pixel_size, what="segmentation") for p in args.segmentation]
    settings = PickSettings(threshold=args.threshold, min_volume=args.min_volume, min_spacing=args.min_spacing, separate=not args.no_separate)
    for vol, target in zip(volumes, targets):
        count = pick_segmentation(vol, target, settings, args.overwrite)
        print(f"{target}: {count} particles")
    return 0


def cmd_mesh(args: argparse.Namespace) -> int:
    from ..io.atomic import check_outputs, check_writable
    from .files import load_volume
    from .meshes import mesh_from_volume, write_obj

    check_outputs([args.out], overwrite=args.overwrite)
    check_writable(args.out, overwrite=args.overwrite)
    vol = load_volume(args.segmentation, args.pixel_size, what="segmentation")
    mesh = mesh_from_volume(vol.data, args.level, vol.pixel_size, min_volume=args.min_volume, step=args.step, origin=vol.origin)
    if len(mesh.faces) == 0:
        raise CryoInputError(args.segmentation, f"nothing is above level {args.level} (after dropping blobs under {args.min_volume} Å³); no mesh written")
    write_obj(args.out, mesh, overwrite=args.overwrite)
    print(f"{args.out}: {len(mesh.vertices)} vertices, {len(mesh.faces)} faces")
    return 0


COMMANDS = {"train": cmd_train, "architectures": cmd_architectures, "group": cmd_group, "apply": cmd_apply, "pick": cmd_pick, "mesh": cmd_mesh}


def main(args: argparse.Namespace) -> int:
    """Run one ``segment`` step."""
    return COMMANDS[args.segment_command](args)
