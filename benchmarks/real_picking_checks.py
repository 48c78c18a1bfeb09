"""Picking on real micrographs (#30 item 6): sanity checks against other programs' picks; prints a markdown table.

Data: ../shared/testdata/real/ (see ../shared/testdata/README.md, section real/).

* Ucsf_stack_1142_DW.mrc (927 x 959, from micrograph_cleaner_em's tests) with 45 RELION autopicks. The header has
  no pixel size. The frame is a 4x-binned K2 image (3838 x 3710 / 4), so 4 Å/px is assumed; the particles are dark
  blobs about 40 px across (the radial profile of the autopicks' average falls to half at 14-15 px and to the
  background at about 22 px; micrograph_cleaner's test uses a 46 px box), so the diameter is 160 Å. Only the
  diameter in pixels matters to the picker. Nine autopicks sit on the edge of a large ice contamination; the
  reference set is the others that lie at least a radius from it and from the image edge.
* magellon_00018ex_ds8.mrc (512 x 512, binned 8x to 6.32 Å/px) with Topaz's picks (pretrained ResNet8, threshold -3,
  NMS radius 14 px). The particles are rings 18-19 px across (the average's dark ring peaks at 7-8 px radius,
  apoferritin-sized), so the diameter is 120 Å. Topaz's confident picks are those scoring at least its median
  score, again only those at least a radius from the image edge.

Checks: the fraction of reference picks with one of ours within half a diameter ("found"), at the model's own
threshold; how many of our picks sit on the contamination (found as the large, very dark patches:
napari_cryo.picking.evaluate.dark_regions); how many of our picks lie within a radius of a Topaz pick.

``--speed`` also times picking a 4096² float32 micrograph (1 Å/px, 108 Å particles) from the MRC file on disk to
picks, after one warm-up run, with torch on 2 threads.

Run: python benchmarks/real_picking_checks.py [--model generic|PATH] [--png DIR] [--speed]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
REAL = Path(os.environ.get("NAPARI_CRYO_TESTDATA", ROOT.parent / "shared" / "testdata")) / "real"

from napari_cryo.io.mrc import read_mrc, write_mrc  # noqa: E402
from napari_cryo.io.star import read_star  # noqa: E402
from napari_cryo.picking.evaluate import dark_regions, found_fraction  # noqa: E402
from napari_cryo.picking.model import load_model  # noqa: E402
from napari_cryo.picking.picks import pick_micrograph  # noqa: E402

UCSF_PIXEL, UCSF_DIAMETER = 4.0, 160.0
MAGELLON_PIXEL, MAGELLON_DIAMETER = 6.32, 120.0


@dataclass
class RealCase:
    """One real micrograph, its reference picks (YX pixels) and what the checks need."""

    name: str
    image: np.ndarray
    pixel_size: float
    diameter: float
    reference: np.ndarray
    contamination: np.ndarray | None = None
    reference_all: np.ndarray | None = None

    @property
    def diameter_px(self) -> float:
        return self.diameter / self.pixel_size


def _inside(yx: np.ndarray, shape: tuple[int, int], margin: float) -> np.ndarray:
    return (yx[:, 0] >= margin) & (yx[:, 0] <= shape[0] - 1 - margin) & (yx[:, 1] >= margin) & (yx[:, 1] <= shape[1] - 1 - margin)


def ucsf_case(real: Path = REAL) -> RealCase:
    """The UCSF micrograph, its contamination and the autopicks away from it and from the edges."""
    image = np.asarray(read_mrc(real / "Ucsf_stack_1142_DW.mrc")[0], dtype=np.float32)
    table = read_star(real / "Ucsf_stack_1142_DW_autopick.star")[""]
    refs = table[["rlnCoordinateY", "rlnCoordinateX"]].to_numpy(float)
    d = UCSF_DIAMETER / UCSF_PIXEL
    contamination = dark_regions(image, d)
    clear = ndimage.distance_transform_edt(~contamination)
    iy, ix = np.round(refs).astype(int).T
    keep = (clear[iy, ix] >= d / 2) & _inside(refs, image.shape, d / 2)
    return RealCase("Ucsf_stack_1142_DW", image, UCSF_PIXEL, UCSF_DIAMETER, refs[keep], contamination, refs)


def magellon_case(real: Path = REAL) -> RealCase:
    """The binned Magellon micrograph and Topaz's confident picks (score at least its median) away from the edges."""
    image = np.asarray(read_mrc(real / "magellon_00018ex_ds8.mrc")[0], dtype=np.float32)
    picks = json.loads((real / "magellon_00018ex_ds8_topaz_picks.json").read_text())
    yx = np.array([[p["y_ds"], p["x_ds"]] for p in picks], dtype=float)
    score = np.array([p["score"] for p in picks], dtype=float)
    d = MAGELLON_DIAMETER / MAGELLON_PIXEL
    keep = (score >= np.median(score)) & _inside(yx, image.shape, d / 2)
    return RealCase("magellon_00018ex_ds8", image, MAGELLON_PIXEL, MAGELLON_DIAMETER, yx[keep], None, yx)


