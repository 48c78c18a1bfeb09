"""Reconstruction shared by several processes under torchrun (gloo on the CPU), against one process.

The runs are real ``torchrun`` launches of the command line, two ranks of one
torch thread each on the CI's two cores.  Both runs have the same time
budget, so the 2-rank run does about twice the epochs; the maps must agree
with the truth about as well (the tolerance below), and one folder holds one run.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import starfile

from napari_cryo.cli import main
from napari_cryo.io.mrc import read_mrc
from napari_cryo.reconstruction.fsc import align_maps, fsc
from napari_cryo.reconstruction.ranks import Ranks
from napari_cryo.reconstruction.run import load_checkpoint

#: FSC 0.5 against the truth (pixels) that the 2-rank map must reach within of the 1-rank map's.
TOLERANCE_PX = 0.5
#: ... and that both must beat (known-pose limit of this set: about 3.3 px).
CEILING_PX = 4.0
#: The encoder's path on both runs (amortized gradients all-reduced, then per-particle poses and global searches).
RUN = ["--max-minutes", "0.6", "--batch-size", "32", "--switch-after", "0.2", "--unsettled-degrees", "0", "--collapse-scf", "0",
       "--checkpoint-minutes", "0.05", "--map-minutes", "0.1", "--device", "cpu"]


@pytest.fixture(scope="module")
def particles(testdata, tmp_path_factory) -> Path:
    """600 particles of 32 px from the real hand-vol map, SNR 1, small shifts."""
    out = tmp_path_factory.mktemp("ranks") / "set"
    code = main(["simulate", "particles", str(testdata / "particles" / "hand-vol.mrc"), "--n", "600", "--box", "32",
                 "--snr", "1.0", "--shift-sigma", "1", "--out", str(out), "--device", "cpu", "--seed", "5"])
    assert code == 0
    return out


def _command(ranks: int, star: Path, out: Path, *extra: str) -> list[str]:
    cli = ["-m", "napari_cryo.cli", "reconstruct", str(star), "--out", str(out), *RUN, *extra]
    if ranks == 1:
        return [sys.executable, *cli]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}", *cli]


def _env() -> dict[str, str]:
    # One thread per process, as torchrun gives each rank: the 1-rank run is one rank of the same size.
    return {**os.environ, "OMP_NUM_THREADS": "1", "NAPARI_CRYO_DEBUG": ""}


def _run(ranks: int, star: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    done = subprocess.run(_command(ranks, star, out, *extra), capture_output=True, text=True, env=_env(), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _resolution_px(volume: Path, truth: Path) -> float:
    ref, _ = read_mrc(truth)
    mov, _ = read_mrc(volume)
    aligned = align_maps(np.asarray(ref, dtype=np.float32), np.asarray(mov, dtype=np.float32), 2.0).aligned
    return fsc(aligned, np.asarray(ref), 2.0).resolution_px(0.5)


def _progress(out: Path) -> list[tuple[str, int]]:
    """(phase, epoch) of each epoch's row of progress.csv (not the rows of intermediate maps)."""
    with open(out / "progress.csv", newline="") as fh:
        return [(row["phase"], int(row["epoch"])) for row in csv.DictReader(fh) if not row["map"]]


def test_each_rank_takes_its_own_share_in_as_many_batches_as_the_others():
    rows = np.arange(11)
    shares = [Ranks(r, 3).own(rows) for r in range(3)]
    assert sorted(np.concatenate(shares).tolist()) == rows.tolist()
    assert [len(s) for s in shares] == [4, 4, 3]
    assert all(Ranks(r, 3).owned(11)[s].all() for r, s in enumerate(shares))
    assert Ranks(0, 3).steps(11, 2) == Ranks(2, 3).steps(11, 2) == 2
    assert Ranks.single().own(rows) is not None and Ranks.single().steps(11, 4) == 3


