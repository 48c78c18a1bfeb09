"""The run layer: run control (budget, Stop, Pause), the run folder, the controller's session without Qt."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_cryo.errors import CryoInputError
from napari_cryo.reconstruction.run import (
    CHECKPOINT,
    PROGRESS,
    PROGRESS_COLUMNS,
    ReconstructionDiverged,
    RunControl,
    RunFolder,
    check_finite,
)


def test_halted_is_out_of_time_stopped_or_paused():
    flags = {"stop": False, "pause": False}
    control = RunControl(1.0, stop=lambda: flags["stop"], pause=lambda: flags["pause"])
    assert not control.halted() and control.clock() < 1.0
    flags["pause"] = True
    assert control.halted() and control.paused() and not control.stopped() and not control.out_of_time()
    flags["pause"], flags["stop"] = False, True
    assert control.halted() and control.stopped()
    flags["stop"] = False
    control.restart(60.0)  # a resumed run counts its earlier minute: the 1-minute budget is spent
    assert control.clock() >= 60.0 and control.out_of_time() and control.halted()
    assert not RunControl(1.0).halted()  # no Stop, no Pause


def test_run_folder_writes_progress_maps_and_checkpoints(tmp_path):
    folder = RunFolder(tmp_path / "run")
    history: list[dict] = []
    folder.log(history, {"epoch": 1, "phase": "amortized", "loss": 0.5, "elapsed_s": 1.0, "extra": "not a column"})
    written: list[str] = []
    path = folder.write_map(written, np.zeros((8, 8, 8), np.float32), 2.0)
    folder.log(history, {"epoch": 2, "phase": "global search", "loss": 0.4, "elapsed_s": 2.0}, path)
    assert written == ["intermediate_001.mrc"] and path.exists()
    assert history == [{"epoch": 1, "phase": "amortized", "loss": 0.5, "elapsed_s": 1.0, "extra": "not a column"},
                       {"epoch": 2, "phase": "global search", "loss": 0.4, "elapsed_s": 2.0}]  # the map name goes to the file only
    with open(tmp_path / "run" / PROGRESS, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == list(PROGRESS_COLUMNS)
    assert rows[0]["map"] == "" and rows[1]["map"] == "intermediate_001.mrc" and rows[1]["phase"] == "global search"

    folder.save({"key": "abc", "epoch": 3})
    assert folder.start_or_resume("abc", resume=True)["epoch"] == 3
    with pytest.raises(CryoInputError, match="belongs to other particles"):
        folder.start_or_resume("other", resume=True)
    assert folder.start_or_resume("abc", resume=False) is None and not (tmp_path / "run" / PROGRESS).exists()  # a new run
    (tmp_path / "run" / CHECKPOINT).write_bytes(b"not a checkpoint")
    with pytest.raises(CryoInputError, match="cannot be read"):
        folder.start_or_resume("abc", resume=True)


def test_a_run_without_a_folder_writes_nothing(tmp_path):
    folder = RunFolder(None)
    folder.save({"key": "abc"})
    folder.write_progress({"epoch": 1})
    assert folder.write_map([], np.zeros((8, 8, 8), np.float32), 1.0) is None
    assert folder.checkpoint is None and folder.start_or_resume("abc", resume=True) is None


def test_a_loss_that_is_not_finite_stops_the_run(tmp_path):
    check_finite(torch.tensor(1.0), None, "the amortized phase at epoch 1")
    with pytest.raises(ReconstructionDiverged, match="loss became nan in the amortized phase at epoch 2"):
        check_finite(torch.tensor(float("nan")), tmp_path / CHECKPOINT, "the amortized phase at epoch 2")


def test_session_needs_a_finished_run_to_save_poses(tmp_path):
    from napari_cryo.reconstruction.controller import (
        ReconstructionSession,
        particle_data,
    )

    with pytest.raises(CryoInputError, match="no finished reconstruction"):
        ReconstructionSession().save_poses(tmp_path / "poses.star")
    with pytest.raises(CryoInputError, match="choose a particle STAR file"):
        particle_data("", None)


class _Payload:
    """Unpickling this runs code: it would create the file ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_checkpoint_that_would_run_code_is_refused_and_runs_nothing(tmp_path):
    import pickle

    marker = tmp_path / "executed"
    folder = tmp_path / "run"
    folder.mkdir()
    with open(folder / CHECKPOINT, "wb") as fh:
        pickle.dump({"key": "k", "payload": _Payload(marker)}, fh)
    # torch.save's zip format too, as a crafted file in a shared folder would be
    torch_file = tmp_path / "run2"
    torch_file.mkdir()
    torch.save({"key": "k", "payload": _Payload(marker)}, torch_file / CHECKPOINT)
    for out in (folder, torch_file):
        with pytest.raises(CryoInputError, match="cannot be read to resume"):
            RunFolder(out).start_or_resume("k", resume=True)
    assert not marker.exists()


