"""The default training recipe of segmentation models: augmentation, context slices, slice-wise
validation, early stopping with a budget, and calibration."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
import torch

from napari_cryo.errors import CryoInputError
from napari_cryo.segmentation.augment import Augmentation, augment_batch
from napari_cryo.segmentation.dataset import AnnotatedTomogram, BoxSettings, context_stack, sample_boxes
from napari_cryo.segmentation.features import Feature
from napari_cryo.segmentation.inference import predict_planes, predict_slice, predict_volume
from napari_cryo.segmentation.model import ContextNet, SegmentationModel
from napari_cryo.segmentation.training import TrainSettings, calibration_offset, train_feature
from napari_cryo.tasks import drain
from napari_cryo.training_loop import EpochRecord, Stopped


@pytest.fixture(autouse=True)
def _one_thread():
    # Two threads on a busy two-core machine thrash; one gives steady timings for the budget tests.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _ring_tomogram(seed: int = 0, nz: int = 16, size: int = 96, noise: float = 0.6) -> AnnotatedTomogram:
    """Dark rings (membrane-like, 3 px thick) in noise; every slice painted."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.mgrid[0:nz, 0:size, 0:size]
    labels = np.zeros((nz, size, size), np.uint8)
    for cy, cx, r in ((30, 30, 18), (65, 60, 22)):
        d = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2 + (zz - nz / 2) ** 2 * 0.2)
        labels[np.abs(d - r) <= 1.5] = 1
    volume = (-1.0 * labels + noise * rng.standard_normal(labels.shape)).astype(np.float32)
    return AnnotatedTomogram(volume, labels, 10.0, f"rings{seed}")


def test_no_augmentation_is_the_centre_crop():
    images = torch.randn(4, 3, 48, 48)
    masks = (torch.rand(4, 1, 48, 48) > 0.5).float()
    out, out_masks = augment_batch(images, masks, 32, Augmentation.none(), torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, images[..., 8:40, 8:40], atol=1e-4, rtol=0)
    torch.testing.assert_close(out_masks, masks[..., 8:40, 8:40])


def test_augmentation_moves_image_and_mask_together():
    # A dark bar and its mask: whatever the rotation and zoom, the mask stays on the dark pixels.
    images = torch.zeros(16, 1, 48, 48)
    images[:, :, 20:28, :] = -2.0
    masks = (images < 0).float()
    aug = Augmentation(blur=(0.0, 0.0), noise=(0.0, 0.0), gain=(1.0, 1.0), offset=0.0)
    out, out_masks = augment_batch(images, masks, 32, aug, torch.Generator().manual_seed(1))
    assert out.shape == (16, 1, 32, 32) and set(out_masks.unique().tolist()) <= {0.0, 1.0}
    inside, outside = out[out_masks > 0], out[out_masks == 0]
    assert inside.mean() < -1.5 and outside.mean() > -0.5
    # Rotated by arbitrary angles: the bars do not all stay horizontal.
    rows_only = [bool((m[0].amax(1) == m[0].amin(1)).all()) for m in out_masks]
    assert not all(rows_only)


def test_augmentation_ranges():
    images = torch.zeros(64, 1, 48, 48)
    masks = torch.zeros(64, 1, 48, 48)
    noisy, _ = augment_batch(images, masks, 32, Augmentation(noise=(0.5, 0.5), gain=(1.0, 1.0), offset=0.0, blur=(0, 0)), torch.Generator().manual_seed(2))
    # Noise of sigma 0.5 on a flat image, rescaled by 1/sqrt(1 + 0.25).
    assert abs(float(noisy.std()) - 0.5 / np.sqrt(1.25)) < 0.02
    spikes = torch.zeros(2, 1, 48, 48)
    spikes[:, :, 24, 24] = 1.0
    blurred, _ = augment_batch(spikes, torch.zeros(2, 1, 48, 48), 32, Augmentation(rotate="none", zoom=(1, 1), blur=(1.0, 1.0), noise=(0, 0), gain=(1, 1), offset=0.0),
                               torch.Generator().manual_seed(3))
    assert float(blurred.amax()) < 0.2 and abs(float(blurred.sum(dim=(2, 3)).mean()) - 1.0) < 0.05


