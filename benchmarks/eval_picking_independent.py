"""Picking on evaluation sets napari-cryo never generated: generic and fine-tuned AUPRC (#30 item 2).

The sets come from ``benchmarks/external_sim_aspire.py`` (ASPIRE, real atomic models kept out of the
generic model's training data): OUT/aspire/<condition>/{train,test}/mic_NN.mrc with the true centres in
mic_NN.star and the particle diameter in OUT/aspire/<condition>/metadata.json.  Nothing is trained on the
test micrographs.

Per condition:

* the model given by ``--model`` (default: the shipped generic one) picks the 10 test micrographs through
  the Python API (``pick_micrograph``, then ``PickResult.picks`` at probability 0.02, so the whole
  precision-recall curve is seen), scored by ``score_picks`` with hits within half a particle radius, as
  ``bench_picking.py`` does;
* fine-tuning: a random 30 % of the true centres of each of the 10 train micrographs (seeded) are written
  as sparse picks, and ``napari-cryo pick train`` runs on them with its defaults (``--from`` the same
  model; anything in ``--train-args`` is appended); the fine-tuned model picks and is scored like the
  generic one.  Its wall time is recorded.

``--own-sim`` adds the same protocol on micrographs from the package's own simulator with the geometry of
the first condition (1024² at 2 Å/px, its diameter, particle count and SNR), built from the two real maps
that ``bench_picking.py`` uses.

Metrics: AUPRC (all-points average precision), best F1 with its precision and recall, and the highest
recall (the recall with every pick above 0.02 kept).

Run (from the repository root, in napari-cryo's environment):

    nice -n 10 .venv/bin/python benchmarks/eval_picking_independent.py --label current [--model M] [--own-sim]

Results: OUT/results_<label>.json and a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from napari_cryo.io.mrc import write_mrc
from napari_cryo.io.star import read_coordinates, write_coordinates
from napari_cryo.picking.data import load_micrograph
from napari_cryo.picking.evaluate import score_picks
from napari_cryo.picking.model import load_model
from napari_cryo.picking.picks import pick_micrograph

ROOT = Path(__file__).resolve().parents[1]
SCORE_THRESHOLD = 0.02  # low, so that the precision-recall curve reaches the highest recall
SPARSE_FRACTION = 0.3


def read_set(folder: Path) -> list[tuple[Path, np.ndarray]]:
    """The micrographs of a folder and their true centres (YX pixels) from the STAR file beside each."""
    out = []
    for mic in sorted(folder.glob("*.mrc")):
        sets = read_coordinates(mic.with_suffix(".star"))
        out.append((mic, np.concatenate([s.points for s in sets]) if sets else np.zeros((0, 2))))
    if not out:
        raise SystemExit(f"{folder}: no micrographs")
    return out


def pick_and_score(model_spec: str, test: list[tuple[Path, np.ndarray]], diameter: float) -> dict:
    """Pick every test micrograph with a model and score the picks against the truth."""
    model = load_model(model_spec)
    picks, scores, truth, seconds = [], [], [], 0.0
    pixel = None
    for path, true in test:
        mic = load_micrograph(path)
        pixel = mic.pixel_size
        t = time.perf_counter()
        result = pick_micrograph(model, mic.image, mic.pixel_size, diameter, name=str(path))
        yx, s = result.picks(SCORE_THRESHOLD)
        seconds += time.perf_counter() - t
        picks.append(yx)
        scores.append(s)
        truth.append(true)
    match = diameter / 4 / pixel  # half the particle radius, in pixels
    sc = score_picks(picks, scores, truth, match)
    out = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in sc.as_dict().items()}
    out["highest_recall"] = round(float(sc.curve["recall"][-1]) if len(sc.curve["recall"]) else 0.0, 4)
    out["pick_seconds"] = round(seconds, 2)
    out["match_radius_px"] = round(match, 2)
    return out


def sparse_labels(train: list[tuple[Path, np.ndarray]], folder: Path, pixel: float, seed: int) -> int:
    """Write a random SPARSE_FRACTION of each micrograph's true centres; return how many."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    n = 0
    for path, true in train:
        k = int(round(SPARSE_FRACTION * len(true)))
        chosen = true[np.sort(rng.choice(len(true), size=k, replace=False))]
        write_coordinates(folder / f"{path.stem}.star", chosen, None, pixel, micrograph_name=path.name, overwrite=True)
        n += k
    return n


