"""Segmentation core: training boxes, model files, groups, tiled inference, training and resume."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
import torch

from napari_cryo.errors import CryoInputError
from napari_cryo.segmentation.dataset import AnnotatedTomogram, BoxSettings, annotated_slices, normalisation, sample_boxes
from napari_cryo.segmentation.features import Feature, features_from_metadata, features_to_metadata, make_features, parse_feature
from napari_cryo.segmentation.group import ModelGroup, load_models
from napari_cryo.segmentation.inference import predict_planes, predict_volume, tile_layout
from napari_cryo.segmentation.interactions import Interaction, InteractionGraph
from napari_cryo.segmentation.model import SegmentationModel
from napari_cryo.segmentation.session import SegmentationSession
from napari_cryo.segmentation.training import SlicePreview, TrainSettings, train_feature
from napari_cryo.tasks import Progress, drain
from napari_cryo.training_loop import EpochRecord


@pytest.fixture(scope="module")
def slab_tomogram():
    """Dark horizontal bars (the 'feature') on noise, painted on two slices."""
    rng = np.random.default_rng(0)
    shape = (12, 96, 96)
    truth = np.zeros(shape, np.uint8)
    truth[:, 20:26, :] = 1
    truth[:, 60:66, 10:80] = 1
    truth[:, 40:50, 40:50] = 2  # a second feature, a negative for the first
    volume = rng.normal(0, 0.6, shape).astype(np.float32) - 2.0 * (truth == 1) + 1.5 * (truth == 2)
    labels = np.zeros_like(truth)
    labels[3], labels[8] = truth[3], truth[8]
    return AnnotatedTomogram(volume, labels, 10.0, "bars"), truth


def test_features_parse_and_metadata_round_trip():
    f = parse_feature("membrane=1")
    assert f == Feature("membrane", 1, f.colour)
    assert parse_feature("carbon=2:#112233").colour == "#112233"
    table = make_features(["membrane", "carbon"])
    assert features_from_metadata({"napari_cryo_features": features_to_metadata(table)}) == table
    for bad in ("membrane", "mem brane=1", "x=0", "x=300"):
        with pytest.raises(CryoInputError):
            parse_feature(bad)
    with pytest.raises(CryoInputError, match="value"):
        features_from_metadata({"napari_cryo_features": features_to_metadata([Feature("a", 1, "#000000"), Feature("b", 1, "#000000")])})


def test_boxes_positives_negatives_and_augmentation(slab_tomogram):
    data, _ = slab_tomogram
    assert annotated_slices(data.labels).tolist() == [3, 8]
    settings = BoxSettings(box=32, positives_per_slice=10, negative_ratio=1.5, copies=3)
    boxes = sample_boxes([data], 1, 10.0, settings, "bars")
    n_source = 20 + 30
    assert len(boxes) == n_source * 3 and boxes.images.shape == (n_source * 3, 1, 32, 32)
    has_feature = boxes.masks.flatten(1).amax(1) > 0
    assert has_feature[:20].all()  # positives contain the feature
    # Masks are exactly the painted feature (dark) pixels: images are darker there.
    assert boxes.images[boxes.masks > 0].mean() < boxes.images[boxes.masks == 0].mean() - 1.0
    # Copies are rotations/flips of their source box, never split across train/validation.
    train, val = boxes.split(0.2)
    assert val is not None and not set(train.source) & set(val.source)
    assert len(train) + len(val) == len(boxes)


def test_boxes_resampled_to_model_pixel_size():
    labels = np.zeros((2, 96, 96), np.uint8)
    labels[1, 40:46, :] = 1  # one 6 px bar
    volume = np.random.default_rng(0).normal(size=labels.shape).astype(np.float32)
    data = AnnotatedTomogram(volume, labels, 10.0, "bar")
    boxes = sample_boxes([data], 1, 20.0, BoxSettings(box=32, positives_per_slice=4, copies=1), "bar")
    # At twice the pixel size the 6 px bar is 3 px wide.
    widths = boxes.masks[:4, 0].sum(dim=1).amax(dim=1)
    assert widths.min() >= 2 and widths.max() <= 4


def test_boxes_bad_input(slab_tomogram):
    data, _ = slab_tomogram
    with pytest.raises(CryoInputError, match="no annotation"):
        sample_boxes([data], 7, 10.0, BoxSettings(box=32), "ribosome")
    with pytest.raises(CryoInputError, match="shape"):
        AnnotatedTomogram(data.volume, data.labels[:5], 10.0, "t.mrc")
    with pytest.raises(CryoInputError, match="multiple of 16"):
        sample_boxes([data], 1, 10.0, BoxSettings(box=40))


def test_normalisation_ignores_outliers():
    v = np.random.default_rng(1).normal(5.0, 2.0, (4, 64, 64)).astype(np.float32)
    v[0, :3, :3] = 1e6  # a gold bead
    mean, std = normalisation(v)
    assert abs(mean - 5.0) < 0.2 and abs(std - 2.0) < 0.2


@pytest.mark.parametrize("length,max_tile", [(100, 512), (512, 512), (1000, 512), (4096, 256), (33, 512)])
def test_tile_layout_covers_with_overlap(length, max_tile):
    tile, starts = tile_layout(length, max_tile, 0.2)
    assert tile % 16 == 0 and tile <= max(max_tile, int(np.ceil(length / 16) * 16))
    assert starts[0] == 0 and starts[-1] + tile >= length
    for a, b in zip(starts, starts[1:]):
        assert b - a <= tile * 0.8 + 1  # overlap of at least 0.2 of a tile
    if len(starts) > 1:
        assert len(starts) * tile < length * 1.6  # little wasted work


class _Identity(torch.nn.Module):
    """A 'network' returning the logit of the input, to test tiling and blending exactly."""

    def forward(self, x):
        return torch.logit(x.clamp(1e-4, 1 - 1e-4))


def test_tiled_prediction_is_seamless_and_resampled():
    model = SegmentationModel(net=_Identity(), architecture="vgg", title="id", pixel_size=10.0)
    yy, xx = np.mgrid[0:300, 0:700]
    plane = (0.2 + 0.6 * (np.sin(yy / 17.0) * np.cos(xx / 23.0) + 1) / 2).astype(np.float32)
    # stats (0, 1): the network sees the raw values; tiles of 128 force many overlaps.
    out = predict_planes(model, plane[None], 10.0, (0.0, 1.0), max_tile=128)[0]
    np.testing.assert_allclose(out, plane, atol=1e-4)
    # At half the model's pixel size, the plane is shrunk, predicted and grown back.
    out2 = predict_planes(model, plane[None], 5.0, (0.0, 1.0), max_tile=128)[0]
    assert out2.shape == plane.shape and np.abs(out2 - plane)[10:-10, 10:-10].max() < 0.05


def test_model_file_round_trip_and_checks(tmp_path):
    model = SegmentationModel.new("vgg", "membrane", box_size=32, pixel_size=12.5, colour="#123456", threshold=0.4, emit=True)
    model.history = [{"epoch": 1, "train_loss": 0.5}]
    model.training = {"epochs": 1, "batch_size": 8}
    path = model.save(tmp_path / "m.scnm")
    with zipfile.ZipFile(path) as archive:
        assert set(archive.namelist()) == {"metadata.json", "weights.pt"}
    loaded = SegmentationModel.load(path)
    meta = loaded.metadata()
    for key in ("title", "colour", "pixel_size", "box_size", "architecture", "threshold", "overlap", "emit", "absorb", "final_loss", "n_parameters", "epochs", "batch_size"):
        assert meta[key] == model.metadata()[key], key
    x = torch.randn(1, 1, 32, 32)
    model.net.eval()
    torch.testing.assert_close(loaded.net(x), model.net(x))
    with pytest.raises(CryoInputError, match="already exists"):
        model.save(path)
    (tmp_path / "junk.scnm").write_text("not a model")
    with pytest.raises(CryoInputError, match="junk.scnm.*not a zip"):
        SegmentationModel.load(tmp_path / "junk.scnm")
    with zipfile.ZipFile(tmp_path / "other.scnm", "w") as archive:
        archive.writestr("readme.txt", "x")
    with pytest.raises(CryoInputError, match="lacks"):
        SegmentationModel.load(tmp_path / "other.scnm")
    with pytest.raises(CryoInputError, match="not found"):
        SegmentationModel.load(tmp_path / "missing.scnm")


def test_model_weights_must_fit_architecture(tmp_path):
    model = SegmentationModel.new("vgg", "membrane", box_size=32)
    data = model.to_bytes()
    import io
    import json

    src = zipfile.ZipFile(io.BytesIO(data))
    meta = json.loads(src.read("metadata.json"))
    meta["architecture"] = "unet"
    with zipfile.ZipFile(tmp_path / "lie.scnm", "w") as archive:
        archive.writestr("metadata.json", json.dumps(meta))
        archive.writestr("weights.pt", src.read("weights.pt"))
    with pytest.raises(CryoInputError, match="do not fit the 'unet'"):
        SegmentationModel.load(tmp_path / "lie.scnm")
    meta["architecture"] = "no-such-net"
    with zipfile.ZipFile(tmp_path / "unknown.scnm", "w") as archive:
        archive.writestr("metadata.json", json.dumps(meta))
        archive.writestr("weights.pt", src.read("weights.pt"))
    with pytest.raises(CryoInputError, match="unknown architecture"):
        SegmentationModel.load(tmp_path / "unknown.scnm")


def test_group_file_round_trip_and_checks(tmp_path):
    a = SegmentationModel.new("vgg", "membrane", box_size=32)
    b = SegmentationModel.new("unet", "particle", box_size=32, absorb=True)
    c = SegmentationModel.new("vgg", "carbon", box_size=32, emit=True)
    graph = InteractionGraph([Interaction("particle", "membrane", "colocalize", 0.5, 25.0)], set(), set())
    group = ModelGroup([a, b, c], graph)
    assert group.graph.emit == {"carbon"} and group.graph.absorb == {"particle"}
    path = group.save(tmp_path / "g.scnmgroup")
    loaded = ModelGroup.load(path)
    assert loaded.titles == ["membrane", "particle", "carbon"]
    assert loaded.graph.interactions == graph.interactions and loaded.model("carbon").emit
    # A single model where a group is expected, and the reverse.
    a.save(tmp_path / "a.scnm")
    with pytest.raises(CryoInputError, match="single model"):
        ModelGroup.load(tmp_path / "a.scnm")
    with pytest.raises(CryoInputError, match="model group"):
        SegmentationModel.load(path)
    # load_models merges files; a group keeps its interactions.
    merged = load_models([path])
    assert len(merged.graph.interactions) == 1
    with pytest.raises(CryoInputError, match="both called"):
        load_models([tmp_path / "a.scnm", path])
    # An interaction naming a missing model, and a cycle, are refused.
    with pytest.raises(CryoInputError, match="ribosome"):
        ModelGroup([a, b], InteractionGraph([Interaction("ribosome", "membrane", "avoid")], set(), set()))
    with pytest.raises(CryoInputError, match="cycle"):
        ModelGroup([a, b], InteractionGraph([Interaction("particle", "membrane", "avoid"), Interaction("membrane", "particle", "avoid")], set(), set()))


def test_train_learns_resumes_and_previews(slab_tomogram, tmp_path):
    data, truth = slab_tomogram
    feature = Feature("bars", 1, "#ff0000")
    settings = TrainSettings(epochs=4, batch_size=16, lr=3e-3, val_fraction=0.2, patience=0, budget_s=None, boxes=BoxSettings(box=32, positives_per_slice=12, copies=2))
    plane = data.volume[5]
    stats = normalisation(data.volume)
    ckpt = tmp_path / "bars.ckpt"
    gen = train_feature([data], feature, "vgg", settings, checkpoint=ckpt, preview=lambda: (5, data.volume, 10.0, stats))
    model, items = drain(gen)
    records = [i for i in items if isinstance(i, EpochRecord)]
    previews = [i for i in items if isinstance(i, SlicePreview)]
    assert [r.epoch for r in records] == [1, 2, 3, 4] and all(np.isfinite(r.val_loss) for r in records)
    assert records[-1].train_loss < records[0].train_loss
    assert len(previews) == 4 and previews[0].probabilities.shape == plane.shape
    assert any(isinstance(i, Progress) for i in items)
    # The model finds the unpainted slices' bars.
    prob, _ = drain(predict_volume([model], data.volume, 10.0))
    pred = prob["bars"] >= 0.5
    gt = truth == 1
    dice = 2 * (pred & gt).sum() / (pred.sum() + gt.sum())
    assert dice > 0.7, dice
    assert model.training["feature_value"] == 1 and model.final_loss == records[-1].train_loss

    # Interrupt a run after its second epoch, then resume: the result matches the uninterrupted run.
    ckpt2 = tmp_path / "again.ckpt"
    gen = train_feature([data], feature, "vgg", settings, checkpoint=ckpt2)
    epochs_seen = 0
    for item in gen:
        if isinstance(item, EpochRecord):
            epochs_seen += 1
            if epochs_seen == 2:
                break
    gen.close()
    resumed, items = drain(train_feature([data], feature, "vgg", settings, checkpoint=ckpt2))
    assert any(isinstance(i, Progress) and "resumed at epoch 2" in i.message for i in items)
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3, 4]
    np.testing.assert_allclose([r["train_loss"] for r in resumed.history], [r.train_loss for r in records], rtol=1e-4)


def test_pix2pix_trains_adversarially(slab_tomogram):
    data, _ = slab_tomogram
    settings = TrainSettings(epochs=2, batch_size=8, boxes=BoxSettings(box=32, positives_per_slice=4, copies=1))
    model, items = drain(train_feature([data], Feature("bars", 1, "#ff0000"), "pix2pix", settings))
    assert model.architecture == "pix2pix" and len(model.history) == 2
    assert all(np.isfinite(r["train_loss"]) for r in model.history)


def test_session_rules_and_preview(slab_tomogram):
    data, _ = slab_tomogram
    session = SegmentationSession()
    for title in ("membrane", "particle"):
        session.add_model(SegmentationModel.new("vgg", title, box_size=32, pixel_size=10.0))
    session.add_interaction(Interaction("particle", "membrane", "colocalize", 0.5, 5.0))
    with pytest.raises(CryoInputError, match="cycle"):
        session.add_interaction(Interaction("membrane", "particle", "avoid", 0.5, 5.0))
    assert len(session.graph.interactions) == 1  # the refused edge left the graph as it was
    with pytest.raises(CryoInputError, match="carbon"):
        session.add_interaction(Interaction("particle", "carbon", "avoid"))
    session.set_competition("membrane", emit=True, absorb=False)
    out = session.preview(data.volume, 0, 10.0, normalisation(data.volume))
    assert set(out) == {"membrane", "particle"} and out["membrane"].shape == data.volume.shape[1:]
    session.remove_model("membrane")
    assert session.graph.interactions == [] and session.graph.emit == set()
