"""Fault tests: long jobs killed with SIGKILL, and a full disk.

Every long command (``pick train``, ``squares train``, ``segment train``,
``segment apply`` over several tomograms, ``reconstruct``) runs as its own
process (forked by a forkserver that imported torch once, see
``fault_jobs.py``) and is killed several times: from outside at a random
moment of its work (drawn from a seeded generator: within a random epoch,
map or checkpoint interval after the second), and from inside in the middle
of writing a chosen file (a checkpoint, an intermediate map, the model, a
plot, a final map: its temporary file cut to half, then SIGKILL).  After
every kill, each file in the output folder is either absent or complete: it
opens with the package's own reader, and the same reader refuses the file
cut to half, so the check can fail.  Each next run continues with
``--resume`` (``segment apply``: ``--overwrite``), carries the history on
from the checkpoint, and the last ends with the files of an uninterrupted
run and no temporary file left.  A file-size limit (``RLIMIT_FSIZE``, from
the start or from a chosen file's write on) stands in for a full disk: one
line naming the file, and no partial or temporary file.

``NAPARI_CRYO_FAULT_SEED`` draws other moments and targets.
"""

from __future__ import annotations

import csv
import fnmatch
import multiprocessing
import multiprocessing.forkserver
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import fault_jobs

from napari_cryo.io.atomic import PARTIAL
from napari_cryo.io.mrc import read_mrc, write_mrc

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL, fork and RLIMIT_FSIZE are POSIX")

#: The seed of the kills' moments and targets (another one explores other moments).
SEED = int(os.environ.get("NAPARI_CRYO_FAULT_SEED", "27"))
KILLED = -signal.SIGKILL
#: Seconds a job may take before the test gives up on it.
JOB_TIMEOUT = 240


# --- running jobs -------------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """How a job ended: its exit status (negative: killed by that signal) and its output."""

    code: int
    out: str
    err: str

    @property
    def killed(self) -> bool:
        return self.code == KILLED


class Jobs:
    """Starts ``napari-cryo`` commands as processes forked from a preloaded forkserver."""

    def __init__(self, logs: Path) -> None:
        self.context = multiprocessing.get_context("forkserver")
        self.logs = logs
        self.count = 0

    def start(self, argv: list[Any], **options: Any) -> tuple[multiprocessing.Process, Path]:
        self.count += 1
        log = self.logs / f"job{self.count:03d}"
        process = self.context.Process(target=fault_jobs.run_cli, args=([str(a) for a in argv], str(log)), kwargs=options)
        process.start()
        return process, log

    def finish(self, process: multiprocessing.Process, log: Path) -> Outcome:
        process.join(JOB_TIMEOUT)
        if process.is_alive():
            process.kill()
            process.join()
            pytest.fail(f"job {log.name} ran for more than {JOB_TIMEOUT} s")
        out, err = fault_jobs.read_log(log)
        return Outcome(process.exitcode, out, err)

    def run(self, argv: list[Any], **options: Any) -> Outcome:
        """Run a job to its end (or to the fault it was given)."""
        return self.finish(*self.start(argv, **options))

    def kill_at_random(self, argv: list[Any], progress: Callable[[], Any], steps: tuple[int, int], rng: np.random.Generator,
                       **options: Any) -> tuple[Outcome, str]:
        """Run a job and SIGKILL it at a random moment of a random step of its work; returns the outcome and when.

        ``progress()`` changes its value whenever the job finishes a step (a
        checkpoint or a map written).  After k steps, k drawn from ``steps``
        (at least 2), the job is killed after a random fraction of the last
        step's duration: within the next step on any machine.
        """
        k = int(rng.integers(steps[0], steps[1] + 1))
        assert k >= 2, "the first step only measures how long a step takes"
        process, log = self.start(argv, **options)
        t0 = time.perf_counter()
        last, times = progress(), []
        while len(times) < k:
            if not process.is_alive():
                outcome = self.finish(process, log)
                pytest.fail(f"the job ended ({outcome.code}) after {len(times)} of {k} steps: {outcome.err[-2000:]}")
            if time.perf_counter() - t0 > JOB_TIMEOUT:
                process.kill()
                pytest.fail(f"the job did not make {k} steps")
            now = progress()
            if now != last:
                last = now
                times.append(time.perf_counter())
            time.sleep(0.002)
        fraction = float(rng.uniform(0.0, 0.8))
        time.sleep(fraction * (times[-1] - times[-2]))
        process.kill()
        return self.finish(process, log), f"{fraction:.2f} of step {k + 1}"