def test_context_boxes_and_slice_split():
    tomo = _ring_tomogram()
    boxes = sample_boxes([tomo], 1, 10.0, BoxSettings(box=32, positives_per_slice=4, context=3, cut=48))
    assert boxes.images.shape[1:] == (3, 48, 48) and boxes.masks.shape[1:] == (1, 48, 48)
    assert len(np.unique(boxes.slices)) == 16
    train, val = boxes.split(0.25, seed=0)
    assert val is not None and not set(train.slices) & set(val.slices)
    assert len(np.unique(val.slices)) == 4
    stack = context_stack(tomo.volume, 0, 5, 2)
    np.testing.assert_array_equal(stack[:3], np.repeat(tomo.volume[:1], 3, axis=0))  # beyond the first slice: the first slice
    np.testing.assert_array_equal(stack[3], tomo.volume[2])


def test_calibration_offset_puts_the_best_threshold_at_one_half():
    truth = torch.tensor([0, 0, 0, 1, 1, 1, 0, 1], dtype=torch.float32)
    logits = torch.tensor([-3.0, -2.0, 1.0, 1.5, 2.0, 2.5, 1.2, 3.0])
    offset, dice = calibration_offset(logits, truth)
    # Best cut between 1.2 (negative) and 1.5 (positive): Dice 1.
    assert dice == pytest.approx(1.0) and -offset == pytest.approx(1.35)
    assert torch.equal((torch.sigmoid(logits + offset) >= 0.5).float(), truth)
    assert calibration_offset(logits, torch.zeros(8)) == (0.0, pytest.approx(float("nan"), nan_ok=True))


def test_context_model_round_trip_and_old_files(tmp_path):
    model = SegmentationModel.new("vgg", "membrane", box_size=32, pixel_size=10.0, context=3, logit_offset=-0.7)
    assert isinstance(model.net, ContextNet)
    plane = np.random.default_rng(0).normal(size=(3, 40, 40)).astype(np.float32)
    # The mix starts at zero: a new context model is its 2D network on the centre slice.
    with torch.no_grad():
        x = torch.from_numpy(plane)[None]
        torch.testing.assert_close(model.net(x), model.net.inner(x[:, 1:2]))
    path = model.save(tmp_path / "m.scnm")
    again = SegmentationModel.load(path)
    assert again.context == 3 and again.logit_offset == pytest.approx(-0.7)
    a = predict_planes(model, plane[None], 10.0, (0.0, 1.0))
    b = predict_planes(again, plane[None], 10.0, (0.0, 1.0))
    np.testing.assert_allclose(a, b, atol=1e-6)
    # A file from before context and calibration existed: one slice, no offset.
    old = SegmentationModel.new("vgg", "membrane", box_size=32, pixel_size=10.0)
    raw = old.to_bytes()
    with zipfile.ZipFile(tmp_path / "old.scnm", "w") as out, zipfile.ZipFile(__import__("io").BytesIO(raw)) as src:
        meta = json.loads(src.read("metadata.json"))
        del meta["context"], meta["logit_offset"]
        out.writestr("metadata.json", json.dumps(meta))
        out.writestr("weights.pt", src.read("weights.pt"))
    loaded = SegmentationModel.load(tmp_path / "old.scnm")
    assert loaded.context == 1 and loaded.logit_offset == 0.0
    with zipfile.ZipFile(tmp_path / "even.scnm", "w") as out, zipfile.ZipFile(__import__("io").BytesIO(raw)) as src:
        meta = json.loads(src.read("metadata.json"))
        meta["context"] = 4
        out.writestr("metadata.json", json.dumps(meta))
        out.writestr("weights.pt", src.read("weights.pt"))
    with pytest.raises(CryoInputError, match="odd"):
        SegmentationModel.load(tmp_path / "even.scnm")


