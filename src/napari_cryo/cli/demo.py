"""Open every sample data set in napari: headless screenshots and a summary with --out, else an interactive viewer."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from ..errors import CryoInputError
from ..layer_meta import layer_kind

HELP = "open the sample data in napari (headless with --out: screenshots and a summary)"

#: Sample name -> (npe2 command suffix, whether to show it in 3D too).
SAMPLES = {
    "atlas": "atlas_sample",
    "micrograph": "micrograph_sample",
    "tomogram": "tomogram_sample",
    "particles": "particles_sample",
}


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", metavar="DIR", help="write screenshots and summary.md here and exit (no window)")
    parser.add_argument("--overwrite", action="store_true", help="replace files in DIR")
    parser.add_argument("--size", type=int, nargs=2, default=(900, 700), metavar=("W", "H"), help="canvas size in pixels")


def _samples():
    from ..synthetic import _samples as s

    return {name: getattr(s, fn) for name, fn in SAMPLES.items()}


def _show_truth(viewer, name: str) -> None:
    """Make the ground-truth overlays visible where they help the screenshot."""
    for layer in viewer.layers:
        if name in ("micrograph", "tomogram") and layer_kind(layer) == "points":
            layer.visible = True


def _screenshots(viewer, name: str, out: Path, overwrite: bool) -> list[Path]:
    import numpy as np
    from skimage.io import imsave

    from ..io.atomic import atomic_path

    shots: list[tuple[str, object]] = []
    viewer.reset_view()
    shots.append((f"{name}.png", viewer.screenshot(canvas_only=True, flash=False)))
    if name == "tomogram":
        # Dense material is dark: a minimum-intensity projection shows it in 3D.
        image = viewer.layers["tomogram"]
        image.rendering = "minip"
        viewer.dims.ndisplay = 3
        viewer.camera.angles = (0.0, 30.0, 60.0)
        viewer.reset_view()
        shots.append((f"{name}_3d.png", viewer.screenshot(canvas_only=True, flash=False)))
        viewer.dims.ndisplay = 2
    written = []
    for filename, img in shots:
        with atomic_path(out / filename, overwrite=overwrite) as tmp:
            imsave(tmp.with_suffix(".png"), np.asarray(img), check_contrast=False)
            tmp.with_suffix(".png").rename(tmp) if tmp.suffix != ".png" else None
        written.append(out / filename)
    return written


def _layer_line(layer) -> str:
    shape = getattr(layer.data, "shape", None)
    if layer_kind(layer) == "points":
        shape = (len(layer.data),)
    scale = ", ".join(f"{s:g}" for s in layer.scale)
    return f"| {layer.name} | {layer_kind(layer)} | {tuple(shape) if shape is not None else '-'} | {scale} |"


def run_headless(out: Path, overwrite: bool, size: tuple[int, int]) -> Path:
    """Open each sample in a fresh viewer, save screenshots, write summary.md."""
    import napari

    from ..io.atomic import atomic_path

    out.mkdir(parents=True, exist_ok=True)
    lines = [
        "# napari-cryo demo",
        "",
        f"napari {napari.__version__}; each sample generated in-process (seeded) and opened in a napari viewer.",
        "",
    ]
    for name, make in _samples().items():
        t0 = time.perf_counter()
        layer_data = make()
        t_make = time.perf_counter() - t0
        viewer = napari.Viewer(show=True)
        try:
            viewer.window._qt_window.resize(*size)
            for data, kwargs, kind in layer_data:
                getattr(viewer, f"add_{kind}")(data, **kwargs)
            _show_truth(viewer, name)
            shots = _screenshots(viewer, name, out, overwrite)
            lines += [f"## {name}", "", f"generated in {t_make:.2f} s", "", "| layer | type | shape | scale (Å) |", "|---|---|---|---|"]
            lines += [_layer_line(layer) for layer in viewer.layers]
            lines += [""] + [f"![{p.stem}]({p.name})" for p in shots] + [""]
            print(f"{name}: {len(viewer.layers)} layers, screenshots {', '.join(p.name for p in shots)}")
        finally:
            viewer.close()
    summary = out / "summary.md"
    with atomic_path(summary, overwrite=True) as tmp:
        tmp.write_text("\n".join(lines))
    return summary


def run_interactive() -> None:
    """Open napari with every sample and every napari-cryo widget docked."""
    import napari
    from npe2 import PluginManager

    viewer = napari.Viewer(title="napari-cryo demo")
    for name, make in _samples().items():
        for data, kwargs, kind in make():
            getattr(viewer, f"add_{kind}")(data, **kwargs)
    manifest = PluginManager.instance().get_manifest("napari-cryo")
    for widget in manifest.contributions.widgets or []:
        viewer.window.add_plugin_dock_widget("napari-cryo", widget.display_name)
    napari.run()


def main(args: argparse.Namespace) -> int:
    if args.out:
        out = Path(args.out)
        if out.exists() and not out.is_dir():
            raise CryoInputError(out, "exists and is not a directory")
        if out.exists() and any(out.iterdir()) and not args.overwrite:
            raise CryoInputError(out, "is not empty (use --overwrite to replace its files)")
        summary = run_headless(out, args.overwrite, tuple(args.size))
        print(f"wrote {summary}")
        return 0
    if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY") and os.name != "nt":
        raise CryoInputError(None, "no display: use --out DIR for headless screenshots, or run under xvfb-run")
    run_interactive()
    return 0
