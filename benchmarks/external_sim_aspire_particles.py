"""Reconstruction benchmark particles from an external simulator (ASPIRE), in the files napari-cryo's own simulator writes.

Runs in its own virtual environment, never in napari-cryo's: ASPIRE is not a dependency of the package (#32).

    python3.11 -m venv /work/venv-ext && /work/venv-ext/bin/pip install aspire==0.14.3 mrcfile   # measured: mrcfile 1.5.4
    /work/venv-ext/bin/python benchmarks/external_sim_aspire_particles.py --map MAP.mrc --pixel-size 1.2 --box 64 \
        --n 10000 --snr 0.05 --shift-sigma 2 --seed 0 --out DIR

Writes DIR/particles.mrcs, DIR/particles.star (CTF, no poses), DIR/ground_truth.star (the same rows with the true
rlnAngleRot/Tilt/Psi and rlnOriginX/YAngst) and DIR/ground_truth_map.mrc (the projected map, at the box and pixel
size), as ``napari-cryo simulate particles`` does, plus DIR/metadata.json. The images are ASPIRE's: its
``Simulation`` (NUFFT projection of the map, one ``CTFFilter`` per particle, its ``Image.shift`` for the offsets, no
amplitude scaling) and its ``WhiteNoiseAdder``; nothing of napari-cryo's image formation is used.

Conditions, as napari-cryo's simulator draws them: uniformly random rotations (ASPIRE's generator), defocus
lognormal with median 20000 Å and sigma 0.3 in log, astigmatism uniform in 0-5 % of the defocus at a uniform angle,
300 kV, Cs 2.7 mm, amplitude contrast 0.1, offsets normal with ``--shift-sigma`` pixels per axis.

SNR (napari-cryo's definition): per image, the variance of the clean CTF-modulated image over the whole box divided
by the noise variance. ASPIRE's ``WhiteNoiseAdder`` takes one variance for a whole stack, so it is built with
variance 1 (its noise for particle i is seeded by i), and its noise for each image is scaled by
sqrt(var(clean_i) / snr) before it is added; ``metadata.json`` holds the measured ratio.

Conventions (each measured against napari-cryo's own projector, CTF and shifts, see the report of #32):

* rotations: ASPIRE's Euler angles (``Simulation.angles``, radians, ZYZ) in degrees are RELION's rot, tilt, psi;
  ASPIRE's rotation matrix is the transpose of RELION's ``A`` (napari_cryo.geometry.euler_to_matrix). The volume
  is indexed (Z, Y, X) in both, and both put the rotation centre and the image centre at pixel L // 2.
* offsets: ASPIRE's ``Image.shift(s)`` moves the content by -s, with s = (x, y) in pixels: RELION's rlnOriginX/Y
  semantics, so rlnOriginX/YAngst = offset x pixel size.
* CTF: ASPIRE's ``CTFFilter`` is minus RELION's (-Q at zero frequency: protein dark, as in a micrograph); defocus in
  Å (positive underfocus), astigmatism angle in radians from the X axis to U, as rlnDefocusAngle. The images are
  multiplied by -1, as RELION's extraction with inverted contrast does, so that the stack follows RELION's
  convention (CTF +Q at zero frequency, protein white). Without a CTF (``--no-ctf``) the projections are kept.

The map's border mean is subtracted (so that the zero padding of the projector adds no edge) and, where ``--box`` is
smaller than the map, it is Fourier-cropped by ASPIRE's ``Volume.downsample``; the pixel size becomes
``pixel size x map size / box``, as in napari-cryo.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
import warnings
from pathlib import Path

import mrcfile
import numpy as np

# ASPIRE writes logs/ and aspire.err.log into the working directory unless its configuration (read from
# $ASPIREDIR/config.yaml at import) says otherwise: keep them out of the repository.
_ASPIRE_DIR = Path(tempfile.gettempdir()) / "external_sim_aspire"
_ASPIRE_DIR.mkdir(exist_ok=True)
(_ASPIRE_DIR / "config.yaml").write_text(
    f"logging:\n  log_dir: {_ASPIRE_DIR / 'logs'}\n  log_exceptions: 0\n  console_level: WARNING\n  tqdm_disable: True\n")
os.environ.setdefault("ASPIREDIR", str(_ASPIRE_DIR))

import aspire  # noqa: E402
from aspire.image import Image  # noqa: E402
from aspire.noise import WhiteNoiseAdder  # noqa: E402
from aspire.operators import CTFFilter  # noqa: E402
from aspire.source import Simulation  # noqa: E402
from aspire.utils import Rotation  # noqa: E402
from aspire.volume import Volume  # noqa: E402

OUTPUT_FILES = ("particles.mrcs", "particles.star", "ground_truth.star", "ground_truth_map.mrc")


def read_map(path: Path, pixel_size: float | None) -> tuple[np.ndarray, float]:
    """A cubic map (Z, Y, X) as float32 and its pixel size (``pixel_size`` overrides the header)."""
    with mrcfile.open(path, permissive=True) as m:
        vol = np.array(m.data, dtype=np.float32)
        header_px = float(m.voxel_size.x)
    if vol.ndim != 3 or len(set(vol.shape)) != 1:
        raise SystemExit(f"{path}: not a cubic 3D map (shape {vol.shape})")
    px = float(pixel_size) if pixel_size else header_px
    if not px > 0:
        raise SystemExit(f"{path}: no pixel size in its header; give --pixel-size")
    return vol, px


def border_mean(vol: np.ndarray, width: int = 2) -> float:
    """Mean of the voxels within `width` of the faces."""
    inner = vol[width:-width, width:-width, width:-width]
    return float((vol.sum(dtype=np.float64) - inner.sum(dtype=np.float64)) / (vol.size - inner.size))


def star_text(optics: dict, rows: dict) -> str:
    """A RELION 3.1 STAR file with data_optics and data_particles blocks (columns as lists)."""

    def fmt(v) -> str:
        if isinstance(v, (str, np.str_)):
            return str(v)
        if isinstance(v, (int, np.integer)):
            return str(int(v))
        return f"{float(v):.6f}"

    out = ["# written by benchmarks/external_sim_aspire_particles.py (ASPIRE " + aspire.__version__ + ")", ""]
    for name, block in (("optics", optics), ("particles", rows)):
        out += ["", f"data_{name}", "", "loop_"]
        out += [f"_{key} #{i + 1}" for i, key in enumerate(block)]
        columns = list(block.values())
        out += ["\t".join(fmt(col[r]) for col in columns) for r in range(len(columns[0]))]
        out.append("")
    return "\n".join(out) + "\n"


def simulate(args: argparse.Namespace) -> dict:
    """Simulate the stack into args.out and return what metadata.json records."""
    t0 = time.perf_counter()
    out = Path(args.out)
    paths = {name: out / name for name in OUTPUT_FILES}
    existing = [str(p) for p in paths.values() if p.exists()]
    if existing and not args.overwrite:
        raise SystemExit(f"{existing[0]} exists; give --overwrite to replace the outputs")
    if args.box is not None and (args.box < 8 or args.box % 2):
        raise SystemExit(f"--box must be an even number of pixels, at least 8, got {args.box}")
    if not args.snr > 0 or args.n < 1 or not args.shift_sigma >= 0:
        raise SystemExit("--snr must be positive (inf for no noise), --n at least 1, --shift-sigma not negative")
    out.mkdir(parents=True, exist_ok=True)

    vol, map_px = read_map(Path(args.map), args.pixel_size)
    size = vol.shape[0]
    box = args.box or size
    if box > size:
        raise SystemExit(f"--box {box} is larger than the map ({size}); ASPIRE's Volume.downsample only crops")
    px = map_px * size / box
    volume = Volume(vol - border_mean(vol), pixel_size=map_px)
    if box != size:
        volume = volume.downsample(box)
    truth_map = volume.asnumpy()[0].astype(np.float32)
    with mrcfile.new(paths["ground_truth_map.mrc"], overwrite=True) as m:
        m.set_data(truth_map)
        m.voxel_size = px
    volume = Volume(truth_map, pixel_size=px)

    n = args.n
    rng = np.random.default_rng(args.seed)
    # ASPIRE's own uniform rotations; its angles (radians) are RELION's rot, tilt, psi.
    angles = Rotation.generate_random_rotations(n, seed=args.seed, dtype=np.float64).angles
    # Origins in Å rounded as napari-cryo writes them; ASPIRE gets exactly those, in pixels.
    origins = (rng.normal(0.0, args.shift_sigma, (n, 2)) * px).round(3) if args.shift_sigma > 0 else np.zeros((n, 2))
    defocus = args.defocus_median * np.exp(rng.normal(0.0, args.defocus_sigma, n))
    astig = rng.uniform(0.0, 0.05, n) * defocus
    defocus_u, defocus_v = (defocus + astig).round(2), (defocus - astig).round(2)
    defocus_angle = rng.uniform(-180.0, 180.0, n).round(3)
    subset = rng.integers(1, 3, n)

    noise = WhiteNoiseAdder(var=1.0, seed=args.seed)
    ratios = []
    total = [0.0, 0.0, math.inf, -math.inf]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        stack = mrcfile.new_mmap(paths["particles.mrcs"], shape=(n, box, box), mrc_mode=2, overwrite=True)
    with stack:
        stack.header.ispg = 0  # an image stack; its cell spans one image in Z, as RELION writes it
        stack.header.mx, stack.header.my, stack.header.mz = box, box, 1
        stack.header.cella = (px * box, px * box, px)
        for start in range(0, n, args.chunk):
            idx = np.arange(start, min(n, start + args.chunk))
            filters = None
            if not args.no_ctf:
                filters = [CTFFilter(voltage=args.voltage, defocus_u=defocus_u[i], defocus_v=defocus_v[i],
                                     defocus_ang=np.deg2rad(defocus_angle[i]), Cs=args.cs, alpha=args.amplitude_contrast)
                           for i in idx]
            sim = Simulation(
                n=len(idx), vols=volume, angles=angles[idx].astype(np.float32), offsets=(origins[idx] / px).astype(np.float32),
                amplitudes=np.ones(len(idx), np.float32), unique_filters=filters,
                filter_indices=np.arange(len(idx)) if filters else None, seed=args.seed, pixel_size=px,
            )
            clean = sim.clean_images[:].asnumpy().astype(np.float64)
            if filters:
                clean = -clean  # ASPIRE's CTF is minus RELION's: invert the contrast as RELION's extraction does
            images = clean
            if math.isfinite(args.snr):
                sigma = np.sqrt(np.maximum(clean.var(axis=(1, 2)), 1e-30) / args.snr)
                unit = noise.forward(Image(np.zeros_like(clean, dtype=np.float32), pixel_size=px), indices=idx).asnumpy()
                images = clean + unit.astype(np.float64) * sigma[:, None, None]
                ratios.append(clean.var(axis=(1, 2)) / (images - clean).var(axis=(1, 2)))
            images = images.astype(np.float32)
            stack.data[idx[0] : idx[-1] + 1] = images
            total[0] += float(images.sum(dtype=np.float64))
            total[1] += float(np.square(images, dtype=np.float64).sum())
            total[2] = min(total[2], float(images.min()))
            total[3] = max(total[3], float(images.max()))
            print(f"{idx[-1] + 1}/{n} images, {time.perf_counter() - t0:.0f} s", flush=True)
        mean = total[0] / (n * box * box)
        stack.header.dmin, stack.header.dmax = total[2], total[3]
        stack.header.dmean, stack.header.rms = mean, math.sqrt(max(total[1] / (n * box * box) - mean**2, 0.0))

    rows = {"rlnImageName": [f"{i + 1:06d}@particles.mrcs" for i in range(n)], "rlnMicrographName": ["synthetic.mrc"] * n}
    if not args.no_ctf:
        rows.update(rlnDefocusU=defocus_u, rlnDefocusV=defocus_v, rlnDefocusAngle=defocus_angle, rlnPhaseShift=np.zeros(n))
    rows.update(rlnOpticsGroup=[1] * n, rlnRandomSubset=[int(s) for s in subset])
    optics = {"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["opticsGroup1"], "rlnAmplitudeContrast": [args.amplitude_contrast],
              "rlnSphericalAberration": [args.cs], "rlnVoltage": [args.voltage], "rlnImagePixelSize": [px],
              "rlnImageSize": [box], "rlnImageDimensionality": [2], "rlnCtfDataAreCtfPremultiplied": [0]}
    if args.no_ctf:  # napari-cryo reads half a CTF (optics without defocus) as a damaged file
        for key in ("rlnAmplitudeContrast", "rlnSphericalAberration", "rlnVoltage"):
            del optics[key]
    deg = np.rad2deg(angles)
    truth = dict(rows, rlnAngleRot=deg[:, 0], rlnAngleTilt=deg[:, 1], rlnAnglePsi=deg[:, 2],
                 rlnOriginXAngst=origins[:, 0], rlnOriginYAngst=origins[:, 1])
    paths["particles.star"].write_text(star_text(optics, rows))
    paths["ground_truth.star"].write_text(star_text(optics, truth))
    snr = np.concatenate(ratios) if ratios else np.array([math.inf])
    meta = {"simulator": f"ASPIRE {aspire.__version__}", "map": str(args.map), "map_pixel_size_A": map_px, "n": n, "box": box,
            "pixel_size_A": px, "snr": args.snr, "measured_snr_median": float(np.median(snr)),
            "measured_snr_mean": float(np.mean(snr)), "shift_sigma_px": args.shift_sigma, "seed": args.seed,
            "ctf": not args.no_ctf, "defocus_median_A": args.defocus_median, "defocus_sigma_log": args.defocus_sigma,
            "voltage_kV": args.voltage, "cs_mm": args.cs, "amplitude_contrast": args.amplitude_contrast,
            "seconds": round(time.perf_counter() - t0, 1)}
    (out / "metadata.json").write_text(json.dumps(meta, indent=1) + "\n")
    return meta


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--map", required=True, help="cubic 3D map (MRC), indexed Z, Y, X")
    parser.add_argument("--pixel-size", type=float, help="the map's pixel size in Å (default: its header)")
    parser.add_argument("--box", type=int, help="image size in pixels, even, at most the map's (default: the map's size)")
    parser.add_argument("--n", type=int, required=True, help="number of particles")
    parser.add_argument("--snr", type=float, default=0.1, help="clean-image variance over noise variance, per image (inf: none)")
    parser.add_argument("--shift-sigma", type=float, default=0.0, help="standard deviation of the offsets, pixels, per axis")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--no-ctf", action="store_true", help="plain projections (for checking the conventions)")
    parser.add_argument("--defocus-median", type=float, default=20000.0, help="Å")
    parser.add_argument("--defocus-sigma", type=float, default=0.3, help="standard deviation of log defocus")
    parser.add_argument("--voltage", type=float, default=300.0, help="kV")
    parser.add_argument("--cs", type=float, default=2.7, help="mm")
    parser.add_argument("--amplitude-contrast", type=float, default=0.1)
    parser.add_argument("--chunk", type=int, default=500, help="particles per ASPIRE Simulation (memory is flat in --n)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    meta = simulate(parser.parse_args())
    print(json.dumps(meta), flush=True)


if __name__ == "__main__":
    main()
