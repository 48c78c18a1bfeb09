"""From a first map to poses and a gold-standard map: global search, then local refinement by half-sets.

One round: every particle's pose is searched against its own half-set's map
(:func:`~.search.global_search`: the whole grid in the first round, a local
search around the current pose afterwards, down to a step matched to the
band); then both half maps are reconstructed from the new poses
(:func:`~.backproject.reconstruct_halves`).  The band compared grows to the
resolution the half maps reach (FSC 0.143), so the half-sets never see each
other's noise and the resolution reported at the end is honest.
"""

from __future__ import annotations

import math
from collections.abc import Generator
from dataclasses import dataclass

import numpy as np

from ..errors import CryoInputError
from ..tasks import Progress
from .backproject import HalfMaps, reconstruct_halves
from .extent import first_map_mask
from .physics import fourier_crop_volume
from .ranks import Ranks
from .poses import rotation_angles
from .run import MapUpdate, ReconstructionResult, RunControl, RunFolder, run_key
from .search import SearchSettings, global_search
from .stochastic import StochasticSettings, stochastic_map


@dataclass
class RefineSettings:
    """Schedule of the refinement (defaults are the benchmarked ones).

    Attributes
    ----------
    start_radius : float
        Band of the first global round, pixels of frequency.
    start_band : float
        ... and at most this many cycles per pixel (12 px at L = 64).  Every particle is
        aligned to the one first map in that round, so the half maps share this band:
        on pure noise at L = 32 an uncapped 12 px let them claim 2.7 px.
    coarse_degrees : float
        Grid of the global rounds.
    global_rounds : int
        At most this many global rounds (each against the half maps of the last).
    global_radius : float
        Largest band of a global round (a wider band costs more and the
        coarse grid is too sparse for it anyway).
    global_converged : float
        Go local once the median pose change of a global round is below this (degrees).
    angular_scale : float
        Finest step = ``angular_scale / radius`` degrees (an arc of about half
        a pixel at the band's edge), at least ``min_degrees``.
    min_degrees : float
        The finest step at the full band.
    max_shift : float
        Largest origin searched, pixels.
    converged_degrees : float
        Stop when the median pose change of a local round at the full band is below this.
    """

    start_radius: float = 12.0
    start_band: float = 0.1875
    coarse_degrees: float = 15.0
    global_rounds: int = 4
    global_radius: float = 20.0
    global_converged: float = 3.0
    angular_scale: float = 30.0
    min_degrees: float = 0.75
    max_shift: float = 0.0
    converged_degrees: float = 0.5


def first_radius(box: int, settings: RefineSettings) -> float:
    """The band (pixels of frequency) of the search against the first map."""
    return min(settings.start_radius, settings.start_band * box)


def first_map(data, batches: int, seed: int, stop, device, ranks: Ranks | None = None,
              max_shift: float = 0.0) -> Generator[Progress, None, np.ndarray]:
    """The stochastic first map (:func:`~.stochastic.stochastic_map` at its small box), at the data's box.

    ``max_shift`` is the largest origin searched later, as a fraction of the
    box; the first map takes the particles' origins as spread with a third
    of it (so that nearly all fall within it) and weighs them by that prior.
    The map is masked by a sphere as wide as the particles' images show them
    (:func:`~.extent.first_map_mask`).
    """
    box = data.box or data.original_box
    small = data.at_box(min(box, StochasticSettings.box))
    stochastic = StochasticSettings(box=small.box, batches=batches, origin_sigma=max_shift * small.box / 3,
                                    mask_radius=first_map_mask(small))
    volume, _ = yield from stochastic_map(small, stochastic, seed=seed, stop=stop, device=device, ranks=ranks)
    return fourier_crop_volume(volume, box).numpy() if small.box != box else volume


def fine_step(radius: float, settings: RefineSettings) -> float:
    """The finest angular step worth searching at a band of ``radius`` pixels of frequency."""
    return max(settings.min_degrees, settings.angular_scale / max(radius, 1.0))


def next_radius(halves: HalfMaps, pixel_size: float, box: int, radius: float, limit: float | None = None) -> float:
    """The band for the next round: out to the half maps' FSC 0.143 (never narrower; at most ``limit`` and Nyquist)."""
    res_px = halves.resolution / pixel_size if math.isfinite(halves.resolution) else float("inf")
    top = box / 2 if limit is None else min(box / 2, limit)
    return float(min(top, max(radius, box / res_px)))


def search_round(data, maps: list[np.ndarray], rotations: np.ndarray | None, shifts: np.ndarray | None,
                 radius: float, settings: RefineSettings, local: bool, seed: int = 0, device="cpu", ranks: Ranks | None = None):
    """One round of pose search (a generator of Progress returning rotations, shifts, mean error).

    ``maps``: one map for every particle, or the two half maps, each for
    its own half-set.  Global rounds search the whole grid (keeping a
    current pose that still fits better) down to a step of a quarter of the
    grid; local rounds start at twice the finest step around the current poses.
    With ``ranks``, each rank searches its own particles and every rank gets every pose.
    """
    ranks = ranks or Ranks.single()
    fine = fine_step(radius, settings)
    box = data.box or data.original_box
    if local:
        search = SearchSettings(coarse_degrees=0, fine_degrees=fine, local_degrees=2 * fine, max_shift=settings.max_shift,
                                shift_step=box / (6 * radius))
    else:
        # A shift error δ costs a phase of 2π·δ·radius/box at the band's edge: the grid keeps it near π/3.
        search = SearchSettings(coarse_degrees=settings.coarse_degrees, fine_degrees=max(fine, settings.coarse_degrees / 4),
                                max_shift=settings.max_shift, shift_step=box / (3 * radius))
    n = len(data)
    new_rot = np.empty((n, 3, 3), dtype=np.float32) if rotations is None else rotations.copy()
    new_shift = np.zeros((n, 2), dtype=np.float32) if shifts is None else shifts.copy()
    errors = np.empty(n, dtype=np.float32)
    previous = None if rotations is None else (rotations, shifts)
    parts = [np.arange(n)] if len(maps) == 1 else list(data.half_sets(seed))
    for rows, volume in zip(parts, maps):
        rows = ranks.own(rows)
        rot, sh, err = yield from global_search(data, volume, radius, search, rows=rows, previous=previous, device=device)
        new_rot[rows], new_shift[rows], errors[rows] = rot, sh, err
    if ranks.shared:
        new_rot, new_shift, errors = (ranks.gather_rows(a) for a in (new_rot, new_shift, errors))
    return new_rot, new_shift, float(np.mean(errors))


