"""Each builtin architecture trained on one feature of the harder simulated tomograms, through the command line.

For every architecture: ``segment train`` with its defaults (150 s budget) on the training tomograms of a set made
by ``eval_segmentation_workflow.py --make``, from the same painted slices, then ``segment apply`` of the single
model (no interactions) to the test tomograms.  Reports the held-out Dice at 0.5 and the highest probability the
model gives anywhere: a model stuck answering its head's bias never goes above the probability that bias
calibrates to (0.50 for the ReLU heads this script found; see docs/user-guide/segmentation.md).

Run: python -u benchmarks/eval_segmentation_architectures.py /work/evaldata/ownsim_hard [--feature particle]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

import mrcfile
import numpy as np

from eval_segmentation_workflow import FEATURES, ROOT, cli, paint, read


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder", type=Path)
    p.add_argument("--feature", default="particle", choices=sorted(FEATURES))
    p.add_argument("--architectures", nargs="+", default=["vgg", "unet", "resnet", "inception", "pix2pix"])
    p.add_argument("--slices", type=int, default=12)
    p.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "segmentation_architectures.json")
    args = p.parse_args(argv)
    work = args.folder / "runs" / "architectures"
    work.mkdir(parents=True, exist_ok=True)
    train = sorted(args.folder.glob("train_[0-9]*[0-9].mrc"))
    test = sorted(args.folder.glob("test_[0-9]*[0-9].mrc"))
    painted = []
    for t in train:
        out = work / f"{t.stem}_painted.mrc"
        with mrcfile.new(out, overwrite=True) as m:
            m.set_data(paint(read(t.with_name(f"{t.stem}_labels.mrc")), args.slices).astype(np.uint8))
            m.voxel_size = 10.0
        painted.append(out)
    value = FEATURES[args.feature]
    rows = {}
    for arch in args.architectures:
        model = work / f"{arch}.scnm"
        train_s = cli("segment", "train", *map(str, train), "--labels", *map(str, painted), f"--feature={args.feature}={value}",
                      "--architecture", arch, "--out", str(model), "--overwrite")
        cli("segment", "apply", str(model), *map(str, test), "--out", str(work / arch), "--overwrite")
        dice, highest = [], []
        for t in test:
            truth = read(t.with_name(f"{t.stem}_labels.mrc")) == value
            prob = read(work / arch / f"{t.stem}__{args.feature}.mrc")
            pred = prob >= 0.5
            dice.append(2 * np.count_nonzero(pred & truth) / max(1, pred.sum() + truth.sum()))
            highest.append(float(prob.max()))
        rows[arch] = {"dice": round(float(np.mean(dice)), 3), "highest_probability": round(max(highest), 3), "train_s": round(train_s)}
        print(arch, json.dumps(rows[arch]), flush=True)
    result = {"folder": str(args.folder), "feature": args.feature, "slices": args.slices, "rows": rows,
              "machine": f"{platform.machine()}, {os.cpu_count()} cores", "load": os.getloadavg()}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
