"""Microtubule tomograms from an external simulator (cylindra), for the segmentation check of #31.

Runs in its own virtual environment, never in napari-cryo's: cylindra is not a dependency of the package.

    python3.11 -m venv /work/venv-cyl && /work/venv-cyl/bin/pip install cylindra==1.2.0 mrcfile
    git -C <cylindra checkout> show HEAD:tests/beta-tubulin.mrc > beta-tubulin.mrc   # cylindra's own test template
    /work/venv-cyl/bin/python benchmarks/external_sim_cylindra.py --template beta-tubulin.mrc --out /work/evaldata/cylindra

cylindra's simulator (``cylindra.widgets.subwidgets.simulator.Simulator.simulate_tomogram``) is a GUI method;
this script runs the same steps headless, from cylindra's and acryo's non-GUI components:

1. a ``cylindra.components.CylSpline`` fitted through three control points (a gently bent axis) and its
   ``cylinder_model(spacing, twist, start, npf, radius)``, whose ``to_molecules`` gives one position and
   orientation per tubulin monomer of the lattice (what the GUI's "generate molecules" does);
2. projection of a monomer density at each molecule, for each tilt about Y: acryo's per-molecule projection
   (``acryo.simulator._simulate_projection_one``), called in a plain loop with exactly the arguments that
   ``TomogramSimulator.simulate_tilt_series`` gives it. The plain loop gives identical images (``--selfcheck``
   compares both) and is about 6x faster here, since dask's per-task overhead dominates 0.5 ms tasks;
3. the CTF (``acryo.ctf.CTFModel.from_kv``, convolved into each projection), Gaussian noise on each
   projection, phase flipping with the same CTF, and weighted back-projection with ``impy``'s ``iradon``
   (``central_axis='y'``, Hamming window): the GUI's ``_CTFInputTuple`` convolve/recover + ``_add_noise`` +
   ``iradon`` chain.

The monomer density is ``tests/beta-tubulin.mrc`` of cylindra's repository (a 20^3 beta-tubulin map at
5.144 Å, the template cylindra's own simulator tests use; the wheel ships no density), resampled by acryo's
``pipe.from_file`` to the tomogram's voxel size.

Ground truth per tomogram: ``<name>_labels.mrc`` (uint8, 1 = voxel centre within ``--label-radius`` nm of a
microtubule axis, clipped to the volume), ``<name>_axes.json`` (each axis as a polyline, ZYX in voxels, plus its
lattice), and metadata.json / README.txt for the whole set. Voxel (z, y, x) is at (z, y, x) * voxel size in
cylindra's world coordinates (checked with ``--selfcheck``: the noise-free reconstruction peaks on the labels).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from importlib.metadata import version
from pathlib import Path

import impy as ip
import mrcfile
import numpy as np
from acryo import TomogramSimulator, pipe
from acryo.ctf import CTFModel
from acryo.molecules import Molecules
from acryo.simulator import _simulate_projection_one, axes_to_rotator, cross
from cylindra.components import CylSpline
from scipy.ndimage import spline_filter
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

# Lattices of the two common in-vitro / in-cell microtubules (monomer spacing, twist per monomer, start,
# protofilament-centre radius in nm). Radii scale with npf at a constant protofilament spacing.
LATTICES = {
    13: dict(spacing=4.10, twist=0.0, start=3, radius=10.9),
    14: dict(spacing=4.10, twist=-0.25, start=3, radius=11.7),
}
TILT_STEP = 3.0  # degrees, a dose-symmetric-like 3 degree increment


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("/work/evaldata/cylindra"))
    p.add_argument("--template", type=Path, default=Path("/work/evaldata/cylindra_src/beta-tubulin.mrc"),
                   help="monomer density (cylindra's tests/beta-tubulin.mrc)")
    p.add_argument("--n", type=int, default=6, help="tomograms: the first half 'train', the rest 'test'")
    p.add_argument("--n-train", type=int, default=None, help="how many of them are 'train' (default n // 2)")
    p.add_argument("--shape", type=int, nargs=3, default=(96, 256, 256), metavar=("Z", "Y", "X"))
    p.add_argument("--voxel", type=float, default=10.0, help="voxel size in Å")
    p.add_argument("--mts", type=int, nargs=2, default=(2, 5), metavar=("MIN", "MAX"), help="microtubules per tomogram")
    p.add_argument("--tilt-max", type=float, nargs=2, default=(54.0, 66.0), metavar=("LOW", "HIGH"),
                   help="largest tilt (±, degrees) drawn per tomogram on a 3 degree grid")
    p.add_argument("--snr", type=float, nargs=2, default=(0.1, 0.3), metavar=("LOW", "HIGH"),
                   help="projection SNR drawn per tomogram (definition in README.txt)")
    p.add_argument("--defocus", type=float, nargs=2, default=(2.5, 4.5), metavar=("LOW", "HIGH"), help="underfocus, µm")
    p.add_argument("--clutter", type=int, default=300, help="free tubulin monomers scattered off the microtubules")
    p.add_argument("--label-radius", type=float, default=12.5, help="label radius around the axis, nm")
    p.add_argument("--order", type=int, default=3, choices=(1, 3), help="interpolation order (cylindra's GUI default 3)")
    p.add_argument("--seed", type=int, default=31)
    p.add_argument("--selfcheck", action="store_true", help="check the projection loop against TomogramSimulator and stop")
    p.add_argument("--overwrite", action="store_true")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------------------------- geometry


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def draw_axis(rng: np.random.Generator, shape_nm: np.ndarray, others: list[np.ndarray], min_gap: float) -> np.ndarray | None:
    """Three control points (nm, ZYX) of a gently bent microtubule, or None if this draw collides or leaves Z."""
    zc = shape_nm[0] / 2 + rng.uniform(-0.12, 0.12) * shape_nm[0]
    centre = np.array([zc, *rng.uniform(0.2, 0.8, 2) * shape_nm[1:]])
    phi = rng.uniform(0, np.pi)
    # Half lie flat in the section, half rise out of it by up to 20 degrees.
    elev = np.deg2rad(rng.uniform(-4, 4) if rng.random() < 0.5 else rng.choice([-1, 1]) * rng.uniform(8, 20))
    direction = np.array([np.sin(elev), np.cos(elev) * np.sin(phi), np.cos(elev) * np.cos(phi)])
    length = rng.uniform(160, 360)
    in_plane_normal = _unit(np.array([0.0, -direction[2], direction[1]]))
    bend = rng.uniform(-1, 1) * 0.06 * length  # sagitta: up to 6 % of the length
    pts = np.stack([centre - direction * length / 2, centre + in_plane_normal * bend, centre + direction * length / 2])
    dense = CylSpline().fit(pts, err_max=0.0).map(np.linspace(0, 1, 400))
    margin = 16.0  # nm: the whole tube (radius ~12.5 nm) stays inside the section
    if dense[:, 0].min() < margin or dense[:, 0].max() > shape_nm[0] - margin:
        return None
    for other in others:
        if cKDTree(other).query(dense)[0].min() < min_gap:
            return None
    return pts


def axis_polyline(spl: CylSpline, step_nm: float = 1.0) -> np.ndarray:
    """The spline's axis sampled every ``step_nm`` (nm, ZYX)."""
    n = max(int(np.ceil(spl.length() / step_nm)) + 1, 2)
    return np.asarray(spl.map(np.linspace(0, 1, n)), dtype=np.float64)