@pytest.fixture(scope="session")
def jobs(tmp_path_factory) -> Jobs:
    """The job runner; its forkserver starts now and imports torch while the inputs are made."""
    multiprocessing.set_forkserver_preload(fault_jobs.PRELOAD)
    multiprocessing.forkserver.ensure_running()
    return Jobs(tmp_path_factory.mktemp("fault_logs"))


@pytest.fixture(scope="session")
def inputs(tmp_path_factory, testdata, jobs) -> dict[str, Any]:
    """Tiny inputs for every long command, from the package's synthetic generators."""
    from napari_cryo.io.star import write_coordinates
    from napari_cryo.segmentation.model import SegmentationModel
    from napari_cryo.synthetic import simulate_micrograph
    from napari_cryo.synthetic.atlas import simulate_atlas
    from napari_cryo.synthetic.tomogram import simulate_tomogram

    root = tmp_path_factory.mktemp("fault_inputs")
    (root / "picks").mkdir()
    mics = []
    for i in range(2):
        m = simulate_micrograph(shape=(256, 256), pixel_size=3.0, diameter=150, n_particles=12, seed=100 + i)
        mics.append(root / f"mic{i}.mrc")
        write_mrc(mics[-1], m.image, 3.0)
        write_coordinates(root / "picks" / f"mic{i}.star", m.picks, None, 3.0)

    atlas = simulate_atlas(shape=(512, 512), seed=10)
    write_mrc(root / "atlas.mrc", atlas.image, 5000.0)
    squares = atlas.squares[atlas.squares["complete"]]
    labels = squares[["center_x", "center_y"]].copy()
    labels["overall"] = squares["overall"].to_numpy()
    labels["cracking"] = squares["cracking"].to_numpy()
    labels.to_csv(root / "labels.csv", index=False)

    t = simulate_tomogram(shape=(32, 64, 64), pixel_size=12.0, n_vesicles=1, n_bound=2, n_free=2, n_filaments=0, snr=2.0, seed=3)
    painted = np.zeros_like(t.labels)
    for z in (8, 16, 24):
        painted[z] = np.where(t.labels[z] == 1, 1, 0)
    tomograms = []
    for i in range(4):
        tomograms.append(root / f"tomo{i}.mrc")
        write_mrc(tomograms[-1], t.volume, 12.0)
    write_mrc(root / "tomo_labels.mrc", painted, 12.0, labels=True)
    SegmentationModel.new("vgg", "membrane", box_size=32, pixel_size=12.0).save(root / "membrane.scnm")

    particles = root / "particles"
    outcome = jobs.run(["simulate", "particles", testdata / "particles" / "hand-vol.mrc", "--n", 200, "--box", 32, "--snr", 1.0,
                        "--out", particles, "--device", "cpu", "--seed", 5])
    assert outcome.code == 0, outcome.err
    return {"micrographs": mics, "picks": root / "picks", "atlas": root / "atlas.mrc", "labels": root / "labels.csv",
            "tomograms": tomograms, "painted": root / "tomo_labels.mrc", "segmentation_model": root / "membrane.scnm",
            "particles": particles / "particles.star"}


# --- checking what a killed job left ------------------------------------------------------------------------------


def _png(path: Path) -> None:
    from PIL import Image

    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        image.load()


def _mrc(shape: tuple[int, ...]) -> Callable[[Path], np.ndarray]:
    def read(path: Path) -> np.ndarray:
        data, _ = read_mrc(path, mmap=False)
        data = np.asarray(data)
        assert data.shape == shape and np.isfinite(data).all(), f"{path.name}: shape {data.shape}"
        return data

    return read


def _training_checkpoint(path: Path) -> dict[str, Any]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert isinstance(state, dict) and {"model", "optimizers", "epoch", "history", "run_key"} <= set(state)
    assert len(state["history"]) == state["epoch"] and [r["epoch"] for r in state["history"]] == list(range(1, state["epoch"] + 1))
    return state


def _progress_csv(path: Path) -> None:
    from napari_cryo.reconstruction.run import PROGRESS_COLUMNS

    text = path.read_text()
    assert text.endswith("\n"), "the last row is cut"
    rows = list(csv.reader(text.splitlines()))
    assert rows[0] == list(PROGRESS_COLUMNS) and all(len(row) == len(PROGRESS_COLUMNS) for row in rows)