def check(case: RealCase, model, threshold: float) -> dict:
    """Our picks on one case and the figures of the table."""
    result = pick_micrograph(model, case.image, case.pixel_size, case.diameter)
    yx, scores = result.picks(threshold)
    d = case.diameter_px
    out = {"picks": yx, "n_picks": len(yx), "n_reference": len(case.reference), "found": found_fraction(yx, case.reference, d / 2)}
    if case.contamination is not None:
        iy, ix = np.clip(np.round(yx).astype(int), 0, np.array(case.image.shape) - 1).T
        clear = ndimage.distance_transform_edt(~case.contamination)
        out["on_contamination"] = int(np.count_nonzero(case.contamination[iy, ix]))
        out["near_contamination"] = int(np.count_nonzero(clear[iy, ix] < d / 2))
        out["contamination_fraction"] = float(case.contamination.mean())
    else:
        out["near_reference"] = found_fraction(case.reference_all, yx, d / 2)
    return out


def save_overlay(case: RealCase, res: dict, path: Path) -> None:
    """PNG of the micrograph with the reference picks (red circles), ours (cyan +) and the contamination (yellow)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = ndimage.gaussian_filter(case.image, 0.05 * case.diameter_px)
    # Grey levels from the ice alone: the contamination would wash everything else out.
    lo, hi = np.percentile(shown if case.contamination is None else shown[~case.contamination], [1, 99.5])
    fig, ax = plt.subplots(figsize=(10, 10 * case.image.shape[0] / case.image.shape[1]))
    ax.imshow(shown, cmap="gray", vmin=lo, vmax=hi)
    if case.contamination is not None:
        ax.contour(case.contamination, [0.5], colors="y")
    theta = np.linspace(0, 2 * np.pi, 40)
    r = case.diameter_px / 2
    for y, x in case.reference:
        ax.plot(x + r * np.cos(theta), y + r * np.sin(theta), "r-", lw=1)
    ax.plot(res["picks"][:, 1], res["picks"][:, 0], "c+", ms=8, mew=1.5)
    ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def speed(model, repeats: int = 5) -> list[float]:
    """Seconds to pick a 4096² float32 micrograph read from an MRC file, after a warm-up run."""
    from napari_cryo.picking.data import load_micrograph

    rng = np.random.default_rng(0)
    image = ndimage.gaussian_filter(rng.normal(size=(4096, 4096)).astype(np.float32), 2.0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "speed.mrc"
        write_mrc(path, image, 1.0)
        times = []
        for i in range(repeats + 1):
            t0 = time.perf_counter()
            mic = load_micrograph(path)
            result = pick_micrograph(model, mic.image, mic.pixel_size, 108.0)
            result.picks(model.threshold)
            if i:
                times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="generic", help="picking model: generic (shipped) or a model file")
    parser.add_argument("--png", help="write overlays (PNG) into this folder")
    parser.add_argument("--speed", action="store_true", help="also time picking a 4096² micrograph")
    args = parser.parse_args()
    if not REAL.is_dir():
        sys.exit(f"real test data not found at {REAL}")
    torch.set_num_threads(2)
    model = load_model(args.model)
    ucsf, magellon = ucsf_case(), magellon_case()
    u, m = check(ucsf, model, model.threshold), check(magellon, model, model.threshold)
    if args.png:
        Path(args.png).mkdir(parents=True, exist_ok=True)
        save_overlay(ucsf, u, Path(args.png) / "ucsf_picks.png")
        save_overlay(magellon, m, Path(args.png) / "magellon_picks.png")
    machine = f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} on 2 threads"
    print(f"model: {model.name} ({args.model}); threshold {model.threshold:g}; {machine}\n")
    print("| micrograph | setting | check | result | bar in tests/test_picking_real.py |")
    print("|---|---|---|---|---|")
    print(
        f"| Ucsf_stack_1142_DW (927×959, RELION autopicks) | 4 Å/px assumed, 160 Å (40 px) | autopicks found within half a diameter "
        f"({u['n_reference']} of 45: those a radius clear of the contamination and the edge) | {u['found']:.2f} | ≥ 0.6 |"
    )
    print(
        f"| | | our picks on the ice contamination ({100 * u['contamination_fraction']:.0f} % of the image) / within a radius of it "
        f"/ all our picks | {u['on_contamination']} / {u['near_contamination']} / {u['n_picks']} | none on it (also at threshold 0.2) |"
    )
    print(
        f"| magellon_00018ex_ds8 (512², Topaz picks) | 6.32 Å/px, 120 Å (19 px) | Topaz's confident picks (score ≥ its median, "
        f"{m['n_reference']} a radius clear of the edge) found within half a diameter | {m['found']:.2f} | ≥ 0.9 |"
    )
    print(f"| | | our picks within a radius of one of Topaz's 87 picks | {m['near_reference']:.2f} of {m['n_picks']} | ≥ 0.75 |")
    if args.speed:
        times = speed(model)
        print(f"\nspeed: 4096² float32 MRC -> picks, 108 Å at 1 Å/px: best {min(times):.2f} s, runs " + ", ".join(f"{t:.2f}" for t in times))


if __name__ == "__main__":
    main()
