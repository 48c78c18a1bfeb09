"""Model interactions: competition, colocalization, avoidance, graph checks."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.ndimage import distance_transform_edt

from napari_cryo.errors import CryoInputError
from napari_cryo.segmentation import interactions as inter_mod
from napari_cryo.segmentation.interactions import (
    Interaction,
    InteractionGraph,
    apply_interactions,
    interaction_mask,
    parse_interaction,
)

SHAPE = (6, 24, 30)


def slab_and_blob(blob_x: int = 15) -> dict[str, np.ndarray]:
    """Parent: slab at x < 10.  Child: a 3-voxel-wide blob starting at ``blob_x``."""
    parent = np.zeros(SHAPE, np.float32)
    parent[:, :, :10] = 1.0
    child = np.zeros(SHAPE, np.float32)
    child[2:4, 10:13, blob_x : blob_x + 3] = 0.9
    return {"parent": parent, "child": child}


def graph_of(*rules: str, emit=(), absorb=()) -> InteractionGraph:
    """The rules in plain mode (voxel by voxel, the parent's bare mask) unless they name a mode: what this file tests."""
    rules = [r if "mode=" in r else f"{r} mode=plain" for r in rules]
    return InteractionGraph([parse_interaction(r) for r in rules], set(emit), set(absorb))


# --- colocalization and avoidance -------------------------------------------


def test_colocalize_keeps_child_near_parent_only_with_large_enough_radius():
    preds = slab_and_blob(15)  # child x 15..17, nearest parent x 9: 6..8 voxels = 6..8 nm at 10 Å
    near = apply_interactions(preds, graph_of("child colocalizes with parent radius=8"), pixel_size=10.0)
    np.testing.assert_array_equal(near["child"], preds["child"])
    touching = apply_interactions(preds, graph_of("child colocalizes parent radius=0"), pixel_size=10.0)
    assert not touching["child"].any()
    partial = apply_interactions(preds, graph_of("child colocalize parent radius=7"), pixel_size=10.0)
    kept_x = np.unique(np.nonzero(partial["child"])[2])
    np.testing.assert_array_equal(kept_x, [15, 16])


def test_avoid_is_the_opposite_of_colocalize():
    preds = slab_and_blob(15)
    far = apply_interactions(preds, graph_of("child avoids parent radius=8"), pixel_size=10.0)
    assert not far["child"].any()
    outside = apply_interactions(preds, graph_of("child avoid parent radius=0"), pixel_size=10.0)
    np.testing.assert_array_equal(outside["child"], preds["child"])
    partial = apply_interactions(preds, graph_of("child avoids parent radius=7"), pixel_size=10.0)
    np.testing.assert_array_equal(np.unique(np.nonzero(partial["child"])[2]), [17])
    # The parent is never changed by its child.
    np.testing.assert_array_equal(partial["parent"], preds["parent"])


def test_radius_is_in_nm_converted_with_the_pixel_size():
    # One parent voxel and one child voxel 3-4-5 apart: 5 voxels (Euclidean,
    # not the 7 of a cross-shaped dilation) = 35 Å at 7 Å per voxel = 3.5 nm.
    parent = np.zeros(SHAPE, np.float32)
    parent[3, 5, 5] = 1.0
    child = np.zeros(SHAPE, np.float32)
    child[3, 8, 9] = 1.0
    preds = {"parent": parent, "child": child}

    def child_after(rule: str) -> float:
        return float(apply_interactions(preds, graph_of(rule), pixel_size=7.0)["child"][3, 8, 9])

    assert child_after("child colocalizes parent radius=3.501") == 1.0
    assert child_after("child colocalizes parent radius=3.499") == 0.0
    assert child_after("child avoids parent radius=3.501") == 0.0
    assert child_after("child avoids parent radius=3.499") == 1.0
    # The same distance at another pixel size: 5 voxels * 10 Å = 5 nm.
    out = apply_interactions(preds, graph_of("child colocalizes parent radius=4.9"), pixel_size=10.0)
    assert out["child"][3, 8, 9] == 0.0


def test_parent_threshold_is_honoured():
    preds = slab_and_blob(10)  # the child touches the slab
    preds["parent"] *= 0.4
    low = apply_interactions(preds, graph_of("child colocalizes parent threshold=0.3"), pixel_size=10.0)
    high = apply_interactions(preds, graph_of("child colocalizes parent threshold=0.5 radius=1"), pixel_size=10.0)
    assert not low["child"].any()  # radius 0: the mask itself, which the child does not overlap
    assert not high["child"].any()  # parent below threshold: no mask at all
    reach = apply_interactions(preds, graph_of("child colocalizes parent threshold=0.3 radius=1"), pixel_size=10.0)
    np.testing.assert_array_equal(np.unique(np.nonzero(reach["child"])[2]), [10])


def test_several_interactions_on_one_child_all_apply():
    preds = slab_and_blob(15)
    wall = np.zeros(SHAPE, np.float32)
    wall[:, :, 17:] = 1.0
    preds["wall"] = wall
    out = apply_interactions(
        preds, graph_of("child colocalizes parent radius=8", "child avoids wall radius=0"), pixel_size=10.0
    )
    np.testing.assert_array_equal(np.unique(np.nonzero(out["child"])[2]), [15, 16])


def test_chain_uses_the_interacted_parent():
    # a: slab at x < 5.  b: a blob near a (x 6) and a blob far away (x 25).
    # c: a blob on b's far blob.  "b colocalizes a" removes b's far blob,
    # so "c avoids b" must no longer remove c.
    a = np.zeros(SHAPE, np.float32)
    a[:, :, :5] = 1.0
    b = np.zeros(SHAPE, np.float32)
    b[2:4, 5:8, 6:8] = 1.0
    b[2:4, 5:8, 25:27] = 1.0
    c = np.zeros(SHAPE, np.float32)
    c[2:4, 5:8, 25:27] = 0.8
    graph = graph_of("c avoids b radius=1", "b colocalizes a radius=3")  # child listed before its parent
    out = apply_interactions({"c": c, "b": b, "a": a}, graph, pixel_size=10.0)
    assert not out["b"][:, :, 20:].any()
    assert out["b"][2, 6, 6] == 1.0
    np.testing.assert_array_equal(out["c"], c)
    # Against the original b, c would have been removed.
    direct = apply_interactions({"c": c, "b": b}, graph_of("c avoids b radius=1"), pixel_size=10.0)
    assert not direct["c"].any()


def test_inputs_are_not_modified_and_outputs_are_new_float32_arrays():
    preds = slab_and_blob(15)
    preds["other"] = np.full(SHAPE, 0.25)  # float64, not in the graph
    before = {k: v.copy() for k, v in preds.items()}
    out = apply_interactions(preds, graph_of("child avoids parent radius=8", emit=["parent"], absorb=["other"]), 10.0)
    for name, array in preds.items():
        np.testing.assert_array_equal(array, before[name])
        assert out[name] is not array
        assert out[name].dtype == np.float32
    assert list(out) == list(preds)


# --- competition -------------------------------------------------------------


def test_competition_zeroes_absorbers_only_where_an_emitter_is_strictly_higher():
    absorber = np.full(SHAPE, 0.6, np.float32)
    emitter = np.full(SHAPE, 0.2, np.float32)
    emitter[:, :, :10] = 0.8
    emitter[:, :, 10] = 0.6  # a tie is not "higher"
    bystander = np.full(SHAPE, 0.99, np.float32)  # neither emits nor absorbs
    preds = {"absorber": absorber, "emitter": emitter, "bystander": bystander}
    out = apply_interactions(preds, graph_of(emit=["emitter"], absorb=["absorber"]), pixel_size=10.0)
    assert not out["absorber"][:, :, :10].any()
    assert (out["absorber"][:, :, 10:] == np.float32(0.6)).all()
    np.testing.assert_array_equal(out["emitter"], emitter)
    np.testing.assert_array_equal(out["bystander"], bystander)


def test_competition_between_models_that_both_emit_and_absorb():
    a = np.zeros(SHAPE, np.float32)
    b = np.zeros(SHAPE, np.float32)
    a[:, :, :15], a[:, :, 15:] = 0.7, 0.3
    b[:, :, :15], b[:, :, 15:] = 0.3, 0.7
    only = np.full(SHAPE, 0.5, np.float32)  # emits and absorbs alone: never beaten by itself
    out = apply_interactions(
        {"a": a, "b": b, "only": only}, graph_of(emit=["a", "b"], absorb=["a", "b"]), pixel_size=10.0
    )
    assert (out["a"][:, :, :15] == np.float32(0.7)).all() and not out["a"][:, :, 15:].any()
    assert (out["b"][:, :, 15:] == np.float32(0.7)).all() and not out["b"][:, :, :15].any()
    alone = apply_interactions({"only": only}, graph_of(emit=["only"], absorb=["only"]), pixel_size=10.0)
    np.testing.assert_array_equal(alone["only"], only)


def test_a_float64_absorber_is_not_beaten_by_its_own_rounded_value():
    value = np.full(SHAPE, 0.1)  # float64; float32(0.1) > 0.1
    out = apply_interactions({"a": value}, graph_of(emit=["a"], absorb=["a"]), pixel_size=10.0)
    assert (out["a"] > 0).all()


def test_competition_comes_before_interactions():
    # The parent wins against an emitter only on the left; the child then
    # colocalizes with the competed parent, so it survives only on the left.
    parent = np.full(SHAPE, 0.6, np.float32)
    emitter = np.zeros(SHAPE, np.float32)
    emitter[:, :, 15:] = 0.9
    child = np.full(SHAPE, 0.7, np.float32)
    graph = graph_of("child colocalizes parent", emit=["emitter"], absorb=["parent"])
    out = apply_interactions({"child": child, "parent": parent, "emitter": emitter}, graph, pixel_size=10.0)
    assert (out["child"][:, :, :15] > 0).all()
    assert not out["child"][:, :, 15:].any()


# --- graph checks --------------------------------------------------------------


def test_missing_model_is_named():
    graph = graph_of("ribosome avoids membrane")
    with pytest.raises(CryoInputError, match="'membrane'"):
        graph.validate(["ribosome", "carbon"])
    with pytest.raises(CryoInputError, match="membrane"):
        apply_interactions({"ribosome": np.zeros(SHAPE)}, graph, pixel_size=10.0)
    with pytest.raises(CryoInputError, match="absorb.*'ice'"):
        graph_of(absorb=["ice"]).validate(["ribosome"])
    with pytest.raises(CryoInputError, match="emit.*'ice'"):
        graph_of(emit=["ice"]).validate(["ribosome"])


def test_self_loop_is_refused():
    with pytest.raises(CryoInputError, match="'a' cannot interact with itself"):
        graph_of("a avoids a").validate(["a"])


def test_cycles_are_refused_with_the_cycle_in_the_message():
    with pytest.raises(CryoInputError, match="interactions form a cycle: a -> b -> a"):
        graph_of("b avoids a", "a colocalizes b").validate(["a", "b"])
    with pytest.raises(CryoInputError, match="cycle: x -> y -> z -> x"):
        graph_of("y avoids x", "z avoids y", "x avoids z", "w avoids x").validate(["w", "x", "y", "z"])
    graph = graph_of("b avoids a", "a avoids b")
    with pytest.raises(CryoInputError, match="cycle"):
        apply_interactions({"a": np.zeros(SHAPE), "b": np.zeros(SHAPE)}, graph, pixel_size=10.0)
    with pytest.raises(CryoInputError, match="cycle"):
        graph.order()


def test_order_puts_parents_first_and_is_stable():
    graph = graph_of("c avoids b", "b colocalizes a")
    assert graph.order(["c", "x", "b", "y", "a"]) == ["x", "y", "a", "b", "c"]
    assert graph.order(["p", "q", "r"] + ["a", "b", "c"]) == ["p", "q", "r", "a", "b", "c"]
    assert graph_of().order(["z", "y", "x"]) == ["z", "y", "x"]
    assert graph.order() == ["a", "b", "c"]
    diamond = graph_of("d avoids b", "d avoids c", "b avoids a", "c avoids a")
    order = diamond.order(["d", "c", "b", "a"])
    assert order == ["a", "c", "b", "d"]


def test_shapes_must_agree():
    with pytest.raises(CryoInputError, match="one shape"):
        apply_interactions({"a": np.zeros((2, 3, 4)), "b": np.zeros((2, 3, 5))}, graph_of("a avoids b"), 10.0)


def test_pixel_size_must_be_positive():
    with pytest.raises(CryoInputError, match="pixel size"):
        apply_interactions(slab_and_blob(), graph_of("child avoids parent"), pixel_size=0.0)


# --- parsing and serialisation -------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ribosome avoids membrane radius=5 threshold=0.6", Interaction("ribosome", "membrane", "avoid", 0.6, 5.0)),
        ("ribosome avoid membrane", Interaction("ribosome", "membrane", "avoid")),
        ("ribo colocalizes with mem threshold=0.3 radius=2.5", Interaction("ribo", "mem", "colocalize", 0.3, 2.5)),
        ("ribo Colocalizes mem RADIUS=1", Interaction("ribo", "mem", "colocalize", None, 1.0)),
        ("ribo avoids mem threshold=AUTO mode=Plain", Interaction("ribo", "mem", "avoid", None, 0.0, "plain")),
        ("  ribo   colocalize  with  mem  ", Interaction("ribo", "mem", "colocalize")),
        ("ribo colocalises mem radius_nm=4", Interaction("ribo", "mem", "colocalize", None, 4.0)),
    ],
)
def test_parse_interaction(text, expected):
    parsed = parse_interaction(text)
    assert parsed == expected
    assert parse_interaction(parsed.to_text()) == parsed


