"""Interactions on imperfect predictions: a fragmentary membrane with specks, whole child objects, auto thresholds, counts."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest

from napari_cryo.errors import CryoInputError
from napari_cryo.segmentation import group as group_module
from napari_cryo.segmentation.interactions import (
    Interaction,
    InteractionEffects,
    InteractionGraph,
    apply_interactions,
    apply_interactions_with_effects,
    interaction_mask,
    parent_surface,
    parse_interaction,
    parse_threshold,
)
from napari_cryo.segmentation.particles import PickSettings, pick_particles

PIXEL = 10.0  # Å: one voxel is 1 nm
SHAPE = (40, 96, 96)
CENTRE = np.array([20.0, 48.0, 48.0])
R = 14.0  # vesicle radius, voxels


def _distance(point) -> np.ndarray:
    zz, yy, xx = np.ogrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    return np.sqrt((zz - point[0]) ** 2 + (yy - point[1]) ** 2 + (xx - point[2]) ** 2)


def _ball(point, radius: float = 4.0) -> np.ndarray:
    return _distance(point) <= radius


def vesicle_scene() -> dict:
    """A fragmentary vesicle membrane with specks, and particles on it and away from it.

    Membrane (0.9 on a shell 2 voxels thick): missing where x > 55 (a gap); where y > 52 only
    small islands (4 x 4 voxels in z and x, 4 apart) at 0.9 in a band at 0.35 (under the 0.5 threshold,
    over half of it); two 2-voxel specks, one beside a free particle.  Particles (balls of
    radius 4, 0.9): ``bound`` touches the shell at -y; ``weak`` sits outside the islands;
    ``free`` is far away beside the speck;
    ``edge`` straddles the colocalize reach (15 nm) with about a fifth of it inside.  The
    particle model also responds (0.7) on the shell next to ``bound``, touching it.
    """
    d = _distance(CENTRE)
    shell = np.abs(d - R) <= 1.0
    zz, yy, xx = np.ogrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    membrane = np.where(shell, 0.9, 0.0).astype(np.float32)
    membrane[shell & (yy > 52) & ((zz // 4 % 2 == 1) | (xx // 4 % 2 == 1))] = 0.35
    membrane[shell & (xx > 55)] = 0.0
    membrane[19:21, 8:10, 16:18] = 0.9  # speck 8 voxels from the free particle
    membrane[30:32, 80:82, 80:82] = 0.9  # a speck far from everything
    centres = {"bound": (20, 29, 48), "weak": (20, 67, 48), "free": (20, 8, 8), "edge": (20, 48, 16)}
    particle = np.zeros(SHAPE, np.float32)
    for c in centres.values():
        particle[_ball(c)] = 0.9
    particle[shell & (yy < 36) & (np.abs(xx - 48) <= 6) & (np.abs(zz - 20) <= 3)] = 0.7  # response on the membrane
    return {"predictions": {"membrane": membrane, "particle": particle}, "centres": centres, "shell": shell}


def picked_near(volume: np.ndarray, centres: dict) -> set[str]:
    """The particles a pick lands on (within 3 voxels of the centre)."""
    picks = pick_particles(volume, PIXEL, PickSettings(threshold=0.5, separate=False)).coordinates
    return {name for name, c in centres.items() if len(picks) and np.min(np.linalg.norm(picks - np.array(c), axis=1)) <= 3}


def workflow(mode: str) -> InteractionGraph:
    return InteractionGraph([parse_interaction(f"particle avoids membrane radius=3 mode={mode}"),
                             parse_interaction(f"particle colocalizes membrane radius=15 mode={mode}")])


# --- the whole workflow on a fragmentary membrane ------------------------------------------------


def test_robust_interactions_keep_bound_particles_whole_and_remove_free_ones_whole():
    scene = vesicle_scene()
    preds, centres = scene["predictions"], scene["centres"]
    assert picked_near(preds["particle"], centres) == set(centres)  # all four are picked without interactions

    robust = apply_interactions(preds, workflow("robust"), PIXEL)["particle"]
    assert picked_near(robust, centres) == {"bound", "weak"}
    # Whole objects: the bound and weak particles are untouched off the membrane, the others fully gone.
    for name in ("bound", "weak"):
        own = _ball(centres[name]) & ~scene["shell"]
        np.testing.assert_array_equal(robust[own], preds["particle"][own])
    for name in ("free", "edge"):
        assert not robust[_ball(centres[name], 5.0)].any()
    # The particle model's response on the membrane is gone with avoid's cut along the surface.
    assert not robust[scene["shell"] & (preds["membrane"] >= 0.5)].any()


def test_plain_interactions_fail_on_the_same_fragmentary_membrane():
    # What robust mode fixes: the speck keeps the free particle, and the straddling particle
    # leaves a fragment that is still picked.
    scene = vesicle_scene()
    preds, centres = scene["predictions"], scene["centres"]
    plain = apply_interactions(preds, workflow("plain"), PIXEL)["particle"]
    assert picked_near(plain, centres) == set(centres)
    edge = plain[_ball(centres["edge"])]
    assert 0 < np.count_nonzero(edge) < np.count_nonzero(preds["particle"][_ball(centres["edge"])])


def test_effects_count_the_objects_each_interaction_removes():
    scene = vesicle_scene()
    graph = workflow("robust")
    out, effects = apply_interactions_with_effects(scene["predictions"], graph, PIXEL)
    np.testing.assert_array_equal(out["particle"], apply_interactions(scene["predictions"], graph, PIXEL)["particle"])
    assert isinstance(effects, InteractionEffects)
    assert [e.interaction for e in effects.effects] == graph.interactions
    avoid, colocalize = effects.effects
    # Four particles (bound joined by the response on the membrane): avoid cuts the response
    # off and keeps the four; colocalize removes the free and the straddling one.
    assert (avoid.before, avoid.removed, avoid.kept) == (4, 0, 4)
    assert (colocalize.before, colocalize.removed, colocalize.kept) == (4, 2, 2)
    assert effects.describe()[1] == "particle colocalizes with membrane: removes 2 of 4 particle objects"
    _, plain = apply_interactions_with_effects(scene["predictions"], workflow("plain"), PIXEL)
    assert [(e.before, e.removed) for e in plain.effects] == [(4, 0), (4, 0)]  # cut, but none removed


def test_effects_on_one_slice_and_in_graph_order():
    scene = vesicle_scene()
    plane = {k: v[20:21] for k, v in scene["predictions"].items()}  # a live preview's (1, Y, X)
    rules = ["particle colocalizes membrane radius=15", "particle avoids membrane radius=3"]  # listed colocalize first
    graph = InteractionGraph([parse_interaction(r) for r in rules])
    out, effects = apply_interactions_with_effects(plane, graph, PIXEL)
    assert [e.interaction.kind for e in effects.effects] == ["colocalize", "avoid"]
    assert out["particle"].shape == (1, 96, 96)
    # Free and edge, and weak too: no island of its membrane lies in this slice.
    assert effects.effects[0].removed == 3
    assert apply_interactions_with_effects(plane, InteractionGraph(), PIXEL)[1] == InteractionEffects(())


# --- the parent's surface ------------------------------------------------------------------------


def test_surface_keeps_fragments_joined_by_weak_prediction_and_drops_specks():
    scene = vesicle_scene()
    membrane = scene["predictions"]["membrane"]
    surface = parent_surface(membrane, 0.5, PIXEL)
    islands = scene["shell"] & (membrane == np.float32(0.9)) & (np.arange(SHAPE[1])[None, :, None] > 52)
    assert islands.any() and surface[islands].all()  # small, but joined to the vesicle by the 0.35 band
    assert not surface[19:21, 8:10, 16:18].any() and not surface[30:32, 80:82, 80:82].any()  # specks
    np.testing.assert_array_equal(surface, scene["shell"] & (membrane >= 0.5))  # never more than the mask
    # The same islands without the band between them are specks.
    bare = np.where(membrane == np.float32(0.35), 0, membrane)
    bare_surface = parent_surface(bare, 0.5, PIXEL)
    assert (islands & ~bare_surface).sum() >= 100 and bare_surface[scene["shell"] & (bare >= 0.5) & ~islands].all()
    # A weak piece joined to nothing strong is not part of the surface.
    alone = np.zeros(SHAPE, np.float32)
    alone[5:10, 5:30, 5:30] = 0.4
    assert not parent_surface(alone, 0.5, PIXEL).any()
    assert not parent_surface(np.zeros(SHAPE), 0.5, PIXEL).any()


def test_surface_keeps_a_parent_of_small_objects_and_long_pieces():
    # Pieces of one size are all typical, however small.
    blobs = np.zeros(SHAPE, np.float32)
    for c in ((10, 20, 20), (10, 20, 60), (30, 70, 30)):
        blobs[_ball(c, 1.5)] = 0.9
    np.testing.assert_array_equal(parent_surface(blobs, 0.5, PIXEL), blobs >= 0.5)
    # Beside a huge sheet, a 3 nm speck is a speck, and so is a thin 15 nm thread (over the extent
    # bar, but holding fewer voxels than SPECK_FRACTION**3 of the sheet), while a small patch is not.
    sheet = np.zeros(SHAPE, np.float32)
    sheet[5, :, :] = 0.9
    sheet[30, 40:55, 40] = 0.9
    sheet[30, 10:13, 80] = 0.9
    sheet[20:24, 60:76, 60:76] = 0.9  # 1024 voxels over 23 nm; the bars: 0.3**3 * 96 * 96 = 249 voxels, 15 nm
    surface = parent_surface(sheet, 0.5, PIXEL)
    assert surface[5].all() and surface[20:24, 60:76, 60:76].all()
    assert not surface[30, 40:55, 40].any() and not surface[30, 10:13, 80].any()
    # However huge the typical piece, one holding a 15 nm cube (SPECK_MAX_NM) is no speck.
    slab = np.zeros((60, 160, 160), np.float32)
    slab[:40] = 0.9
    slab[50:58, 10:30, 10:30] = 0.9  # 3200 voxels: under a 15 nm cube (3375) and 0.3 % of the slab
    slab[48:58, 40:60, 40:60] = 0.9  # 4000 voxels: over a 15 nm cube
    surface = parent_surface(slab, 0.5, PIXEL)
    assert surface[48:58, 40:60, 40:60].all() and not surface[50:58, 10:30, 10:30].any()


# --- whole objects --------------------------------------------------------------------------------


def _wall_and_blob(blob_x: int) -> dict[str, np.ndarray]:
    """Parent: a wall at x < 10.  Child: a ball of radius 4 centred at ``blob_x``, 0.9, with a 0.3 halo."""
    parent = np.zeros(SHAPE, np.float32)
    parent[:, :, :10] = 0.9
    child = np.zeros(SHAPE, np.float32)
    child[_ball((20, 48, blob_x), 5.0)] = 0.3
    child[_ball((20, 48, blob_x), 4.0)] = 0.9
    return {"parent": parent, "child": child}


@pytest.mark.parametrize("mode", ["robust", "plain"])
def test_an_object_straddling_the_reach_is_kept_or_removed_whole(mode):
    # The wall ends at x = 9; radius 8 reaches x = 17.
    rule = f"child colocalizes parent radius=8 mode={mode}"
    mostly_in = _wall_and_blob(16)  # ball x 12..20: 6 of its 9 planes within reach
    mostly_out = _wall_and_blob(20)  # ball x 16..24: 2 of 9 planes within reach
    graph = InteractionGraph([parse_interaction(rule)])
    kept = apply_interactions(mostly_in, graph, PIXEL)["child"]
    gone = apply_interactions(mostly_out, graph, PIXEL)["child"]
    core_in, core_out = mostly_in["child"] >= 0.5, mostly_out["child"] >= 0.5
    if mode == "robust":
        # The 0.3 halo belongs to the object (over half the threshold), so it goes or stays with it.
        np.testing.assert_array_equal(kept, mostly_in["child"])
        assert not gone.any()
    else:  # voxel by voxel: both are cut at x = 17
        assert kept[core_in].min() == 0 and gone[core_out].max() > 0


def test_avoid_removes_an_object_only_when_most_of_it_is_within_reach():
    graph = InteractionGraph([parse_interaction("child avoids parent radius=6")])  # reaches x = 15
    touching = _wall_and_blob(15)  # ball x 11..19: 5 of 9 planes within reach (more than half, less than 3/4)
    inside = _wall_and_blob(13)  # ball x 9..17: 8 of 9 planes within reach
    kept = apply_interactions(touching, graph, PIXEL)["child"]
    core = touching["child"] >= 0.5
    np.testing.assert_array_equal(kept[core], touching["child"][core])
    assert not apply_interactions(inside, graph, PIXEL)["child"].any()


def test_a_child_too_long_for_a_particle_follows_the_plain_rule():
    # A sheet (a membrane as the child) 76 nm long, 3/4 within reach (x 30..44 of 30..49): not removed whole.
    preds = {"parent": np.zeros(SHAPE, np.float32), "child": np.zeros(SHAPE, np.float32)}
    preds["parent"][:, :, :30] = 0.9
    preds["child"][20, 10:86, 30:50] = 0.9
    robust = InteractionGraph([parse_interaction("child avoids parent radius=15")])
    plain = InteractionGraph([parse_interaction("child avoids parent radius=15 mode=plain")])
    expected = apply_interactions(preds, plain, PIXEL)["child"]
    assert expected.any()
    np.testing.assert_array_equal(apply_interactions(preds, robust, PIXEL)["child"], expected)
    # Cut to 50 nm, it is one object, and goes whole.
    preds["child"][20, 60:86, :] = 0
    assert not apply_interactions(preds, robust, PIXEL)["child"].any()


def test_weak_child_voxels_outside_objects_follow_the_plain_rule():
    parent = np.zeros(SHAPE, np.float32)
    parent[:, :, :10] = 0.9
    child = np.full(SHAPE, 0.2, np.float32)  # under half the threshold everywhere: no object
    out = apply_interactions({"parent": parent, "child": child}, InteractionGraph([parse_interaction("child colocalizes parent radius=5")]), PIXEL)
    np.testing.assert_array_equal(out["child"] > 0, interaction_mask(parent, 0.5, 5.0, PIXEL))


# --- thresholds: the models' own ------------------------------------------------------------------


def test_auto_threshold_is_the_parent_models_own():
    preds = _wall_and_blob(14)
    preds["parent"] *= 0.4 / 0.9  # a parent model whose calibrated threshold is 0.3
    auto = InteractionGraph([parse_interaction("child colocalizes parent radius=8")])
    assert auto.interactions[0].threshold is None
    assert not apply_interactions(preds, auto, PIXEL)["child"].any()  # 0.5 when the model's is unknown
    kept = apply_interactions(preds, auto, PIXEL, thresholds={"parent": 0.3})["child"]
    np.testing.assert_array_equal(kept, preds["child"])
    fixed = InteractionGraph([parse_interaction("child colocalizes parent radius=8 threshold=0.5")])
    assert not apply_interactions(preds, fixed, PIXEL, thresholds={"parent": 0.3})["child"].any()  # a number wins
    plain_auto = InteractionGraph([parse_interaction("child colocalizes parent radius=8 mode=plain")])
    assert apply_interactions(preds, plain_auto, PIXEL, thresholds={"parent": 0.3})["child"].any()
    with pytest.raises(CryoInputError, match="threshold of 'parent'"):
        apply_interactions(preds, auto, PIXEL, thresholds={"parent": float("nan")})


def test_the_childs_own_threshold_defines_its_objects():
    preds = _wall_and_blob(14)
    preds["child"] *= 0.4 / 0.9  # core 0.4
    graph = InteractionGraph([parse_interaction("child avoids parent radius=1")])
    _, low = apply_interactions_with_effects(preds, graph, PIXEL, thresholds={"child": 0.35})
    _, high = apply_interactions_with_effects(preds, graph, PIXEL)
    assert low.effects[0].before == 1 and high.effects[0].before == 0


def test_threshold_text():
    assert parse_threshold("auto") is None and parse_threshold(" AUTO ") is None and parse_threshold(None) is None
    assert parse_threshold("0.25") == 0.25 and parse_threshold(1) == 1.0
    for bad, problem in (("x", "number or 'auto'"), ("1.5", "between 0 and 1"), (float("inf"), "finite")):
        with pytest.raises(CryoInputError, match=problem):
            parse_threshold(bad)
    with pytest.raises(CryoInputError, match="number or 'auto'"):
        Interaction("a", "b", "avoid", threshold="0.4")
    with pytest.raises(CryoInputError, match="mode must be 'robust' or 'plain'"):
        Interaction("a", "b", "avoid", mode="fuzzy")
    with pytest.raises(CryoInputError, match="mode must be robust or plain"):
        parse_interaction("a avoids b mode=fuzzy")


def test_an_edge_edited_from_table_texts_keeps_its_ends_and_what_is_not_named():
    edge = Interaction("p", "m", "colocalize", 0.4, 5.0, "plain")
    assert edge.edited("Avoids", "auto", "8") == Interaction("p", "m", "avoid", None, 8.0, "plain")
    assert edge.edited("colocalize", "0.3", 2, " ROBUST ") == Interaction("p", "m", "colocalize", 0.3, 2.0, "robust")
    for bad in (("sticks", "0.4", "8"), ("avoid", "x", "8"), ("avoid", "0.4", "-1"), ("avoid", "0.4", "far"), ("avoid", "0.4", "8", "fuzzy")):
        with pytest.raises(CryoInputError, match="^interaction not changed: "):
            edge.edited(*bad)


# --- files: old groups keep their meaning --------------------------------------------------------


def test_interaction_dicts_old_and_new():
    new = Interaction("p", "m", "colocalize", None, 30.0)
    assert new.to_dict() == {"child": "p", "parent": "m", "kind": "colocalize", "threshold": "auto", "radius_nm": 30.0, "mode": "robust"}
    assert Interaction.from_dict(json.loads(json.dumps(new.to_dict()))) == new
    assert parse_interaction(new.to_text()) == new
    old = Interaction.from_dict({"child": "p", "parent": "m", "kind": "avoid", "threshold": 0.4, "radius_nm": 5.0})
    assert (old.threshold, old.mode) == (0.4, "plain")
    assert Interaction.from_dict({"child": "p", "parent": "m", "kind": "avoid"}).threshold == 0.5
    for bad in ({"threshold": "AUTO"}, {"threshold": None}, {"mode": "Robust"}):
        with pytest.raises(CryoInputError):
            Interaction.from_dict({"child": "p", "parent": "m", "kind": "avoid", **bad})


def _old_group_file(path, models) -> None:
    """A group as napari-cryo wrote it before interaction modes (format version 1)."""
    meta = {"format": group_module.FORMAT, "version": 1, "models": [m.title for m in models], "graph": {
        "interactions": [{"child": "particle", "parent": "membrane", "kind": "colocalize", "threshold": 0.5, "radius_nm": 15.0},
                         {"child": "particle", "parent": "membrane", "kind": "avoid", "threshold": 0.5, "radius_nm": 3.0}],
        "emit": [], "absorb": []}}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("group.json", json.dumps(meta))
        for i, m in enumerate(models):
            archive.writestr(f"models/{i:02d}_{m.title}.scnm", m.to_bytes())
    path.write_bytes(buffer.getvalue())


def _old_apply(preds: dict, edges: list[dict]) -> np.ndarray:
    """The interactions as version 1 applied them: the parent's mask, voxel by voxel."""
    child = preds["particle"].copy()
    for e in edges:
        near = interaction_mask(preds["membrane"], e["threshold"], e["radius_nm"], PIXEL)
        child[~near if e["kind"] == "colocalize" else near] = 0
    return child


