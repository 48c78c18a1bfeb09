"""Picking benchmark: napari-cryo against Topaz on simulated micrographs; raw results to benchmarks/results.

Data: 20 micrographs of 2048² pixels at 1.5 Å/px. Each holds projections of two real density maps from the
test data (EMD-3197, and the cryoDRGN 'hand' volume taken at 3 Å/voxel), turned into pseudo-atoms, at 150 Å
diameter. The micrographs have a CTF (defocus 1-3 µm), white noise at SNR 0.05, an ice-thickness gradient, a
carbon edge and ice contamination. No particle sits on the carbon or the contamination, so picks there are false
positives.

Ten micrographs train, with a third of their particles labelled. The other ten test. Hits are picks within half
a particle radius of a true centre.

* napari-cryo: the generic model, as shipped; and the generic model fine-tuned on the sparse labels
  (`napari-cryo pick train`).
* Topaz (topaz-em in its own virtual environment): its pretrained ResNet16, and a ResNet8 trained on the same
  sparse labels. It uses GE-binomial PU learning, is given the same expected particle count, and works on images
  downsampled 5x (7.5 Å/px, the same working pixel size).
* Speed: picking one 4096² micrograph, from the array in memory to picks, on this machine.

Run: python benchmarks/bench_picking.py --topaz /path/to/topaz-venv/bin/topaz [--workdir DIR]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
from bench_io import write_section  # noqa: E402

from napari_cryo.io.mrc import read_mrc, write_mrc  # noqa: E402
from napari_cryo.io.star import write_coordinates  # noqa: E402
from napari_cryo.picking.evaluate import score_picks  # noqa: E402
from napari_cryo.picking.model import PickerModel  # noqa: E402
from napari_cryo.picking.picks import pick_micrograph  # noqa: E402
from napari_cryo.synthetic.micrograph import simulate_micrograph  # noqa: E402
from napari_cryo.synthetic.structures import atoms_from_map  # noqa: E402

TESTDATA = ROOT.parent / "shared" / "testdata"
PIXEL, DIAMETER, SIDE, N_MICS = 1.5, 150.0, 2048, 20
MATCH = DIAMETER / 4 / PIXEL  # half the particle radius, in pixels


def structures() -> list[np.ndarray]:
    """Pseudo-atoms from two real maps, scaled to a 150 Å particle."""
    out = []
    for name, voxel in (("mrc/EMD-3197.map", None), ("particles/hand-vol.mrc", 3.0)):
        vol, info = read_mrc(TESTDATA / name)
        atoms = atoms_from_map(np.asarray(vol), voxel or info.pixel_size, 3000, seed=1)
        extent = np.max(np.linalg.norm(atoms, axis=1)) * 2
        out.append(atoms * (DIAMETER * 0.95 / extent))
    return out


def make_data(work: Path):
    mols = structures()
    mics = []
    for i in range(N_MICS):
        m = simulate_micrograph(
            shape=(SIDE, SIDE), pixel_size=PIXEL, diameter=DIAMETER, n_particles=220, snr=0.05,
            defocus=float(np.random.default_rng(i).uniform(10000, 30000)), carbon_fraction=0.15,
            n_contamination=3, ice_gradient=0.4, seed=1000 + i, structures=mols,
        )
        path = work / f"mic{i:02d}.mrc"
        write_mrc(path, m.image, PIXEL, overwrite=True)
        mics.append((path, m))
    return mics


def evaluate(picks_by_mic, mics) -> dict:
    s = score_picks([picks_by_mic[p.stem][0] for p, _ in mics], [picks_by_mic[p.stem][1] for p, _ in mics], [m.picks for _, m in mics], MATCH)
    return s.as_dict()


def ours(model: PickerModel, mics) -> dict:
    res = {}
    for path, m in mics:
        r = pick_micrograph(model, m.image, PIXEL, DIAMETER)
        res[path.stem] = r.picks(0.02)
    return res


def run(cmd: list[str], log: Path) -> float:
    t0 = time.perf_counter()
    with open(log, "a") as fh:
        fh.write("$ " + " ".join(cmd) + "\n")
        subprocess.run(cmd, check=True, stdout=fh, stderr=subprocess.STDOUT)
    return time.perf_counter() - t0


def topaz_picks(out_file: Path) -> dict:
    df = pd.read_csv(out_file, sep="\t")
    res = {}
    for name, g in df.groupby("image_name"):
        res[str(name)] = (g[["y_coord", "x_coord"]].to_numpy(float), g["score"].to_numpy(float))
    return res


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--topaz", default=os.environ.get("TOPAZ", "topaz"), help="the topaz executable (its own venv)")
    parser.add_argument("--workdir")
    parser.add_argument("--epochs", type=int, default=10, help="fine-tuning epochs for napari-cryo")
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="napari-cryo-pick-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    log = work / "commands.log"
    machine = f"{platform.machine()}, {os.cpu_count()} cores"
    t0 = time.perf_counter()
    mics = make_data(work)
    train_set, test_set = mics[:10], mics[10:]
    print(f"data: {time.perf_counter() - t0:.0f} s")
    sparse = work / "sparse"
    sparse.mkdir(exist_ok=True)
    rows = []
    for path, m in train_set:
        labelled = m.picks[::3]
        write_coordinates(sparse / f"{path.stem}.star", labelled, None, PIXEL, micrograph_name=path.name, overwrite=True)
        rows += [(path.stem, x, y) for y, x in labelled]
    expected = int(np.mean([len(m.picks) for _, m in train_set]) * 1.0)
    n_labelled = sum(len(m.picks[::3]) for _, m in train_set)

    results = {}
    generic = PickerModel.generic()
    results["napari-cryo generic (no training)"] = (evaluate(ours(generic, test_set), test_set), 0.0)

    model_path = work / "finetuned.pt"
    t_train = run(
        [sys.executable, "-m", "napari_cryo.cli", "pick", "train", *[str(p) for p, _ in train_set], "--positives", str(sparse),
         "--diameter", str(DIAMETER), "--out", str(model_path), "--overwrite", "--epochs", str(args.epochs),
         "--expected-particles", str(expected)],
        log,
    )
    results["napari-cryo fine-tuned on the sparse labels"] = (evaluate(ours(PickerModel.load(model_path), test_set), test_set), t_train)

    topaz = shutil.which(args.topaz) or args.topaz
    if Path(topaz).exists() or shutil.which(topaz):
        pre = work / "topaz_pre"
        pre.mkdir(exist_ok=True)
        run([topaz, "preprocess", "-s", "5", "-d", "-1", "-o", str(pre), *[str(p) for p, _ in mics]], log)
        labels = pd.DataFrame(rows, columns=["image_name", "x_coord", "y_coord"])
        labels[["x_coord", "y_coord"]] = (labels[["x_coord", "y_coord"]] / 5).round().astype(int)
        labels.to_csv(work / "topaz_train.txt", sep="\t", index=False)
        train_dir = work / "topaz_train_imgs"
        train_dir.mkdir(exist_ok=True)
        for p, _ in train_set:
            shutil.copy(pre / p.name, train_dir / p.name)
        (work / "topaz_models").mkdir(exist_ok=True)
        t_topaz = run(
            [topaz, "train", "-d", "-1", "-j", "2", "--train-images", str(train_dir), "--train-targets", str(work / "topaz_train.txt"),
             "-n", str(expected), "-r", "3", "--num-epochs", "10", "--epoch-size", "200", "-m", "resnet8", "--units", "32",
             "--save-prefix", str(work / "topaz_models" / "model"), "-o", str(work / "topaz_curve.txt")],
            log,
        )
        test_imgs = [str(pre / p.name) for p, _ in test_set]
        radius = str(int(DIAMETER / 2 / (PIXEL * 5)))
        run([topaz, "extract", "-d", "-1", "-j", "2", "-m", str(work / "topaz_models" / "model_epoch10.sav"), "-r", radius,
             "-x", "5", "-t", "-8", "-o", str(work / "topaz_trained.txt"), *test_imgs], log)
        results["Topaz ResNet8 trained on the sparse labels"] = (evaluate(topaz_picks(work / "topaz_trained.txt"), test_set), t_topaz)
        run([topaz, "extract", "-d", "-1", "-j", "2", "-r", radius, "-x", "5", "-t", "-8", "-o", str(work / "topaz_pretrained.txt"), *test_imgs], log)
        results["Topaz pretrained ResNet16"] = (evaluate(topaz_picks(work / "topaz_pretrained.txt"), test_set), 0.0)
    else:
        print(f"topaz not found at {args.topaz}: skipping the Topaz rows", file=sys.stderr)

    # Speed: one 4096² micrograph, from the array to picks.
    big = simulate_micrograph(shape=(4096, 4096), pixel_size=1.0, diameter=DIAMETER, n_particles=600, seed=5)
    pick_micrograph(generic, big.image[:1024, :1024], 1.0, DIAMETER)  # warm-up
    times = []
    for _ in range(3):
        t = time.perf_counter()
        r = pick_micrograph(generic, big.image, 1.0, DIAMETER)
        r.picks(0.5)
        times.append(time.perf_counter() - t)

    table = "\n".join(
        f"| {name} | {r['average_precision']:.3f} | {r['f1']:.3f} | {r['precision']:.3f} | {r['recall']:.3f} | "
        f"{r['precision_at_90_recall']:.3f} | {t:.0f} |"
        for name, (r, t) in results.items()
    )
    body = f"""
`python benchmarks/bench_picking.py --topaz …/bin/topaz` on {machine}, Python {platform.python_version()}.
{N_MICS} simulated {SIDE}² micrographs at {PIXEL} Å/px, 150 Å particles built from the EMD-3197 and 'hand' maps,
SNR 0.05, defocus 1–3 µm, with carbon edges, contamination and an ice gradient. 10 micrographs train, with
{n_labelled} particles labelled (a third). The other 10 test ({sum(len(m.picks) for _, m in test_set)} particles).
A pick is a hit within {DIAMETER / 4:.1f} Å (half a radius). Average precision is all-points interpolated. F1,
precision and recall are at the best-F1 threshold. "Train (s)" is wall time on this machine.

| picker | average precision | F1 | precision | recall | precision at 90 % recall | train (s) |
|---|---|---|---|---|---|---|
{table}

Speed: picking a 4096² micrograph (1 Å/px, 150 Å particles: rescaling, network and pick extraction) takes
{min(times):.2f} s (best of 3; runs {', '.join(f'{t:.2f}' for t in times)} s) on {machine} with
torch {__import__('torch').__version__}. Target: under 2 s.
"""
    write_section("Particle picking", body)
    print(body)


if __name__ == "__main__":
    main()
