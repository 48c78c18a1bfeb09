"""``napari-cryo simulate particles MAP.mrc --n N --box L --snr S --out DIR`` (the work is in :mod:`.simulate`)."""

from __future__ import annotations

import argparse

from .simulate import SimulationSettings, read_map, simulate_dataset

HELP = "simulate particle images from a map, with particles.star and the true poses in ground_truth.star"

def add_args(parser: argparse.ArgumentParser) -> None:
    from ..cli import add_device_arg

    d = SimulationSettings(n=1)
    parser.add_argument("what", choices=["particles"], help="what to simulate: particles")
    parser.add_argument("map", help="the 3D map to project (MRC), cubic")
    parser.add_argument("--n", type=int, required=True, help="number of particles")
    parser.add_argument("--out", required=True, help="output directory (created if missing)")
    parser.add_argument("--box", type=int, help="image size in pixels, even (default: the map's size); the map is Fourier-cropped or padded to it")
    parser.add_argument("--snr", type=float, default=d.snr, help=f"signal-to-noise ratio: clean-image variance over noise variance (default {d.snr}; inf for none)")
    parser.add_argument("--shift-sigma", type=float, default=d.shift_sigma, metavar="A", help="standard deviation of the random origin shifts, Å (default 0: centred)")
    parser.add_argument("--defocus-median", type=float, default=d.defocus_median, metavar="A", help=f"median defocus, Å (default {d.defocus_median:g})")
    parser.add_argument("--defocus-sigma", type=float, default=d.defocus_sigma, help=f"standard deviation of log defocus (default {d.defocus_sigma})")
    parser.add_argument("--voltage", type=float, default=d.voltage, help=f"kV (default {d.voltage:g})")
    parser.add_argument("--cs", type=float, default=d.cs, help=f"spherical aberration, mm (default {d.cs})")
    parser.add_argument("--amplitude-contrast", type=float, default=d.amplitude_contrast, help=f"fraction (default {d.amplitude_contrast})")
    parser.add_argument("--no-ctf", action="store_true", help="no CTF: plain projections plus noise")
    parser.add_argument("--pixel-size", type=float, help="the map's pixel size in Å, when its header has none (or to override it)")
    parser.add_argument("--seed", type=int, default=d.seed, help="random seed (default 0)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    add_device_arg(parser)


def main(args: argparse.Namespace) -> int:
    from ..device import resolve_device
    from ..tasks import run_with_tqdm

    settings = SimulationSettings(
        n=args.n,
        box=args.box,
        snr=args.snr,
        shift_sigma=args.shift_sigma,
        defocus_median=args.defocus_median,
        defocus_sigma=args.defocus_sigma,
        voltage=args.voltage,
        cs=args.cs,
        amplitude_contrast=args.amplitude_contrast,
        ctf=not args.no_ctf,
        seed=args.seed,
        pixel_size=args.pixel_size,
    )
    settings.check()
    volume, px = read_map(args.map, args.pixel_size)
    device = resolve_device(args.device)
    summary = run_with_tqdm(simulate_dataset(volume, px, args.out, settings, overwrite=args.overwrite, device=device), "simulate")
    print(
        f"wrote {summary['n']} particles of {summary['box']}x{summary['box']} pixels, "
        f"{summary['pixel_size']:.4g} Å/pixel, to {args.out}: "
        "particles.mrcs, particles.star (no poses), ground_truth.star, ground_truth_map.mrc"
    )
    return 0