def test_parse_round_trips_awkward_numbers():
    original = Interaction("a", "b", "avoid", threshold=0.1 + 0.2, radius_nm=1e-7)
    assert parse_interaction(original.to_text()) == original


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("a hates b", "unknown verb 'hates'"),
        ("a avoids", "too few words"),
        ("a avoids radius=3", "no parent"),
        ("a colocalizes with", "no parent"),
        ("a avoids b radius=far", "radius is not a number"),
        ("a avoids b size=3", "unknown option 'size=3'"),
        ("a avoids b 3", "unknown option '3'"),
        ("a avoids b radius=1 radius=2", "given twice"),
        ("a avoids b radius=-1", "must not be negative"),
        ("a avoids b threshold=2", "between 0 and 1"),
        ("a avoids b radius=nan", "finite"),
    ],
)
def test_parse_errors_are_clear(text, problem):
    with pytest.raises(CryoInputError, match=problem) as info:
        parse_interaction(text)
    assert info.value.path is None
    if "unknown" in problem or "no parent" in problem or "few" in problem:
        assert "CHILD avoids|colocalizes PARENT" in str(info.value)


def test_interaction_dict_round_trip_and_validation():
    inter = Interaction("a", "b", "colocalize", 0.25, 3.0)
    assert Interaction.from_dict(json.loads(json.dumps(inter.to_dict()))) == inter
    # Without the fields added later, a stored interaction keeps its old meaning: threshold 0.5, plain.
    assert Interaction.from_dict({"child": "a", "parent": "b", "kind": "avoid"}) == Interaction("a", "b", "avoid", 0.5, 0.0, "plain")
    bad = [
        ({"child": "a", "parent": "b", "kind": "repel"}, "kind"),
        ({"child": "a", "parent": "b", "kind": "avoid", "threshold": "0.5"}, "threshold must be a number"),
        ({"child": "a", "parent": "b", "kind": "avoid", "threshold": True}, "threshold must be a number"),
        ({"child": "a", "parent": "b", "kind": "avoid", "radius_nm": -2}, "negative"),
        ({"child": "a", "parent": "b", "kind": "avoid", "radius_nm": float("inf")}, "finite"),
        ({"child": "a", "kind": "avoid"}, "lacks field.*parent"),
        ({"child": "a", "parent": "", "kind": "avoid"}, "parent must be a non-empty"),
        ({"child": "a", "parent": "b", "kind": "avoid", "radius": 2}, "unknown interaction field.*radius"),
        (["a", "b"], "mapping"),
    ]
    for d, problem in bad:
        with pytest.raises(CryoInputError, match=problem) as info:
            Interaction.from_dict(d)
        assert info.value.path is None


