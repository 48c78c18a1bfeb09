"""The run layer every reconstruction method shares: run control, the run folder, the result types.

- :class:`RunControl`: the clock (resumed runs count their earlier time),
  the time budget and the user's Stop and Pause, with one :meth:`~RunControl.halted`.
- :class:`RunFolder`: everything a run writes while it runs: the checkpoint,
  ``progress.csv`` and the intermediate maps (a run without a folder writes nothing);
  :meth:`RunFolder.files` lists every file a run writes there, final outputs included,
  and :meth:`RunFolder.prepare` applies the output-folder policy to them before a run starts.
- :class:`MapUpdate` and :class:`ReconstructionResult`: what a run yields and returns.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import CryoInputError
from ..io.atomic import atomic_path, check_outputs, remove_stale_partials
from ..io.torch_files import archive_problem, save_torch
from .coverage import ViewCoverage, view_coverage
from .ranks import Ranks

CHECKPOINT = "checkpoint.pt"
PROGRESS = "progress.csv"
PROGRESS_COLUMNS = ("elapsed_s", "phase", "epoch", "loss", "pose_change_deg", "map", "resolution_A")
#: Every intermediate map of a run matches this pattern, whatever its number.
INTERMEDIATE_MAPS = "intermediate_*.mrc"
#: What to do about a file of an earlier run (the output-folder policy's hint).
CLASH_HINT = "use --overwrite to replace the earlier run, or --resume to continue it"
#: Bumped when the networks' layers change, so that an older checkpoint is refused with a message, not a traceback.
CHECKPOINT_FORMAT = 4


class ReconstructionDiverged(CryoInputError):
    """The loss became NaN or infinite."""


@dataclass
class MapUpdate:
    """An intermediate map for the viewer: the volume, its pixel size and where it was written."""

    volume: np.ndarray
    pixel_size: float
    label: str
    path: Path | None = None
    rotations: np.ndarray | None = None  # (N, 3, 3) the poses reached, for direction plots and benchmarks
    elapsed_s: float = 0.0
    coverage: ViewCoverage | None = None

    def __post_init__(self) -> None:
        # Measured here, in the worker that yields the update, not on the GUI thread that draws it.
        if self.rotations is not None and self.coverage is None:
            self.coverage = view_coverage(self.rotations)


@dataclass
class ReconstructionResult:
    """What a run produces."""

    volume: np.ndarray
    half1: np.ndarray
    half2: np.ndarray
    pixel_size: float
    rotations: np.ndarray  # (N, 3, 3) RELION matrices
    shifts: np.ndarray  # (N, 2) origins in pixels (x, y)
    fsc: Any
    resolution: float
    history: list[dict[str, Any]] = field(default_factory=list)
    coverage: ViewCoverage | None = None  # how evenly the poses sample Fourier space: read the FSC with it

    def __post_init__(self) -> None:
        # Measured where the result is made (the worker), not where it is shown.
        if self.coverage is None:
            self.coverage = view_coverage(self.rotations)


class RunControl:
    """The clock, the time budget and the user's Stop and Pause of one run.

    Parameters
    ----------
    max_minutes : float
        The time budget of pose inference.
    elapsed : float
        Seconds an earlier part of the run already took (resume).
    stop, pause : callable, optional
        Polled: Stop ends pose inference (the final map is made from the poses
        reached); Pause ends the run with a checkpoint and no result.
    ranks : Ranks, optional
        The processes sharing the run.  With several, the clock is rank 0's,
        read at each :meth:`halted` or :meth:`tick` (every rank calls them at
        the same points) and fixed in between, so that every decision taken
        from it is the same on every rank.
    """

    def __init__(self, max_minutes: float, elapsed: float = 0.0, stop: Callable[[], bool] | None = None,
                 pause: Callable[[], bool] | None = None, ranks: Ranks | None = None) -> None:
        self.budget = max_minutes * 60.0
        self.reserved = 0.0
        self._stop = stop
        self._pause = pause
        self.ranks = ranks or Ranks.single()
        self._agreed = (0.0, False, False)  # rank 0's clock, any rank stopped, any rank paused (several ranks)
        self.restart(elapsed)

    def restart(self, elapsed: float) -> None:
        """Set the clock to ``elapsed`` seconds (a resumed run continues its own time)."""
        self._start = time.perf_counter() - elapsed
        self._agreed = (float(elapsed), False, False)

    def tick(self) -> None:
        """Several ranks: read rank 0's clock and every rank's Stop and Pause (a collective: every rank calls it)."""
        if not self.ranks.shared:
            return
        flags = torch.tensor([time.perf_counter() - self._start if self.ranks.root else 0.0,
                              float(self._stop is not None and self._stop()), float(self._pause is not None and self._pause())],
                             dtype=torch.float64)
        clock, stop, pause = self.ranks.sum_(flags).tolist()
        self._agreed = (clock, stop > 0, pause > 0)

    def clock(self) -> float:
        """Seconds the run has taken, this session and earlier ones."""
        return self._agreed[0] if self.ranks.shared else time.perf_counter() - self._start

    def reserve(self, seconds: float) -> float:
        """Keep ``seconds`` at the end of the budget for the work after pose inference (the final half maps).

        At most half the budget is kept: a budget too short for the final
        map alone still leaves pose inference its other half.  Every rank
        keeps rank 0's figure, so that every rank stops at the same point.

        Returns
        -------
        float
            The seconds kept.
        """
        (seconds,) = self.ranks.agree(seconds)
        self.reserved = min(max(0.0, seconds), 0.5 * self.budget)
        return self.reserved

    @property
    def inference_budget(self) -> float:
        """Seconds for pose inference: the budget less what is kept for the final map."""
        return self.budget - self.reserved

    def out_of_time(self) -> bool:
        """Whether the time for pose inference is spent."""
        return self.clock() >= self.inference_budget

    def fits(self, seconds: float) -> bool:
        """Whether pose inference of ``seconds`` started now would end in its time."""
        return self.clock() + seconds <= self.inference_budget

    def stopped(self) -> bool:
        """Whether the user asked to finish now."""
        if self.ranks.shared:
            return self._agreed[1]
        return self._stop is not None and self._stop()

    def paused(self) -> bool:
        """Whether the user asked to pause (checkpoint, no result)."""
        if self.ranks.shared:
            return self._agreed[2]
        return self._pause is not None and self._pause()

    def halted(self) -> bool:
        """Whether pose inference must end now: out of time, stopped or paused."""
        self.tick()
        return self.out_of_time() or self.stopped() or self.paused()


class Every:
    """A repeating deadline: :meth:`due` once ``minutes`` have passed on ``clock`` since the last :meth:`reset`."""

    def __init__(self, minutes: float, clock: Callable[[], float] = time.perf_counter) -> None:
        self.seconds = minutes * 60
        self._clock = clock
        self.reset()

    def due(self) -> bool:
        """Whether the interval has passed."""
        return self._clock() - self._last > self.seconds

    def reset(self) -> None:
        """Start the interval again (after the work it was due for, so that work is not counted in it)."""
        self._last = self._clock()


def run_key(data, settings) -> str:
    """What a checkpoint must match to be resumed: the particles, the settings' key and the checkpoint format."""
    fingerprint = [str(Path(data.star_path).resolve()), len(data), data.box, data.original_box, settings.key(), CHECKPOINT_FORMAT]
    return hashlib.sha1(json.dumps(fingerprint).encode()).hexdigest()[:16]