def label_volume(axes_nm: list[np.ndarray], shape: tuple[int, int, int], voxel_nm: float, radius_nm: float) -> np.ndarray:
    """uint8 volume, 1 where a voxel centre lies within ``radius_nm`` of any axis (axes densely sampled)."""
    labels = np.zeros(shape, np.uint8)
    for axis in axes_nm:
        fine = _densify(axis, 0.1)
        tree = cKDTree(fine / voxel_nm)
        lo = np.maximum(np.floor(fine.min(0) / voxel_nm - radius_nm / voxel_nm) - 1, 0).astype(int)
        hi = np.minimum(np.ceil(fine.max(0) / voxel_nm + radius_nm / voxel_nm) + 2, shape).astype(int)
        if np.any(hi <= lo):
            continue
        grid = np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi)], indexing="ij"), -1).reshape(-1, 3)
        d, _ = tree.query(grid, distance_upper_bound=radius_nm / voxel_nm + 1)
        inside = grid[d <= radius_nm / voxel_nm]
        labels[inside[:, 0], inside[:, 1], inside[:, 2]] = 1
    return labels


def _densify(poly: np.ndarray, step: float) -> np.ndarray:
    """Points along a polyline at most ``step`` apart."""
    out = [poly[:1]]
    for a, b in zip(poly[:-1], poly[1:]):
        n = max(int(np.ceil(np.linalg.norm(b - a) / step)), 1)
        out.append(a + (b - a) * np.linspace(0, 1, n + 1)[1:, None])
    return np.concatenate(out)


