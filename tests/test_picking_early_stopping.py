"""Training that finishes the job: early stopping, best weights, time budget, resume, ETA (#30 item 3)."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch

from napari_cryo.errors import CryoInputError
from napari_cryo.picking.labels import UNLABELLED, prepare_training_micrograph
from napari_cryo.picking.model import BACKGROUND, PARTICLE, PickerModel
from napari_cryo.picking.training import TrainConfig, hold_out_particles, train, validation_scores
from napari_cryo.synthetic import simulate_micrograph
from napari_cryo.tasks import Progress, drain
from napari_cryo.training_loop import (
    STOP_BUDGET,
    STOP_CANCELLED,
    STOP_MAX_EPOCHS,
    STOP_PATIENCE,
    EarlyStopping,
    EpochRecord,
    Resumed,
    Stopped,
    describe_event,
    run_training,
)

TORCH_THREADS = 1  # tiny tensors: threads only stall when other jobs share the CPU

# --- the shared loop, on a scripted job ---------------------------------------------------------------------------------


def _scripted(val: list[float], seconds_per_epoch: float = 0.0):
    """A job whose weights after epoch k are all k and whose validation after epoch k is ``val[k - 1]``."""
    net = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)

    def train_epoch(epoch: int):
        for step in range(2):
            if seconds_per_epoch:
                time.sleep(seconds_per_epoch / 2)
            yield Progress(epoch * 2 + step + 1, 2 * 100, f"epoch {epoch + 1}")
        with torch.no_grad():
            net.weight.fill_(epoch + 1)
            net.bias.fill_(epoch + 1)
        return 1.0 / (epoch + 1)

    def validate(epoch: int) -> float:
        return val[epoch]

    return net, opt, train_epoch, validate


WORSE_AFTER_3 = [3.0, 2.0, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5]


def test_patience_stops_and_restores_the_best_weights():
    net, opt, train_epoch, validate = _scripted(WORSE_AFTER_3)
    stopping = EarlyStopping(patience=3)
    history, items = drain(run_training(net, [opt], 10, train_epoch, validate, stopping=stopping))
    assert [r.epoch for r in history] == [1, 2, 3, 4, 5, 6]  # three epochs without beating epoch 3
    assert stopping.reason == STOP_PATIENCE and stopping.best_epoch == 3 and stopping.best_value == 1.0
    assert float(net.weight[0, 0]) == 3.0 and float(net.bias[0]) == 3.0  # epoch 6 wrote 6: the best came back
    stopped = items[-1]
    assert isinstance(stopped, Stopped) and (stopped.reason, stopped.epoch, stopped.best_epoch) == (STOP_PATIENCE, 6, 3)
    assert "keeping epoch 3" in describe_event(stopped)


def test_without_keep_best_the_last_weights_stay():
    net, opt, train_epoch, validate = _scripted(WORSE_AFTER_3)
    drain(run_training(net, [opt], 10, train_epoch, validate, stopping=EarlyStopping(patience=2, keep_best=False)))
    assert float(net.weight[0, 0]) == 5.0


def test_max_epochs_and_no_validation_keep_the_last():
    net, opt, train_epoch, _ = _scripted(WORSE_AFTER_3)
    stopping = EarlyStopping(patience=1)
    history, _ = drain(run_training(net, [opt], 4, train_epoch, None, stopping=stopping))
    # Without validation every epoch counts as the best, so patience never ends the run.
    assert stopping.reason == STOP_MAX_EPOCHS and len(history) == 4 and stopping.best_epoch == 4
    assert float(net.weight[0, 0]) == 4.0


def test_budget_stops_before_it_is_spent():
    net, opt, train_epoch, validate = _scripted([1.0 / (k + 1) for k in range(50)], seconds_per_epoch=0.2)
    stopping = EarlyStopping(patience=None, budget_s=0.7)
    t0 = time.perf_counter()
    history, _ = drain(run_training(net, [opt], 50, train_epoch, validate, stopping=stopping))
    assert stopping.reason == STOP_BUDGET
    assert 2 <= len(history) <= 3  # a fourth 0.2 s epoch would end past 0.7 s
    assert history[-1].seconds <= 0.7 + 0.1 and time.perf_counter() - t0 < 2.0


def test_plateau_halves_the_learning_rate():
    net, opt, train_epoch, validate = _scripted(WORSE_AFTER_3)
    history, _ = drain(run_training(net, [opt], 8, train_epoch, validate, stopping=EarlyStopping(patience=None, lr_patience=2)))
    # Epochs 4 and 5 do not beat epoch 3: the rate halves after 5 and again after 7.
    assert [r.lr for r in history] == pytest.approx([0.1] * 5 + [0.05] * 2 + [0.025])


def test_progress_shows_best_value_and_an_eta():
    net, opt, train_epoch, validate = _scripted(WORSE_AFTER_3, seconds_per_epoch=0.02)
    _, items = drain(run_training(net, [opt], 10, train_epoch, validate, stopping=EarlyStopping(patience=2, budget_s=60)))
    messages = [i.message for i in items if isinstance(i, Progress)]
    assert all("ETA" in m for m in messages[2:])
    assert any("best val 1.0000 (epoch 3)" in m for m in messages)
    # The bar's total is the estimate of the steps left, not the cap of 100 epochs.
    assert all(i.total < 200 for i in items[4:] if isinstance(i, Progress))


def test_cancel_restores_the_best_weights():
    net, opt, train_epoch, validate = _scripted(WORSE_AFTER_3)
    stopping = EarlyStopping(patience=5)
    gen = run_training(net, [opt], 10, train_epoch, validate, stopping=stopping)
    for item in gen:
        if isinstance(item, Progress) and item.done == 9:  # during epoch 5
            gen.close()
            break
    assert stopping.reason == STOP_CANCELLED and stopping.best_epoch == 3
    assert float(net.weight[0, 0]) == 3.0


def test_a_resumed_run_keeps_its_best_and_its_patience(tmp_path):
    ckpt = tmp_path / "run.ckpt"
    net, opt, train_epoch, validate = _scripted(WORSE_AFTER_3)
    gen = run_training(net, [opt], 10, train_epoch, validate, ckpt, "k", EarlyStopping(patience=3, lr_patience=2))
    for item in gen:
        if isinstance(item, EpochRecord) and item.epoch == 5:
            gen.close()  # two epochs past the best, the rate halved once
    net, opt, train_epoch, validate = _scripted(WORSE_AFTER_3)
    with torch.no_grad():
        net.weight.fill_(-1.0)
    stopping = EarlyStopping(patience=3, lr_patience=2)
    history, items = drain(run_training(net, [opt], 10, train_epoch, validate, ckpt, "k", stopping))
    assert isinstance(next(i for i in items if isinstance(i, (Resumed, EpochRecord))), Resumed)
    # One more epoch exhausts the patience; the best (epoch 3) came from the checkpoint.
    assert [r.epoch for r in items if isinstance(r, EpochRecord)] == [6]
    assert stopping.reason == STOP_PATIENCE and stopping.best_epoch == 3
    assert float(net.weight[0, 0]) == 3.0
    assert history[-1].lr == pytest.approx(0.05)  # the halved rate was resumed, not reset

    # A run that had already stopped stops at once when resumed.
    net, opt, train_epoch, validate = _scripted(WORSE_AFTER_3)
    history2, items = drain(run_training(net, [opt], 10, train_epoch, validate, ckpt, "k", EarlyStopping(patience=3)))
    assert not [i for i in items if isinstance(i, EpochRecord)]
    assert len(history2) == 6 and float(net.weight[0, 0]) == 3.0 and isinstance(items[-1], Stopped)


# --- the picker ----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def one_micrograph():
    """One small micrograph with 12 of its particles labelled (what a user who picked one micrograph gives)."""
    m = simulate_micrograph(shape=(384, 384), pixel_size=5.0, diameter=150, n_particles=30, seed=3)
    return [prepare_training_micrograph(m.image, 5.0, 7.5, m.picks[:12], name="one")]


def test_held_out_particles_leave_training_and_form_the_validation(one_micrograph):
    (m,) = one_micrograph
    before = m.target.copy()
    train_set, val_set = hold_out_particles(one_micrograph, 0.25, seed=0)
    (t,), (v,) = train_set, val_set
    assert v.n_particles == 3 and t.n_labelled == m.n_labelled - 3
    np.testing.assert_array_equal(m.target, before)  # the input is not changed
    # What validation holds is unlabelled for training, and was labelled before.
    held = v.target != UNLABELLED
    assert np.all(t.target[held] == UNLABELLED) and np.all(before[held] == v.target[held])
    assert (v.target == PARTICLE).any() and (v.target == BACKGROUND).sum() > 5 * (v.target == PARTICLE).sum()
    # Everything else is as before.
    np.testing.assert_array_equal(t.target[~held], before[~held])
    # Too few labels: no split.
    few = [prepare_training_micrograph(m.image, 7.5, 7.5, np.zeros((0, 2)), name="x")]
    assert hold_out_particles(few, 0.2)[1] == []


def test_validation_recall_follows_the_threshold(one_micrograph):
    _, val_set = hold_out_particles(one_micrograph, 0.25)
    model = PickerModel.new(seed=0)
    loss, recall = validation_scores(model, val_set, threshold=0.0)
    assert math.isfinite(loss) and loss > 0 and recall == 1.0
    assert validation_scores(model, val_set, threshold=1.01)[1] == 0.0


def _tiny(**kwargs) -> TrainConfig:
    return TrainConfig(**{"steps_per_epoch": 2, "batch_size": 2, "patch": 96, "seed": 1, **kwargs})


def test_picker_keeps_the_weights_of_its_best_epoch(one_micrograph):
    model = PickerModel.new(seed=1)
    snapshots = {}
    gen = train(model, one_micrograph, _tiny(epochs=6, patience=None, lr=3e-2))
    for item in gen:
        if isinstance(item, EpochRecord):
            snapshots[item.epoch] = ({k: v.clone() for k, v in model.net.state_dict().items()}, item.val_loss)
    run = model.history[-1]
    best = min(snapshots, key=lambda e: snapshots[e][1])
    assert run["stopped"] == STOP_MAX_EPOCHS and run["epochs"] == 6 and run["best_epoch"] == best
    assert run["validation_particles"] == 2 and run["best_val_loss"] == pytest.approx(snapshots[best][1])
    for name, value in model.net.state_dict().items():
        torch.testing.assert_close(value, snapshots[best][0][name])
    if best != 6:  # the last epoch's weights were not kept
        assert any(not torch.equal(v, snapshots[6][0][k]) for k, v in model.net.state_dict().items())


def test_picker_budget_and_reasons_in_the_history(one_micrograph):
    model = PickerModel.new(seed=1)
    t0 = time.perf_counter()
    _, items = drain(train(model, one_micrograph, _tiny(epochs=1000, budget_s=0.5)))
    assert time.perf_counter() - t0 < 30
    run = model.history[-1]
    assert run["stopped"] == STOP_BUDGET and 1 <= run["epochs"] < 1000 and 1 <= run["best_epoch"] <= run["epochs"]
    assert isinstance(items[-1], Stopped) and items[-1].reason == STOP_BUDGET
    assert any("ETA" in i.message for i in items if isinstance(i, Progress))


def test_picker_cancel_is_recorded(one_micrograph):
    model = PickerModel.new(seed=1)
    gen = train(model, one_micrograph, _tiny(epochs=50))
    for item in gen:
        if isinstance(item, EpochRecord) and item.epoch == 2:
            gen.close()
    assert model.history[-1]["stopped"] == STOP_CANCELLED and model.history[-1]["epochs"] == 2


def test_picker_resume_continues_the_best_so_far(one_micrograph, tmp_path):
    ckpt = tmp_path / "m.ckpt"
    config = _tiny(epochs=4, patience=None)
    gen = train(PickerModel.new(seed=1), one_micrograph, config, ckpt)
    for item in gen:
        if isinstance(item, EpochRecord) and item.epoch == 2:
            gen.close()
    # Another budget or patience does not stop the checkpoint from being resumed.
    model = PickerModel.new(seed=5)
    _, items = drain(train(model, one_micrograph, _tiny(epochs=4, patience=10, budget_s=600), ckpt))
    resumed = [i for i in items if isinstance(i, Resumed)]
    assert resumed and resumed[0].epoch == 2
    run = model.history[-1]
    assert [r["epoch"] for r in run["losses"]] == [1, 2, 3, 4] and run["stopped"] == STOP_MAX_EPOCHS
    vals = [r["val_loss"] for r in run["losses"]]
    assert run["best_epoch"] == 1 + int(np.argmin(vals))


def test_bad_settings_are_refused(one_micrograph):
    for bad in ({"patience": -1}, {"budget_s": 0.0}, {"schedule": "cosine-ish"}, {"epochs": 0}, {"val_fraction": 1.0}):
        with pytest.raises(CryoInputError):
            drain(train(PickerModel.new(), one_micrograph, _tiny(**bad)))


def test_fixed_epochs_config():
    config = TrainConfig.fixed(7)
    assert (config.epochs, config.patience, config.budget_s, config.schedule) == (7, None, None, "cosine")
    # Stopping settings do not change the run key (a resume may extend the budget); the schedule does.
    assert TrainConfig(budget_s=60).key() == TrainConfig(budget_s=600, patience=2, epochs=5).key()
    assert TrainConfig.fixed(7).key() != TrainConfig.fixed(8).key()


# --- the command line ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cli_data(tmp_path_factory):
    from napari_cryo.io.mrc import write_mrc
    from napari_cryo.io.star import write_coordinates

    root = tmp_path_factory.mktemp("early")
    m = simulate_micrograph(shape=(384, 384), pixel_size=5.0, diameter=150, n_particles=30, seed=3)
    write_mrc(root / "mic.mrc", m.image, 5.0)
    write_coordinates(root / "mic.star", m.picks[:12], None, 5.0, micrograph_name="mic.mrc")
    return root


def _cli(capsys, *argv):
    from napari_cryo.cli import main

    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _train_args(root, out, *flags):
    return ["pick", "train", root / "mic.mrc", "--positives", root / "mic.star", "--diameter", 150, "--out", out, "--from", "scratch", *flags]


def test_cli_budget_patience_and_epochs(capsys, cli_data, tmp_path):
    code, _, err = _cli(capsys, *_train_args(cli_data, tmp_path / "a.pt", "--budget", 0.001, "--max-epochs", 5, "--steps", 1))
    assert code == 0, err
    run = PickerModel.load(tmp_path / "a.pt").history[-1]
    assert run["stopped"] == STOP_BUDGET and run["epochs"] == 1 and run["config"]["budget_s"] == pytest.approx(0.06)
    assert "stopped after epoch 1 (the time budget is spent" in err

    code, _, err = _cli(capsys, *_train_args(cli_data, tmp_path / "b.pt", "--epochs", 2, "--steps", 1))
    assert code == 0, err
    run = PickerModel.load(tmp_path / "b.pt").history[-1]
    assert run["stopped"] == STOP_MAX_EPOCHS and run["epochs"] == 2
    assert (run["config"]["patience"], run["config"]["budget_s"], run["config"]["schedule"]) == (None, None, "cosine")

    code, _, err = _cli(capsys, *_train_args(cli_data, tmp_path / "c.pt", "--patience", 1, "--max-epochs", 3, "--budget", 0, "--steps", 1))
    assert code == 0, err
    run = PickerModel.load(tmp_path / "c.pt").history[-1]
    assert run["config"]["patience"] == 1 and run["config"]["budget_s"] is None and run["stopped"] in (STOP_PATIENCE, STOP_MAX_EPOCHS)

    code, _, err = _cli(capsys, *_train_args(cli_data, tmp_path / "d.pt", "--patience", -2))
    assert code == 2 and "patience" in err and not (tmp_path / "d.pt").exists()


def test_cli_help_documents_the_stopping_options(capsys):
    with pytest.raises(SystemExit):
        _cli(capsys, "pick", "train", "--help")
    out = capsys.readouterr().out
    for option in ("--budget MINUTES", "--patience N", "--max-epochs N", "--epochs N"):
        assert option in out


def test_cli_interrupt_writes_the_best_so_far_and_resumes(capsys, cli_data, tmp_path, monkeypatch):
    from napari_cryo import tasks

    real = tasks.run_with_tqdm

    def interrupted(gen, *args, **kwargs):
        for item in gen:
            if isinstance(item, EpochRecord) and item.epoch == 2:
                raise KeyboardInterrupt
        raise AssertionError("training ended before the interrupt")

    monkeypatch.setattr(tasks, "run_with_tqdm", interrupted)
    out = tmp_path / "m.pt"
    code, _, err = _cli(capsys, *_train_args(cli_data, out, "--max-epochs", 4, "--patience", 0, "--steps", 1))
    assert code == 130 and "--resume" in err
    run = PickerModel.load(out).history[-1]
    assert run["stopped"] == STOP_CANCELLED and run["epochs"] == 2
    assert (tmp_path / "m.pt.ckpt").exists()

    monkeypatch.setattr(tasks, "run_with_tqdm", real)
    code, _, err = _cli(capsys, *_train_args(cli_data, out, "--max-epochs", 4, "--patience", 0, "--steps", 1, "--resume"))
    assert code == 0, err
    assert "resuming from the checkpoint at epoch 2" in err
    run = PickerModel.load(out).history[-1]
    assert run["stopped"] == STOP_MAX_EPOCHS and run["epochs"] == 4 and not (tmp_path / "m.pt.ckpt").exists()