def test_graph_dict_round_trip_and_validation():
    graph = graph_of("c avoids b radius=2", "b colocalizes a threshold=0.7", emit=["a", "b"], absorb=["c"])
    text = json.dumps(graph.to_dict())
    assert InteractionGraph.from_dict(json.loads(text)) == graph
    assert InteractionGraph.from_dict({}) == InteractionGraph()
    for d, problem in [
        ({"interactions": {}}, "must be a list"),
        ({"emit": "a"}, "emit must be a list"),
        ({"absorb": [1]}, "absorb must be a non-empty model name"),
        ({"interactions": [{"child": "a"}]}, "lacks"),
        ({"edges": []}, "unknown interaction graph field"),
    ]:
        with pytest.raises(CryoInputError, match=problem):
            InteractionGraph.from_dict(d)


# --- the mask itself -----------------------------------------------------------------


def test_interaction_mask_matches_a_full_distance_transform(monkeypatch, rng):
    parent = (rng.random((13, 17, 19)) > 0.985).astype(np.float32)
    for radius_nm in (0.0, 0.9, 2.3, 4.0):
        expected = distance_transform_edt(parent < 0.5) <= radius_nm * 10 / 8.0
        if radius_nm == 0:
            expected = parent >= 0.5
        monkeypatch.setattr(inter_mod, "_SLAB_VOXELS", 50)  # slabs of one plane, many of them
        sliced = interaction_mask(parent, 0.5, radius_nm, pixel_size=8.0)
        monkeypatch.setattr(inter_mod, "_SLAB_VOXELS", 10**9)
        whole = interaction_mask(parent, 0.5, radius_nm, pixel_size=8.0)
        assert sliced.dtype == bool
        np.testing.assert_array_equal(sliced, expected)
        np.testing.assert_array_equal(whole, expected)


def test_interaction_mask_of_an_empty_parent_is_empty():
    assert not interaction_mask(np.zeros(SHAPE), 0.5, 5.0, 10.0).any()