def _fixed_predictions(preds):
    def predict(models, volume, pixel_size, device="cpu"):
        yield from ()
        return {m.title: preds[m.title] for m in models}

    return predict


def test_an_old_group_file_loads_and_applies_as_before(tmp_path, monkeypatch):
    from napari_cryo.segmentation.model import SegmentationModel
    from napari_cryo.tasks import drain

    models = [SegmentationModel.new("vgg", t, box_size=32, pixel_size=PIXEL, threshold=0.3) for t in ("membrane", "particle")]
    _old_group_file(tmp_path / "old.scnmgroup", models)
    group = group_module.ModelGroup.load(tmp_path / "old.scnmgroup")
    assert [(i.mode, i.threshold) for i in group.graph.interactions] == [("plain", 0.5), ("plain", 0.5)]
    preds = vesicle_scene()["predictions"]
    monkeypatch.setattr(group_module, "predict_volume", _fixed_predictions(preds))
    result, yielded = drain(group.apply(np.zeros(SHAPE, np.float32), PIXEL))
    meta = json.loads(zipfile.ZipFile(tmp_path / "old.scnmgroup").read("group.json"))
    np.testing.assert_array_equal(result["particle"], _old_apply(preds, meta["graph"]["interactions"]))
    # Saved again, it is version 2 and still plain with its thresholds.
    group.save(tmp_path / "again.scnmgroup")
    again = json.loads(zipfile.ZipFile(tmp_path / "again.scnmgroup").read("group.json"))
    assert again["version"] == 2 and [i["mode"] for i in again["graph"]["interactions"]] == ["plain", "plain"]
    assert group_module.ModelGroup.load(tmp_path / "again.scnmgroup").graph == group.graph
    effects = [v for v in yielded if isinstance(v, InteractionEffects)]
    assert len(effects) == 1 and len(effects[0].effects) == 2


