"""Streaming particles for reconstruction: time and peak memory of ParticleData; raw results to benchmarks/results.

Data: synthetic RELION 3.1 particle sets of 10,000 and 100,000 particles of 64² float32 pixels (0.16 and 1.6 GB
of images) in stacks of 1,000 particles, with CTF columns.  The images are 16 distinct noise-plus-disc images
repeated: only the size matters here.  They are written through ``mrcfile.new_mmap`` a block at a time and kept
in ``--workdir`` (outside the repository) for later runs.

Measured for each set, in a fresh Python process per setting so that memory figures are its own:

* constructing :class:`~napari_cryo.reconstruction.data.ParticleData` (STAR parsing, stack headers, CTF columns);
* two epochs of :meth:`~napari_cryo.reconstruction.data.ParticleData.batches` (batches of 256, shuffled) at the
  full box of 64 and Fourier-cropped to 32; the first epoch after evicting the stacks from the page cache where
  the system allows it (cold), the second from the page cache (warm);
* resident memory above the process's baseline after its imports: after construction, and the peak (VmHWM)
  over both epochs;
* for comparison, the same shuffled batches read raw through the napari reader's ``ParticleStack``, which keeps
  each stack memory-mapped.

Run:  nice -n 10 python benchmarks/bench_reconstruction_io.py [--workdir DIR] [--sizes 10000 100000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_io import STATUS_MB, write_section  # noqa: E402

BOX = 64
PER_STACK = 1000
BATCH = 256
PIXEL_SIZE = 2.0

RUN_SNIPPET = STATUS_MB + r"""
import json, sys, time
import torch
from napari_cryo.reconstruction.data import ParticleData


