"""Ab initio reconstruction benchmark: the search method, cryoSPIN and cryoAI against ground truth and cryoDRGN, over wall time.

Dataset (simulated with `napari-cryo simulate particles`): a real map (default
../shared/testdata/particles/hand-vol.mrc; `model_map.py` makes one from an atomic model), L = 64, 10,000 particles, SNR 0.1 (variance of the clean CTF-modulated
image over the whole box divided by the noise variance), lognormal defocus with a median of 2 µm.

Reported:
* the known-pose reconstruction's resolution (FSC 0.5 against the ground-truth map), the limit of the data;
* for each method, at every intermediate map: wall time, FSC 0.5 against the ground truth after global alignment
  (rotation and handedness) and the median rotation error after the best global alignment;
* the same for `cryodrgn abinit --zdim 0` (homogeneous) run in its own virtual environment (--cryodrgn), on the same particles.

Run: python -u benchmarks/bench_reconstruction.py [--map MAP.mrc] [--n 10000] [--box 64] [--minutes 20]
     [--cryodrgn /path/to/venv/bin/cryodrgn [--cryodrgn-minutes T]] [--section TITLE]
"""

from __future__ import annotations

import argparse
import os
import pickle
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_io import write_section  # noqa: E402

from napari_cryo.geometry import euler_to_matrix  # noqa: E402
from napari_cryo.io.mrc import read_mrc  # noqa: E402
from napari_cryo.reconstruction.backproject import reconstruct_halves  # noqa: E402
from napari_cryo.reconstruction.data import ParticleData  # noqa: E402
from napari_cryo.reconstruction.fsc import align_maps, fsc  # noqa: E402
from napari_cryo.reconstruction.coverage import view_coverage  # noqa: E402
from napari_cryo.reconstruction.poses import rotation_errors  # noqa: E402
from napari_cryo.reconstruction.reconstruct import MapUpdate, ReconstructionSettings, reconstruct  # noqa: E402
from napari_cryo.tasks import drain  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def simulate(map_path: Path, out: Path, n: int, box: int, snr: float, pixel_size: float, seed: int = 0,
             shift_px: float = 0.0) -> None:
    if (out / "particles.star").exists():
        return
    from napari_cryo.cli import main

    code = main(["simulate", "particles", str(map_path), "--n", str(n), "--box", str(box), "--snr", str(snr),
                 "--defocus-median", "20000", "--defocus-sigma", "0.3", "--pixel-size", str(pixel_size),
                 "--shift-sigma", str(shift_px * pixel_size), "--out", str(out), "--seed", str(seed), "--device", "cpu"])
    assert code == 0


def score(volume: np.ndarray, rotations: np.ndarray | None, ref: np.ndarray, truth_rot: np.ndarray, px: float) -> dict:
    """FSC 0.5 against the truth after global alignment, and the median pose error."""
    alignment = align_maps(ref, volume, px)
    curve = fsc(alignment.aligned, ref, px)
    out = {"fsc05_px": curve.resolution_px(0.5), "fsc05_A": curve.resolution(0.5), "flipped": alignment.flipped}
    if rotations is not None:
        cmp = rotation_errors(rotations, truth_rot)
        out["median_deg"] = cmp.median
        out["mean_deg"] = cmp.mean
        out["within5"] = float(np.mean(cmp.errors <= 5))
        out["within10"] = float(np.mean(cmp.errors <= 10))
        out["other_hand"] = cmp.other_hand_fraction
        out["scf"] = view_coverage(rotations).scf
    return out


