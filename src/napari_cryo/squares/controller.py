"""The square-scoring session: what the grid-square widget does, without Qt or napari.

:class:`SquaresSession` keeps, per atlas layer (keyed by the layer's
``unique_id``, so a renamed layer keeps its squares), the extracted squares,
the labels the user set and the latest scores.  Its long actions (extract,
train, score) are *jobs*: generator functions without arguments that yield
:class:`~napari_cryo.tasks.Progress`, for a view to run in a worker; they
work on data taken when the job is made, never on layers.  The session reads
and writes labels, writes the ranked squares (:mod:`.ranked`) and returns
napari layer-data tuples ``(data, kwargs, layer_type)`` for the view to add.
It replaces no file unless told to (``overwrite``): a view asks the user
first, about the files :meth:`SquaresSession.export_paths` lists.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Generator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import CryoInputError
from ..layer_meta import LayerData, layer_pixel_size, pixel_size_known
from ..tasks import Job
from ..training_loop import EpochRecord
from .extract import square_corners
from .model import CONTAMINATION, CRACKING, SCORES, SquareModel
from .pipeline import AtlasSquares, iter_analyse_atlas, iter_score_atlas, training_set
from .ranked import ranked_paths, write_ranked

SQUARES = "squares"  # the role of an atlas's Shapes layer; attention layers use their score's name
MANUAL = [CRACKING, CONTAMINATION, len(SCORES) - 1]  # the scores only a person can give
UNSCORED_COLOUR = (0.6, 0.6, 0.6, 1.0)
INCOMPLETE_COLOUR = (0.9, 0.2, 0.2, 1.0)
NOT_EXTRACTED = "extract the squares of an atlas first"


@dataclass
class AtlasState:
    """One atlas layer's squares, user labels, scores and the layers that show them.

    Attributes
    ----------
    atlas : AtlasSquares
        The extracted squares.
    labels : numpy.ndarray
        (N, 5) scores set by the user, in :data:`~.model.SCORES` order; NaN where unset.
    scored : pandas.DataFrame, optional
        The latest predicted scores and ranks (:func:`~.pipeline.score_atlas`).
    maps : dict
        The latest attention maps, by score name.
    layers : dict
        ``unique_id`` of the output layer showing each role (``"squares"``, ``"cracking"``, ...).
    """

    atlas: AtlasSquares
    labels: np.ndarray
    scored: pd.DataFrame | None = None
    maps: dict[str, np.ndarray] = field(default_factory=dict)
    layers: dict[str, str] = field(default_factory=dict)


def placement(layer: Any) -> dict[str, Any]:
    """The ``scale``, ``translate`` and ``units`` of a layer, for output layers drawn over it."""
    return {"scale": tuple(layer.scale), "translate": tuple(layer.translate), "units": tuple(layer.units)}


def square_colours(overall: np.ndarray, complete: np.ndarray) -> np.ndarray:
    """(N, 4) RGBA edge colours: viridis by overall score (0-4), grey unscored, red incomplete."""
    import matplotlib as mpl

    out = np.tile(np.array(UNSCORED_COLOUR), (len(overall), 1))
    ok = np.isfinite(overall) & complete
    out[ok] = mpl.colormaps["viridis"](np.clip(overall[ok], 0, 4) / 4.0)
    out[~complete] = INCOMPLETE_COLOUR
    return out


def draw_colour_key(figure: Any) -> None:
    """Draw the key of :func:`square_colours` (a viridis bar for 0-4) on a matplotlib Figure."""
    import matplotlib as mpl

    figure.clear()
    ax = figure.add_axes([0.08, 0.55, 0.84, 0.18])
    mpl.colorbar.ColorbarBase(ax, cmap=mpl.colormaps["viridis"], norm=mpl.colors.Normalize(0, 4), orientation="horizontal")
    ax.set_title("overall score (grey: not scored, red: incomplete)", fontsize=8)


def square_view(row: pd.Series, scale: Iterable[float], translate: Iterable[float], zoom: float) -> tuple[tuple[float, float], float]:
    """Camera centre (world YX) and zoom that show one row of :meth:`SquaresSession.ranked`."""
    sy, sx = tuple(scale)[-2:]
    ty, tx = tuple(translate)[-2:]
    centre = (float(row["center_y"]) * sy + ty, float(row["center_x"]) * sx + tx)
    return centre, max(zoom, 300.0 / (float(row["side"]) * sx))


class SquaresSession:
    """The squares, labels, model and scores of the grid-square widget, keyed by atlas layer id."""

    def __init__(self) -> None:
        self.atlases: dict[str, AtlasState] = {}
        self.model: SquareModel | None = None
        self.history: list[EpochRecord] = []  # the latest training run's epochs

    def state(self, atlas_id: str | None) -> AtlasState:
        """The state of an atlas layer.

        Raises
        ------
        CryoInputError
            If its squares were not extracted.
        """
        if atlas_id not in self.atlases:
            raise CryoInputError(None, NOT_EXTRACTED)
        return self.atlases[atlas_id]

    def forget(self, atlas_id: str) -> None:
        """Drop an atlas (its layer was removed)."""
        self.atlases.pop(atlas_id, None)

    # ------------------------------------------------------------ extraction
    @staticmethod
    def extract_job(layer: Any) -> Job:
        """A job finding the squares of an atlas layer; it returns :class:`~.pipeline.AtlasSquares`.

        The layer's data are handed over unread (a memory map stays one), so the worker reads them.
        """
        if layer is None or getattr(layer, "ndim", None) != 2:
            raise CryoInputError(None, "choose a 2D atlas image")
        pixel_size = layer_pixel_size(layer) if pixel_size_known(layer) else None
        return functools.partial(iter_analyse_atlas, layer.data, layer.name, pixel_size)

    def add_atlas(self, atlas_id: str, atlas: AtlasSquares) -> AtlasState:
        """Keep newly extracted squares (replacing the atlas's earlier squares, labels and scores)."""
        old = self.atlases.get(atlas_id)
        state = AtlasState(atlas, np.full((len(atlas.squares), len(SCORES)), np.nan, np.float32))
        if old is not None:
            state.layers = dict(old.layers)
        self.atlases[atlas_id] = state
        return state

    @staticmethod
    def summary(atlas: AtlasSquares) -> str:
        """One line on what extraction found."""
        n = int(atlas.squares["complete"].sum())
        return f"{len(atlas.squares)} squares ({n} complete); pitch {atlas.lattice.pitch:.0f} px, angle {atlas.lattice.angle:.1f}°"

    # ----------------------------------------------------------------- labels
    def set_labels(self, atlas_id: str, indices: Iterable[int], **scores: float) -> int:
        """Set scores (0-4, by name) of some squares of an atlas; returns how many squares."""
        labels = self.state(atlas_id).labels
        indices = sorted(indices)
        for key, value in scores.items():
            labels[indices, SCORES.index(key)] = value
        return len(indices)

    def import_labels(self, atlas_id: str, path: str | os.PathLike) -> str:
        """Merge a labels CSV into an atlas's labels; returns a message (warnings or a count)."""
        from .labels import match_labels, read_labels

        state = self.state(atlas_id)
        matched, warnings = match_labels(read_labels(path), state.atlas.squares, state.atlas.lattice.pitch / 2, name=str(path))
        state.labels = np.where(np.isfinite(matched), matched, state.labels)
        return "; ".join(warnings) or f"imported labels for {int(np.isfinite(matched).any(axis=1).sum())} squares"

    def export_labels(self, atlas_id: str, path: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write an atlas's labels as a labels CSV.

        Raises
        ------
        CryoInputError
            If the file exists and ``overwrite`` is false.
        """
        from .labels import write_labels

        state = self.state(atlas_id)
        return write_labels(path, state.atlas.squares, state.labels, overwrite=overwrite)

    # --------------------------------------------------------------- training
    def train_job(self, variant: str, epochs: int, device: str = "cpu", **settings: Any) -> Job:
        """A job training a new model on every atlas (labelled and unlabelled squares); it returns the model.

        ``settings`` are further :class:`~.training.SquareTrainConfig` fields.

        Raises
        ------
        CryoInputError
            Without atlases, or without a square labelled for cracking, contamination or overall.
        """
        from .model import XCryoNet
        from .training import SquareTrainConfig, train_squares

        items = [(s.atlas, s.labels.copy()) for s in self.atlases.values()]
        if not items:
            raise CryoInputError(None, NOT_EXTRACTED)
        if not any(np.isfinite(labels[atlas.squares["complete"].to_numpy(bool)][:, MANUAL]).any() for atlas, labels in items):
            raise CryoInputError(None, "no labelled squares: score some squares (cracking, contamination or overall) first")
        self.history = []
        config = SquareTrainConfig(epochs=int(epochs), **settings)

        def job() -> Generator[Any, None, SquareModel]:
            crops, labels = training_set(items)
            model = SquareModel(XCryoNet(variant=variant))
            return (yield from train_squares(model, crops, labels, config, device=device))

        return job

    def record(self, value: Any) -> bool:
        """Keep a training event if it is an :class:`EpochRecord`; returns whether it was."""
        if isinstance(value, EpochRecord):
            self.history.append(value)
            return True
        return False

    def load_model(self, path: str | os.PathLike) -> None:
        """Load a square model file."""
        self.model = SquareModel.load(path)

    def save_model(self, path: str | os.PathLike, overwrite: bool = False) -> Path:
        """Save the model.

        Raises
        ------
        CryoInputError
            Without a model, or if the file exists and ``overwrite`` is false.
        """
        if self.model is None:
            raise CryoInputError(None, "train or load a model first")
        self.model.save(path, overwrite=overwrite)
        return Path(path)

    # ---------------------------------------------------------------- scoring
    def score_job(self, device: str = "cpu") -> Job:
        """A job scoring every atlas with the model; it returns ``{atlas_id: (table, maps)}`` for :meth:`set_scores`.

        Without a trained or loaded model, the shipped default (trained on synthetic atlases) scores.
        """
        if not self.atlases:
            raise CryoInputError(None, NOT_EXTRACTED)
        if self.model is None:
            from .default_model import load_default_model

            self.model = load_default_model()
        model, items = self.model, [(atlas_id, s.atlas) for atlas_id, s in self.atlases.items()]

        def job() -> Generator[Any, None, dict[str, tuple[pd.DataFrame, dict[str, np.ndarray]]]]:
            results = {}
            for atlas_id, atlas in items:
                results[atlas_id] = yield from iter_score_atlas(model, atlas, device)
            return results

        return job

    def set_scores(self, results: dict[str, tuple[pd.DataFrame, dict[str, np.ndarray]]]) -> list[str]:
        """Keep the scores a score job returned; returns the ids of the atlases still present."""
        kept = []
        for atlas_id, (table, maps) in results.items():
            if atlas_id in self.atlases:
                self.atlases[atlas_id].scored, self.atlases[atlas_id].maps = table, maps
                kept.append(atlas_id)
        return kept

    # ------------------------------------------------------------ layer data
    def features(self, atlas_id: str) -> pd.DataFrame:
        """The Shapes-layer features of an atlas's squares: measurements, labels, scores, rank, what is shown."""
        state = self.state(atlas_id)
        sq, scored = state.atlas.squares, state.scored
        f = pd.DataFrame(
            {"complete": sq["complete"].to_numpy(), "measured_brightness": sq["brightness"].to_numpy(), "measured_squareness": sq["squareness"].to_numpy()}
        )
        for j, s in enumerate(SCORES):
            f[f"label_{s}"] = state.labels[:, j]
        for s in SCORES:
            f[s] = scored[s].to_numpy() if scored is not None else np.nan
        f["rank"] = scored["rank"].to_numpy() if scored is not None else 0
        # What the colour shows: the label where there is one, else the prediction.
        f["shown_overall"] = np.where(np.isfinite(f["label_overall"]), f["label_overall"], f["overall"])
        f["shown_text"] = [("" if not np.isfinite(v) else f"{v:.1f}") for v in f["shown_overall"]]
        return f

    def squares_layer(self, atlas_id: str, where: dict[str, Any]) -> LayerData:
        """The Shapes layer outlining an atlas's squares, coloured by overall score.

        ``where`` is the atlas layer's :func:`placement`.
        """
        state = self.state(atlas_id)
        features = self.features(atlas_id)
        kwargs = {
            "name": f"{state.atlas.name} squares",
            "shape_type": "polygon",
            "features": features,
            "edge_color": square_colours(features["shown_overall"].to_numpy(), features["complete"].to_numpy()),
            "face_color": "transparent",
            "edge_width": max(2.0, state.atlas.lattice.pitch * 0.03),
            "text": {"string": "{shown_text}", "size": 9, "color": "white"},
            **where,
        }
        return list(square_corners(state.atlas.squares)), kwargs, "shapes"

    def attention_layers(self, atlas_id: str, where: dict[str, Any]) -> dict[str, LayerData]:
        """The attention maps of an atlas as Image layers (cracking red, contamination green, additive), by role."""
        state = self.state(atlas_id)
        return {
            key: (
                m,
                {
                    "name": f"{state.atlas.name} attention: {key}", "blending": "additive", "colormap": "red" if key == "cracking" else "green",
                    "opacity": 0.6, "contrast_limits": (0, 1), **where,
                },
                "image",
            )
            for key, m in state.maps.items()
        }

    def ranked(self) -> pd.DataFrame:
        """Every ranked square of every scored atlas, best overall first (the widget's table)."""
        frames = []
        for atlas_id, state in self.atlases.items():
            if state.scored is None:
                continue
            t = state.scored[state.scored["rank"] > 0]
            frames.append(t.assign(atlas_id=atlas_id, atlas=state.atlas.name, square=t.index.to_numpy()))
        columns = ["atlas_id", "atlas", "square", "rank", "overall", "cracking", "contamination", "brightness", "center_x", "center_y", "side"]
        if not frames:
            return pd.DataFrame(columns=columns)
        return pd.concat(frames, ignore_index=True).sort_values("overall", ascending=False, kind="stable")[columns].reset_index(drop=True)

    # ----------------------------------------------------------------- export
    def _scored(self) -> list[AtlasState]:
        """The scored atlases, checked for export: some, with different names."""
        scored = [s for s in self.atlases.values() if s.scored is not None]
        if not scored:
            raise CryoInputError(None, "score the squares first")
        names = [s.atlas.name for s in scored]
        if len(set(names)) < len(names):
            raise CryoInputError(None, "two scored atlases have the same name; rename one layer and extract it again")
        return scored

    def export_paths(self, directory: str | os.PathLike) -> list[Path]:
        """The files :meth:`export_ranked` writes into ``directory``: CSV and STAR per scored atlas.

        Raises
        ------
        CryoInputError
            If nothing was scored, or two scored atlases have the same name.
        """
        return [path for s in self._scored() for path in ranked_paths(directory, s.atlas.name)]

    def export_ranked(self, directory: str | os.PathLike, overwrite: bool = False) -> list[Path]:
        """Write the ranked squares of every scored atlas as CSV and STAR (see :mod:`.ranked`).

        Every file is checked before the first is written, so a clash never
        leaves some atlases exported.

        Raises
        ------
        CryoInputError
            As :meth:`export_paths`, or if a file exists and ``overwrite`` is false.
        """
        from ..io.atomic import check_outputs

        check_outputs(self.export_paths(directory), overwrite=overwrite, hint="overwrite=True replaces it")
        written: list[Path] = []
        for s in self._scored():
            written += write_ranked(directory, s.scored, s.atlas.name, s.atlas.pixel_size, overwrite=overwrite)
        return written