# -- the "search" method of :func:`~.reconstruct.reconstruct`


def run_search(data, settings, folder: RunFolder, control: RunControl, resume: bool,
               device) -> Generator[Progress | MapUpdate | dict, None, ReconstructionResult | None]:
    """The ``search`` method: a stochastic first map, a global search, then local rounds by half-sets.

    A generator with the contract of :func:`~.reconstruct.reconstruct`
    (Progress, one dict per round, MapUpdate; returns the result, or None
    when paused).  Checkpoints after the first map and after every round;
    an interruption during the first map restarts it.
    """
    box = data.box or data.original_box
    ranks = control.ranks
    refine = RefineSettings(max_shift=settings.max_shift * box)
    start_radius = first_radius(box, refine)
    key = run_key(data, settings)
    state = {"key": key, "phase": "first map", "round": 0, "elapsed": 0.0, "history": [], "maps": [],
             "volume": None, "rotations": None, "shifts": None, "radius": start_radius}
    saved = folder.start_or_resume(key, resume)
    if saved is not None:
        state.update(saved)
        yield Progress(0, None, f"resumed: {state['phase']}, round {state['round']}, {state['elapsed'] / 60:.1f} min done")
    control.restart(state["elapsed"])

    def save() -> None:
        state["elapsed"] = control.clock()
        folder.save(state)

    def emit(volume: np.ndarray, label: str, rotations: np.ndarray | None) -> MapUpdate:
        path = folder.write_map(state["maps"], volume, data.pixel_size)
        return MapUpdate(volume, data.pixel_size, label, path, rotations, control.clock())

    def record(loss: float, change: float, resolution: float, update: MapUpdate) -> dict:
        control.tick()
        row = {"epoch": state["round"], "phase": state["phase"], "loss": loss, "pose_change_deg": change,
               "resolution_A": round(resolution, 3), "elapsed_s": round(control.clock(), 1)}
        return folder.log(state["history"], row, update.path)

    if state["phase"] == "first map":
        volume = yield from first_map(data, settings.first_map_batches, settings.seed, control.halted, device, ranks, settings.max_shift)
        if control.paused():
            return None
        state["volume"] = volume
        update = emit(state["volume"], "first map (stochastic search)", None)
        yield update
        yield record(float("nan"), float("nan"), float("nan"), update)
        state["phase"] = "global search"
        save()

    halves = None
    last_round = 0.0  # seconds the last round took: a round that would end past the budget is not started
    while state["phase"] != "done":
        if state["rotations"] is not None and halves is None:
            halves = yield from reconstruct_halves(data, state["rotations"], state["shifts"], seed=settings.seed, ranks=ranks)
        if state["rotations"] is not None and (control.halted() or not control.fits(last_round)):
            break
        round_start = control.clock()
        if state["rotations"] is None:
            radius = start_radius
            rot, sh, loss = yield from search_round(data, [state["volume"]], None, None, radius, refine, False, settings.seed, device, ranks)
            change = float("nan")
        else:
            local = state["phase"] == "local search"
            radius = next_radius(halves, data.pixel_size, box, state["radius"], None if local else refine.global_radius)
            rot, sh, loss = yield from search_round(data, [halves.half1, halves.half2], state["rotations"], state["shifts"],
                                                    radius, refine, local, settings.seed, device, ranks)
            change = float(np.median(rotation_angles(state["rotations"], rot)))
        if control.paused():
            save()
            return None
        state["rotations"], state["shifts"], state["radius"] = rot, sh, radius
        state["round"] += 1
        halves = yield from reconstruct_halves(data, rot, sh, seed=settings.seed, ranks=ranks)
        control.tick()
        last_round = control.clock() - round_start
        update = emit(halves.volume, f"round {state['round']} ({state['phase']}, band {radius:.0f} px)", rot)
        yield update
        yield record(loss, change, halves.resolution, update)
        global_rounds = sum(1 for r in state["history"] if r["phase"] == "global search")
        if state["phase"] == "global search" and (global_rounds >= refine.global_rounds or change < refine.global_converged):
            state["phase"] = "local search"
        elif state["phase"] == "local search" and radius >= box / 2 and change < refine.converged_degrees:
            state["phase"] = "done"
        save()
    if control.paused():
        save()
        return None
    if halves is None:  # out of time before any search: poses are unknown
        raise CryoInputError(None, "the time budget ended before the first pose search; give the run more minutes (--max-minutes)")
    return ReconstructionResult(
        volume=halves.volume, half1=halves.half1, half2=halves.half2, pixel_size=data.pixel_size,
        rotations=state["rotations"], shifts=state["shifts"], fsc=halves.fsc, resolution=halves.resolution, history=state["history"],
    )