Readers = dict[str, Callable[[Path], Any]]


def _reader(readers: Readers, name: str) -> Callable[[Path], Any] | None:
    return next((read for pattern, read in readers.items() if fnmatch.fnmatch(name, pattern)), None)


def _identity(path: Path) -> tuple[int, int] | None:
    """Which version of a file is there (an atomic write makes a new one), or None."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_mtime_ns


def _partials(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if PARTIAL in p.name)


def check_folder(folder: Path, readers: Readers, scratch: Path, uncut: tuple[str, ...] = ()) -> set[str]:
    """Every file in ``folder`` is a temporary file or complete: its reader opens it, and refuses it cut to half.

    Returns the names of the complete files.  ``uncut`` names patterns whose
    reader cannot tell a cut file (appended text), which are only read.
    """
    complete = set()
    for path in sorted(folder.iterdir()):
        if PARTIAL in path.name:
            continue
        read = _reader(readers, path.name)
        assert read is not None, f"{path.name}: a file no command writes"
        try:
            read(path)
        except Exception as exc:  # noqa: BLE001 - any failure is the finding
            pytest.fail(f"{path.name} is not complete after the kill: {type(exc).__name__}: {exc}")
        complete.add(path.name)
        if any(fnmatch.fnmatch(path.name, p) for p in uncut):
            continue
        cut = scratch / path.name
        scratch.mkdir(exist_ok=True)
        cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        with pytest.raises(Exception):  # noqa: B017 - the reader must notice, however it says so
            read(cut)
        cut.unlink()
    return complete


# --- training jobs: pick train, squares train, segment train ------------------------------------------------------


def _picker(path: Path) -> list[dict]:
    from napari_cryo.picking.model import PickerModel

    return PickerModel.load(path).history[-1]["losses"]


def _square_model(path: Path) -> list[dict]:
    from napari_cryo.squares.model import SquareModel

    return SquareModel.load(path).history[-1]["losses"]


def _segmentation_model(path: Path) -> list[dict]:
    from napari_cryo.segmentation.model import SegmentationModel

    return SegmentationModel.load(path).history


@dataclass(frozen=True)
class TrainingJob:
    """A training command and its files: ``history(model)`` reads a model file's epoch records."""

    command: Callable[[dict, Path], list[Any]]
    model: str
    checkpoint: str
    plot: str
    history: Callable[[Path], list[dict]]
    epochs: int
    defaults: dict = field(default_factory=dict)

    def readers(self) -> Readers:
        return {self.model: self.history, self.checkpoint: _training_checkpoint, self.plot: _png}


TRAINING = {
    "pick": TrainingJob(
        lambda i, out: ["pick", "train", *i["micrographs"], "--positives", i["picks"], "--diameter", 150, "--from", "scratch",
                        "--epochs", 5, "--steps", 1, "--out", out / "picker.pt", "--device", "cpu"],
        "picker.pt", "picker.pt.ckpt", "picker_loss.png", _picker, 5,
    ),
    "squares": TrainingJob(
        lambda i, out: ["squares", "train", i["atlas"], "--labels", i["labels"], "--epochs", 4, "--out", out / "scorer.pt",
                        "--device", "cpu"],
        "scorer.pt", "scorer.pt.ckpt", "scorer_loss.png", _square_model, 4,
        # An epoch is at least 30 batches of 32 by default, minutes on two cores; the command has no option for it.
        {"napari_cryo.squares.training:SquareTrainConfig": {"min_steps": 2, "batch_size": 8}},
    ),
    "segment": TrainingJob(
        lambda i, out: ["segment", "train", i["tomograms"][0], "--labels", i["painted"], "--feature", "membrane=1", "--box", 32,
                        "--epochs", 5, "--boxes-per-slice", 6, "--copies", 2, "--batch-size", 8, "--out", out / "membrane.scnm",
                        "--device", "cpu"],
        "membrane.scnm", "membrane.ckpt", "membrane.loss.png", _segmentation_model, 5,
    ),
}


def _records(history: list[dict]) -> list[tuple[int, float, float]]:
    return [(int(r["epoch"]), float(r["seconds"]), float(r["train_loss"])) for r in history]


