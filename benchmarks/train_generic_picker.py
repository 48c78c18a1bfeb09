"""Train the generic picking model that ships with napari-cryo, reproducibly.

The training set is simulated (napari_cryo.synthetic.micrograph): micrographs
of several different pseudo-atomic structures, particle diameters from 100 to
320 Å, pixel sizes from 0.8 to 4 Å, defocus from 0.8 to 3.5 µm, SNR from 0.03
to 0.3, with carbon edges, ice contamination and ice-thickness gradients.
Every particle is labelled, and carbon and contamination are labelled junk,
so the loss is plain cross-entropy.  The weights are stored as float16
(about 0.6 MB).  A checkpoint is written every epoch; running the script
again resumes.

Run:  python benchmarks/train_generic_picker.py [--out PATH] [--epochs N]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from napari_cryo.picking.labels import prepare_training_micrograph
from napari_cryo.picking.model import PickerModel
from napari_cryo.picking.preprocess import working_pixel_size
from napari_cryo.picking.training import TrainConfig, train
from napari_cryo.synthetic.micrograph import simulate_micrograph
from napari_cryo.synthetic.structures import random_structure
from napari_cryo.tasks import run_with_tqdm
from napari_cryo.training_loop import EpochRecord

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "src" / "napari_cryo" / "picking" / "weights" / "generic.pt"


def training_set(n: int, seed: int):
    """Simulated, fully labelled training micrographs with varied conditions."""
    rng = np.random.default_rng(seed)
    data = []
    for i in range(n):
        diameter = float(rng.uniform(100, 320))
        pixel = float(rng.uniform(0.8, 4.0))
        wpx = working_pixel_size(diameter, pixel)
        # Aim for a working image of ~300-400 px whatever the pixel size.
        side = int(min(4096, max(512, rng.uniform(300, 420) * wpx / pixel)))
        structures = [random_structure(rng, diameter, n_atoms=1200, elongation=rng.uniform(0.7, 1.8)) for _ in range(rng.integers(1, 4))]
        density = rng.uniform(0.3, 1.0)
        n_particles = int(density * (side * pixel) ** 2 / (np.pi * (0.55 * diameter) ** 2) * 0.5)
        mic = simulate_micrograph(
            shape=(side, side),
            pixel_size=pixel,
            diameter=diameter,
            n_particles=n_particles,
            snr=float(np.exp(rng.uniform(np.log(0.03), np.log(0.3)))),
            defocus=float(rng.uniform(8000, 35000)),
            carbon_fraction=float(rng.choice([0.0, rng.uniform(0.05, 0.35)])),
            n_contamination=int(rng.integers(0, 4)),
            ice_gradient=float(rng.uniform(0, 0.5)),
            seed=seed * 10000 + i,
            structures=structures,
        )
        data.append(
            prepare_training_micrograph(
                mic.image, pixel, wpx, mic.picks, junk_mask=mic.junk_mask > 0, complete=True, name=f"sim{i}"
            )
        )
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    parser.add_argument("--micrographs", type=int, default=60)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    data = training_set(args.micrographs, args.seed)
    print(f"simulated {len(data)} micrographs in {time.perf_counter() - t0:.0f} s")
    model = PickerModel.new(name="generic", seed=args.seed)
    config = TrainConfig(epochs=args.epochs, steps_per_epoch=args.steps, lr=1e-3, val_fraction=0.1, pu_weight=0.0, seed=args.seed)
    out = Path(args.out)
    model = run_with_tqdm(
        train(model, data, config, checkpoint=out.with_name(out.name + ".ckpt")),
        "training generic picker",
        on_value=lambda v: print(json.dumps(v.as_dict())) if isinstance(v, EpochRecord) else None,
    )
    model.save(out, overwrite=True, half=True)
    out.with_name(out.name + ".ckpt").unlink(missing_ok=True)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB) after {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