# ----------------------------------------------------------------------------------------------- projection


def tilt_series(molecules: Molecules, template: np.ndarray, degrees: np.ndarray, shape: tuple[int, int, int],
                scale: float, order: int) -> np.ndarray:
    """``TomogramSimulator.simulate_tilt_series`` without dask: the same per-molecule projections, summed."""
    img = spline_filter(template, order=order, mode="constant") if order > 1 else template
    ey = np.array([0, 1, 0], dtype=np.float32)
    rc = (np.array(shape, dtype=np.float32) / 2 - 0.5) * scale
    pos_scaled = (molecules.pos - rc) / scale
    ycoords = pos_scaled.dot(ey) + (shape[1] - 1) / 2
    out = np.zeros((len(degrees), shape[1], shape[2]), np.float32)
    rotators = [molecules.rotator[i] for i in range(len(molecules))]
    for i, rad in enumerate(np.deg2rad(degrees)):
        ex = np.array([np.sin(rad), 0, np.cos(rad)], dtype=np.float32)
        xcoords = pos_scaled.dot(ex) + (shape[2] - 1) / 2
        coords = np.stack((ycoords, xcoords), axis=1)
        glob = axes_to_rotator(cross(ex, ey), ey)
        for yx, rot in zip(coords, rotators):
            sl, frag = _simulate_projection_one(yx, shape[1:], img, rot, glob, order)
            if frag is not None:
                out[i, sl[0], sl[1]] += frag
    return out


def reconstruct(series: np.ndarray, degrees: np.ndarray, height: int, order: int) -> np.ndarray:
    """Weighted back-projection about Y, as cylindra's simulator does it (impy ``iradon``)."""
    arr = ip.asarray(series, axes=["degree", "y", "x"])
    rec = arr.iradon(list(degrees), central_axis="y", height=height, order=order)
    return np.asarray(rec.value, dtype=np.float32)