@pytest.mark.parametrize("name", sorted(TRAINING))
def test_a_killed_training_resumes_and_leaves_only_complete_files(name, jobs, inputs, tmp_path):
    job = TRAINING[name]
    rng = np.random.default_rng([SEED, sorted(TRAINING).index(name)])
    out = tmp_path / "out"
    out.mkdir()
    argv = job.command(inputs, out)
    readers = job.readers()
    checkpoint = out / job.checkpoint

    # 1. From outside, at a random moment of a random epoch after the second.
    outcome, when = jobs.kill_at_random(argv, lambda: _identity(checkpoint), (2, job.epochs - 2), rng, defaults=job.defaults)
    assert outcome.killed, f"the job was not killed at {when} (exit {outcome.code}): {outcome.err[-2000:]}"
    check_folder(out, readers, tmp_path / "cut")
    before = _training_checkpoint(checkpoint)
    assert 2 <= before["epoch"] < job.epochs, f"killed at {when}, at epoch {before['epoch']}"

    # 2. In the middle of a checkpoint write, on --resume.
    n = int(rng.integers(1, job.epochs - before["epoch"] + 1))
    outcome = jobs.run([*argv, "--resume"], die_at=(job.checkpoint, n), defaults=job.defaults)
    assert outcome.killed, f"checkpoint write {n} after epoch {before['epoch']} was not reached: {outcome.err[-2000:]}"
    assert _partials(out), "the write that was cut left no temporary file (was it atomic?)"
    check_folder(out, readers, tmp_path / "cut")
    after = _training_checkpoint(checkpoint)
    assert after["epoch"] == before["epoch"] + n - 1, "the checkpoint is not the last one written whole"
    assert _records(after["history"])[: before["epoch"]] == _records(before["history"]), "the resumed run did not continue the history"

    # 3. In the middle of writing the plot, then the model, on --resume.
    for target in (job.plot, job.model):
        outcome = jobs.run([*argv, "--resume"], die_at=(target, 1), defaults=job.defaults)
        assert outcome.killed, f"the write of {target} was not reached: {outcome.err[-2000:]}"
        check_folder(out, readers, tmp_path / "cut")
        last = _training_checkpoint(checkpoint)
        assert last["epoch"] == job.epochs and _records(last["history"])[: after["epoch"]] == _records(after["history"])

    # 4. --resume to the end: the result of an uninterrupted run, and no temporary file left.
    outcome = jobs.run([*argv, "--resume"], defaults=job.defaults)
    assert outcome.code == 0, outcome.err[-3000:]
    assert _partials(out) == [], "temporary files of the killed runs are left"
    assert check_folder(out, readers, tmp_path / "cut") == {job.model, job.plot}, "the finished run leaves more than its model and plot"
    history = job.history(out / job.model)
    assert _records(history) == _records(last["history"]), "the model's history is not the checkpoint's, continued"


# --- segment apply over several tomograms -------------------------------------------------------------------------


def test_a_killed_segment_apply_leaves_whole_maps_and_a_rerun_completes(jobs, inputs, tmp_path):
    rng = np.random.default_rng([SEED, 10])
    out = tmp_path / "seg"
    tomograms = inputs["tomograms"]
    argv = ["segment", "apply", inputs["segmentation_model"], *tomograms, "--out", out, "--device", "cpu"]
    readers = {"*__membrane.mrc": _mrc((32, 64, 64))}
    names = [f"{p.stem}__membrane.mrc" for p in tomograms]

    # 1. From outside, at a random moment after the second or third map.
    outcome, when = jobs.kill_at_random(argv, lambda: len(list(out.glob("*__membrane.mrc"))), (2, len(tomograms) - 1), rng)
    assert outcome.killed, f"not killed at {when}: {outcome.err[-2000:]}"
    first = check_folder(out, readers, tmp_path / "cut")
    assert 2 <= len(first) < len(names), f"killed at {when}, with {sorted(first)} written"

    # 2. Again with --overwrite, in the middle of writing a random tomogram's map.
    k = int(rng.integers(1, len(tomograms) + 1))
    outcome = jobs.run([*argv, "--overwrite"], die_at=(names[k - 1], 1))
    assert outcome.killed, f"the write of {names[k - 1]} was not reached: {outcome.err[-2000:]}"
    assert check_folder(out, readers, tmp_path / "cut") >= set(names[: k - 1]), "a map written before the kill is missing"
    assert _partials(out), "the write that was cut left no temporary file (was it atomic?)"

    # 3. Again to the end: every map, and no temporary file left.
    outcome = jobs.run([*argv, "--overwrite"])
    assert outcome.code == 0, outcome.err[-3000:]
    assert _partials(out) == []
    assert check_folder(out, readers, tmp_path / "cut") == set(names)


