"""Reconstruction on several processes: `napari-cryo reconstruct` alone against `torchrun --nproc-per-node K`.

Each run is the command line on the same particles with the same time budget and settings. The cores are
shared out: one process gets every core as torch threads; K ranks get cores / K threads each (on a GPU
machine, one GPU per rank). Reported per run, from its progress.csv and files:

* the median wall time of an amortized epoch and of an auto-decoding epoch (an epoch is the same work
  whatever K: every particle once);
* how many epochs the budget held;
* FSC 0.5 of the final map against the truth after alignment (rotation and hand), and the half maps' FSC 0.143;
* the peak resident memory of the largest rank (psutil, every 0.2 s over the process tree).

Data: a folder made by `napari-cryo simulate particles` (particles.star, ground_truth_map.mrc), e.g. the
adenylate kinase set of docs/benchmarks.md (`python benchmarks/bench_reconstruction.py --map adk-1.48.mrc ...`
makes it under its --workdir).

Run: python benchmarks/bench_ranks.py DATASET [--ranks 1 2] [--minutes 8] [--workdir DIR] [--json OUT.json]
     [-- extra reconstruct options]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def peak_rss(process, interval: float = 0.2) -> int:
    """Wait for ``process`` and return the largest resident memory any one process of its tree reached (bytes)."""
    import psutil

    root = psutil.Process(process.pid)
    peak = 0
    while process.poll() is None:
        try:
            tree = [root, *root.children(recursive=True)]
            peak = max([peak] + [p.memory_info().rss for p in tree if p.is_running()])
        except psutil.Error:
            pass
        time.sleep(interval)
    return peak


def epoch_seconds(progress: Path, phase: str) -> tuple[float, int]:
    """Median seconds between consecutive epochs of ``phase`` in a run's progress.csv, and their count."""
    with open(progress, newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["phase"] == phase and not r["map"]]
    times = [float(r["elapsed_s"]) for r in rows]
    steps = [b - a for a, b in zip(times, times[1:])]
    return (statistics.median(steps) if steps else float("nan")), len(rows)


def resolution_vs_truth(volume: Path, truth: Path) -> float:
    from napari_cryo.io.mrc import read_mrc
    from napari_cryo.reconstruction.fsc import align_maps, fsc

    ref, info = read_mrc(truth)
    mov, _ = read_mrc(volume)
    px = float(info.voxel_size[0])
    aligned = align_maps(np.asarray(ref, dtype=np.float32), np.asarray(mov, dtype=np.float32), px).aligned
    return float(fsc(aligned, np.asarray(ref), px).resolution_px(0.5))


def run(dataset: Path, out: Path, ranks: int, minutes: float, extra: list[str], cores: int) -> dict:
    cli = ["-m", "napari_cryo.cli", "reconstruct", str(dataset / "particles.star"), "--out", str(out), "--overwrite",
           "--max-minutes", str(minutes), *extra]
    command = [sys.executable, *cli] if ranks == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                          f"--nproc-per-node={ranks}", *cli]
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, cores // ranks))}
    start = time.perf_counter()
    with open(out.with_suffix(".log"), "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        peak = peak_rss(process)
    wall = time.perf_counter() - start
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed; see {out.with_suffix('.log')}")
    amortized, n_amortized = epoch_seconds(out / "progress.csv", "amortized")
    decoding, n_decoding = epoch_seconds(out / "progress.csv", "auto-decoding")
    half_maps = [line for line in out.with_suffix(".log").read_text().splitlines() if "resolution" in line and "FSC 0.143" in line]
    return {
        "ranks": ranks, "threads_per_rank": max(1, cores // ranks), "wall_s": round(wall, 1),
        "amortized_epoch_s": round(amortized, 2), "amortized_epochs": n_amortized,
        "auto_decoding_epoch_s": round(decoding, 2), "auto_decoding_epochs": n_decoding,
        "fsc05_vs_truth_px": round(resolution_vs_truth(out / "volume.mrc", dataset / "ground_truth_map.mrc"), 3),
        "half_maps_line": half_maps[-1] if half_maps else "", "peak_rss_per_rank_MiB": round(peak / 2**20),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", type=Path, help="folder with particles.star and ground_truth_map.mrc")
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--minutes", type=float, default=8.0, help="time budget of every run (default 8)")
    parser.add_argument("--cores", type=int, default=os.cpu_count(), help="cores shared out between the ranks")
    parser.add_argument("--workdir", type=Path, default=Path("benchmarks/data/ranks"))
    parser.add_argument("--json", type=Path)
    args, extra = parser.parse_known_args()
    extra = [a for a in extra if a != "--"]
    args.workdir.mkdir(parents=True, exist_ok=True)
    results = []
    for k in args.ranks:
        result = run(args.dataset, args.workdir / f"ranks{k}", k, args.minutes, extra, args.cores)
        results.append(result)
        print(json.dumps(result), flush=True)
    base = results[0]
    print("\n| ranks × threads | amortized epoch (s) | auto-decoding epoch (s) | epochs in the budget | FSC 0.5 vs truth (px) | peak memory per rank |")
    print("|---|---|---|---|---|---|")
    for r in results:
        speed = base["amortized_epoch_s"] / r["amortized_epoch_s"] if r["amortized_epoch_s"] else float("nan")
        print(f"| {r['ranks']} × {r['threads_per_rank']} | {r['amortized_epoch_s']} ({speed:.2f}×) | {r['auto_decoding_epoch_s']} | "
              f"{r['amortized_epochs']} + {r['auto_decoding_epochs']} | {r['fsc05_vs_truth_px']} | {r['peak_rss_per_rank_MiB']} MiB |")
    if args.json:
        args.json.write_text(json.dumps({"machine": platform.platform(), "cores": args.cores, "minutes": args.minutes,
                                         "dataset": str(args.dataset), "extra": extra, "runs": results}, indent=1))


if __name__ == "__main__":
    main()
