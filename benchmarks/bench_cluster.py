"""Batch jobs on dask.distributed: throughput with 1 and 2 local workers, and the client's peak memory.

Data (in --workdir, made once and reused): N simulated micrographs of --size² pixels at 1.5 Å/px with 150 Å
particles, and M random tomograms of --tomo-shape voxels at 10 Å (segmentation costs the same whatever the
voxels hold). At most 8 micrographs and 4 tomograms are simulated; the rest are copies under other names,
which cost the same to pick or segment.

Jobs, each with `--scheduler local:W` semantics (napari_cryo.cluster.connect) for W in --workers:

* picking: `pick run` on the N micrographs with the shipped generic picker (pick_batch);
* segmentation: `segment apply` on the M tomograms with an untrained one-feature model of the default
  architecture (box 64, 10 Å), which costs what a trained one does (apply_batch).

Per run: the seconds from the first submission to the last file done (the cluster's start-up, reported apart, is
not in it), files per minute, the ratio to one worker (the ideal on 2 cores is 2x), and the peak resident memory
of the client process (psutil RSS, sampled every 20 ms during the run) above its level before the run, which
stays flat in N because the client holds only file names.

Run: python benchmarks/bench_cluster.py [--n 200] [--m 20] [--workers 1 2] [--workdir DIR] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


class PeakRSS:
    """The peak resident memory of this process, sampled in a thread while the block runs."""

    def __init__(self, interval: float = 0.02) -> None:
        import psutil

        self._process = psutil.Process()
        self._interval = interval
        self._stop = threading.Event()
        self.before = self.peak = self._process.memory_info().rss

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._process.memory_info().rss)
            self._stop.wait(self._interval)

    def __enter__(self) -> "PeakRSS":
        self.before = self.peak = self._process.memory_info().rss
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss)


def make_micrographs(folder: Path, n: int, size: int) -> list[str]:
    from napari_cryo.io.mrc import write_mrc
    from napari_cryo.synthetic import simulate_micrograph

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"mic{i:04d}.mrc"
        if not path.exists():
            if i < 8:
                m = simulate_micrograph(shape=(size, size), pixel_size=1.5, diameter=150, n_particles=size * size // 40000, seed=i)
                write_mrc(path, m.image, 1.5)
            else:
                shutil.copyfile(folder / f"mic{i % 8:04d}.mrc", path)
        paths.append(str(path))
    return paths


def make_tomograms(folder: Path, m: int, shape: tuple[int, int, int]) -> list[str]:
    from napari_cryo.io.mrc import write_mrc

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(m):
        path = folder / f"tomo{i:03d}.mrc"
        if not path.exists():
            if i < 4:
                write_mrc(path, np.random.default_rng(i).normal(size=shape).astype(np.float32), 10.0)
            else:
                shutil.copyfile(folder / f"tomo{i % 4:03d}.mrc", path)
        paths.append(str(path))
    return paths


def run_job(name: str, workers: int, submit) -> dict:
    """Start a local cluster of ``workers``, time ``submit(client)`` and the client's memory during it."""
    from napari_cryo.cluster import connect

    started = time.perf_counter()
    with connect(f"local:{workers}") as client:
        ready = time.perf_counter()
        with PeakRSS() as memory:
            t0 = time.perf_counter()
            report = submit(client)
            seconds = time.perf_counter() - t0
    if report.failed:
        raise RuntimeError(f"{name}: {[o.error for o in report.failed]}")
    files = len(report.finished)
    return {
        "job": name,
        "workers": workers,
        "files": files,
        "startup_s": round(ready - started, 2),
        "seconds": round(seconds, 2),
        "files_per_min": round(60 * files / seconds, 2),
        "client_rss_before_mb": round(memory.before / 2**20, 1),
        "client_rss_peak_above_mb": round((memory.peak - memory.before) / 2**20, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="micrographs to pick (default 200)")
    parser.add_argument("--m", type=int, default=20, help="tomograms to segment (default 20)")
    parser.add_argument("--size", type=int, default=4096, help="micrograph side in pixels (default 4096)")
    parser.add_argument("--tomo-shape", type=int, nargs=3, default=(64, 512, 512), metavar=("Z", "Y", "X"))
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--workdir", type=Path, help="where the data are made and kept (default: a temporary folder)")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()

    from napari_cryo.picking.batch import PickRunSettings, pick_batch
    from napari_cryo.segmentation import architectures
    from napari_cryo.segmentation.batch import apply_batch
    from napari_cryo.segmentation.model import SegmentationModel

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_cluster_"))
    t0 = time.perf_counter()
    mics = make_micrographs(work / "micrographs", args.n, args.size)
    tomos = make_tomograms(work / "tomograms", args.m, tuple(args.tomo_shape))
    model = work / "membrane.scnm"
    if not model.exists():
        SegmentationModel.new(architectures.DEFAULT, "membrane", box_size=64, pixel_size=10.0).save(model)
    print(f"data ready in {time.perf_counter() - t0:.0f} s in {work}", file=sys.stderr)

    rows = []
    for workers in args.workers:
        out = work / f"picks_{workers}"
        shutil.rmtree(out, ignore_errors=True)
        rows.append(run_job("pick run", workers, lambda c, out=out: pick_batch(c, mics, out, PickRunSettings(diameter=150.0))))
        print(rows[-1], file=sys.stderr)
        out = work / f"seg_{workers}"
        shutil.rmtree(out, ignore_errors=True)
        rows.append(run_job("segment apply", workers, lambda c, out=out: apply_batch(c, str(model), tomos, out, device="cpu")))
        print(rows[-1], file=sys.stderr)
    for row in rows:
        one = next(r for r in rows if r["job"] == row["job"] and r["workers"] == min(args.workers))
        row["speedup"] = round(row["files_per_min"] / one["files_per_min"], 2)

    print("| job | workers | files | start-up (s) | run (s) | files/min | speed-up | client RSS peak above start (MB) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['job']} | {r['workers']} | {r['files']} | {r['startup_s']} | {r['seconds']} | {r['files_per_min']} | "
              f"{r['speedup']}x | {r['client_rss_peak_above_mb']} |")
    if args.json:
        info = {"machine": platform.processor() or platform.machine(), "python": platform.python_version(),
                "n": args.n, "m": args.m, "size": args.size, "tomo_shape": list(args.tomo_shape)}
        args.json.write_text(json.dumps({"settings": info, "rows": rows}, indent=2))
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