def pose_floor(data: ParticleData, ref: np.ndarray, truth_rot: np.ndarray, max_shift_px: float) -> dict:
    """The pose-error floor: a global search of every particle against the *true* map, then local rounds to Nyquist.

    No method can place the particles better than a search against the map they came from (at this band and
    sampling), so its median error is the best the images allow.
    """
    from napari_cryo.reconstruction.refine import RefineSettings, search_round

    refine = RefineSettings(max_shift=max_shift_px)
    box = data.box or data.original_box
    t0 = time.perf_counter()
    rot, sh, _ = drain(search_round(data, [ref], None, None, refine.global_radius, refine, local=False))[0]
    rows = {"global": rotation_errors(rot, truth_rot)}
    for radius in (box / 4, box / 2, box / 2):
        rot, sh, _ = drain(search_round(data, [ref], rot, sh, radius, refine, local=True))[0]
    cmp = rotation_errors(rot, truth_rot)
    out = {"floor_global_median_deg": rows["global"].median, "floor_median_deg": cmp.median, "floor_mean_deg": cmp.mean,
           "floor_within5": float(np.mean(cmp.errors <= 5)), "floor_within10": float(np.mean(cmp.errors <= 10)),
           "floor_s": time.perf_counter() - t0}
    print("pose floor", out, flush=True)
    return out


def run_method(method: str, data: ParticleData, minutes: float, ref, truth_rot, work: Path,
               collapse_scf: float | None = None, overrides: dict | None = None, truth_shift_px: np.ndarray | None = None) -> list[dict]:
    rows: list[dict] = []
    # Only cryoSPIN reads collapse_scf, so it can be given to every method.
    extra = {} if collapse_scf is None else {"collapse_scf": collapse_scf}
    extra.update(overrides or {})
    settings = ReconstructionSettings(method=method, max_minutes=minutes, map_minutes=max(0.5, minutes / 8), **extra)
    t0 = time.perf_counter()

    def on_value(item):
        if isinstance(item, MapUpdate):
            row = {"t": time.perf_counter() - t0, "label": item.label, **score(item.volume, item.rotations, ref, truth_rot, data.pixel_size)}
            rows.append(row)
            print(method, row, flush=True)

    result, _ = drain(reconstruct(data, settings, work / method, device="cpu"), on_value)
    final = {"t": time.perf_counter() - t0, "label": "final (half-map reconstruction)", "half_map_A": result.resolution,
             **score(result.volume, result.rotations, ref, truth_rot, data.pixel_size), "history": result.history}
    if truth_shift_px is not None:
        from napari_cryo.reconstruction.poses import shift_errors

        final["shift_median_px"] = shift_errors(result.shifts, truth_shift_px, result.rotations).median
    rows.append(final)
    print(method, {k: v for k, v in final.items() if k != "history"}, flush=True)
    return rows


def run_cryodrgn(exe: str, dataset: Path, minutes: float, ref, truth_rot, px: float, work: Path, box: int) -> list[dict]:
    """cryoDRGN's ab initio (`cryodrgn abinit --zdim 0`, homogeneous), stopped at the time budget.

    Every map it writes is scored as it appears, with the poses of the same epoch.  cryoDRGN's rotation
    matrices are the transpose of RELION's (its parse_pose_star transposes them), so they are transposed back.
    """
    out = work / "cryodrgn"
    out.mkdir(parents=True, exist_ok=True)
    ctf = out / "ctf.pkl"
    subprocess.run([exe, "parse_ctf_star", str(dataset / "particles.star"), "-o", str(ctf), "-D", str(box), "--Apix", str(px)],
                   check=True, capture_output=True)
    run_dir = out / "run"
    cmd = [exe, "abinit", str(dataset / "particles.mrcs"), "--ctf", str(ctf), "-o", str(run_dir), "--zdim", "0", "--no-analysis",
           "--num-epochs", "200", "--max-threads", "2"]
    t0 = time.perf_counter()
    wall0 = time.time()
    log = open(out / "log.txt", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "2"})
    seen: set[Path] = set()
    rows: list[dict] = []
    while True:
        done = proc.poll() is not None
        for vol in sorted(run_dir.rglob("*.mrc"), key=lambda p: p.stat().st_mtime):
            if vol in seen:
                continue
            time.sleep(1.0)  # let the writer finish
            seen.add(vol)
            stem = vol.stem.split(".")[-1]
            rotations = None
            for pose_file in (vol.parent / f"pose.{stem}.pkl", vol.parent / f"poses.{stem}.pkl"):
                if pose_file.exists():
                    with open(pose_file, "rb") as fh:
                        poses = pickle.load(fh)
                    rot = poses[0] if isinstance(poses, (tuple, list)) else poses.get("rots", poses) if isinstance(poses, dict) else poses
                    rotations = np.transpose(np.asarray(rot, dtype=float).reshape(-1, 3, 3), (0, 2, 1))
                    break
            volume = np.asarray(read_mrc(vol)[0], dtype=np.float32)
            if volume.shape != ref.shape:
                continue
            row = {"t": vol.stat().st_mtime - wall0, "label": f"{vol.parent.name}/{vol.name}",
                   **score(volume, rotations if rotations is not None and len(rotations) == len(truth_rot) else None, ref, truth_rot, px)}
            rows.append(row)
            print("cryodrgn", row, flush=True)
        if done or time.perf_counter() - t0 > minutes * 60:
            break
        time.sleep(5)
    if proc.poll() is None:
        proc.terminate()
        proc.wait()
    return rows


