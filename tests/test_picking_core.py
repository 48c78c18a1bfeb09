import numpy as np
import pytest
import torch

from napari_cryo.errors import CryoInputError
from napari_cryo.picking.evaluate import score_picks
from napari_cryo.picking.labels import FALSE_POSITIVE, UNLABELLED, build_target, prepare_training_micrograph
from napari_cryo.picking.model import BACKGROUND, JUNK, PARTICLE, PickerModel, PickerNet, receptive_field
from napari_cryo.picking.picks import extract_picks, suppress_close
from napari_cryo.picking.preprocess import DIAMETER_PX, Scaling, normalise, prepare, working_pixel_size
from napari_cryo.picking.session import SOURCE_AUTO, SOURCE_MANUAL, MicrographSession
from napari_cryo.picking.training import TrainConfig, picker_loss, train
from napari_cryo.synthetic import simulate_micrograph
from napari_cryo.training_loop import EpochRecord, Resumed


def test_working_pixel_size():
    assert working_pixel_size(200, 1.0) == pytest.approx(200 / DIAMETER_PX)
    assert working_pixel_size(40, 4.0) == 4.0  # never finer than the micrograph
    assert working_pixel_size(200, 1.0, override=8.0) == 8.0
    with pytest.raises(ValueError):
        working_pixel_size(-5, 1.0)


def test_scaling_round_trip_and_centres():
    s = Scaling(0.25, 0.25)
    yx = np.array([[1.5, 1.5], [100.0, 37.0]])
    np.testing.assert_allclose(s.to_original(s.to_working(yx)), yx)
    # Original pixels 0..3 average into working pixel 0, whose centre is at original 1.5.
    np.testing.assert_allclose(s.to_original([[0.0, 0.0]]), [[1.5, 1.5]])


def test_prepare_shrinks_and_normalises(rng):
    image = rng.normal(5.0, 3.0, (400, 300)).astype(np.float32)
    work, scaling = prepare(image, 1.0, 4.0)
    assert work.shape == (100, 75) and scaling.fy == 0.25
    assert abs(np.median(work)) < 0.2
    assert np.allclose(normalise(image, invert=True), -normalise(image))


def test_receptive_field_is_about_a_hundred_pixels():
    assert 90 <= receptive_field(PickerNet()) <= 130


def test_build_target_classes():
    junk = np.zeros((100, 100), bool)
    junk[:, 90:] = True
    t = build_target((100, 100), np.array([[50.0, 50.0]]), np.array([[20.0, 20.0]]), junk)
    assert t[50, 50] == PARTICLE
    assert t[50, 50 + int(DIAMETER_PX * 0.4)] == BACKGROUND  # ring around a labelled particle
    assert t[20, 20] == FALSE_POSITIVE
    assert t[5, 95] == JUNK
    assert t[5, 60] == UNLABELLED
    complete = build_target((100, 100), np.array([[50.0, 50.0]]), complete=True)
    assert complete[5, 60] == BACKGROUND


def test_loss_pu_term_pushes_unlabelled_pixels():
    torch.manual_seed(0)
    logits = torch.zeros(1, 3, 16, 16, requires_grad=True)
    target = torch.full((1, 16, 16), UNLABELLED)
    target[0, 8, 8] = PARTICLE
    target[0, 0, 0] = BACKGROUND
    weights = torch.ones(3)
    loss_no_pu, parts = picker_loss(logits, target, torch.tensor([0.01]), weights, pu_weight=0.0)
    assert "pu" not in parts
    loss, parts = picker_loss(logits, target, torch.tensor([0.01]), weights)
    assert "pu" in parts and torch.isfinite(loss)
    loss.backward()
    # Unlabelled pixels are pushed away from 'particle' (prior is small).
    assert logits.grad[0, PARTICLE, 3, 3] > 0


def test_extract_keeps_the_higher_score_of_two_close_picks():
    prob = np.zeros((60, 60))
    prob[20, 20] = 0.7
    prob[20, 24] = 0.9  # 4 px away, higher score
    prob[50, 50] = 0.8
    yx, scores = extract_picks(prob, 0.5, min_distance=6)
    assert len(yx) == 2
    np.testing.assert_allclose(yx[0], [20, 24])
    np.testing.assert_allclose(scores, [0.9, 0.8])


def test_extract_border_and_exclusion():
    prob = np.zeros((60, 60))
    prob[2, 30] = prob[30, 30] = prob[45, 45] = 0.9
    exclude = np.zeros((60, 60), bool)
    exclude[40:, 40:] = True
    yx, _ = extract_picks(prob, 0.5, 0, border=5, exclude=exclude)
    np.testing.assert_allclose(yx, [[30, 30]])


def test_extract_centroid_is_subpixel():
    prob = np.zeros((20, 20))
    prob[10, 10] = prob[10, 11] = 0.9
    yx, _ = extract_picks(prob, 0.5, 0)
    np.testing.assert_allclose(yx, [[10.0, 10.5]])


def test_suppress_close_order():
    centres = np.array([[0.0, 0.0], [1.0, 0.0], [10.0, 0.0], [10.5, 0.0]])
    assert list(suppress_close(centres, 2.0)) == [0, 2]