def selfcheck(args: argparse.Namespace) -> int:
    """The plain loop against ``TomogramSimulator.simulate_tilt_series``, and the label geometry against a clean reconstruction."""
    scale = args.voxel / 10
    shape = (48, 96, 96)
    spl = CylSpline().fit(np.array([[14.0, 10, 20], [24, 50, 48], [34, 90, 80]]) * scale, err_max=0.0)
    lat = LATTICES[13]
    mole = spl.cylinder_model(npf=13, **{**lat, "radius": lat["radius"] - _radius_shift(spl)}).to_molecules(spl)
    prov = pipe.from_file(args.template)
    degrees = np.arange(-60, 61, 15.0)
    sim = TomogramSimulator(order=args.order, scale=scale)
    sim.add_molecules(mole, prov)
    t0 = time.time()
    ref = sim.simulate_tilt_series(degrees=degrees, shape=shape)
    t1 = time.time()
    mine = tilt_series(mole, prov.provide(scale), degrees, shape, scale, args.order)
    t2 = time.time()
    print(f"projection loop vs TomogramSimulator: max |diff| {np.abs(ref - mine).max():.3g} (max {ref.max():.3g}); "
          f"{len(mole)} molecules x {len(degrees)} tilts: dask {t1 - t0:.1f} s, loop {t2 - t1:.1f} s")
    rec = reconstruct(mine, degrees, shape[0], args.order)
    lab = label_volume([axis_polyline(spl)], shape, scale, args.label_radius)
    flipped = lab[::-1]
    print(f"clean reconstruction mean inside labels {rec[lab == 1].mean():.3g}, outside {rec[lab == 0].mean():.3g}; "
          f"inside Z-flipped labels {rec[flipped == 1].mean():.3g}, X-flipped {rec[lab[:, :, ::-1] == 1].mean():.3g}")
    return 0


def _radius_shift(spl: CylSpline) -> float:
    """What ``CylSpline.cylinder_params`` adds to the radius it is given (the config's wall asymmetry)."""
    return (spl.config.thickness_outer - spl.config.thickness_inner) / 2


# ----------------------------------------------------------------------------------------------- one tomogram


def contrast_to_noise(vol: np.ndarray, dist_nm: np.ndarray) -> float:
    """(mean of the wall shell 9-13 nm from the axis - mean at 20-35 nm) / std at 20-35 nm, the same measure
    ``real_microtubule_check.py`` reports for the real crops."""
    wall = (dist_nm >= 9) & (dist_nm < 13)
    ring = (dist_nm >= 20) & (dist_nm < 35)
    return float((vol[wall].mean() - vol[ring].mean()) / vol[ring].std())


def distance_map(axes_nm: list[np.ndarray], shape: tuple[int, int, int], voxel_nm: float, cap_nm: float = 40.0) -> np.ndarray:
    """Distance (nm) of each voxel centre to the nearest axis, capped at ``cap_nm``."""
    pts = np.concatenate([_densify(a, 0.25) for a in axes_nm]) / voxel_nm
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1).reshape(-1, 3)
    d, _ = cKDTree(pts).query(grid, distance_upper_bound=cap_nm / voxel_nm)
    return np.minimum(d, cap_nm / voxel_nm).reshape(shape).astype(np.float32) * voxel_nm


