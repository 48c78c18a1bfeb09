"""The four demo workflows, each run through its own dock widget on a built-in sample, scored against the truth.

Each workflow adds its sample to a viewer, docks the capability's widget,
sets the widget's controls and presses its buttons (the same methods a
click calls), waits for each task, then measures the result against the
sample's ground truth.  It returns an :class:`Outcome`: the figures for the
summary, matplotlib figures to save as PNG, and how to pose the viewer for
its screenshots.  Nothing here writes files; :mod:`.demo` does.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import CryoInputError
from ..layer_meta import OUTPUT

PLUGIN = "napari-cryo"
WIDGETS = {
    "squares": "Grid square scoring",
    "picking": "Particle picking",
    "segmentation": "Tomogram segmentation",
    "reconstruction": "Ab initio reconstruction",
}
SAMPLE_OF = {"squares": "atlas", "picking": "micrograph", "segmentation": "tomogram", "reconstruction": "particles"}
#: The interactions of the tomogram sample's graph: membranes are not carbon, particles sit on membranes.
INTERACTIONS = ("membrane avoids carbon radius=10", "particle avoids membrane radius=10", "particle colocalizes membrane radius=30")


def _training_length(settings: "DemoSettings") -> str:
    """How long each feature's model trains, in words."""
    if settings.segmentation_budget_s > 0:
        return f"{settings.segmentation_budget_s:g} s training budget"
    return f"{settings.segmentation_epochs} training epochs"


@dataclass(frozen=True)
class DemoSettings:
    """How long the slow steps may take (``quick``: the whole demo in about 3 minutes on 2 cores)."""

    painted_slices: int = 12
    segmentation_budget_s: float = 60.0
    segmentation_epochs: int = 60
    reconstruction_box: int = 40
    reconstruction_minutes: float = 3.0
    #: Interactions of the sample's graph that are applied: the quick models' carbon is too rough to let it cut membranes.
    interactions: tuple[str, ...] = INTERACTIONS
    #: Smallest particle kept by picking, as a fraction of a true particle's volume.
    min_particle_fraction: float = 1 / 6

    @classmethod
    def quick(cls) -> "DemoSettings":
        # Five epochs per feature (no time budget: with 20 s, a slow first epoch on a busy machine left a single
        # epoch and membrane Dice 0.16), half a minute of reconstruction.
        return cls(painted_slices=8, segmentation_budget_s=0.0, segmentation_epochs=5, reconstruction_box=32, reconstruction_minutes=0.5,
                   interactions=INTERACTIONS[1:], min_particle_fraction=1 / 20)


@dataclass
class Shot:
    """One screenshot: a file name and how to pose the viewer for it."""

    name: str
    pose: Callable[[Any], None]


