"""The shared training loop: records, checkpoints and resume, the same for every learned part."""

from __future__ import annotations

import math

import pytest
import torch

from napari_cryo.tasks import Progress, drain
from napari_cryo.training_loop import EpochRecord, Resumed, run_training


def _job(seed: int = 0):
    """A tiny regression whose every epoch is deterministic, so a resumed run can be compared bit for bit."""
    torch.manual_seed(seed)
    net = torch.nn.Linear(4, 1)
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(64, 4, generator=gen)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])

    def train_epoch(epoch: int):
        losses = []
        for step in range(4):
            idx = torch.arange(step * 16, (step + 1) * 16)
            loss = torch.nn.functional.mse_loss(net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            yield Progress(epoch * 4 + step + 1, 20)
        yield f"preview {epoch}"
        return sum(losses) / len(losses)

    def validate(_epoch: int) -> float:
        with torch.no_grad():
            return float(torch.nn.functional.mse_loss(net(x), y))

    return net, opt, train_epoch, validate


def test_records_every_epoch_with_cumulative_seconds_and_lr():
    net, opt, train_epoch, validate = _job()
    history, items = drain(run_training(net, [opt], 5, train_epoch, validate))
    records = [i for i in items if isinstance(i, EpochRecord)]
    assert records == history
    assert [r.epoch for r in records] == [1, 2, 3, 4, 5]
    assert all(b.seconds >= a.seconds for a, b in zip(records, records[1:]))
    assert all(r.lr == pytest.approx(0.05) for r in records)
    assert records[-1].val_loss < records[0].val_loss
    # What train_epoch yields besides progress is passed on, before the epoch's record.
    assert items.index("preview 0") < items.index(records[0])
    assert EpochRecord.from_dict(records[2].as_dict()) == records[2]


def test_without_validation_the_loss_is_nan():
    net, opt, train_epoch, _ = _job()
    history, _ = drain(run_training(net, [opt], 1, train_epoch))
    assert math.isnan(history[0].val_loss)


def test_an_interrupted_run_resumes_to_the_same_weights(tmp_path):
    net, opt, train_epoch, validate = _job()
    reference, _ = drain(run_training(net, [opt], 5, train_epoch, validate))
    expected = net.weight.detach().clone()

    ckpt = tmp_path / "run.ckpt"
    net, opt, train_epoch, validate = _job()
    gen = run_training(net, [opt], 5, train_epoch, validate, ckpt, run_key="k")
    for item in gen:
        if isinstance(item, EpochRecord) and item.epoch == 2:
            gen.close()
    net, opt, train_epoch, validate = _job()
    history, items = drain(run_training(net, [opt], 5, train_epoch, validate, ckpt, run_key="k"))
    resumed = [i for i in items if isinstance(i, Resumed)]
    assert len(resumed) == 1 and resumed[0].epoch == 2 and len(resumed[0].history) == 2
    assert [r.epoch for r in history] == [1, 2, 3, 4, 5]
    assert [r.epoch for r in items if isinstance(r, EpochRecord)] == [3, 4, 5]
    assert history[2].seconds >= history[1].seconds
    torch.testing.assert_close(net.weight.detach(), expected)
    assert [r.train_loss for r in history] == pytest.approx([r.train_loss for r in reference], rel=1e-5)


def test_a_checkpoint_of_other_settings_is_not_resumed(tmp_path):
    ckpt = tmp_path / "run.ckpt"
    net, opt, train_epoch, _ = _job()
    drain(run_training(net, [opt], 2, train_epoch, checkpoint=ckpt, run_key="a"))
    net, opt, train_epoch, _ = _job()
    history, items = drain(run_training(net, [opt], 2, train_epoch, checkpoint=ckpt, run_key="b"))
    assert not any(isinstance(i, Resumed) for i in items) and [r.epoch for r in history] == [1, 2]


def test_a_checkpoint_of_another_network_is_ignored(tmp_path):
    ckpt = tmp_path / "run.ckpt"
    net, opt, train_epoch, _ = _job()
    drain(run_training(net, [opt], 1, train_epoch, checkpoint=ckpt, run_key="a"))
    other = torch.nn.Linear(3, 1)
    other_opt = torch.optim.Adam(other.parameters())

    def other_epoch(_epoch: int):
        yield Progress(1, 1)
        return 0.0

    history, items = drain(run_training(other, [other_opt], 1, other_epoch, checkpoint=ckpt, run_key="a"))
    assert not any(isinstance(i, Resumed) for i in items) and len(history) == 1


def test_events_print_as_one_line_each(capsys):
    from napari_cryo.training_loop import print_events

    print_events(Resumed(2, ()))
    print_events(EpochRecord(3, 12.4, 0.51234, 0.6))
    print_events(EpochRecord(4, 20.0, 0.4))
    print_events(Progress(1, 2))
    assert capsys.readouterr().err.splitlines() == [
        "resuming from the checkpoint at epoch 2",
        "epoch 3: train loss 0.5123, validation loss 0.6000, 12 s",
        "epoch 4: train loss 0.4000, 20 s",
    ]
