"""The stochastic first map alone, scored against the truth: is a set's first map good enough, and why not?

Runs :func:`napari_cryo.reconstruction.stochastic.stochastic_map` on a simulated set (a folder written by
``napari-cryo simulate particles`` or ``bench_reconstruction.py``: ``particles.star``, ``ground_truth.star``,
``ground_truth_map.mrc``) at its 32-px working box, and prints the FSC 0.5 against the truth (Fourier-cropped to the
same box) after the best rotation, translation and hand.

``--centred`` takes the true origins out of the images first: the difference between the two runs is what the
particles' origins cost the first map.  ``--set NAME=VALUE`` changes a field of ``StochasticSettings`` (e.g.
``origin_sigma=0`` for the map without an origin search, ``mask_radius=0`` for no mask; by default the map is masked
as ``reconstruct`` masks it, by :func:`napari_cryo.reconstruction.extent.first_map_mask`).

Run: python -u benchmarks/probe_first_map.py DATA [--centred] [--set origin_sigma=1.0 ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import starfile
import torch

from napari_cryo.io.mrc import read_mrc
from napari_cryo.reconstruction.data import ParticleData
from napari_cryo.reconstruction.extent import first_map_mask
from napari_cryo.reconstruction.fsc import align_maps, fsc
from napari_cryo.reconstruction.physics import fourier_crop_volume, shift_images
from napari_cryo.reconstruction.stochastic import StochasticSettings, stochastic_map
from napari_cryo.tasks import drain

BOX = 32


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--centred", action="store_true", help="take the true origins out of the images first")
    parser.add_argument("--set", nargs="*", default=[], metavar="NAME=VALUE", help="StochasticSettings fields")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(2)
    data = ParticleData(args.data / "particles.star")
    small = data.at_box(BOX)
    if args.centred:
        truth = starfile.read(args.data / "ground_truth.star")["particles"]
        origins = truth[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy() / small.pixel_size
        plain = small.batch

        def centred(idx, masked=True):
            b = plain(idx, masked)
            ft = shift_images(torch.fft.rfft2(b.images), -torch.as_tensor(origins[np.asarray(idx)], dtype=torch.float32), BOX)
            return dataclasses.replace(b, images=torch.fft.irfft2(ft, s=(BOX, BOX)))

        small.batch = centred
    defaults = StochasticSettings(box=BOX)
    fields = {k: type(getattr(defaults, k))(v) for k, v in (a.split("=", 1) for a in args.set)}
    if "mask_radius" not in fields:
        fields["mask_radius"] = round(first_map_mask(small), 4)  # as reconstruct masks it
    settings = dataclasses.replace(defaults, **fields)
    start = time.time()
    volume, _ = drain(stochastic_map(small, settings, seed=args.seed))[0]
    seconds = time.time() - start
    ref = fourier_crop_volume(torch.as_tensor(np.array(read_mrc(args.data / "ground_truth_map.mrc")[0], dtype=np.float32)), BOX).numpy()
    aligned = align_maps(ref, volume, small.pixel_size)
    res = fsc(aligned.aligned, ref, small.pixel_size).resolution_px(0.5)
    print(json.dumps({"data": str(args.data), "centred": args.centred, "settings": fields, "fsc05_px_at_32": round(float(res), 2),
                      "seconds": round(seconds)}), flush=True)


if __name__ == "__main__":
    main()