def fmt(v, digits=2):
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "-"
    return f"{v:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--map", default=str(ROOT.parent / "shared" / "testdata" / "particles" / "hand-vol.mrc"))
    parser.add_argument("--n", type=int, default=10000)
    parser.add_argument("--box", type=int, default=64)
    parser.add_argument("--snr", type=float, default=0.1)
    parser.add_argument("--pixel-size", type=float, default=4.0,
                        help="Å per pixel given to the map (hand-vol's header says 1 Å, which at 2 µm defocus spreads the CTF beyond a 64 px box)")
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--methods", nargs="+", default=["search", "cryospin", "cryoai"])
    parser.add_argument("--cryodrgn", help="the cryodrgn executable of a separate virtual environment")
    parser.add_argument("--cryodrgn-minutes", type=float, help="cryoDRGN's budget (default: --minutes)")
    parser.add_argument("--data-seed", type=int, default=0, help="seed of the simulated data set (poses, defocus, noise)")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="a ReconstructionSettings field for every method (e.g. polish_rounds=0); repeatable")
    parser.add_argument("--shift-sigma", type=float, default=0.0, help="standard deviation of the particles' origins, pixels")
    parser.add_argument("--dataset", help="an existing particle set (particles.star, ground_truth.star, ground_truth_map.mrc)")
    parser.add_argument("--floor", action="store_true", help="also measure the pose-error floor (search against the true map)")
    parser.add_argument("--collapse-scf", type=float,
                        help="cryoSPIN's collapse check (ReconstructionSettings.collapse_scf; default: the package's)")
    parser.add_argument("--workdir", default="/work/bench_recon")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--section", default="Ab initio reconstruction", help="title of the results file (benchmarks/results/<title>.md)")
    args = parser.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    machine = f"{platform.machine()}, {torch.get_num_threads()} torch threads on {os.cpu_count()} cores, torch {torch.__version__}"
    work = Path(args.workdir)
    suffix = f"_s{args.data_seed}" if args.data_seed else ""
    suffix += f"_sh{args.shift_sigma:g}_snr{args.snr:g}" if args.shift_sigma else ""
    dataset = work / f"{Path(args.map).stem.split('-')[0]}{args.pixel_size:g}_{args.box}_{args.n}{suffix}"
    if args.dataset:
        dataset = Path(args.dataset)
    else:
        simulate(Path(args.map), dataset, args.n, args.box, args.snr, args.pixel_size, args.data_seed, args.shift_sigma)
    ref = np.asarray(read_mrc(dataset / "ground_truth_map.mrc")[0], dtype=np.float32)
    import starfile

    gt = starfile.read(dataset / "ground_truth.star")["particles"]
    truth_rot = euler_to_matrix(gt[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy())
    truth_shift = gt[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy()
    data = ParticleData(dataset / "particles.star")
    t0 = time.perf_counter()
    known, _ = drain(reconstruct_halves(data, truth_rot, truth_shift / data.pixel_size))
    known_s = time.perf_counter() - t0
    known_curve = fsc(known.volume, ref, data.pixel_size)
    print("known poses", known_curve.resolution_px(0.5), known.resolution, flush=True)

    floor = pose_floor(data, ref, truth_rot, ReconstructionSettings().max_shift * args.box) if args.floor else {}

    budgets = {m: args.minutes for m in args.methods}
    overrides = {}
    for item in args.set:
        name, value = item.split("=", 1)
        overrides[name] = type(getattr(ReconstructionSettings(), name) if getattr(ReconstructionSettings(), name) is not None else 0.0)(value)
    results = {m: run_method(m, data, budgets[m], ref, truth_rot, work / dataset.name, args.collapse_scf, overrides,
                                truth_shift / data.pixel_size) for m in args.methods}
    drgn_minutes = args.cryodrgn_minutes or args.minutes
    if args.cryodrgn:
        budgets["cryodrgn abinit"] = drgn_minutes
        try:
            results["cryodrgn abinit"] = run_cryodrgn(args.cryodrgn, dataset, drgn_minutes, ref, truth_rot, data.pixel_size, work / dataset.name, args.box)
        except (subprocess.CalledProcessError, OSError) as exc:
            print("cryodrgn failed:", exc, flush=True)
            results["cryodrgn abinit"] = []
    import json

    raw = {"dataset": str(dataset), "known_fsc05_px": known_curve.resolution_px(0.5), **floor, "minutes": args.minutes,
           "results": results}
    name = f"reconstruction_{dataset.name}_{'_'.join(args.methods)}.json"
    (ROOT / "benchmarks" / "results" / name).write_text(json.dumps(raw, indent=1, default=float))
    if args.no_write:
        return
    map_arg = "" if Path(args.map).name == "hand-vol.mrc" else f" --map {Path(args.map).name}"
    lines = [
        f"`python -u benchmarks/bench_reconstruction.py{map_arg} --n {args.n} --box {args.box} --pixel-size {args.pixel_size:g} "
        f"--minutes {args.minutes:g} --methods {' '.join(args.methods)}"
        + (f" --data-seed {args.data_seed}" if args.data_seed else "")
        + (f" --collapse-scf {args.collapse_scf:g}" if args.collapse_scf is not None else "")
        + (f" --cryodrgn ... --cryodrgn-minutes {drgn_minutes:g}`" if args.cryodrgn else "`") + f" on {machine}.",
        "",
        f"Dataset: `{Path(args.map).name}` projected at L = {args.box} ({data.pixel_size:g} Å/px), {args.n} particles, SNR {args.snr:g}, "
        "lognormal defocus (median 2 µm), uniform rotations. FSC against the ground truth is computed after aligning the map "
        "(global rotation search, both hands); pose errors after the best global rotation (both hands).",
        "",
        f"Known poses (the limit of the data): FSC 0.5 against the truth at {fmt(known_curve.resolution_px(0.5))} px "
        f"({fmt(known_curve.resolution(0.5))} Å); half-map FSC 0.143 at {fmt(known.resolution)} Å; {known_s:.0f} s.",
        "",
        "| method | wall time (min) | map | FSC 0.5 vs truth (px) | half-map FSC 0.143 (px) | SCF | median rotation error (°) | following the other hand |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, rows in results.items():
        if not rows:
            lines.append(f"| {name} | {budgets[name]:g} | no map within the budget (see the script's output) | - | - | - | - | - |")
        for r in rows:
            half = r["half_map_A"] / data.pixel_size if "half_map_A" in r else None
            lines.append(f"| {name} | {r['t'] / 60:.1f} | {r['label']} | {fmt(r['fsc05_px'])} | {fmt(half)} | {fmt(r.get('scf'), 2)} "
                         f"| {fmt(r.get('median_deg'), 1)} | {fmt(r.get('other_hand'), 2)} |")
    write_section(args.section, "\n".join(lines))


if __name__ == "__main__":
    main()