# --- reconstruct --------------------------------------------------------------------------------------------------

RESULT_FILES = ("volume.mrc", "half1.mrc", "half2.mrc", "poses.star", "fsc.png", "directions.png", "loss.png")


def _poses(path: Path) -> None:
    from napari_cryo.io.star import read_star

    blocks = read_star(path)
    table = blocks["particles"]
    assert len(table) == 200 and {"rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst"} <= set(table.columns)
    assert np.isfinite(table["rlnAngleRot"].to_numpy(float)).all()


def _reconstruction_checkpoint(path: Path) -> dict[str, Any]:
    from napari_cryo.reconstruction.run import load_checkpoint

    state = load_checkpoint(path)
    assert isinstance(state, dict) and "key" in state and isinstance(state.get("history"), list)
    return state


RECONSTRUCTION_READERS: Readers = {
    "*.mrc": _mrc((32, 32, 32)),
    "poses.star": _poses,
    "*.png": _png,
    "checkpoint.pt": _reconstruction_checkpoint,
    "progress.csv": _progress_csv,
}


def _history(state: dict[str, Any]) -> list[tuple]:
    return [(r.get("phase"), r.get("epoch"), r.get("elapsed_s")) for r in state["history"]]


def test_a_killed_reconstruction_resumes_to_a_whole_result(jobs, inputs, tmp_path):
    rng = np.random.default_rng([SEED, 20])
    out = tmp_path / "run"
    # With the early switch (on by default) the run goes through the first map; a run resumed from the checkpoint at
    # that switch once ended in a loss that was not finite: the checkpoint's clock was older than the switch, and the
    # band compared came out negative (fixed; tests/test_reconstruction_core.py checks the clock and the band).
    argv = ["reconstruct", inputs["particles"], "--out", out, "--max-minutes", 0.1, "--checkpoint-minutes", 0.01,
            "--map-minutes", 0.01, "--batch-size", 32, "--heads", 2, "--device", "cpu"]
    # The last runs write no intermediate map, so none of them rewrites the map cut in step 3 (the time settings may change on resume).
    no_maps = [*argv[: argv.index("--map-minutes")], "--map-minutes", 100, *argv[argv.index("--map-minutes") + 2 :], "--resume"]
    checkpoint = out / "checkpoint.pt"

    def check() -> set[str]:
        return check_folder(out, RECONSTRUCTION_READERS, tmp_path / "cut", uncut=("progress.csv",))

    def continues(earlier: dict[str, Any]) -> dict[str, Any]:
        state = _reconstruction_checkpoint(checkpoint)
        assert _history(state)[: len(earlier["history"])] == _history(earlier), "the resumed run did not continue the history"
        return state

    # 1. From outside, at a random moment after the second, third or fourth checkpoint.
    outcome, when = jobs.kill_at_random(argv, lambda: _identity(checkpoint), (2, 4), rng)
    assert outcome.killed, f"not killed at {when}: {outcome.err[-2000:]}"
    check()
    state = _reconstruction_checkpoint(checkpoint)

    # 2.-4. On --resume, in the middle of writing a checkpoint, an intermediate map, a final file.
    n = int(rng.integers(1, 3))
    for run, target in (([*argv, "--resume"], ("checkpoint.pt", n)), ([*argv, "--resume"], ("intermediate_*.mrc", 1)),
                        (no_maps, (str(rng.choice(RESULT_FILES)), 1))):
        outcome = jobs.run(run, die_at=target)
        assert outcome.killed, f"write {target} was not reached: {outcome.err[-2000:]}"
        check()
        state = continues(state)

    # 5. --resume to the end: the result of an uninterrupted run, and no temporary file left.
    outcome = jobs.run(no_maps)
    assert outcome.code == 0, outcome.err[-3000:]
    assert _partials(out) == [], "temporary files of the killed runs are left"
    assert set(RESULT_FILES) <= check()
    continues(state)


# --- a full disk --------------------------------------------------------------------------------------------------


def _one_epoch(job: TrainingJob) -> Callable[[dict, Path], list[Any]]:
    def command(i: dict, out: Path) -> list[Any]:
        argv = job.command(i, out)
        argv[argv.index("--epochs") + 1] = 1
        return argv

    return command