def simulate_one(name: str, seed: int, args: argparse.Namespace, template_nm: np.ndarray) -> dict:
    rng = np.random.default_rng(seed)
    shape = tuple(args.shape)
    scale = args.voxel / 10  # nm per voxel: cylindra works in nm
    shape_nm = np.array(shape) * scale
    n_mt = int(rng.integers(args.mts[0], args.mts[1] + 1))
    grid = np.arange(args.tilt_max[0], args.tilt_max[1] + 1e-6, TILT_STEP)
    tilt_max = float(rng.choice(grid))
    degrees = np.arange(-tilt_max, tilt_max + 1e-6, TILT_STEP)
    defocus = float(rng.uniform(*args.defocus))
    bfactor = float(rng.uniform(1.0, 3.0))  # nm^2 (acryo's unit): a mild envelope at 1 nm voxels
    snr = float(rng.uniform(*args.snr))

    axes_ctrl: list[np.ndarray] = []
    dense_axes: list[np.ndarray] = []
    tries = 0
    while len(axes_ctrl) < n_mt and tries < 2000:
        tries += 1
        pts = draw_axis(rng, shape_nm, dense_axes, min_gap=2 * args.label_radius + 6)
        if pts is not None:
            axes_ctrl.append(pts)
            dense_axes.append(CylSpline().fit(pts, err_max=0.0).map(np.linspace(0, 1, 400)))

    mts, all_mols, polylines = [], [], []
    for pts in axes_ctrl:
        spl = CylSpline().fit(pts, err_max=0.0)
        npf = int(rng.choice([13, 14]))
        lat = dict(LATTICES[npf])
        lat["spacing"] += float(rng.uniform(-0.04, 0.04))
        model = spl.cylinder_model(offsets=(0.0, float(rng.uniform(0, 2 * np.pi))),
                                   npf=npf, **{**lat, "radius": lat["radius"] - _radius_shift(spl)})
        mole = model.to_molecules(spl)
        poly = axis_polyline(spl)
        d, _ = cKDTree(_densify(poly, 0.1)).query(mole.pos)
        mts.append({"npf": npf, "start": lat["start"], "spacing_nm": lat["spacing"], "twist_deg": lat["twist"],
                    "lattice_radius_nm": float(np.median(d)), "length_nm": float(spl.length()), "n_monomers": len(mole)})
        all_mols.append(mole)
        polylines.append(poly)

    # Free tubulin off the microtubules: density the segmenter must not call microtubule.
    clutter_pos = []
    all_dense = np.concatenate([_densify(p, 0.5) for p in polylines])
    tree = cKDTree(all_dense)
    while len(clutter_pos) < args.clutter:
        p = rng.uniform([12, 0, 0], [shape_nm[0] - 12, shape_nm[1], shape_nm[2]])
        if tree.query(p)[0] > args.label_radius + 4:
            clutter_pos.append(p)
    if clutter_pos:
        all_mols.append(Molecules(np.array(clutter_pos), Rotation.random(len(clutter_pos), random_state=seed)))
    molecules = Molecules.concat(all_mols)

    t0 = time.time()
    clean = tilt_series(molecules, template_nm, degrees, shape, scale, args.order)
    t_proj = time.time() - t0

    ctf = CTFModel.from_kv(kv=300, spherical_aberration=2.7, defocus=-defocus, bfactor=bfactor)
    conv = np.asarray(ctf.apply_ctf(clean, scale), np.float32)
    # SNR: mean power of the CTF-filtered projection over the microtubules' and monomers' footprint (pixels where
    # the unfiltered projection exceeds 5 % of its tilt's maximum) over the noise variance, averaged over tilts.
    power = []
    for c, f in zip(clean, conv):
        foot = c > 0.05 * c.max()
        power.append(float(np.mean((f[foot] - f.mean()) ** 2)))
    sd = float(np.sqrt(np.mean(power) / snr))
    noise = rng.normal(scale=sd, size=conv.shape).astype(np.float32)
    t0 = time.time()
    rec = reconstruct(np.asarray(ctf.phase_flip(conv + noise, scale), np.float32), degrees, shape[0], args.order)
    rec_clean = reconstruct(np.asarray(ctf.phase_flip(conv, scale), np.float32), degrees, shape[0], args.order)
    t_rec = time.time() - t0

    labels = label_volume(polylines, shape, scale, args.label_radius)
    dist = distance_map(polylines, shape, scale)
    noise_rec = rec - rec_clean
    tomo_snr = float(np.mean((rec_clean[labels == 1] - rec_clean[labels == 0].mean()) ** 2) / noise_rec.var())

    # Normalised to zero mean, unit variance: the absolute scale of a back-projection means nothing.
    rec = (rec - rec.mean()) / rec.std()
    out = args.out
    _write_mrc(out / f"{name}.mrc", rec.astype(np.float32), args.voxel)
    _write_mrc(out / f"{name}_labels.mrc", labels, args.voxel)
    axes_json = {
        "name": name,
        "units": "voxels, ZYX (voxel (z, y, x) is at (z, y, x) * voxel_size)",
        "voxel_size_A": args.voxel,
        "shape": list(shape),
        "label_radius_nm": args.label_radius,
        "axes": [{**mt, "points_zyx": (poly / scale).round(3).tolist()} for mt, poly in zip(mts, polylines)],
    }
    (out / f"{name}_axes.json").write_text(json.dumps(axes_json, indent=1))
    meta = {
        "name": name, "seed": seed, "n_microtubules": len(mts), "microtubules": mts, "n_clutter_monomers": len(clutter_pos),
        "tilt_range_deg": [-tilt_max, tilt_max], "tilt_step_deg": TILT_STEP, "n_tilts": len(degrees),
        "defocus_um": -defocus, "bfactor_nm2": bfactor, "ctf_correction": "phaseflip",
        "snr_projection": snr, "noise_sd": sd, "cylindra_nsr": sd / float(clean.max()),
        "snr_tomogram": tomo_snr, "contrast_to_noise_wall": contrast_to_noise(rec, dist),
        "label_fraction": float(labels.mean()), "seconds_projection": round(t_proj, 1), "seconds_reconstruction": round(t_rec, 1),
    }
    print(f"{name}: {len(mts)} MTs ({', '.join(str(m['npf']) for m in mts)} pf), ±{tilt_max:.0f}° ({len(degrees)} tilts), "
          f"defocus {-defocus:.2f} µm, SNR {snr:.2f} (tomogram {tomo_snr:.3f}, wall CNR {meta['contrast_to_noise_wall']:.2f}), "
          f"{len(molecules)} molecules, projection {t_proj:.0f} s, reconstruction {t_rec:.0f} s", flush=True)
    return meta