@dataclass
class Outcome:
    """What a workflow did: figures (name -> (value, format)), notes, PNG plots and screenshots."""

    name: str
    figures: dict[str, tuple[float, str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    plots: dict[str, Any] = field(default_factory=dict)
    shots: list[Shot] = field(default_factory=list)
    taken: dict[str, tuple[Any, Any]] = field(default_factory=dict)  # screenshots taken mid-run: name -> (window, canvas)
    widget: Any = None
    seconds: float = 0.0


class DemoFailure(RuntimeError):
    """A workflow step did not give its result (the widget's status line says why)."""


def process_events(seconds: float = 0.0) -> None:
    """Let Qt run for about ``seconds`` (worker results reach the widgets through the event loop)."""
    from qtpy.QtWidgets import QApplication

    app = QApplication.instance()
    end = time.monotonic() + seconds
    while True:
        app.processEvents()
        if time.monotonic() >= end:
            return
        time.sleep(0.01)


def wait(view: Any, what: str, timeout_s: float = 1800.0, during: Callable[[], None] | None = None) -> None:
    """Run the event loop until the widget's latest task has ended, then let its callbacks finish.

    ``during`` is called between turns of the loop (to take a screenshot mid-run).
    """
    start = time.monotonic()
    while view.tasks.busy:
        process_events(0.05)
        if during is not None:
            during()
        if time.monotonic() - start > timeout_s:
            view.cancel()
            raise DemoFailure(f"{what} took longer than {timeout_s:.0f} s")
    process_events(0.3)


def _check(ok: bool, view: Any, what: str) -> None:
    if not ok:
        raise DemoFailure(f"{what} gave no result: {view._status.value or 'see the notifications'}")


def add_sample(viewer: Any, sample: str) -> list[Any]:
    """Add a built-in sample's layers (as File > Open Sample does) and return them."""
    from ..synthetic import _samples

    return [getattr(viewer, f"add_{kind}")(data, **kwargs) for data, kwargs, kind in getattr(_samples, f"{sample}_sample")()]


def dock(viewer: Any, workflow: str) -> Any:
    """Dock a napari-cryo widget (as the Plugins menu does) and return it."""
    dock_widget, widget = viewer.window.add_plugin_dock_widget(PLUGIN, WIDGETS[workflow])
    _scrollable(dock_widget, widget)
    process_events(0.1)
    if hasattr(widget, "reset_choices"):
        widget.reset_choices()
    return widget


def grab(viewer: Any) -> tuple[Any, tuple[int, int]]:
    """A screenshot of the whole window, and the canvas's size (0, 0 when the canvas has no room to draw)."""
    window = viewer.screenshot(canvas_only=False, flash=False)
    try:
        canvas = viewer.screenshot(canvas_only=True, flash=False).shape[:2]
    except (AttributeError, RuntimeError):  # a canvas squeezed to nothing grabs a null image
        canvas = (0, 0)
    return window, tuple(canvas)


def _scrollable(dock_widget: Any, widget: Any, width: int = 470) -> None:
    """Put a tall widget in a scroll area of a fixed width, so the window keeps its size and the canvas its room."""
    from qtpy.QtWidgets import QScrollArea

    scroll = QScrollArea()
    scroll.setWidgetResizable(True)
    scroll.setWidget(widget.native)
    dock_widget.setWidget(scroll)
    dock_widget.setMinimumWidth(width)
    dock_widget.setMaximumWidth(width + 40)
    widget._demo_scroll = scroll


def show_in_dock(widget: Any, part: Any) -> None:
    """Scroll the dock so that a part of the widget (a magicgui widget or a Qt widget) is in view."""
    scroll = getattr(widget, "_demo_scroll", None)
    if scroll is not None:
        scroll.ensureWidgetVisible(getattr(part, "native", part), 0, 0)


def _pose_2d(layers_on: list[Any], zoom_to: Any = None) -> Callable[[Any], None]:
    def pose(viewer: Any) -> None:
        viewer.dims.ndisplay = 2
        for layer in layers_on:
            layer.visible = True
        viewer.reset_view()

    return pose


# ------------------------------------------------------------------- squares
def squares(viewer: Any, settings: DemoSettings) -> Outcome:
    """Extract the atlas sample's squares, score them with the shipped default model, rank them."""
    from matplotlib.figure import Figure
    from scipy.spatial import cKDTree
    from scipy.stats import spearmanr

    out = Outcome("squares")
    atlas, truth = add_sample(viewer, "atlas")
    widget = out.widget = dock(viewer, "squares")
    widget._atlas.value = atlas
    widget.extract()
    wait(widget, "extracting squares")
    _check(atlas.unique_id in widget.session.atlases, widget, "extracting squares")
    widget.score()  # no model trained or loaded: the shipped default scores
    wait(widget, "scoring squares")
    state = widget.session.atlases[atlas.unique_id]
    _check(state.scored is not None, widget, "scoring squares")
    table = state.scored
    scored = table[table["rank"] > 0]
    dist, idx = cKDTree(np.asarray(truth.data)).query(scored[["center_y", "center_x"]].to_numpy())
    ok = dist < 0.2 * float(truth.metadata["pitch_px"])
    true_overall = truth.features["overall"].to_numpy(float)[idx[ok]]
    predicted = scored["overall"].to_numpy(float)[ok]
    rho = float(spearmanr(predicted, true_overall).statistic)
    top = np.argsort(-predicted)[:10]
    out.figures = {
        "squares found (complete)": (float(table["complete"].sum()), "{:.0f}"),
        "squares ranked": (float(len(scored)), "{:.0f}"),
        "Spearman rho, overall score vs truth": (rho, "{:.3f}"),
        "top-10 squares with true overall >= 3": (float(np.mean(true_overall[top] >= 3)), "{:.1f}"),
    }
    model = widget.session.model
    out.notes.append(f"Model: {model.name} (shipped, trained on synthetic atlases by benchmarks/train_default_squares.py), no training in the demo.")
    fig = Figure(figsize=(4.5, 3.5), dpi=100)
    ax = fig.add_subplot(111)
    ax.scatter(true_overall + np.random.default_rng(0).uniform(-0.15, 0.15, len(true_overall)), predicted, s=10, alpha=0.6)
    ax.set_xlabel("true overall score (jittered)")
    ax.set_ylabel("predicted overall score")
    ax.set_title(f"atlas sample: Spearman rho {rho:.2f}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out.plots["squares_scores"] = fig
    shown = [layer for layer in viewer.layers if layer.name.startswith("atlas squares") or "attention" in layer.name]
    def pose_scored(viewer: Any) -> None:
        show_in_dock(widget, widget._table)
        _pose_2d(shown)(viewer)

    out.shots.append(Shot("squares_scored", pose_scored))
    return out


# ------------------------------------------------------------------- picking
def picking(viewer: Any, settings: DemoSettings) -> Outcome:
    """Pick the micrograph sample with the generic picker; precision and recall against its true particles."""
    from matplotlib.figure import Figure

    from ..picking.controller import Role
    from ..picking.evaluate import match_picks, score_picks

    out = Outcome("picking")
    image, _junk, truth = add_sample(viewer, "micrograph")
    widget = out.widget = dock(viewer, "picking")
    widget._image.value = image
    widget._diameter.value = float(image.metadata["diameter"])
    widget._show_prob.value = True
    threshold = float(widget._threshold.value)
    widget.pick()
    wait(widget, "picking")
    picks_layer = widget._layer(image.unique_id, Role.PICKS)
    _check(picks_layer is not None, widget, "picking")
    radius = float(image.metadata["diameter"]) / float(image.metadata["pixel_size"]) / 2.0
    true_yx = np.asarray(truth.data, float)
    picks = np.asarray(picks_layer.data, float)
    hits = match_picks(picks, picks_layer.features["rlnAutopickFigureOfMerit"].to_numpy(), true_yx, radius)
    precision = float(hits.mean()) if len(hits) else 0.0
    recall = float(hits.sum() / max(len(true_yx), 1))
    f1 = 2 * precision * recall / max(precision + recall, 1e-12)
    # Lower the threshold as a user would, to see the precision-recall trade-off, then set it back.
    widget._threshold.value = 0.05
    process_events(0.2)
    layer = widget._layer(image.unique_id, Role.PICKS)
    curve = score_picks(np.asarray(layer.data, float), layer.features["rlnAutopickFigureOfMerit"].to_numpy(), true_yx, radius)
    widget._threshold.value = threshold
    process_events(0.2)
    out.figures = {
        "true particles": (float(len(true_yx)), "{:.0f}"),
        f"picks at threshold {threshold:g}": (float(len(picks)), "{:.0f}"),
        "picking precision": (precision, "{:.3f}"),
        "picking recall": (recall, "{:.3f}"),
        "picking F1": (f1, "{:.3f}"),
        "picking average precision": (curve.average_precision, "{:.3f}"),
    }
    out.notes.append(f"Generic picker (shipped), particle diameter {image.metadata['diameter']:g} Å; a pick within {radius:.0f} px "
                     "(a particle radius) of a true particle is a hit.")
    fig = Figure(figsize=(4.5, 3.5), dpi=100)
    ax = fig.add_subplot(111)
    ax.plot(curve.curve["recall"], curve.curve["precision"], "-")
    ax.plot([recall], [precision], "o", label=f"threshold {threshold:g}")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_title(f"micrograph sample: F1 {f1:.2f}, AP {curve.average_precision:.2f}")
    ax.legend(loc="lower left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out.plots["picking_precision_recall"] = fig
    probability = [layer for layer in viewer.layers if layer.name.endswith("probability")]
    picks_layer = widget._layer(image.unique_id, Role.PICKS)

    def pose_probability(viewer: Any) -> None:
        picks_layer.visible = False
        for layer in probability:
            layer.visible = True
        viewer.reset_view()
        viewer.camera.zoom *= 2.0  # a closer look: the probability map is per pixel

    def pose_mask(viewer: Any) -> None:
        # Paint an exclusion mask as a user would over the carbon edge and the ice contamination (here: from the truth).
        widget.paint_mask()
        layer = widget._layer(image.unique_id, Role.EXCLUSIONS)
        if layer is not None:
            layer.data = (np.asarray(_junk.data) > 0).astype(layer.data.dtype)
            layer.visible = True
        picks_layer.visible = True
        for l in probability:
            l.visible = False
        viewer.reset_view()

    out.shots += [Shot("picking_picks", _pose_2d([])), Shot("picking_probability", pose_probability), Shot("picking_mask", pose_mask)]
    return out


# -------------------------------------------------------------- segmentation
def paint_slices(labels: np.ndarray, n_slices: int, features: dict[str, int]) -> np.ndarray:
    """``n_slices`` Z slices painted from the truth (the features to train; all else background), spread over the slices that hold anything."""
    present = np.flatnonzero(labels.reshape(labels.shape[0], -1).any(axis=1))
    zs = np.unique(np.linspace(present[0] + 2, present[-1] - 2, n_slices).round().astype(int))
    painted = np.zeros(labels.shape, np.uint8)
    for value in features.values():
        for z in zs:
            painted[z][labels[z] == value] = value
    return painted


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2.0 * np.logical_and(a, b).sum() / max(int(a.sum()) + int(b.sum()), 1))


def segmentation(viewer: Any, settings: DemoSettings) -> Outcome:
    """Train one model per feature from painted slices, segment with the sample's interactions, pick, mesh."""
    from scipy.spatial import cKDTree

    from ..plots import loss_figure
    from ..segmentation.interactions import parse_interaction

    out = Outcome("segmentation")
    tomogram, truth_labels, truth_particles = add_sample(viewer, "tomogram")
    widget = out.widget = dock(viewer, "segmentation")
    widget._tomogram.value = tomogram
    annotations = widget.new_annotation_layer()
    _check(annotations is not None, widget, "making the annotation layer")
    names = {f.name: f.value for f in widget.features()}
    truth_values = truth_labels.metadata["features"]
    labels = np.asarray(truth_labels.data)
    # The truth's feature values, renumbered to the annotation layer's own (filaments are not trained: background).
    renumbered = np.zeros(labels.shape, np.uint8)
    for name, value in names.items():
        renumbered[labels == truth_values[name]] = value
    annotations.data = paint_slices(renumbered, settings.painted_slices, names)
    widget._budget.value = int(settings.segmentation_budget_s)
    widget._epochs.value = settings.segmentation_epochs
    widget.train(list(names))
    wait(widget, "training")
    _check(set(names) <= set(widget.session.models), widget, "training")
    for text in settings.interactions:
        widget.session.add_interaction(parse_interaction(text))
    widget.models.refresh_interactions()
    widget.segment()
    wait(widget, "segmenting")
    key = str(tomogram.unique_id)
    _check(bool(widget.controller.segmented_features(key)), widget, "segmenting")
    result = widget.controller._segmentations[key]
    px = float(tomogram.metadata["pixel_size"])
    diameter = float(truth_particles.size[0]) * px if len(truth_particles.size) else 200.0
    widget._pick_feature.reset_choices()
    widget._pick_feature.value = "membrane"
    widget.make_mesh()
    wait(widget, "meshing")
    widget._pick_feature.value = "particle"
    widget._min_volume.value = float(np.pi / 6 * (diameter / 10.0) ** 3 * settings.min_particle_fraction)  # nm³
    widget._min_spacing.value = 0.8 * diameter
    widget.pick()
    wait(widget, "picking particles")
    picks = next((layer for layer in viewer.layers if layer.name.endswith("particle picks")), None)
    _check(picks is not None, widget, "picking particles")
    dice = {name: _dice(result[name] >= 0.5, labels == truth_values[name]) for name in names if name in result}
    bound = np.asarray(truth_particles.data, float)[truth_particles.features["membrane_bound"].to_numpy(bool)]
    found = np.asarray(picks.data, float)
    hit_picks = cKDTree(bound).query(found)[0] <= diameter / px / 2 if len(found) and len(bound) else np.zeros(0, bool)
    hit_truth = cKDTree(found).query(bound)[0] <= diameter / px / 2 if len(found) and len(bound) else np.zeros(len(bound), bool)
    precision = float(hit_picks.mean()) if len(hit_picks) else 0.0
    recall = float(hit_truth.mean()) if len(hit_truth) else 0.0
    f1 = 2 * precision * recall / max(precision + recall, 1e-12)
    out.figures = {f"Dice {name}": (value, "{:.3f}") for name, value in dice.items()}
    out.figures.update({
        "membrane-bound particles (truth)": (float(len(bound)), "{:.0f}"),
        "particle picks": (float(len(found)), "{:.0f}"),
        "pick F1 (membrane-bound particles)": (f1, "{:.3f}"),
    })
    mesh = next((layer for layer in viewer.layers if layer.name.endswith("membrane mesh")), None)
    if mesh is not None:
        out.figures["membrane mesh faces"] = (float(len(mesh.data[1])), "{:.0f}")
    out.notes.append(
        f"{settings.painted_slices} Z slices painted from the truth (membrane, carbon, particle); one model per feature, "
        f"{_training_length(settings)} each; interactions: {'; '.join(settings.interactions)} (nm). Dice at 0.5 "
        "over the whole tomogram; a pick within a particle radius of a membrane-bound particle is a hit (free particles are "
        "meant to be removed by 'particle colocalizes membrane')."
    )
    for name, history in widget.controller.history.items():
        if history:
            out.plots[f"segmentation_loss_{name}"] = loss_figure(history, title=f"{name} model training")

    segmentations = [layer for layer in viewer.layers if layer.metadata.get(OUTPUT, "").startswith(f"{key}/segmentation/")]
    segmentations = segmentations or [layer for layer in viewer.layers if layer.name in {f"{tomogram.name} {n}" for n in names}]
    painted_z = int(np.flatnonzero(np.asarray(annotations.data).reshape(annotations.data.shape[0], -1).any(axis=1))[len(names)])

    def show_only(viewer: Any, shown: list[Any], ndisplay: int) -> None:
        for layer in viewer.layers:
            layer.visible = any(layer is s for s in shown)
        viewer.dims.ndisplay = ndisplay
        if ndisplay == 3:
            viewer.camera.angles = (0.0, 35.0, 60.0)
        viewer.reset_view()

    def pose_painting(viewer: Any) -> None:
        show_in_dock(widget, widget._tomogram)
        show_only(viewer, [tomogram, annotations], 2)
        viewer.dims.set_current_step(0, painted_z)

    def pose_interactions(viewer: Any) -> None:
        show_in_dock(widget, widget.models)
        show_only(viewer, [tomogram, *segmentations], 2)
        for layer in segmentations:
            layer.rendering = "mip"
        viewer.dims.set_current_step(0, painted_z)

    def pose_picks(viewer: Any) -> None:
        show_in_dock(widget, widget._pick)
        particle = [layer for layer in segmentations if layer.name.endswith(" particle")]
        for layer in particle:
            layer.rendering = "iso"
        show_only(viewer, [picks, *particle], 3)

    def pose_mesh(viewer: Any) -> None:
        show_only(viewer, [layer for layer in (mesh, picks) if layer is not None], 3)

    out.shots += [Shot("segmentation_painting", pose_painting), Shot("segmentation_interactions", pose_interactions),
                  Shot("segmentation_picks_3d", pose_picks), Shot("segmentation_mesh", pose_mesh)]
    return out


# ------------------------------------------------------------ reconstruction
def reconstruction(viewer: Any, settings: DemoSettings) -> Outcome:
    """A short ab initio run on the particle sample at a small box; FSC of the half maps and against the true map."""
    from ..reconstruction.fsc import align_maps, fsc, plot_fsc
    from ..synthetic._samples import SEED
    from ..synthetic.particles import simulate_particles
    from ..synthetic.structures import atoms_to_volume

    out = Outcome("reconstruction")
    (particles,) = [layer for layer in add_sample(viewer, "particles")]
    widget = out.widget = dock(viewer, "reconstruction")
    widget._layer.value = particles
    widget._box.value = settings.reconstruction_box
    widget._minutes.value = settings.reconstruction_minutes
    widget._map_every.value = max(0.1, settings.reconstruction_minutes / 3)
    widget._device.value = "cpu"
    widget._out.value = tempfile.mkdtemp(prefix="napari-cryo-demo-reconstruction-")
    widget.start()

    def running_shot() -> None:  # the first map in the viewer: the widget mid-run, for the guide
        if "reconstruction_running" not in out.taken and any(layer is not particles for layer in viewer.layers):
            process_events(0.5)
            out.taken["reconstruction_running"] = grab(viewer)

    wait(widget, "reconstructing", during=running_shot)
    result = widget.result
    _check(result is not None, widget, "reconstructing")
    volume = np.asarray(result.volume, np.float32)
    atoms = simulate_particles(seed=SEED).atoms  # the sample's own molecule (the same seed)
    true_map = atoms_to_volume(atoms, volume.shape[0], float(result.pixel_size))
    # The true map is positive density; a map of the opposite contrast convention is compared as its negative.
    box = volume.shape[0]
    r = np.linalg.norm(np.indices(volume.shape) - box // 2, axis=0)
    if volume[r < box / 4].mean() < volume[(r >= box / 4) & (r < box / 2)].mean():
        volume = -volume
    aligned = align_maps(true_map, volume, float(result.pixel_size)).aligned
    against_truth = fsc(aligned, true_map, float(result.pixel_size))
    out.figures = {
        "box (px)": (float(volume.shape[0]), "{:.0f}"),
        "pixel size (Å)": (float(result.pixel_size), "{:.2f}"),
        "half-map FSC 0.143 resolution (Å)": (float(result.resolution), "{:.1f}"),
        "FSC 0.5 resolution against the true map (Å)": (float(against_truth.resolution(0.5)), "{:.1f}"),
        "FSC against the true map, mean to Nyquist/2": (float(np.mean(against_truth.fsc[1 : len(against_truth.fsc) // 2])), "{:.3f}"),
    }
    out.notes.append(
        f"cryoSPIN (the widget's default method), {settings.reconstruction_minutes:g} min budget, box {volume.shape[0]}; "
        f"the map is aligned to the true map (rotation and hand) before its FSC. Run files: {widget._out.value}"
    )
    out.plots["reconstruction_fsc"] = plot_fsc({"half maps": result.fsc, "against the true map": against_truth})
    for name, figure in widget.shown_plots.items():
        if name != "fsc":
            out.plots[f"reconstruction_{name}"] = figure

    def pose_3d(viewer: Any) -> None:
        show_in_dock(widget, widget._plots["fsc"])
        particles.visible = False
        viewer.dims.ndisplay = 3
        viewer.camera.angles = (0.0, 30.0, 45.0)
        viewer.reset_view()

    out.shots.append(Shot("reconstruction_final", pose_3d))
    return out


WORKFLOWS: dict[str, Callable[[Any, DemoSettings], Outcome]] = {
    "squares": squares,
    "picking": picking,
    "segmentation": segmentation,
    "reconstruction": reconstruction,
}


def parse_only(text: str | None) -> list[str]:
    """The workflows named by ``--only`` (comma-separated), in the demo's order.

    Raises
    ------
    CryoInputError
        For a name that is not a workflow.
    """
    if not text:
        return list(WORKFLOWS)
    names = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [n for n in names if n not in WORKFLOWS]
    if unknown:
        raise CryoInputError(None, f"--only: unknown workflow {unknown[0]!r}; choose from {', '.join(WORKFLOWS)}")
    return [n for n in WORKFLOWS if n in names]