def test_a_share_is_read_in_the_number_of_batches_every_rank_takes(particles):
    from napari_cryo.reconstruction.data import ParticleData

    data = ParticleData(particles / "particles.star")
    ranks = Ranks(1, 2)
    own = ranks.own(np.arange(len(data)))
    batches = list(data.batches(32, seed=3, epoch=1, rows=own, count=ranks.steps(len(data), 32)))
    assert len(batches) == 10
    seen = np.concatenate([b.indices for b in batches])
    assert sorted(seen.tolist()) == own.tolist() and np.all(seen % 2 == 1)
    # One process, no rows: the order it always had.
    order = np.concatenate([b.indices for b in data.batches(100, seed=3, epoch=1)])
    assert order.tolist() == np.random.default_rng([3, 1]).permutation(len(data)).tolist()


def test_two_ranks_reach_the_map_of_one_and_write_one_run_folder(particles, tmp_path):
    star, truth = particles / "particles.star", particles / "ground_truth_map.mrc"
    alone = _run(1, star, tmp_path / "one")
    shared = _run(2, star, tmp_path / "two")
    one, two = _resolution_px(tmp_path / "one" / "volume.mrc", truth), _resolution_px(tmp_path / "two" / "volume.mrc", truth)
    assert one < CEILING_PX and two < CEILING_PX, (one, two)
    assert abs(two - one) <= TOLERANCE_PX, (one, two)
    # Rank 0 alone reports: the ranks on its first line, one result line, each epoch once.
    assert "2 ranks share the particles (about 300 each" in shared.stderr
    assert shared.stdout.count("volume.mrc: resolution") == 1 and alone.stdout.count("volume.mrc: resolution") == 1
    rows = _progress(tmp_path / "two")
    epochs = [e for phase, e in rows if phase in ("amortized", "auto-decoding")]
    assert len(epochs) == len(set(epochs)) and epochs == sorted(epochs)
    # Each epoch of the shared run takes about half the time: more epochs in the same budget.
    assert max(epochs) > max(e for phase, e in _progress(tmp_path / "one") if phase == "auto-decoding")
    poses = starfile.read(tmp_path / "two" / "poses.star")["particles"]
    assert len(poses) == 600 and np.isfinite(poses[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy()).all()
    assert not list((tmp_path / "two").glob("*.tmp*")) and not list((tmp_path / "two").glob(".*"))


def test_a_run_killed_on_two_ranks_resumes_on_one(particles, tmp_path):
    star, out = particles / "particles.star", tmp_path / "run"
    job = subprocess.Popen(_command(2, star, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
                           start_new_session=True)
    checkpoint = out / "checkpoint.pt"
    deadline = time.monotonic() + 120
    # Killed once per-particle poses have taken steps (their moments and half volumes are in the checkpoint).
    while time.monotonic() < deadline:
        try:
            state = load_checkpoint(checkpoint)
            if state["phase"] == "auto-decoding" and (state["pose_adam"]["t"] > 0).any():
                break
        except Exception:  # noqa: BLE001 - not written yet, or read while the run replaces it
            pass
        time.sleep(0.5)
    os.killpg(job.pid, signal.SIGKILL)
    job.communicate()
    state = load_checkpoint(checkpoint)
    assert state["phase"] == "auto-decoding" and (state["pose_adam"]["t"] > 0).any(), "the run ended before its poses took steps"
    # Every particle's pose and moments were gathered into the checkpoint, not rank 0's share alone.
    assert (state["pose_adam"]["t"][1::2] > 0).any() and (state["pose_adam"]["t"][0::2] > 0).any()
    done = _run(1, star, out, "--resume")
    assert "volume.mrc: resolution" in done.stdout
    after = load_checkpoint(checkpoint)
    assert [r["epoch"] for r in after["history"][: len(state["history"])]] == [r["epoch"] for r in state["history"]]
    assert _resolution_px(out / "volume.mrc", particles / "ground_truth_map.mrc") < CEILING_PX
