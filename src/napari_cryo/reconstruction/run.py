"""The run layer every reconstruction method shares: run control, the run folder, the result types.

- :class:`RunControl`: the clock (resumed runs count their earlier time),
  the time budget and the user's Stop and Pause, with one :meth:`~RunControl.halted`.
- :class:`RunFolder`: everything a run writes while it runs: the checkpoint,
  ``progress.csv`` and the intermediate maps (a run without a folder writes nothing).
- :class:`MapUpdate` and :class:`ReconstructionResult`: what a run yields and returns.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import CryoInputError
from ..io.atomic import atomic_path
from .coverage import ViewCoverage, view_coverage

CHECKPOINT = "checkpoint.pt"
PROGRESS = "progress.csv"
PROGRESS_COLUMNS = ("elapsed_s", "phase", "epoch", "loss", "pose_change_deg", "map", "resolution_A")
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
    """

    def __init__(self, max_minutes: float, elapsed: float = 0.0, stop: Callable[[], bool] | None = None,
                 pause: Callable[[], bool] | None = None) -> None:
        self.budget = max_minutes * 60.0
        self._stop = stop
        self._pause = pause
        self.restart(elapsed)

    def restart(self, elapsed: float) -> None:
        """Set the clock to ``elapsed`` seconds (a resumed run continues its own time)."""
        self._start = time.perf_counter() - elapsed

    def clock(self) -> float:
        """Seconds the run has taken, this session and earlier ones."""
        return time.perf_counter() - self._start

    def out_of_time(self) -> bool:
        """Whether the time budget is spent."""
        return self.clock() >= self.budget

    def stopped(self) -> bool:
        """Whether the user asked to finish now."""
        return self._stop is not None and self._stop()

    def paused(self) -> bool:
        """Whether the user asked to pause (checkpoint, no result)."""
        return self._pause is not None and self._pause()

    def halted(self) -> bool:
        """Whether pose inference must end now: out of time, stopped or paused."""
        return self.out_of_time() or self.stopped() or self.paused()


class Every:
    """A repeating deadline: :meth:`due` once ``minutes`` have passed since the last :meth:`reset`."""

    def __init__(self, minutes: float) -> None:
        self.seconds = minutes * 60
        self.reset()

    def due(self) -> bool:
        """Whether the interval has passed."""
        return time.perf_counter() - self._last > self.seconds

    def reset(self) -> None:
        """Start the interval again (after the work it was due for, so that work is not counted in it)."""
        self._last = time.perf_counter()


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


def _from_saved(state: Any) -> Any:
    """Undo :func:`_for_saving`: the arrays the run saved come back as numpy arrays."""
    if not isinstance(state, dict):
        return state
    state = dict(state)
    for key in state.pop(_NUMPY_KEYS, []):
        state[key] = state[key].cpu().numpy()
    return state


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> Any:
    """A run's checkpoint as the run saved it.

    It loads with ``weights_only``: a checkpoint from a shared folder can hold tensors and
    plain values, never code (a pickle that would run code raises ``UnpicklingError``).
    """
    return _from_saved(torch.load(path, map_location=device, weights_only=True))


class RunFolder:
    """What a run writes while it runs, in one folder: checkpoint, ``progress.csv``, intermediate maps.

    Parameters
    ----------
    out : path or None
        The folder (created if missing); None: a run that writes nothing.
    """

    def __init__(self, out: Path | str | None) -> None:
        self.out = Path(out) if out is not None else None
        if self.out is not None:
            self.out.mkdir(parents=True, exist_ok=True)

    @property
    def checkpoint(self) -> Path | None:
        """The checkpoint's path (None without a folder)."""
        return self.out / CHECKPOINT if self.out is not None else None

    def start_or_resume(self, key: str, resume: bool, device: torch.device | str = "cpu") -> dict[str, Any] | None:
        """The checkpoint to continue from (``resume``), else None after clearing an old ``progress.csv``.

        Raises
        ------
        CryoInputError
            If the checkpoint cannot be read or belongs to another run (``key``).
        """
        out = self.out
        if resume and out is not None and (out / CHECKPOINT).exists():
            try:
                state = load_checkpoint(out / CHECKPOINT, device)
            except Exception as exc:  # noqa: BLE001 - a damaged or unsafe checkpoint is reported, not silently dropped
                raise CryoInputError(out / CHECKPOINT, f"cannot be read to resume ({type(exc).__name__})") from None
            if not isinstance(state, dict) or state.get("key") != key:
                raise CryoInputError(out / CHECKPOINT, "belongs to other particles, other settings or an older napari-cryo; start without --resume or use another --out")
            return state
        if out is not None and (out / PROGRESS).exists():
            (out / PROGRESS).unlink()
        return None

    def save(self, state: dict[str, Any]) -> None:
        """Write the run's checkpoint atomically."""
        if self.out is None:
            return
        with atomic_path(self.out / CHECKPOINT, overwrite=True) as tmp:
            torch.save(_for_saving(state), tmp)

    def write_map(self, written: list[str], volume: np.ndarray, pixel_size: float) -> Path | None:
        """Write the next ``intermediate_NNN.mrc`` (atomically) and add its name to ``written``."""
        if self.out is None:
            return None
        from ..io.mrc import write_mrc

        path = self.out / f"intermediate_{len(written) + 1:03d}.mrc"
        write_mrc(path, volume, pixel_size, overwrite=True)
        written.append(path.name)
        return path

    def write_progress(self, row: dict[str, Any]) -> None:
        """Append a row to ``progress.csv`` (the header first); keys outside :data:`PROGRESS_COLUMNS` are left out."""
        if self.out is None:
            return
        path = self.out / PROGRESS
        new = not path.exists()
        with open(path, "a", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(PROGRESS_COLUMNS))
            if new:
                writer.writeheader()
            writer.writerow({k: row.get(k, "") for k in writer.fieldnames})

    def log(self, history: list[dict[str, Any]], record: dict[str, Any], map_path: Path | None = None) -> dict[str, Any]:
        """Keep ``record`` in the run's ``history`` and write it to ``progress.csv`` (with the map written for it)."""
        history.append(record)
        self.write_progress(record if map_path is None else {**record, "map": map_path.name})
        return record