@dataclass(frozen=True)
class FullDisk:
    """A command run with a file-size limit of ``limit`` bytes: from the start, or from the write of ``target`` on."""

    command: Callable[[dict, Path], list[Any]]
    limit: int
    readers: Readers
    target: str | None = None
    defaults: dict = field(default_factory=dict)


FULL_DISK = {
    # The limit is below the size of the first big file each job writes: a checkpoint, a map, a model.
    "pick train": FullDisk(TRAINING["pick"].command, 256 * 1024, TRAINING["pick"].readers()),
    "pick train, at the model": FullDisk(_one_epoch(TRAINING["pick"]), 64 * 1024, TRAINING["pick"].readers(), "picker.pt"),
    "pick train, at the plot": FullDisk(_one_epoch(TRAINING["pick"]), 4 * 1024, TRAINING["pick"].readers(), "picker_loss.png"),
    "squares train, at the model": FullDisk(_one_epoch(TRAINING["squares"]), 64 * 1024, TRAINING["squares"].readers(), "scorer.pt",
                                            TRAINING["squares"].defaults),
    "segment train, at the model": FullDisk(_one_epoch(TRAINING["segment"]), 64 * 1024, TRAINING["segment"].readers(), "membrane.scnm"),
    "segment apply": FullDisk(
        lambda i, out: ["segment", "apply", i["segmentation_model"], *i["tomograms"][:2], "--out", out, "--device", "cpu"],
        64 * 1024, {"*__membrane.mrc": _mrc((32, 64, 64))},
    ),
    "reconstruct": FullDisk(
        lambda i, out: ["reconstruct", i["particles"], "--out", out, "--max-minutes", 0.05, "--checkpoint-minutes", 0.01,
                        "--map-minutes", 0.01, "--batch-size", 32, "--heads", 2, "--device", "cpu"],
        64 * 1024, RECONSTRUCTION_READERS,
    ),
}


@pytest.mark.parametrize("name", sorted(FULL_DISK))
def test_a_full_disk_stops_with_one_line_and_no_partial_file(name, jobs, inputs, tmp_path):
    case = FULL_DISK[name]
    out = tmp_path / "out"
    out.mkdir()
    outcome = jobs.run(case.command(inputs, out), file_size_limit=case.limit, limit_from=case.target, defaults=case.defaults)
    assert outcome.code == 2, f"exit {outcome.code}: {outcome.err[-3000:]}"
    assert "Traceback" not in outcome.err
    errors = [line for line in outcome.err.splitlines() if line.startswith("napari-cryo") and ": error: " in line]
    assert len(errors) == 1, outcome.err
    assert f"{out / (case.target or '')}" in errors[0] and "File too large" in errors[0], errors[0]
    assert _partials(out) == []
    complete = check_folder(out, case.readers, tmp_path / "cut", uncut=("progress.csv",))
    assert case.target not in complete, "the file that did not fit is there"


# --- the shared training checkpoint, in process ---------------------------------------------------------------------


def _tiny_training(width: int = 4):
    """A network, its optimisers and a deterministic epoch, for run_training."""
    from napari_cryo.tasks import Progress

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(width, 2), torch.nn.Linear(2, 1))
    optimizers = [torch.optim.Adam(net[0].parameters(), lr=0.01), torch.optim.Adam(net[1].parameters(), lr=0.01)]
    x = torch.randn(8, width, generator=torch.Generator().manual_seed(1))

    def train_epoch(epoch: int):
        loss = net(x).square().mean()
        for o in optimizers:
            o.zero_grad()
        loss.backward()
        for o in optimizers:
            o.step()
        yield Progress(epoch + 1, None)
        return float(loss.detach())

    return net, optimizers, train_epoch


def _snapshot(net: torch.nn.Module, optimizers) -> tuple:
    import copy

    return {k: v.clone() for k, v in net.state_dict().items()}, [copy.deepcopy(o.state_dict()) for o in optimizers]


def _same(a: tuple, b: tuple) -> bool:
    weights = a[0].keys() == b[0].keys() and all(torch.equal(a[0][k], b[0][k]) for k in a[0])
    return weights and repr(a[1]) == repr(b[1])