def test_a_saved_state_with_arrays_round_trips(tmp_path):
    folder = RunFolder(tmp_path)
    state = {"key": "k", "volume": np.arange(8, dtype=np.float32).reshape(2, 2, 2), "radius": np.float64(4.5), "history": [{"epoch": 1}]}
    folder.save(state)
    back = folder.start_or_resume("k", resume=True)
    np.testing.assert_array_equal(back["volume"], state["volume"])
    assert isinstance(back["volume"], np.ndarray) and back["radius"] == 4.5 and back["history"] == [{"epoch": 1}]


def test_the_final_maps_time_is_kept_from_pose_inference_and_a_round_starts_only_if_it_fits():
    control = RunControl(1.0)
    assert control.reserve(20.0) == 20.0
    control.restart(41.0)
    assert control.out_of_time() and control.halted()  # 60 s less the 20 s kept
    control.restart(35.0)
    assert not control.out_of_time()
    assert control.fits(4.0) and not control.fits(10.0)  # pose inference ends at 40 s
    assert control.reserve(1e6) == 30.0  # never more than half the budget
    assert control.reserve(-1.0) == 0.0


def test_the_final_map_estimate_scales_one_timed_batch_to_every_particle(monkeypatch, tmp_path, testdata):
    """Two batches are back-projected; the second, free of first-call costs, is timed and scaled to N (or one rank's share)."""
    from types import SimpleNamespace

    from napari_cryo.reconstruction import backproject
    from napari_cryo.reconstruction.data import ParticleData
    from napari_cryo.cli import main

    assert main(["simulate", "particles", str(testdata / "particles" / "hand-vol.mrc"), "--pixel-size", "4", "--n", "40",
                 "--box", "16", "--snr", "1.0", "--out", str(tmp_path / "set"), "--device", "cpu"]) == 0
    data = ParticleData(tmp_path / "set" / "particles.star")
    ticks = iter(range(100))
    monkeypatch.setattr(backproject, "time", SimpleNamespace(perf_counter=lambda: float(next(ticks))))
    calls = []
    real = backproject.accumulate

    def counting(*args, **kwargs):
        calls.append(len(args[1]))
        return (yield from real(*args, **kwargs))

    monkeypatch.setattr(backproject, "accumulate", counting)
    # 40 particles, two batches of 16: rows 0-31 back-projected, the second batch (16 rows) took one tick.
    assert backproject.final_map_seconds(data, batch_size=16, batches=2) == pytest.approx(40 / 16)
    assert calls == [32]
    two = SimpleNamespace(size=2)
    assert backproject.final_map_seconds(data, two, batch_size=16, batches=2) == pytest.approx(20 / 16)
    # Three batches of 16 (16, 16, 8 rows): the last 24 rows took two ticks.
    assert backproject.final_map_seconds(data, batch_size=16) == pytest.approx(2 * 40 / 24)
    # Fewer particles than two batches: the whole lot is timed, first batch included.
    assert backproject.final_map_seconds(data, batch_size=64) == pytest.approx(1.0)


def test_the_next_global_round_is_expected_to_take_as_long_as_the_last():
    from napari_cryo.reconstruction.phases import last_global_seconds

    history = [{"phase": "amortized", "elapsed_s": 100.0}, {"phase": "global search", "elapsed_s": 160.0},
               {"phase": "auto-decoding", "elapsed_s": 200.0}, {"phase": "global search", "elapsed_s": 290.0},
               {"phase": "auto-decoding", "elapsed_s": 330.0}]
    assert last_global_seconds(history) == pytest.approx(90.0)
    assert last_global_seconds(history[:3]) == pytest.approx(60.0)
    assert last_global_seconds(history[:1]) == 0.0 and last_global_seconds([]) == 0.0


def test_solving_the_half_volumes_again_is_costed_by_the_band_inserted():
    from napari_cryo.reconstruction.auto_decoding import refresh_seconds

    assert refresh_seconds(0.5, 200.0) == pytest.approx(200.0)  # to Nyquist: a full insertion, as the final map
    assert refresh_seconds(0.25, 200.0) == pytest.approx(50.0)
    assert refresh_seconds(0.6, 200.0) == pytest.approx(200.0)