def test_a_group_applies_auto_thresholds_from_its_models(tmp_path, monkeypatch):
    from napari_cryo.segmentation.model import SegmentationModel
    from napari_cryo.tasks import drain

    preds = _wall_and_blob(14)
    preds = {"membrane": preds["parent"] * np.float32(0.4 / 0.9), "particle": preds["child"]}
    models = [SegmentationModel.new("vgg", "membrane", box_size=32, pixel_size=PIXEL, threshold=0.3),
              SegmentationModel.new("vgg", "particle", box_size=32, pixel_size=PIXEL)]
    group = group_module.ModelGroup(models, InteractionGraph([parse_interaction("particle colocalizes membrane radius=8")]))
    assert group.thresholds == {"membrane": 0.3, "particle": 0.5}
    monkeypatch.setattr(group_module, "predict_volume", _fixed_predictions(preds))
    result, yielded = drain(group.apply(np.zeros(SHAPE, np.float32), PIXEL))
    np.testing.assert_array_equal(result["particle"], preds["particle"])  # the membrane at 0.4 counts: its model says 0.3
    (effects,) = [v for v in yielded if isinstance(v, InteractionEffects)]
    assert (effects.effects[0].before, effects.effects[0].removed) == (1, 0)
    models[0].threshold = 0.5
    result, _ = drain(group.apply(np.zeros(SHAPE, np.float32), PIXEL))
    assert not result["particle"].any()