star, box, batch_size, epochs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(1)
base = status_mb("VmRSS")
t0 = time.perf_counter()
data = ParticleData(star, box=box)
t_construct = time.perf_counter() - t0
rss_construct = status_mb("VmRSS")
epoch_s = []
checksum = 0.0
for epoch in range(epochs):
    t0 = time.perf_counter()
    for batch in data.batches(batch_size, shuffle=True, seed=0, epoch=epoch):
        checksum += float(batch.images[:, box // 2, box // 2].sum())
    epoch_s.append(time.perf_counter() - t0)
print(json.dumps({"n": len(data), "box": data.box, "construct_s": t_construct, "epoch_s": epoch_s,
                  "base_mb": base, "rss_construct_mb": rss_construct, "peak_mb": status_mb("VmHWM"),
                  "checksum": checksum}))
"""

# For comparison: the napari reader's ParticleStack keeps a memory map of each stack; raw reads only.
MMAP_SNIPPET = STATUS_MB + r"""
import json, sys, time
import numpy as np
import torch
from napari_cryo.io.particles import ParticleStack


star, box, batch_size, epochs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
base = status_mb("VmRSS")
t0 = time.perf_counter()
stack = ParticleStack(star)
t_construct = time.perf_counter() - t0
rss_construct = status_mb("VmRSS")
epoch_s = []
for epoch in range(epochs):
    t0 = time.perf_counter()
    order = np.random.default_rng([0, epoch]).permutation(len(stack))
    for start in range(0, len(stack), batch_size):
        torch.from_numpy(stack.read(order[start : start + batch_size]))
    epoch_s.append(time.perf_counter() - t0)
print(json.dumps({"n": len(stack), "box": box, "construct_s": t_construct, "epoch_s": epoch_s,
                  "base_mb": base, "rss_construct_mb": rss_construct, "peak_mb": status_mb("VmHWM")}))
"""


def make_dataset(directory: Path, n: int, seed: int = 0) -> Path:
    """Write ``n`` particles in stacks of PER_STACK and their STAR file; reuse a complete earlier set."""
    import mrcfile
    import pandas as pd
    import starfile

    star = directory / "particles.star"
    done = directory / "COMPLETE"
    if done.exists() and star.exists():
        return star
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:BOX, :BOX] - BOX // 2
    disc = (np.hypot(y, x) < BOX / 4).astype(np.float32)
    distinct = (rng.normal(size=(16, BOX, BOX)) + disc).astype(np.float32)
    block = np.tile(distinct, (16, 1, 1))  # 256 images written at a time
    names = []
    for s, start in enumerate(range(0, n, PER_STACK)):
        count = min(PER_STACK, n - start)
        stack = f"stack_{s:05d}.mrcs"
        with mrcfile.new_mmap(directory / stack, shape=(count, BOX, BOX), mrc_mode=2, overwrite=True) as mrc:
            for i in range(0, count, len(block)):
                j = min(count, i + len(block))
                mrc.data[i:j] = block[: j - i]
            mrc.set_image_stack()
            mrc.voxel_size = PIXEL_SIZE
        names += [f"{i + 1:06d}@{stack}" for i in range(count)]
    defocus = rng.uniform(10000, 25000, n).round(1)
    particles = pd.DataFrame(
        {
            "rlnImageName": names,
            "rlnDefocusU": defocus,
            "rlnDefocusV": (defocus - 200).round(1),
            "rlnDefocusAngle": rng.uniform(-180, 180, n).round(2),
            "rlnPhaseShift": 0.0,
            "rlnOpticsGroup": 1,
        }
    )
    optics = pd.DataFrame(
        {
            "rlnOpticsGroup": [1],
            "rlnOpticsGroupName": ["opticsGroup1"],
            "rlnAmplitudeContrast": [0.1],
            "rlnSphericalAberration": [2.7],
            "rlnVoltage": [300.0],
            "rlnImagePixelSize": [PIXEL_SIZE],
            "rlnImageSize": [BOX],
            "rlnImageDimensionality": [2],
        }
    )
    starfile.write({"optics": optics, "particles": particles}, star)
    done.write_text("ok\n")
    return star


def drop_page_cache(paths: list[Path]) -> bool:
    """Evict files from the page cache so the first epoch reads from disk (Linux)."""
    try:
        for path in paths:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
        return True
    except (OSError, AttributeError):
        return False


def run(star: Path, box: int, epochs: int, snippet: str = RUN_SNIPPET) -> dict:
    cold = drop_page_cache(sorted(star.parent.glob("*.mrcs")))
    out = subprocess.run(
        [sys.executable, "-c", snippet, str(star), str(box), str(BATCH), str(epochs)],
        capture_output=True,
        text=True,
    )
    if out.returncode:
        raise RuntimeError(out.stderr)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["cold"] = cold
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/work/bench_recon_io", help="where the data sets are written and kept")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000], help="particle counts")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per setting (the first cold where possible)")
    parser.add_argument("--no-doc", action="store_true", help="print the results only; write no results file")
    args = parser.parse_args()

    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    try:
        import psutil

        machine += f", {psutil.virtual_memory().total / 2**30:.0f} GiB RAM"
    except ImportError:
        pass
    work = Path(args.workdir)
    rows, made, peaks, constructed = [], [], {}, []
    settings = [("ParticleData", BOX, RUN_SNIPPET), ("ParticleData", BOX // 2, RUN_SNIPPET), ("ParticleStack (mmap)", BOX, MMAP_SNIPPET)]
    cold = False
    for n in args.sizes:
        t0 = time.perf_counter()
        existed = (work / f"n{n}" / "COMPLETE").exists()
        star = make_dataset(work / f"n{n}", n)
        made.append(f"{n:,} particles " + ("reused" if existed else f"written in {time.perf_counter() - t0:.0f} s"))
        gb = sum(p.stat().st_size for p in star.parent.glob("*.mrcs")) / 1e9
        for reader, box, snippet in settings:
            r = run(star, box, args.epochs, snippet)
            print(json.dumps(r), flush=True)
            epochs = " / ".join(f"{s:.1f}" for s in r["epoch_s"])
            rate = r["n"] / r["epoch_s"][-1]
            peak = r["peak_mb"] - r["base_mb"]
            during = r["peak_mb"] - r["rss_construct_mb"]
            peaks.setdefault((reader, box), []).append((n, peak, during))
            if reader == "ParticleData" and box == BOX:
                constructed.append((n, r["rss_construct_mb"] - r["base_mb"]))
            rows.append(
                f"| {reader} | {r['n']:,} | {gb:.2f} | {BOX} → {r['box']} | {r['construct_s']:.2f} | {epochs} | {rate:,.0f} | "
                f"{r['rss_construct_mb'] - r['base_mb']:.0f} | {peak:.0f} | {during:.0f} | {r['base_mb']:.0f} |"
            )
            cold = r["cold"]
    per_particle = ""
    if len(constructed) > 1:
        (n0, m0), (n1, m1) = constructed[0], constructed[-1]
        per_particle = f", {(m1 - m0) * 2**20 / (n1 - n0) / 1000:.2f} kB per particle between {n0:,} and {n1:,} particles"
    growth = "; ".join(
        f"{reader}, box {box}: " + " → ".join(f"{d:.0f} MB at {n:,}" for n, _, d in values)
        for (reader, box), values in peaks.items()
    )
    command = "nice -n 10 python benchmarks/bench_reconstruction_io.py" + (
        f" --workdir {args.workdir}" if args.workdir != parser.get_default("workdir") else ""
    )
    body = f"""
`{command}` on {machine}; the machine was shared with other jobs (2 cores), so times are upper bounds.
Data sets in `{work}`: {', '.join(made)}.

Synthetic particle sets of 64² float32 images in stacks of 1,000, with CTF columns; each setting in a fresh
process with one torch thread: construct `ParticleData(star, box=...)`, then {args.epochs} epochs of
`data.batches({BATCH}, shuffle=True)` (read, Fourier crop, normalise, mask, to torch). The first epoch starts
{'with the stacks evicted from the page cache (cold)' if cold else 'with whatever the page cache holds'}, the next
from the page cache. Memory is resident memory (VmRSS / VmHWM) above the process's baseline after imports.

| reader | particles | stacks (GB) | box | construct (s) | epochs (s) | particles/s (last epoch) | RSS after construct (MB) | peak RSS (MB) | peak − after construct (MB) | baseline (MB) |
|---|---|---|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}

Memory added by iterating (peak minus the resident memory after construction) — {growth}.

`ParticleData` holds the parsed STAR table, the rlnImageName strings and a few arrays per particle (what "RSS
after construct" grows with{per_particle}) and one batch in flight while iterating; it reads the stacks with
positioned reads and keeps no memory map, so iterating costs the same memory at any number of particles. The last row of each size, for comparison, reads the same batches raw
(no preprocessing) with the napari reader's `ParticleStack`, which keeps a memory map of every stack: the pages
an epoch touches stay resident in the process.
"""
    if not args.no_doc:
        write_section("Reconstruction: streaming particles", body)
    print(body)


if __name__ == "__main__":
    main()