def check_finite(loss: torch.Tensor, checkpoint: Path | None, where: str) -> None:
    """Stop before a non-finite loss can reach the parameters (the last checkpoint stays good).

    Raises
    ------
    ReconstructionDiverged
        When ``loss`` is NaN or infinite; ``where`` says in which phase and epoch.
    """
    value = float(loss.detach())
    if not math.isfinite(value):
        raise ReconstructionDiverged(checkpoint, f"the loss became {value} in {where}; stopped, the last good checkpoint is kept")


_NUMPY_KEYS = "_numpy_keys"


def _for_saving(state: dict[str, Any]) -> dict[str, Any]:
    """The state with numpy arrays as tensors and numpy scalars as Python numbers, so it loads with ``weights_only``."""
    out: dict[str, Any] = {}
    arrays = []
    for key, value in state.items():
        if isinstance(value, np.ndarray):
            out[key] = torch.from_numpy(np.ascontiguousarray(value))
            arrays.append(key)
        elif isinstance(value, np.generic):
            out[key] = value.item()
        else:
            out[key] = value
    out[_NUMPY_KEYS] = arrays
    return out


def _from_saved(state: Any, path: str | Path) -> Any:
    """Undo :func:`_for_saving`: the arrays the run saved come back as numpy arrays.

    Raises
    ------
    CryoInputError
        If the list of arrays names something that is not a saved tensor.
    """
    if not isinstance(state, dict):
        return state
    state = dict(state)
    keys = state.pop(_NUMPY_KEYS, [])
    if not isinstance(keys, list) or not all(isinstance(state.get(k), torch.Tensor) for k in keys):
        raise CryoInputError(path, "is not a checkpoint of a reconstruction run (its list of arrays is wrong)")
    for key in keys:
        state[key] = state[key].cpu().numpy()
    return state


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> Any:
    """A run's checkpoint as the run saved it.

    It loads with ``weights_only``: a checkpoint from a shared folder can hold tensors and
    plain values, never code.  A file that is not a torch archive (a bare pickle, an old
    torch format) is refused unread.

    Raises
    ------
    CryoInputError
        Naming the file, if it is missing, not a torch archive, would need
        code to load (a crafted pickle) or is damaged.
    """
    if not Path(path).is_file():
        raise CryoInputError(path, "checkpoint not found")
    problem = archive_problem(path)
    if problem:
        raise CryoInputError(path, f"is not a checkpoint ({problem})")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds for damaged or unsafe files
        raise CryoInputError(path, f"cannot be read safely as a checkpoint ({type(exc).__name__})") from None
    return _from_saved(state, path)