def test_a_group_without_interactions_yields_no_effects(monkeypatch):
    from napari_cryo.segmentation.model import SegmentationModel
    from napari_cryo.tasks import Progress, drain

    group = group_module.ModelGroup([SegmentationModel.new("vgg", "membrane", box_size=32, pixel_size=PIXEL)])
    monkeypatch.setattr(group_module, "predict_volume", _fixed_predictions({"membrane": np.zeros(SHAPE, np.float32)}))
    _, yielded = drain(group.apply(np.zeros(SHAPE, np.float32), PIXEL))
    assert all(isinstance(v, Progress) for v in yielded)


# --- the models panel shows the counts -------------------------------------------------------------


@pytest.mark.gui
def test_models_panel_shows_what_each_interaction_removes(qtbot):
    from napari_cryo.segmentation._models_widget import COLUMNS, ModelPanel
    from napari_cryo.segmentation.controller import SegmentationController
    from napari_cryo.segmentation.model import SegmentationModel

    controller = SegmentationController()
    for title in ("membrane", "particle"):
        controller.session.add_model(SegmentationModel.new("vgg", title, box_size=32, pixel_size=PIXEL))
    changes, messages = [], []
    panel = ModelPanel(controller, lambda: changes.append(1), lambda m, error=False: messages.append(m), lambda *a, **k: None, lambda paths: True)
    qtbot.addWidget(panel.native)
    panel.refresh()
    panel.edge_child.value, panel.edge_parent.value = "particle", "membrane"
    panel.edge_kind.value, panel.edge_radius.value = "avoid", 3.0
    assert panel.edge_auto.value and not panel.edge_threshold.enabled
    panel.add_from_controls()
    panel.edge_kind.value, panel.edge_radius.value, panel.edge_mode.value = "colocalize", 15.0, "plain"
    panel.add_from_controls()
    edges = controller.session.graph.interactions
    assert [(e.kind, e.threshold, e.mode) for e in edges] == [("avoid", None, "robust"), ("colocalize", None, "plain")]
    table = panel.table
    removes = COLUMNS.index("removes")
    assert [table.item(r, 3).text() for r in range(2)] == ["auto", "auto"] and table.item(1, 5).text() == "plain"
    assert table.item(0, removes).text() == ""

    # What a live preview reports (here computed on the test scene's middle slice).
    plane = {k: v[20:21] for k, v in vesicle_scene()["predictions"].items()}
    _, effects = apply_interactions_with_effects(plane, controller.session.graph, PIXEL)
    panel.show_effects(effects, "slice 20")
    assert [table.item(r, removes).text() for r in range(2)] == ["0 of 4", "1 of 4"]
    assert "slice 20" in table.item(1, removes).toolTip()

    # Editing a cell changes that edge (threshold back to a number, then auto) and clears its stale count.
    n = len(changes)
    table.item(1, 3).setText("0.4")
    assert controller.session.graph.interactions[1].threshold == 0.4 and controller.session.graph.interactions[1].mode == "plain"
    assert len(changes) == n + 1
    assert [table.item(r, removes).text() for r in range(2)] == ["0 of 4", ""]
    table.item(1, 5).setText("robust")
    table.item(1, 3).setText("Auto")
    assert controller.session.graph.interactions[1] == Interaction("particle", "membrane", "colocalize", None, 15.0, "robust")
    table.item(1, 3).setText("lots")
    assert "interaction not changed" in messages[-1] and table.item(1, 3).text() == "auto"
    table.item(1, 5).setText("fuzzy")
    assert "interaction not changed" in messages[-1] and controller.session.graph.interactions[1].mode == "robust"
    panel.show_effects(None)
    assert table.item(0, removes).text() == ""