def test_a_checkpoint_that_does_not_fit_leaves_the_network_and_optimisers_untouched(tmp_path):
    from napari_cryo.checkpoints import restore_checkpoint, save_checkpoint

    # Written by a network whose second layer fits and whose first does not (another input width).
    other, other_optimizers, other_epoch = _tiny_training(width=3)
    list(other_epoch(0))
    save_checkpoint(tmp_path / "run.ckpt", other, other_optimizers, 1, [{"epoch": 1, "seconds": 1.0, "train_loss": 1.0}], "k")
    net, optimizers, _ = _tiny_training(width=4)
    before = _snapshot(net, optimizers)
    reasons: list[str] = []
    assert restore_checkpoint(tmp_path / "run.ckpt", "k", net, optimizers, on_ignored=reasons.append) is None
    assert _same(_snapshot(net, optimizers), before), "an ignored checkpoint changed the network or its optimisers"
    assert reasons == ["its weight 0.weight does not fit the network"]

    # Weights and a first optimiser that fit, a second optimiser that does not: all three are put back.
    trained, trained_optimizers, trained_epoch = _tiny_training(width=4)
    list(trained_epoch(0))
    state = {"model": trained.state_dict(), "optimizers": [o.state_dict() for o in trained_optimizers], "epoch": 1,
             "history": [{"epoch": 1, "seconds": 1.0, "train_loss": 1.0}], "run_key": "k"}
    group = state["optimizers"][1]["param_groups"][0]
    state["optimizers"][1]["param_groups"] = [{**group, "params": [*group["params"], 99]}]
    torch.save(state, tmp_path / "mixed.ckpt")
    assert restore_checkpoint(tmp_path / "mixed.ckpt", "k", net, optimizers, on_ignored=reasons.append) is None
    assert _same(_snapshot(net, optimizers), before), "a checkpoint that failed half way changed the network or its optimisers"
    assert reasons[-1].startswith("it does not fit this run's network or optimisers")


@pytest.mark.parametrize(
    "change",
    [
        {"epoch": 9},  # further than the run's 3 epochs
        {"epoch": -1},
        {"history": [{"epoch": 1, "seconds": "1", "train_loss": 0.5}]},
        {"history": []},
        {"run_key": "other settings"},
    ],
)
def test_a_checkpoint_that_cannot_be_continued_is_ignored_with_its_reason(change, tmp_path):
    from napari_cryo.checkpoints import save_checkpoint
    from napari_cryo.tasks import drain
    from napari_cryo.training_loop import (
        CheckpointIgnored,
        EpochRecord,
        Resumed,
        describe_event,
        run_training,
    )

    net, optimizers, train_epoch = _tiny_training()
    path = tmp_path / "run.ckpt"
    save_checkpoint(path, net, optimizers, 1, [{"epoch": 1, "seconds": 1.0, "train_loss": 1.0}], "k")
    state = torch.load(path, weights_only=True) | change
    torch.save(state, path)
    net, optimizers, train_epoch = _tiny_training()
    history, items = drain(run_training(net, optimizers, 3, train_epoch, checkpoint=path, run_key="k"))
    assert not any(isinstance(i, Resumed) for i in items)
    assert [r.epoch for r in history] == [1, 2, 3] and all(isinstance(r, EpochRecord) for r in history)
    (ignored,) = [i for i in items if isinstance(i, CheckpointIgnored)]
    assert describe_event(ignored).startswith(f"not resuming from {path}: ")
    assert _training_checkpoint(path)["epoch"] == 3  # replaced by the new run's



# --- a real full disk -------------------------------------------------------------------------------------------


@pytest.fixture()
def tiny_disk(tmp_path):
    """A 300 kB tmpfs (needs the right to mount; RLIMIT_FSIZE above cannot stand in for memory-mapped writes)."""
    import subprocess

    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode(errors='replace').strip()[:80]})")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)


def test_memory_mapped_mrc_writes_on_a_full_disk_fail_with_one_line(tiny_disk):
    # Without the space reserved up front, writing through the memory map kills the process with SIGBUS:
    # run in a child, so that such a death fails this test instead of ending the test session.
    import subprocess

    code = (
        "import numpy as np\n"
        "from napari_cryo.errors import CryoInputError\n"
        "from napari_cryo.io.mrc import write_mrc\n"
        "try:\n"
        f"    write_mrc({str(tiny_disk / 'big.mrc')!r}, np.ones((64, 64, 64), np.float32), 1.0)\n"
        "except CryoInputError as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, (done.returncode, done.stderr[-500:])
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1 and str(tiny_disk / "big.mrc") in lines[0] and "No space left on device" in lines[0], lines
    assert list(tiny_disk.iterdir()) == []
