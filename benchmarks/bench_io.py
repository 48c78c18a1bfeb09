"""I/O and sample-data benchmarks; raw results go to benchmarks/results (see docs/benchmarks.md).

Measures, each in a fresh Python process so memory figures are not polluted
by earlier work:

* opening a 4 GB float32 tomogram (1000 x 1024 x 1024) with the napari
  reader, and adding it to a ``napari.components.ViewerModel`` (which slices
  and reads the displayed plane): wall time and peak resident memory above
  the interpreter's baseline after imports;
* generating each napari sample data set.

Run:  python benchmarks/bench_io.py [--workdir DIR] [--keep]
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SHAPE = (1000, 1024, 1024)  # 4.19 GB of float32

#: Memory of the measuring subprocess, prepended to every snippet that reports it.
STATUS_MB = r"""
def status_mb(key):
    # VmHWM is this process's own peak: ru_maxrss would include the parent's
    # resident size at fork (Linux carries it across exec).
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
"""

OPEN_SNIPPET = STATUS_MB + r"""
import json, sys, time
import numpy as np
from napari.components import ViewerModel
from napari_cryo.io.layers import mrc_layer_data


def rss_mb():
    return status_mb("VmRSS")
path = sys.argv[1]
base = rss_mb()
t0 = time.perf_counter()
(data, kwargs, kind), = mrc_layer_data(path)
t_read = time.perf_counter() - t0
rss_read = rss_mb()
viewer = ViewerModel()
t1 = time.perf_counter()
layer = viewer.add_image(data, **kwargs)
t_add = time.perf_counter() - t1
peak = status_mb("VmHWM")
print(json.dumps({"read_s": t_read, "add_s": t_add, "base_mb": base, "rss_after_read_mb": rss_read,
                  "rss_after_add_mb": rss_mb(), "peak_mb": peak, "shape": list(data.shape),
                  "type": type(data).__name__}))
"""

SAMPLE_SNIPPET = r"""
import json, time
from napari_cryo.synthetic import _samples as s
out = {}
for name in ("atlas_sample", "micrograph_sample", "tomogram_sample", "particles_sample"):
    fn = getattr(s, name)
    t0 = time.perf_counter(); fn(); out[name] = time.perf_counter() - t0
print(json.dumps(out))
"""


def make_big_mrc(path: Path) -> None:
    """A 4 GB float32 MRC: header by mrcfile, data planes filled with noise in slabs."""
    import mrcfile
    import numpy as np

    rng = np.random.default_rng(0)
    with mrcfile.new_mmap(path, shape=SHAPE, mrc_mode=2, overwrite=True) as m:
        slab = rng.normal(size=(25, *SHAPE[1:])).astype(np.float32)
        for z in range(0, SHAPE[0], 25):
            m.data[z : z + 25] = slab
        m.voxel_size = 10.0
        m.header.ispg = 1


def drop_page_cache(path: Path) -> bool:
    """Evict the file from the page cache so the open is measured cold (Linux, needs root)."""
    try:
        import os

        fd = os.open(path, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
        return True
    except (OSError, AttributeError):
        return False


def run_json(code: str, *args: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def write_section(title: str, body: str) -> None:
    """Write a run's raw figures to benchmarks/results/<title>.md (and print them).

    docs/benchmarks.md is curated: one current table per capability. A run's raw output goes
    beside the scripts, to be folded into those tables by hand.
    """
    slug = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")
    out = RESULTS / f"{slug}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    text = f"## {title}\n\n{body.strip()}\n"
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(out)
    print(text)
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=None, help="where to write the 4 GB file (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the 4 GB file")
    args = parser.parse_args()
    import os

    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    work = Path(args.workdir or tempfile.mkdtemp(prefix="napari-cryo-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    big = work / "tomogram_4GB.mrc"
    t0 = time.perf_counter()
    if not big.exists():
        make_big_mrc(big)
    t_make = time.perf_counter() - t0
    runs = []
    for _ in range(3):
        cold = drop_page_cache(big)
        r = run_json(OPEN_SNIPPET, str(big))
        r["cold_cache"] = cold
        runs.append(r)
    if not args.keep:
        big.unlink()
    samples = run_json(SAMPLE_SNIPPET)

    size_gb = big.stat().st_size / 1e9 if big.exists() else (1024 + 4 * SHAPE[0] * SHAPE[1] * SHAPE[2]) / 1e9
    rows = "\n".join(
        f"| {i + 1} | {'cold' if r['cold_cache'] else 'warm'} | {r['read_s'] * 1000:.0f} | {r['add_s'] * 1000:.0f} | "
        f"{r['rss_after_add_mb'] - r['base_mb']:.0f} | {r['peak_mb'] - r['base_mb']:.0f} |"
        for i, r in enumerate(runs)
    )
    body = f"""
`python benchmarks/bench_io.py` on {machine} (file written in {t_make:.0f} s, then each open in a fresh process).

Opening a {size_gb:.2f} GB float32 tomogram of {SHAPE[0]}x{SHAPE[1]}x{SHAPE[2]} voxels with the napari reader
(`mrc_layer_data`: header, memory map, contrast limits and NaN check from 5 sampled planes), then adding it to a
`napari.components.ViewerModel` (which reads the displayed plane). Memory is resident memory above the baseline of
the process after its imports. Target: under 1 s and under 300 MB.

| run | page cache | read (ms) | add to viewer (ms) | RSS after (MB) | peak RSS above baseline (MB) |
|---|---|---|---|---|---|
{rows}

The data stay a `{runs[0]['type']}` of shape {tuple(runs[0]['shape'])}: nothing beyond the sampled planes is read.
"""
    write_section("Opening a 4 GB tomogram", body)
    sample_rows = "\n".join(f"| {k.replace('_sample', '')} | {v:.2f} |" for k, v in samples.items())
    write_section(
        "Sample data generation",
        f"""
`python benchmarks/bench_io.py` on {machine}: time to generate each napari sample (File > Open Sample), in a
fresh process after imports. Target: each under 2 s.

| sample | seconds |
|---|---|
{sample_rows}
""",
    )


if __name__ == "__main__":
    main()