class CheckpointNotSaved(UserWarning):
    """The last checkpoint of a failed or cancelled run could not be written (the run's own error is reported too)."""


class RunFolder:
    """What a run writes while it runs, in one folder: checkpoint, ``progress.csv``, intermediate maps.

    Parameters
    ----------
    out : path or None
        The folder; None: a run that writes nothing.
    create : bool
        Create the folder if missing (not when only checking it, see :meth:`prepare`).
    writes : bool
        False for the ranks other than 0 of a shared run: they read the
        checkpoint to resume and keep the same records, but write nothing.
    """

    def __init__(self, out: Path | str | None, create: bool = True, writes: bool = True) -> None:
        self.out = Path(out) if out is not None else None
        self.writes = writes
        self._progress: list[dict[str, Any]] = []  # the rows of progress.csv, rewritten atomically on each row
        if self.out is not None and create and writes:
            self.out.mkdir(parents=True, exist_ok=True)

    @property
    def checkpoint(self) -> Path | None:
        """The checkpoint's path (None without a folder)."""
        return self.out / CHECKPOINT if self.out is not None else None

    def files(self) -> list[Path]:
        """Every file a run writes in the folder, for the output-folder policy.

        The checkpoint, ``progress.csv``, the final maps, poses and plots
        (:data:`~.outputs.RESULT_FILES`) and every intermediate map there
        now: their names count up, so any file matching
        :data:`INTERMEDIATE_MAPS` belongs to a run.  Empty without a folder.
        """
        if self.out is None:
            return []
        from .outputs import RESULT_FILES

        maps = sorted(self.out.glob(INTERMEDIATE_MAPS)) if self.out.is_dir() else []
        return [self.out / name for name in (CHECKPOINT, PROGRESS, *RESULT_FILES)] + maps

    def prepare(self, overwrite: bool = False, resume: bool = False) -> list[Path]:
        """Apply the output-folder policy before a run writes anything; return the earlier run's files deleted.

        A file of :meth:`files` that exists belongs to an earlier run.  With
        ``resume`` and its checkpoint present the run continues that run and
        rewrites them.  With ``overwrite`` they are deleted now, the
        intermediate maps this run would not rewrite and the final outputs
        included, so that the folder never holds the files of two runs (a
        new run stopped early would otherwise leave the old maps beside its
        own).  Otherwise the run stops before writing anything.

        Raises
        ------
        CryoInputError
            Naming the first file of an earlier run (neither flag applies),
            or a directory where a run writes a file.
        """
        can_resume = self.checkpoint is not None and self.checkpoint.is_file()
        # --resume without a checkpoint has nothing to continue: the earlier run's files are then a clash like any other.
        hint = CLASH_HINT if can_resume or not resume else f"there is no {CHECKPOINT} to resume from; use --overwrite to start again"
        resume = resume and can_resume
        files = check_outputs(self.files(), overwrite=overwrite, resume=resume, hint=hint)
        if resume or not overwrite or self.out is None:
            return []
        removed = [path for path in files if path.is_file()]
        for path in removed:
            path.unlink()
        remove_stale_partials(self.out)
        return removed

    def start_or_resume(self, key: str, resume: bool, device: torch.device | str = "cpu") -> dict[str, Any] | None:
        """The checkpoint to continue from (``resume``), else None after clearing an old ``progress.csv``.

        Raises
        ------
        CryoInputError
            If the checkpoint cannot be read or belongs to another run (``key``).
        """
        out = self.out
        if out is not None and self.writes:
            remove_stale_partials(out)  # temporary files of a run that was killed mid-write
        if resume and out is not None and (out / CHECKPOINT).exists():
            try:
                state = load_checkpoint(out / CHECKPOINT, device)
            except CryoInputError as exc:  # a damaged or unsafe checkpoint is reported, not silently dropped
                raise CryoInputError(out / CHECKPOINT, f"cannot be read to resume: {exc.problem}") from None
            if not isinstance(state, dict) or state.get("key") != key:
                raise CryoInputError(out / CHECKPOINT, "belongs to other particles, other settings or an older napari-cryo; start without --resume or use another --out")
            self._progress = self._rows_until(float(state.get("elapsed", 0.0)))
            return state
        if out is not None and self.writes and (out / PROGRESS).exists():
            (out / PROGRESS).unlink()
        self._progress = []
        return None

    def _rows_until(self, elapsed: float) -> list[dict[str, Any]]:
        """The rows of an earlier ``progress.csv`` up to the checkpoint's time (later work was lost with the kill)."""
        path = self.out / PROGRESS
        if not path.is_file():
            return []
        try:
            with open(path, newline="") as fh:
                rows = list(csv.DictReader(fh))
        except (OSError, csv.Error, UnicodeDecodeError):
            return []  # a log, not a result: a damaged one is started again
        kept = []
        for row in rows:
            try:
                if float(row.get("elapsed_s") or "nan") <= elapsed + 1e-6:
                    kept.append({k: row.get(k) or "" for k in PROGRESS_COLUMNS})
            except ValueError:
                continue
        return kept

    def save(self, state: dict[str, Any]) -> None:
        """Write the run's checkpoint atomically."""
        if self.out is None or not self.writes:
            return
        save_torch(_for_saving(state), self.out / CHECKPOINT)

    def save_last(self, state: dict[str, Any]) -> None:
        """Write the last checkpoint of a failed or cancelled run.

        Its caller is handling the run's own error, which a second one must
        not mask: a failure here is a :class:`CheckpointNotSaved` warning
        naming the file, not an exception.
        """
        try:
            self.save(state)
        except Exception as exc:  # noqa: BLE001 - reported as a warning, the run's own error follows
            reason = exc.problem if isinstance(exc, CryoInputError) else f"{type(exc).__name__}: {exc}"
            warnings.warn(f"{self.out / CHECKPOINT}: the last checkpoint was not written ({reason}); "
                          "--resume continues from the one before, if any", CheckpointNotSaved, stacklevel=2)

    def write_map(self, written: list[str], volume: np.ndarray, pixel_size: float) -> Path | None:
        """Write the next ``intermediate_NNN.mrc`` (atomically) and add its name to ``written``."""
        if self.out is None:
            return None
        from ..io.mrc import write_mrc

        path = self.out / f"intermediate_{len(written) + 1:03d}.mrc"
        if self.writes:
            write_mrc(path, volume, pixel_size, overwrite=True)
        written.append(path.name)
        return path

    def write_progress(self, row: dict[str, Any]) -> None:
        """Add a row to ``progress.csv``; keys outside :data:`PROGRESS_COLUMNS` are left out."""
        if self.out is None or not self.writes:
            return
        self._progress.append({k: row.get(k, "") for k in PROGRESS_COLUMNS})
        # Rewritten whole and atomically (a few kB): a kill or a full disk never leaves half a row.
        with atomic_path(self.out / PROGRESS, overwrite=True) as tmp, open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(PROGRESS_COLUMNS))
            writer.writeheader()
            writer.writerows(self._progress)

    def log(self, history: list[dict[str, Any]], record: dict[str, Any], map_path: Path | None = None) -> dict[str, Any]:
        """Keep ``record`` in the run's ``history`` and write it to ``progress.csv`` (with the map written for it)."""
        history.append(record)
        self.write_progress(record if map_path is None else {**record, "map": map_path.name})
        return record