def fine_tune(model_spec: str, train: list[tuple[Path, np.ndarray]], diameter: float, work: Path, seed: int, extra: list[str]) -> tuple[Path, float, int, str]:
    """`napari-cryo pick train` on sparse picks, with its defaults; the model path, wall seconds, label count, command."""
    pixel = load_micrograph(train[0][0]).pixel_size
    n_labels = sparse_labels(train, work / "sparse", pixel, seed)
    out = work / "finetuned.pt"
    cmd = [sys.executable, "-m", "napari_cryo.cli", "pick", "train", *[str(p) for p, _ in train],
           "--positives", str(work / "sparse"), "--diameter", f"{diameter:g}", "--out", str(out),
           "--from", model_spec, "--overwrite", *extra]
    log = work / "train.log"
    t = time.perf_counter()
    with open(log, "w") as fh:
        fh.write("$ " + shlex.join(cmd) + "\n")
        fh.flush()
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"fine-tuning failed (exit {proc.returncode}); see {log}")
    return out, seconds, n_labels, shlex.join(cmd)


def own_sim_set(folder: Path, geometry: dict, seed: int = 0) -> Path:
    """The package's own simulator, with the geometry of an external condition (train and test, 10 each)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_picking import structures  # noqa: E402 - the two real maps, as pseudo-atoms

    from napari_cryo.synthetic.micrograph import simulate_micrograph

    diameter, pixel, side = geometry["diameter_A"], geometry["pixel_size_A"], geometry["micrograph_px"]
    n = int(round(np.mean([m["n_particles"] for m in geometry["micrographs"]])))
    snr = float(np.mean([m["snr_mean"] for m in geometry["micrographs"]]))
    mols = [m * (diameter / 150.0) for m in structures()]  # structures() are scaled to 150 Å
    # Per-particle SNR where the simulator offers it (mean square signal in the discs / noise variance),
    # else its whole-micrograph SNR.
    per_particle = "particle_snr" in inspect.signature(simulate_micrograph).parameters
    snr_kw = {"particle_snr": snr} if per_particle else {"snr": snr}
    for split_i, split in enumerate(("train", "test")):
        d = folder / split
        d.mkdir(parents=True, exist_ok=True)
        for i in range(10):
            s = seed + 100 * split_i + i
            m = simulate_micrograph(shape=(side, side), pixel_size=pixel, diameter=diameter, n_particles=n, **snr_kw,
                                    defocus=float(np.random.default_rng(s).uniform(10000, 30000)), carbon_fraction=0.15,
                                    n_contamination=3, ice_gradient=0.4, seed=5000 + s, structures=mols)
            write_mrc(d / f"mic_{i:02d}.mrc", m.image, pixel, overwrite=True)
            write_coordinates(d / f"mic_{i:02d}.star", m.picks, None, pixel, micrograph_name=f"mic_{i:02d}.mrc", overwrite=True)
    meta = {"condition": f"own simulator, {geometry['condition']} geometry", "diameter_A": diameter, "pixel_size_A": pixel, "micrograph_px": side,
            "n_particles_requested": n, "snr_kwarg": snr_kw, "source": "napari_cryo.synthetic.micrograph.simulate_micrograph, EMD-3197 + hand maps"}
    (folder / "metadata.json").write_text(json.dumps(meta, indent=1))
    return folder


def evaluate_condition(folder: Path, model_spec: str, work: Path, seed: int, finetune: bool, extra: list[str]) -> dict:
    meta = json.loads((folder / "metadata.json").read_text())
    diameter = float(meta["diameter_A"])
    test = read_set(folder / "test")
    train = read_set(folder / "train") if (folder / "train").is_dir() else None
    finetune = finetune and train is not None
    row: dict = {"condition": meta.get("condition", folder.name), "diameter_A": diameter, "n_test_micrographs": len(test),
                 "n_test_particles": int(sum(len(t) for _, t in test)), "model": model_spec}
    t = time.perf_counter()
    row["generic"] = pick_and_score(model_spec, test, diameter)
    print(f"{row['condition']}: {model_spec}: AUPRC {row['generic']['average_precision']:.3f} ({time.perf_counter() - t:.0f} s)", flush=True)
    if finetune:
        work.mkdir(parents=True, exist_ok=True)
        row["load_average_before_training"] = [round(x, 2) for x in os.getloadavg()]
        model_path, seconds, n_labels, cmd = fine_tune(model_spec, train, diameter, work, seed, extra)
        row["finetuned"] = pick_and_score(str(model_path), test, diameter)
        # Training stops on a wall-clock budget by default, so a busy machine trains fewer epochs: keep the load.
        row["finetuned"].update({"train_seconds": round(seconds, 1), "n_sparse_labels": n_labels,
                                 "load_average_after_training": [round(x, 2) for x in os.getloadavg()],
                                 "train_log_tail": (work / "train.log").read_text().splitlines()[-3:],
                                 "n_train_particles": int(sum(len(t) for _, t in train)), "command": cmd})
        print(f"{row['condition']}: fine-tuned ({seconds:.0f} s): AUPRC {row['finetuned']['average_precision']:.3f}", flush=True)
    return row


def model_sha256(model_spec: str) -> str:
    """Which weights were evaluated (the shipped generic file changes when it is retrained)."""
    import napari_cryo.picking

    path = Path(napari_cryo.picking.__file__).parent / "weights" / "generic.pt" if model_spec == "generic" else Path(model_spec)
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else "unknown"


def table(rows: list[dict]) -> str:
    lines = ["| set | picker | AUPRC | best F1 | precision @F1 | recall @F1 | highest recall | picks | train (s) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        for key, name in (("generic", Path(r["model"]).name if r["model"] != "generic" else "generic"), ("finetuned", "fine-tuned, 30 % sparse")):
            if key not in r:
                continue
            s = r[key]
            lines.append(f"| {r['condition']} ({r['n_test_particles']} particles, {r['diameter_A']:.0f} Å) | {name} | "
                         f"{s['average_precision']:.3f} | {s['f1']:.3f} | {s['precision']:.3f} | {s['recall']:.3f} | "
                         f"{s['highest_recall']:.3f} | {s['n_picks']} | {s.get('train_seconds', 0):.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="/work/evaldata/aspire", help="folder of conditions from external_sim_aspire.py")
    parser.add_argument("--conditions", nargs="*", help="condition folder names (default: all with a metadata.json)")
    parser.add_argument("--model", default="generic", help="model to evaluate and fine-tune from: 'generic' or a .pt file")
    parser.add_argument("--label", required=True, help="names the results file: OUT/results_<label>.json")
    parser.add_argument("--out", default="/work/evaldata")
    parser.add_argument("--no-finetune", action="store_true")
    parser.add_argument("--own-sim", action="store_true", help="also the package's own simulator, same geometry")
    parser.add_argument("--train-args", default="", help="extra options for `napari-cryo pick train`, e.g. '--epochs 10'")
    parser.add_argument("--seed", type=int, default=0, help="seed of the 30 %% sparse-label draw")
    args = parser.parse_args()
    data, out = Path(args.data), Path(args.out)
    model_spec = args.model if args.model == "generic" else str(Path(args.model).resolve())
    names = args.conditions or sorted(p.parent.name for p in data.glob("*/metadata.json"))
    folders = [data / n for n in names]
    work = out / f"work_{args.label}"
    if args.own_sim:
        first = json.loads((folders[0] / "metadata.json").read_text())
        own = out / "own_sim" / folders[0].name
        if not (own / "metadata.json").exists():
            own_sim_set(own, first)
        folders.append(own)
    extra = shlex.split(args.train_args)
    t0 = time.perf_counter()
    # The own simulator's folder has the name of an external condition: keep their work folders apart.
    rows = [evaluate_condition(f, model_spec, work / (f.name if f.parent == data else f"{f.parent.name}_{f.name}"),
                               args.seed, not args.no_finetune, extra) for f in folders]
    import torch

    result = {
        "label": args.label, "model": model_spec, "data": [str(f) for f in folders], "rows": rows,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads)",
        "model_sha256": model_sha256(model_spec),
        "git": subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip(),
        "git_modified": subprocess.run(["git", "-C", str(ROOT), "status", "--short", "--untracked-files=no"],
                                       capture_output=True, text=True).stdout.split("\n")[:-1],
        "total_seconds": round(time.perf_counter() - t0, 1),
        "command": shlex.join([sys.executable, *sys.argv]),
    }
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"results_{args.label}.json"
    path.write_text(json.dumps(result, indent=1))
    print(table(rows))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
