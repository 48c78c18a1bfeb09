"""Run every workflow end to end on the built-in samples, in napari, through the widgets a user clicks.

With ``--out DIR`` (headless): one fresh viewer per workflow, a screenshot of
the whole window (dock widget included) when it is done, a 3D view where the
result is 3D, the plots as PNG, and ``summary.md`` with each workflow's
figures against the samples' ground truth and its wall time.  Without
``--out``: one viewer with every sample, every widget docked and the results
filled in, to keep working from.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from ..errors import CryoInputError

HELP = "run every workflow on the built-in samples in napari (headless with --out: screenshots, plots and summary.md)"


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", metavar="DIR", help="write screenshots, plots and summary.md here and exit (no window)")
    parser.add_argument("--overwrite", action="store_true", help="replace files in DIR")
    parser.add_argument("--only", metavar="LIST", help="comma-separated workflows to run: squares,picking,segmentation,reconstruction (default: all)")
    parser.add_argument("--quick", action="store_true", help="shorter training and reconstruction (the whole demo in about 3 minutes on 2 cores)")
    parser.add_argument("--size", type=int, nargs=2, default=(1280, 860), metavar=("W", "H"), help="window size in pixels")


def _save_png(image, path: Path, overwrite: bool) -> Path:
    import numpy as np
    from skimage.io import imsave

    from ..io.atomic import atomic_path

    with atomic_path(path, overwrite=overwrite) as tmp:
        png = tmp.with_name(tmp.name + ".png")  # imsave picks the format from the suffix
        imsave(png, np.asarray(image), check_contrast=False)
        png.replace(tmp)
    return path


def _shoot(viewer, outcome, out: Path, overwrite: bool) -> list[dict]:
    """Screenshots of the whole window (and the canvas size, to tell the dock widget is in them)."""
    from .demo_workflows import grab, process_events

    taken = list(outcome.taken.items())
    for shot in outcome.shots:
        shot.pose(viewer)
        process_events(0.5)
        taken.append((shot.name, grab(viewer)))
    shots = []
    for name, (window, canvas) in taken:
        path = _save_png(window, out / f"{name}.png", overwrite)
        shots.append({"file": path.name, "window": list(window.shape[:2]), "canvas": list(canvas)})
    return shots


def _section(outcome, shots: list[dict], plots: list[Path]) -> list[str]:
    lines = [f"## {outcome.name}", "", f"wall time: {outcome.seconds:.1f} s", "", "| figure | value |", "|---|---|"]
    lines += [f"| {name} | {fmt.format(value)} |" for name, (value, fmt) in outcome.figures.items()]
    lines += [""] + outcome.notes + [""]
    lines += [f"![{s['file'][:-4]}]({s['file']})" for s in shots] + [f"![{p.stem}]({p.name})" for p in plots] + [""]
    return lines


def run_headless(out: Path, overwrite: bool, size: tuple[int, int], names: list[str], quick: bool) -> tuple[Path, list[str]]:
    """Run each workflow in a fresh viewer; save screenshots, plots, ``summary.md`` and ``demo.json``.

    Returns the summary and the workflows that failed.
    """
    import napari
    import torch

    from ..io.atomic import atomic_path
    from ..plots import save_figure
    from .demo_workflows import WORKFLOWS, DemoFailure, DemoSettings

    settings = DemoSettings.quick() if quick else DemoSettings()
    out.mkdir(parents=True, exist_ok=True)
    lines = [
        "# napari-cryo demo",
        "",
        f"`napari-cryo demo --out {out.name}{' --quick' if quick else ''}`: napari {napari.__version__}, torch {torch.__version__}, "
        f"{os.cpu_count()} CPUs. Every workflow runs through its dock widget on a built-in (seeded, synthetic) sample and is "
        "scored against the sample's ground truth.",
        "",
    ]
    record: dict = {"quick": quick, "workflows": {}}
    failed: list[str] = []
    total = time.perf_counter()
    for name in names:
        viewer = napari.Viewer(title=f"napari-cryo demo: {name}", show=True)
        try:
            viewer.window._qt_window.resize(*size)
            t0 = time.perf_counter()
            try:
                outcome = WORKFLOWS[name](viewer, settings)
            except DemoFailure as exc:  # the other workflows still run; the command fails at the end
                failed.append(name)
                lines += [f"## {name}", "", f"FAILED: {exc}", ""]
                print(f"napari-cryo demo: {name} failed: {exc}", flush=True)
                continue
            outcome.seconds = time.perf_counter() - t0
            shots = _shoot(viewer, outcome, out, overwrite)
            plots = [save_figure(fig, out / f"{key}.png", overwrite=overwrite) for key, fig in outcome.plots.items()]
        finally:
            viewer.close()
        lines += _section(outcome, shots, plots)
        record["workflows"][name] = {"seconds": outcome.seconds, "figures": {k: v for k, (v, _) in outcome.figures.items()},
                                     "screenshots": shots, "plots": [p.name for p in plots]}
        print(f"{name}: {outcome.seconds:.0f} s; " + ", ".join(f"{k} {fmt.format(v)}" for k, (v, fmt) in list(outcome.figures.items())[:4]), flush=True)
    record["seconds"] = time.perf_counter() - total
    record["failed"] = failed
    lines[2] += f" Total wall time {record['seconds']:.0f} s."
    with atomic_path(out / "demo.json", overwrite=True) as tmp:
        tmp.write_text(json.dumps(record, indent=1))
    summary = out / "summary.md"
    with atomic_path(summary, overwrite=True) as tmp:
        tmp.write_text("\n".join(lines))
    return summary, failed


def run_interactive(names: list[str], quick: bool) -> None:
    """Open napari with every sample and every widget docked, run the workflows in it, and leave it open."""
    import napari

    from .demo_workflows import WORKFLOWS, SAMPLE_OF, DemoFailure, DemoSettings, add_sample, dock

    settings = DemoSettings.quick() if quick else DemoSettings()
    viewer = napari.Viewer(title="napari-cryo demo")
    for name in WORKFLOWS:
        if name not in names:  # still there to work on, without a result
            add_sample(viewer, SAMPLE_OF[name])
            dock(viewer, name)
    for name in names:
        try:
            outcome = WORKFLOWS[name](viewer, settings)
            print(f"{name}: " + ", ".join(f"{k} {fmt.format(v)}" for k, (v, fmt) in outcome.figures.items()), flush=True)
        except DemoFailure as exc:
            print(f"napari-cryo demo: {name}: {exc}", flush=True)
    _tabify(viewer)
    viewer.dims.ndisplay = 2
    viewer.reset_view()
    napari.run()


def _tabify(viewer) -> None:
    """Stack the four docked widgets as tabs (side by side they would be too narrow to use)."""
    docks = [d for name, d in getattr(viewer.window, "_dock_widgets", {}).items() if "napari-cryo" in name]
    for dock in docks[1:]:
        viewer.window._qt_window.tabifyDockWidget(docks[0], dock)
    if docks:
        docks[0].raise_()


def main(args: argparse.Namespace) -> int:
    from .demo_workflows import parse_only

    names = parse_only(args.only)
    if args.out:
        out = Path(args.out)
        if out.exists() and not out.is_dir():
            raise CryoInputError(out, "exists and is not a directory")
        if out.exists() and any(out.iterdir()) and not args.overwrite:
            raise CryoInputError(out, "is not empty (use --overwrite to replace its files)")
        summary, failed = run_headless(out, args.overwrite, tuple(args.size), names, args.quick)
        print(f"wrote {summary}")
        if failed:
            print(f"napari-cryo demo: failed: {', '.join(failed)}")
            return 1
        return 0
    if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY") and os.name != "nt":
        raise CryoInputError(None, "no display: use --out DIR for headless screenshots, or run under xvfb-run")
    run_interactive(names, args.quick)
    return 0