def _write_mrc(path: Path, data: np.ndarray, voxel: float) -> None:
    with mrcfile.new(path, overwrite=True) as m:
        m.set_data(data)
        m.voxel_size = voxel


README = """Microtubule tomograms simulated with cylindra {cylindra} (acryo {acryo}, impy {impy}), written by
napari-cryo's benchmarks/external_sim_cylindra.py for issue #31. Not napari-cryo's own simulator.

Command: {command}
Python {python}, numpy {numpy}, scipy {scipy}, mrcfile {mrcfile}.

Files: <name>.mrc (float32 tomogram, zero mean / unit variance, voxel size {voxel} Å in the header, ZYX
{shape}), <name>_labels.mrc (uint8, 1 = voxel centre within {label_radius} nm of a microtubule axis),
<name>_axes.json (axes as polylines, ZYX in voxels, sampled every 1 nm, with each lattice), metadata.json
(per-tomogram parameters and realised values). Split: {train} are 'train', {test} are 'test'.

How (per tomogram, numpy Generator seeded {seed} + index):
* {mts_lo}-{mts_hi} microtubules, each a cylindra CylSpline through three control points: centred within 12 %
  of the mid-section in Z and the middle 60 % in Y and X, direction uniform in the XY plane, half of them
  within 4° of the section plane and half rising 8-20° out of it, 160-360 nm long (ends may leave the field
  of view), bent by a sagitta of up to 6 % of the length; at least 16 nm from the top and bottom faces and at
  least {gap} nm axis-to-axis from each other.
* Lattice: CylSpline.cylinder_model(spacing, twist, start, npf, radius).to_molecules(), 13 or 14
  protofilaments (even odds), 3-start, monomer spacing 4.10 ± 0.04 nm, twist 0° (13 pf) / -0.25° (14 pf),
  protofilament-centre radius 10.9 / 11.7 nm, random lattice rotation. One beta-tubulin density per monomer:
  cylindra's tests/beta-tubulin.mrc (20^3 at 5.144 Å), resampled by acryo to {voxel} Å, interpolation order {order}.
* {clutter} free tubulin monomers, uniform in the volume (12 nm from the faces), random orientations, more than
  {clutter_gap} nm from any axis.
* Tilt series about Y, ±T with T drawn from {{{tilt_lo:.0f}..{tilt_hi:.0f}}}° on a 3° grid, 3° steps, single
  axis, parallel projection, no tilt-dependent defocus; CTF 300 kV, Cs 2.7 mm, amplitude contrast 0.07,
  underfocus {df_lo}-{df_hi} µm, B-factor 1-3 nm² (acryo CTFModel; bright density stays bright), white Gaussian
  noise per projection, CTF phase flipping with the same CTF, weighted back-projection (impy iradon,
  Hamming window) to {z} slices.
* SNR (projection): mean over tilts of [mean power of the CTF-filtered noise-free projection, minus its mean,
  over the pixels where the unfiltered projection exceeds 5 % of its maximum] / noise variance; drawn uniformly
  in [{snr_lo}, {snr_hi}] per tomogram. metadata.json also has snr_tomogram (mean power of the noise-free
  reconstruction, minus its background mean, inside the labels / variance of the reconstructed noise),
  cylindra_nsr (noise sd / maximum of the noise-free tilt series: the N/S of cylindra's GUI) and
  contrast_to_noise_wall ((mean at 9-13 nm from the axis - mean at 20-35 nm) / std at 20-35 nm of the
  final tomogram; the real crops 13pf_MT / 14pf_MT give 0.39 / 0.51 by the same measure, around their
  README axes extended to the crop edges: see real_microtubule_check.py).

Protein density is bright (cylindra's convention; the real crops in shared/testdata/real are bright too).
Wall time: {minutes:.1f} min on {machine}.
"""


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.selfcheck:
        return selfcheck(args)
    args.out.mkdir(parents=True, exist_ok=True)
    n_train = args.n // 2 if args.n_train is None else args.n_train
    names = [f"train_{i:02d}" for i in range(n_train)] + [f"test_{i:02d}" for i in range(args.n - n_train)]
    existing = [n for n in names if (args.out / f"{n}.mrc").exists()]
    if existing and not args.overwrite:
        print(f"{args.out / existing[0]}.mrc exists; use --overwrite", file=sys.stderr)
        return 2
    template_nm = pipe.from_file(args.template).provide(args.voxel / 10)
    t0 = time.time()
    metas = [simulate_one(name, args.seed + i, args, template_nm) for i, name in enumerate(names)]
    minutes = (time.time() - t0) / 60
    versions = {k: version(k) for k in ("cylindra", "acryo", "impy-array", "numpy", "scipy", "mrcfile")}
    (args.out / "metadata.json").write_text(json.dumps({
        "simulator": "cylindra (headless components)", "versions": versions, "argv": sys.argv, "voxel_size_A": args.voxel,
        "shape": list(args.shape), "label_radius_nm": args.label_radius, "train": names[:n_train], "test": names[n_train:],
        "template": str(args.template), "tomograms": metas}, indent=1))
    (args.out / "README.txt").write_text(README.format(
        cylindra=versions["cylindra"], acryo=versions["acryo"], impy=versions["impy-array"], numpy=versions["numpy"],
        scipy=versions["scipy"], mrcfile=versions["mrcfile"], python=platform.python_version(),
        command=" ".join(sys.argv), voxel=args.voxel, shape=tuple(args.shape), label_radius=args.label_radius,
        train=", ".join(names[:n_train]), test=", ".join(names[n_train:]), seed=args.seed, mts_lo=args.mts[0],
        mts_hi=args.mts[1], gap=2 * args.label_radius + 6, order=args.order, clutter=args.clutter,
        clutter_gap=args.label_radius + 4, tilt_lo=args.tilt_max[0], tilt_hi=args.tilt_max[1], df_lo=args.defocus[0],
        df_hi=args.defocus[1], z=args.shape[0], snr_lo=args.snr[0], snr_hi=args.snr[1], minutes=minutes,
        machine=f"{platform.machine()}, {platform.system()}, 2 shared cores"))
    print(f"{len(names)} tomograms in {args.out} ({minutes:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