def test_context_inference_matches_slice_preview():
    tomo = _ring_tomogram(nz=8, size=64)
    model = SegmentationModel.new("vgg", "membrane", box_size=32, pixel_size=10.0, context=3)
    torch.nn.init.normal_(model.net.mix[2].weight, std=0.3)  # make the neighbours matter
    volume, _ = drain(predict_volume([model], tomo.volume, 10.0, planes_per_step=3))
    for z in (0, 4, 7):
        np.testing.assert_allclose(volume["membrane"][z], predict_slice(model, tomo.volume, z, 10.0, (float(tomo.volume.mean()), float(tomo.volume.std()))), atol=0.05)


def test_default_recipe_learns_stops_early_and_calibrates():
    train = [_ring_tomogram(0), _ring_tomogram(1)]
    test = _ring_tomogram(5, noise=0.9)  # noisier than anything painted
    settings = TrainSettings(batch_size=16, patience=2, budget_s=60.0, epochs=30, min_steps=10,
                             boxes=BoxSettings(box=32, positives_per_slice=4, context=3))
    model, items = drain(train_feature(train, Feature("membrane", 1, "#ffff00"), "vgg", settings))
    stopped = [i for i in items if isinstance(i, Stopped)]
    records = [i for i in items if isinstance(i, EpochRecord)]
    assert len(stopped) == 1 and stopped[0].reason in ("patience", "budget", "max epochs")
    assert all(np.isfinite(r.val_loss) for r in records)
    assert model.training["stopped"] == stopped[0].reason and model.training["validation_boxes"] > 0
    assert model.context == 3 and model.training["validation_dice"] > 0.5
    assert model.logit_offset != 0.0
    prob, _ = drain(predict_volume([model], test.volume, 10.0))
    pred = prob["membrane"] >= 0.5
    truth = test.labels == 1
    dice = 2 * (pred & truth).sum() / (pred.sum() + truth.sum())
    assert dice > 0.6, dice


def test_budget_stops_training():
    settings = TrainSettings(batch_size=16, patience=0, budget_s=0.01, epochs=50, min_steps=2, boxes=BoxSettings(box=32, positives_per_slice=2, context=1))
    model, items = drain(train_feature([_ring_tomogram(0, nz=6)], Feature("membrane", 1, "#ffff00"), "vgg", settings))
    stopped = [i for i in items if isinstance(i, Stopped)]
    assert stopped[0].reason == "budget" and stopped[0].epoch == 1 and len(model.history) == 1


def test_command_line_recipe_options(tmp_path, capsys):
    from napari_cryo.cli import main
    from napari_cryo.io.mrc import write_mrc

    tomo = _ring_tomogram(0, nz=8, size=64)
    write_mrc(tmp_path / "t.mrc", tomo.volume, 10.0)
    write_mrc(tmp_path / "l.mrc", tomo.labels, 10.0, labels=True)
    common = ["segment", "train", str(tmp_path / "t.mrc"), "--labels", str(tmp_path / "l.mrc"), "--feature", "membrane=1", "--box", "32",
              "--boxes-per-slice", "2", "--device", "cpu"]
    assert main([*common, "--out", str(tmp_path / "m.scnm"), "--budget", "0.01", "--context", "3", "--no-augment"]) == 0
    err = capsys.readouterr().err
    assert "stopped after epoch 1 (the time budget is spent" in err
    model = SegmentationModel.load(tmp_path / "m.scnm")
    assert model.context == 3 and model.training["stopped"] == "budget" and model.training["augmentation"]["noise"] == [0.0, 0.0] and model.training["augmentation"]["rotate"] == "none"
    assert main([*common, "--out", str(tmp_path / "n.scnm"), "--context", "4"]) == 2
    err = capsys.readouterr().err
    assert "--context must be an odd number" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "n.scnm").exists()