def test_scores():
    truth = np.array([[10.0, 10.0], [50.0, 50.0], [90.0, 90.0], [10.0, 90.0]])
    s = score_picks(truth + 0.5, np.array([0.9, 0.8, 0.7, 0.6]), truth, 2.0)
    assert s.average_precision == pytest.approx(1.0) and s.f1 == pytest.approx(1.0)
    picks = np.array([[10.0, 10.0], [30.0, 30.0], [50.0, 50.0]])
    s = score_picks(picks, np.array([0.9, 0.8, 0.7]), truth, 2.0)
    # hits at ranks 1 and 3: precision 1, 1/2, 2/3; recall 1/4, 1/4, 2/4
    assert s.average_precision == pytest.approx(0.25 * 1 + 0.25 * (2 / 3))
    assert s.precision_at_90_recall == 0.0 and s.n_true == 4


def test_session_tracks_manual_and_rejected(rng):
    from napari_cryo.picking.picks import PickResult

    prob = np.zeros((3, 50, 50), np.float32)
    for y, x in ((10, 10), (25, 25), (40, 40)):
        prob[PARTICLE, y, x] = 0.9
    result = PickResult(prob, Scaling(1.0, 1.0), 1.0, 1.0, 6.0, (50, 50))
    s = MicrographSession(1.0, 6.0, result, threshold=0.5)
    data, feats = s.points()
    assert len(data) == 3 and set(feats["source"]) == {SOURCE_AUTO}
    # the user deletes the pick at (25, 25) and adds one at (5, 45)
    keep = np.array([[10.0, 10.0], [40.0, 40.0], [5.0, 45.0]])
    s.sync_from_layer(keep, np.array([SOURCE_AUTO, SOURCE_AUTO, SOURCE_MANUAL], object))
    np.testing.assert_allclose(s.false_positives, [[25, 25]])
    data, feats = s.points()
    assert len(data) == 3 and list(feats["source"]).count(SOURCE_MANUAL) == 1
    assert s.count(0.95) == 1  # the manual pick survives any threshold


def _tiny_training_set():
    mics = [simulate_micrograph(shape=(320, 320), pixel_size=5.0, diameter=150, n_particles=25, seed=s) for s in range(2)]
    data = [
        prepare_training_micrograph(m.image, 5.0, 7.5, m.picks[::3], junk_mask=m.junk_mask > 0, name=str(i))
        for i, m in enumerate(mics)
    ]
    return mics, data


def test_training_reduces_loss_and_resumes(tmp_path):
    _, data = _tiny_training_set()
    config = TrainConfig(epochs=3, steps_per_epoch=6, batch_size=4, patch=96, seed=1)
    ckpt = tmp_path / "m.ckpt"
    model = PickerModel.new(seed=1)
    gen = train(model, data, config, ckpt)
    epochs = []
    for item in gen:
        if isinstance(item, EpochRecord):
            epochs.append(item)
            if item.epoch == 2:
                gen.close()  # interrupted after epoch 2
                break
    assert ckpt.exists() and len(epochs) == 2
    resumed = list(train(PickerModel.new(seed=1), data, config, ckpt))
    first = [i for i in resumed if isinstance(i, (Resumed, EpochRecord))][0]
    assert isinstance(first, Resumed) and first.epoch == 2
    history = [i for i in resumed if isinstance(i, EpochRecord)]
    assert [h.epoch for h in history] == [3]
    assert all(np.isfinite(h.train_loss) for h in history)
    # Seconds count the time before the interruption too.
    assert history[0].seconds >= epochs[-1].seconds


def test_training_without_labels_is_refused():
    _, data = _tiny_training_set()
    for d in data:
        d.n_labelled = 0
    with pytest.raises(CryoInputError, match="no labelled particles"):
        list(train(PickerModel.new(), data, TrainConfig(epochs=1, steps_per_epoch=1)))


def test_model_file_round_trip_and_bad_files(tmp_path):
    model = PickerModel.new(name="m1")
    model.threshold = 0.3
    path = model.save(tmp_path / "m1.pt", half=True)
    back = PickerModel.load(path)
    assert back.name == "m1" and back.threshold == 0.3
    x = torch.randn(1, 1, 64, 64)
    model.net.eval()
    np.testing.assert_allclose(back.net(x).detach(), model.net(x).detach(), atol=5e-2)
    (tmp_path / "junk.pt").write_text("not a model")
    with pytest.raises(CryoInputError, match="junk.pt: is not a model file"):
        PickerModel.load(tmp_path / "junk.pt")
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(CryoInputError, match="not a napari-cryo picking model"):
        PickerModel.load(tmp_path / "other.pt")
    with pytest.raises(CryoInputError, match="model file not found"):
        PickerModel.load(tmp_path / "none.pt")


def test_generic_model_picks_the_sample_micrograph():
    from napari_cryo.picking.picks import pick_micrograph

    mic = simulate_micrograph(seed=11)
    model = PickerModel.generic()
    result = pick_micrograph(model, mic.image, mic.pixel_size, mic.diameter)
    yx, scores = result.picks(0.05)
    s = score_picks(yx, scores, mic.picks, mic.diameter / 4 / mic.pixel_size)
    assert s.average_precision > 0.6, s.as_dict()
    # nothing picked on carbon or contamination
    iy, ix = np.round(yx[scores > 0.5]).astype(int).T
    assert np.mean(mic.junk_mask[iy, ix] > 0) < 0.1


def test_pick_rejects_bad_micrographs():
    from napari_cryo.picking.picks import pick_micrograph

    model = PickerModel.new()
    with pytest.raises(CryoInputError, match="empty"):
        pick_micrograph(model, np.zeros((64, 64)), 1.0, 50)
    with pytest.raises(CryoInputError, match="NaN"):
        pick_micrograph(model, np.full((64, 64), np.nan), 1.0, 50)
