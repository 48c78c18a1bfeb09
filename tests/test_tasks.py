import time

import pytest

from napari_cryo.errors import CryoInputError
from napari_cryo.tasks import Progress, run_with_tqdm


def counting(n, fail_at=None):
    for i in range(n):
        if i == fail_at:
            raise CryoInputError("x.mrc", "broken")
        yield Progress(i + 1, n, f"step {i + 1}")
        yield ("value", i)
        time.sleep(0.01)
    return "done"


def test_run_with_tqdm_returns_and_forwards_values():
    seen = []
    assert run_with_tqdm(counting(5), "count", seen.append) == "done"
    assert seen == [("value", i) for i in range(5)]


def test_run_with_tqdm_propagates_errors():
    with pytest.raises(CryoInputError, match="broken"):
        run_with_tqdm(counting(5, fail_at=2))


@pytest.mark.gui
def test_worker_yields_on_main_thread_and_cancels(qtbot):
    import threading

    from napari_cryo._view import start_worker

    main = threading.get_ident()
    values, threads, returned = [], [], []

    def on_yield(v):
        values.append(v)
        threads.append(threading.get_ident())

    worker = start_worker(counting, 5, description="count", on_yield=on_yield, on_returned=returned.append)
    with qtbot.waitSignal(worker.finished, timeout=10000):
        pass
    assert returned == ["done"] and len(values) == 5 and set(threads) == {main}

    worker = start_worker(counting, 1000, description="long")
    with qtbot.waitSignal(worker.finished, timeout=10000):
        time.sleep(0.05)
        worker.quit()
    assert worker.abort_requested


@pytest.mark.gui
def test_worker_errors_become_notifications(qtbot, monkeypatch):
    import napari.utils.notifications as notifications

    from napari_cryo import _view

    shown = []
    monkeypatch.setattr(notifications, "show_error", shown.append)
    worker = _view.start_worker(counting, 5, fail_at=1, description="count")
    with qtbot.waitSignal(worker.finished, timeout=10000):
        pass
    assert shown == ["x.mrc: broken"]


def test_drain_returns_the_value_and_every_item():
    from napari_cryo.tasks import Progress, drain

    def gen():
        yield Progress(1, 2)
        yield "map"
        return 42

    seen = []
    value, items = drain(gen(), seen.append)
    assert value == 42 and items == [Progress(1, 2), "map"] and seen == items


def test_run_with_tqdm_writes_progress_lines_to_a_log(monkeypatch, capsys):
    """Standard error is not a terminal under pytest: no bar, but a line per LOG_EVERY_S with the step and its message;
    a time budget is counted in seconds."""
    from napari_cryo import tasks

    monkeypatch.setattr(tasks, "LOG_EVERY_S", 0.0)

    def job():
        for i in range(3):
            yield tasks.Progress(i + 1, 3, f"epoch {i + 1}")
        yield {"phase": "amortized"}
        return "done"

    seen = []
    assert tasks.run_with_tqdm(job(), "training", seen.append) == "done"
    err = capsys.readouterr().err
    assert "training: 1/3: epoch 1" in err and "training: 3/3: epoch 3" in err
    assert seen == [{"phase": "amortized"}]
    assert tasks.run_with_tqdm(job(), "reconstruct", budget_s=60) == "done"
    assert "reconstruct: 0 of 60 s: epoch 1" in capsys.readouterr().err
