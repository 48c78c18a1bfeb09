"""The square-scoring widget: extract, label, train, score, inspect attention, rank, export."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from magicgui.widgets import ComboBox, Container, FileEdit, FloatSpinBox, Label, PushButton, SpinBox, create_widget

from ..errors import CryoInputError
from .extract import square_corners
from .model import SCORES, SquareModel, XCryoNet
from .pipeline import AtlasSquares, analyse_atlas, score_atlas

if TYPE_CHECKING:  # pragma: no cover
    import napari

UNSET = -1.0  # spin-box value meaning 'leave this score as it is'


class SquaresWidget(Container):
    """Grid-square extraction, labelling and scoring on atlas layers."""

    def __init__(self, napari_viewer: "napari.Viewer") -> None:
        super().__init__(labels=True)
        self.viewer = napari_viewer
        self.atlases: dict[str, AtlasSquares] = {}
        self.square_labels: dict[str, np.ndarray] = {}
        self.model: SquareModel | None = None
        self.worker = None
        self._atlas = create_widget(label="atlas", annotation="napari.layers.Image")
        self._extract = PushButton(text="Extract squares")
        self._spins = {
            name: FloatSpinBox(label=name, min=UNSET, max=4.0, step=1.0, value=UNSET, tooltip="-1 = leave unchanged")
            for name in ("cracking", "contamination", "overall", "brightness", "squareness")
        }
        self._apply = PushButton(text="Apply scores to selected squares")
        self._labels_file = FileEdit(label="labels CSV", mode="w", filter="*.csv")
        self._import = PushButton(text="Import labels")
        self._export_labels = PushButton(text="Export labels")
        self._variant = ComboBox(label="model", choices=["xcryonet", "primary"], value="xcryonet")
        self._epochs = SpinBox(label="epochs", min=1, max=500, value=40)
        self._train = PushButton(text="Train")
        self._cancel = PushButton(text="Cancel", enabled=False)
        self._model_file = FileEdit(label="model file", mode="w", filter="*.pt")
        self._load = PushButton(text="Load model")
        self._save = PushButton(text="Save model")
        self._score = PushButton(text="Score squares")
        self._ranked_file = FileEdit(label="export ranked", mode="w", filter="*.csv")
        self._export_ranked = PushButton(text="Export ranked squares (CSV + STAR)")
        self._status = Label(value="")
        self.extend(
            [self._atlas, self._extract, *self._spins.values(), self._apply, self._labels_file, self._import, self._export_labels,
             self._variant, self._epochs, self._train, self._cancel, self._model_file, self._load, self._save, self._score,
             self._ranked_file, self._export_ranked, self._status]
        )
        self._table = _ranked_table(self._on_table_click)
        from ..plots import qt_figure_canvas

        self._figure, self._canvas = qt_figure_canvas(160)
        if self._table is not None:
            self.native.layout().addWidget(self._table)
        if self._canvas is not None:
            self.native.layout().addWidget(self._canvas)
        self._extract.changed.connect(self.extract)
        self._apply.changed.connect(self.apply_scores)
        self._import.changed.connect(self.import_labels)
        self._export_labels.changed.connect(self.export_labels)
        self._train.changed.connect(self.train)
        self._cancel.changed.connect(lambda: self.worker.quit() if self.worker is not None else None)
        self._load.changed.connect(self.load_model)
        self._save.changed.connect(self.save_model)
        self._score.changed.connect(self.score)
        self._export_ranked.changed.connect(self.export_ranked)

    # ----------------------------------------------------------------- helpers
    def _notify(self, message: str, error: bool = False) -> None:
        from napari.utils.notifications import show_error, show_info

        self._status.value = message
        (show_error if error else show_info)(message)

    def _current(self) -> AtlasSquares:
        layer = self._atlas.value
        if layer is None or layer.name not in self.atlases:
            raise CryoInputError(None, "extract the squares of an atlas first")
        return self.atlases[layer.name]

    def shapes_name(self, atlas_name: str) -> str:
        return f"{atlas_name} squares"

    def _busy(self, busy: bool) -> None:
        for w in (self._extract, self._train, self._score):
            w.enabled = not busy
        self._cancel.enabled = busy

    # ---------------------------------------------------------------- extract
    def extract(self):
        """Find the squares of the chosen atlas (in the background)."""
        from ..tasks import start_worker

        layer = self._atlas.value
        if layer is None or layer.ndim != 2:
            self._notify("choose a 2D atlas image", error=True)
            return None
        image = np.asarray(layer.data, dtype=np.float32)
        name = layer.name
        px = float(layer.scale[-1]) if (layer.metadata or {}).get("pixel_size_known", True) else None

        def work():
            return analyse_atlas(image, name, px)

        def done(atlas: AtlasSquares):
            self.atlases[name] = atlas
            self.square_labels[name] = np.full((len(atlas.squares), len(SCORES)), np.nan, np.float32)
            self._show(name)
            n = int(atlas.squares["complete"].sum())
            self._notify(f"{len(atlas.squares)} squares ({n} complete); pitch {atlas.lattice.pitch:.0f} px, angle {atlas.lattice.angle:.1f}°")

        self.worker = start_worker(_as_generator(work), description="extracting squares", on_returned=done, on_finished=self._finished)
        self._busy(True)
        return self.worker

    def _finished(self) -> None:
        self._busy(False)
        self.worker = None

    def _features(self, name: str) -> pd.DataFrame:
        atlas = self.atlases[name]
        sq = atlas.squares
        labels = self.square_labels[name]
        f = pd.DataFrame({"complete": sq["complete"].to_numpy(), "measured_brightness": sq["brightness"].to_numpy(), "measured_squareness": sq["squareness"].to_numpy()})
        for j, s in enumerate(SCORES):
            f[f"label_{s}"] = labels[:, j]
        scored = getattr(atlas, "scored", None)
        for s in SCORES:
            f[s] = scored[s].to_numpy() if scored is not None else np.nan
        f["rank"] = scored["rank"].to_numpy() if scored is not None else 0
        # What the colour shows: the label where there is one, else the prediction.
        f["shown_overall"] = np.where(np.isfinite(f["label_overall"]), f["label_overall"], f["overall"])
        f["shown_text"] = [("" if not np.isfinite(v) else f"{v:.1f}") for v in f["shown_overall"]]
        return f

    def _show(self, name: str) -> None:
        atlas = self.atlases[name]
        image = self.viewer.layers[name]
        features = self._features(name)
        colours = _colours(features["shown_overall"].to_numpy(), features["complete"].to_numpy())
        text = {"string": "{shown_text}", "size": 9, "color": "white"}
        layer_name = self.shapes_name(name)
        if layer_name in self.viewer.layers:
            layer = self.viewer.layers[layer_name]
            layer.features = features
            layer.edge_color = colours
            layer.text = text
        else:
            corners = square_corners(atlas.squares)
            layer = self.viewer.add_shapes(
                list(corners), shape_type="polygon", name=layer_name, features=features, edge_color=colours,
                face_color="transparent", edge_width=max(2.0, atlas.lattice.pitch * 0.03), scale=image.scale,
                translate=image.translate, units=image.units, text=text,
            )
            for key in range(5):
                layer.bind_key(f"Shift-{key}", lambda _layer, k=key, n=name: self.set_selected(n, overall=float(k)), overwrite=True)
        self._draw_colorbar()

    # ----------------------------------------------------------------- labels
    def set_selected(self, name: str, **scores: float) -> int:
        """Set scores (0-4) of the selected squares of an atlas; returns how many squares."""
        layer = self.viewer.layers[self.shapes_name(name)]
        selected = sorted(layer.selected_data)
        for key, value in scores.items():
            j = SCORES.index(key)
            for i in selected:
                self.square_labels[name][i, j] = value
        self._show(name)
        return len(selected)

    def apply_scores(self) -> None:
        """Apply the spin-box scores (those not -1) to the selected squares."""
        try:
            atlas = self._current()
        except CryoInputError as exc:
            self._notify(str(exc), error=True)
            return
        values = {k: float(w.value) for k, w in self._spins.items() if w.value >= 0}
        if not values:
            self._notify("set at least one score (0-4) first", error=True)
            return
        n = self.set_selected(atlas.name, **values)
        if n == 0:
            self._notify("select squares in the squares layer first (select mode)", error=True)

    def import_labels(self) -> None:
        from .labels import match_labels, read_labels

        try:
            atlas = self._current()
            matched, warnings = match_labels(read_labels(str(self._labels_file.value)), atlas.squares, atlas.lattice.pitch / 2, name=str(self._labels_file.value))
        except CryoInputError as exc:
            self._notify(str(exc), error=True)
            return
        merged = np.where(np.isfinite(matched), matched, self.square_labels[atlas.name])
        self.square_labels[atlas.name] = merged
        self._show(atlas.name)
        self._notify("; ".join(warnings) or f"imported labels for {int(np.isfinite(matched).any(axis=1).sum())} squares")

    def export_labels(self) -> None:
        from .labels import write_labels

        try:
            atlas = self._current()
            write_labels(str(self._labels_file.value), atlas.squares, self.square_labels[atlas.name], overwrite=True)
        except CryoInputError as exc:
            self._notify(str(exc), error=True)
            return
        self._notify(f"wrote {self._labels_file.value}")

    # --------------------------------------------------------------- training
    def training_data(self) -> tuple[np.ndarray, np.ndarray]:
        crops, labels = [], []
        for name, atlas in self.atlases.items():
            keep = atlas.squares["complete"].to_numpy(bool)
            merged = np.where(np.isfinite(self.square_labels[name]), self.square_labels[name], atlas.auto_labels())
            crops.append(atlas.crops[keep])
            labels.append(merged[keep])
        if not crops:
            raise CryoInputError(None, "extract the squares of an atlas first")
        return np.concatenate(crops), np.concatenate(labels)

    def train(self):
        """Train a new model on every loaded atlas (labelled and unlabelled squares)."""
        from ..tasks import start_worker
        from .training import SquareTrainConfig, train_squares

        try:
            crops, labels = self.training_data()
            model = SquareModel(XCryoNet(variant=self._variant.value))
            generator = train_squares(model, crops, labels, SquareTrainConfig(epochs=int(self._epochs.value)))
            first = next(generator)  # fails here, on the main thread, for data without labels
        except CryoInputError as exc:
            self._notify(str(exc), error=True)
            return None
        self._history: list[dict] = []

        def run():
            yield first
            result = yield from generator
            return result

        def on_value(value):
            if isinstance(value, dict) and "epoch" in value:
                self._history.append(value)
                self._draw_loss()

        def done(trained: SquareModel):
            self.model = trained
            self._notify(f"trained {trained.variant} on {len(crops)} squares; scoring")
            self.score()

        self.worker = start_worker(run, description="training square scorer", on_yield=on_value, on_returned=done, on_finished=self._finished)
        self._busy(True)
        return self.worker

    def load_model(self) -> None:
        try:
            self.model = SquareModel.load(str(self._model_file.value))
        except CryoInputError as exc:
            self._notify(str(exc), error=True)
            return
        self._notify(f"loaded {self._model_file.value}")

    def save_model(self) -> None:
        if self.model is None:
            self._notify("train or load a model first", error=True)
            return
        try:
            self.model.save(str(self._model_file.value), overwrite=True)
        except CryoInputError as exc:
            self._notify(str(exc), error=True)
            return
        self._notify(f"saved {self._model_file.value}")

    # ---------------------------------------------------------------- scoring
    def score(self) -> None:
        """Score every loaded atlas, colour the squares, add attention maps, fill the ranked table."""
        if self.model is None:
            self._notify("train or load a model first", error=True)
            return
        for name, atlas in self.atlases.items():
            table, maps = score_atlas(self.model, atlas)
            atlas.scored = table
            self._show(name)
            image = self.viewer.layers[name]
            for key, m in maps.items():
                layer_name = f"{name} attention: {key}"
                if layer_name in self.viewer.layers:
                    self.viewer.layers[layer_name].data = m
                else:
                    self.viewer.add_image(
                        m, name=layer_name, scale=image.scale, translate=image.translate, units=image.units, blending="additive",
                        colormap="red" if key == "cracking" else "green", opacity=0.6, contrast_limits=(0, 1),
                    )
        self._fill_table()

    def _fill_table(self) -> None:
        if self._table is None:
            return
        from qtpy.QtWidgets import QTableWidgetItem

        rows = []
        for name, atlas in self.atlases.items():
            scored = getattr(atlas, "scored", None)
            if scored is None:
                continue
            for i, r in scored[scored["rank"] > 0].iterrows():
                rows.append((name, int(i), int(r["rank"]), r))
        rows.sort(key=lambda t: -t[3]["overall"])
        self._rows = rows
        headers = ["atlas", "rank", "overall", "cracking", "contamination", "brightness", "x", "y"]
        self._table.clear()
        self._table.setColumnCount(len(headers))
        self._table.setHorizontalHeaderLabels(headers)
        self._table.setRowCount(len(rows))
        for k, (name, _, rank, r) in enumerate(rows):
            values = [name, rank, r["overall"], r["cracking"], r["contamination"], r["brightness"], r["center_x"], r["center_y"]]
            for c, v in enumerate(values):
                self._table.setItem(k, c, QTableWidgetItem(f"{v:.2f}" if isinstance(v, float) else str(v)))

    def _on_table_click(self, row: int, _col: int) -> None:
        name, index, _, r = self._rows[row]
        image = self.viewer.layers[name]
        scene = getattr(self.viewer, "scene", None)  # napari >= 0.9 moved the camera to viewer.scene
        camera = scene.camera if scene is not None and hasattr(scene, "camera") else self.viewer.camera
        camera.center = (r["center_y"] * image.scale[-2] + image.translate[-2], r["center_x"] * image.scale[-1] + image.translate[-1])
        camera.zoom = max(camera.zoom, 1.0 / (r["side"] * image.scale[-1] / 300))
        layer = self.viewer.layers[self.shapes_name(name)]
        layer.selected_data = {index}

    def export_ranked(self, path: str | Path | None = None) -> list[Path]:
        """Write the ranked squares of all atlases as CSV and STAR (centres in pixels and Å)."""
        from ..io.atomic import atomic_path
        from ..io.star import write_coordinates

        path = Path(str(path if path is not None else self._ranked_file.value))
        frames = []
        for name, atlas in self.atlases.items():
            scored = getattr(atlas, "scored", None)
            if scored is None:
                continue
            t = scored[scored["rank"] > 0].copy()
            t.insert(0, "atlas", name)
            px = atlas.pixel_size or 1.0
            t["center_x_A"], t["center_y_A"] = t["center_x"] * px, t["center_y"] * px
            frames.append((name, px, t))
        if not frames:
            self._notify("score the squares first", error=True)
            return []
        table = pd.concat([t for _, _, t in frames]).sort_values("overall", ascending=False)
        cols = ["atlas", "rank", "center_x", "center_y", "center_x_A", "center_y_A", "side", "angle", *SCORES]
        csv = path.with_suffix(".csv")
        with atomic_path(csv, overwrite=True) as tmp:
            table[cols].to_csv(tmp, index=False, float_format="%.3f")
        written = [csv]
        for name, px, t in frames:
            star = path.with_name(f"{path.stem}_{name}.star")
            feats = t[["rank", *SCORES]].rename(columns={"rank": "rnkSquareRank", **{s: f"rnkSquare{s.capitalize()}" for s in SCORES}}).reset_index(drop=True)
            write_coordinates(star, t[["center_y", "center_x"]].to_numpy(), feats, px, micrograph_name=name, overwrite=True)
            written.append(star)
        self._notify(f"wrote {', '.join(p.name for p in written)}")
        return written

    # ------------------------------------------------------------------ plots
    def _draw_loss(self) -> None:
        if self._canvas is None:
            return
        from ..plots import loss_figure

        loss_figure(self._history, self._figure, title="square scorer training")
        self._canvas.draw_idle()

    def _draw_colorbar(self) -> None:
        if self._canvas is None or getattr(self, "_history", None):
            return
        import matplotlib as mpl

        self._figure.clear()
        ax = self._figure.add_axes([0.08, 0.55, 0.84, 0.18])
        mpl.colorbar.ColorbarBase(ax, cmap=mpl.colormaps["viridis"], norm=mpl.colors.Normalize(0, 4), orientation="horizontal")
        ax.set_title("overall score (grey: not scored, red: incomplete)", fontsize=8)
        self._canvas.draw_idle()


def _colours(overall: np.ndarray, complete: np.ndarray) -> np.ndarray:
    import matplotlib as mpl

    cmap = mpl.colormaps["viridis"]
    out = np.tile(np.array([0.6, 0.6, 0.6, 1.0]), (len(overall), 1))
    ok = np.isfinite(overall) & complete
    out[ok] = cmap(np.clip(overall[ok], 0, 4) / 4.0)
    out[~complete] = [0.9, 0.2, 0.2, 1.0]
    return out


def _as_generator(func):
    def gen():
        return func()
        yield  # pragma: no cover - makes this a generator for thread_worker

    return gen


def _ranked_table(on_click):
    try:
        from qtpy.QtWidgets import QAbstractItemView, QTableWidget
    except ImportError:  # pragma: no cover
        return None
    table = QTableWidget(0, 0)
    table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
    table.setMinimumHeight(180)
    table.cellClicked.connect(on_click)
    return table
