"""`napari-cryo demo --out DIR --quick`: every workflow runs, its screenshots show the window with the widget, its figures pass floors.

The floors sit well below what the quick demo gives and well above what a broken workflow gives
(an untrained or random model: Spearman about 0, Dice about 0, F1 about 0; a map that is noise:
no FSC 0.5 crossing inside 40 Å). Measured quick figures: Spearman 0.89, picking F1 0.95, see FLOORS for the rest.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from napari_cryo.cli.demo_workflows import WORKFLOWS, parse_only
from napari_cryo.errors import CryoInputError

#: Figure -> (lowest, highest) acceptable value.
FLOORS = {
    "squares": {"Spearman rho, overall score vs truth": (0.4, 1.0), "squares ranked": (20, 1000)},
    "picking": {"picking F1": (0.8, 1.0), "picking precision": (0.7, 1.0), "picking recall": (0.7, 1.0)},
    # --quick trains each feature for 5 epochs: measured Dice 0.83 (membrane), 0.72 (particle), pick F1 0.86;
    # untrained models give about 0 (a membrane is about 2 % of the volume).
    "segmentation": {"Dice membrane": (0.4, 1.0), "Dice particle": (0.3, 1.0), "pick F1 (membrane-bound particles)": (0.4, 1.0),
                     "membrane mesh faces": (100, 1e9)},
    # Measured 22.2 Å (box 32, 6 Å pixels); a map of noise has no crossing (inf) and a mean near 0.
    "reconstruction": {"FSC 0.5 resolution against the true map (Å)": (0.0, 40.0), "FSC against the true map, mean to Nyquist/2": (0.4, 1.0)},
}
#: The screenshots every run must write (also the user guide's images, docs/images/).
SCREENSHOTS = {
    "squares": ["squares_scored"],
    "picking": ["picking_picks", "picking_probability", "picking_mask"],
    "segmentation": ["segmentation_painting", "segmentation_interactions", "segmentation_picks_3d", "segmentation_mesh"],
    "reconstruction": ["reconstruction_final"],
}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    if not os.environ.get("DISPLAY") and sys.platform.startswith("linux"):
        pytest.skip("needs a display (run under xvfb-run)")
    out = tmp_path_factory.mktemp("demo") / "out"
    exe = shutil.which("napari-cryo")
    cmd = [exe] if exe else [sys.executable, "-m", "napari_cryo.cli"]
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    result = subprocess.run([*cmd, "demo", "--out", str(out), "--quick"], capture_output=True, text=True, timeout=900, env=env)
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-3000:])
    return out


def _figures(summary: str) -> dict[str, dict[str, float]]:
    """Workflow -> figure -> value, read back from summary.md's tables."""
    figures: dict[str, dict[str, float]] = {}
    section = None
    for line in summary.splitlines():
        if line.startswith("## "):
            section = line[3:].strip()
            figures[section] = {}
        elif section and (m := re.match(r"^\| (.+?) \| ([-+0-9.eEinf]+) \|$", line)):
            figures[section][m.group(1)] = float(m.group(2))
    return figures


def test_summary_holds_each_workflows_figures_above_their_floors(demo):
    summary = (demo / "summary.md").read_text()
    figures = _figures(summary)
    for workflow, floors in FLOORS.items():
        assert workflow in figures, f"no section for {workflow}:\n{summary[:2000]}"
        for name, (low, high) in floors.items():
            assert name in figures[workflow], (workflow, name, figures[workflow])
            assert low <= figures[workflow][name] <= high, (workflow, name, figures[workflow][name])
    assert summary.count("wall time:") == len(WORKFLOWS)


def test_screenshots_show_the_whole_window_with_the_dock_widget(demo):
    from skimage.io import imread

    record = json.loads((demo / "demo.json").read_text())
    for workflow, names in SCREENSHOTS.items():
        shots = {s["file"]: s for s in record["workflows"][workflow]["screenshots"]}
        for name in names:
            image = imread(demo / f"{name}.png")[..., :3].astype(float)
            assert image.std() > 5, f"{name}.png looks blank"
            shot = shots[f"{name}.png"]
            assert image.shape[:2] == tuple(shot["window"])
            # The window is the canvas plus the layer list and the dock widget: much wider than the canvas alone.
            assert image.shape[1] > shot["canvas"][1] + 300, (name, image.shape, shot)
            # The dock widget (right of the canvas) holds controls, not a flat background.
            right = image[:, -250:]
            assert right.std() > 10, f"{name}.png: nothing on the right, where the dock widget sits"
        for plot in record["workflows"][workflow]["plots"]:
            assert (demo / plot).stat().st_size > 5000


def test_demo_refuses_unknown_workflows():
    assert parse_only("picking, squares") == ["squares", "picking"]
    assert parse_only(None) == list(WORKFLOWS)
    with pytest.raises(CryoInputError, match="unknown workflow 'bogus'"):
        parse_only("picking,bogus")


def test_paint_slices_paints_whole_slices_of_the_features_only():
    from napari_cryo.cli.demo_workflows import paint_slices

    labels = np.zeros((20, 8, 8), np.uint8)
    labels[5:15, 2:4] = 1
    labels[5:15, 5] = 4  # a feature not trained: background
    painted = paint_slices(labels, 3, {"membrane": 1})
    zs = np.flatnonzero(painted.reshape(20, -1).any(axis=1))
    assert len(zs) == 3 and zs.min() >= 7 and zs.max() <= 12
    assert set(np.unique(painted)) == {0, 1}
    assert (painted[zs] == (labels[zs] == 1)).all()


def test_interactive_demo_leaves_every_sample_and_widget_with_the_results(monkeypatch):
    """With a display: one viewer holds every sample and every widget, the chosen workflow's result filled in,
    and is handed to napari's event loop (replaced here so the test returns)."""
    if not os.environ.get("DISPLAY") and sys.platform.startswith("linux"):
        pytest.skip("needs a display (run under xvfb-run)")
    import napari

    from napari_cryo.cli.demo import run_interactive

    handed = []
    monkeypatch.setattr(napari, "run", lambda *a, **k: handed.append(napari.current_viewer()))
    run_interactive(["picking"], quick=True)
    viewer = handed[0]
    try:
        names = [layer.name for layer in viewer.layers]
        assert any("picks" in n for n in names), names  # the picking workflow's result
        for sample in ("atlas", "tomogram"):  # the other samples, ready to work on
            assert any(n.startswith(sample) for n in names), names
        docks = [n for n in viewer.window._dock_widgets if "napari-cryo" in n]
        assert len(docks) == len(WORKFLOWS), docks
    finally:
        viewer.close()
