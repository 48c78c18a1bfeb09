"""Evaluation micrographs from an external simulator (ASPIRE) and real atomic models, for the picking check of #30.

Runs in its own virtual environment, never in napari-cryo's: ASPIRE is not a dependency of the package.

    python3.11 -m venv /work/venv-ext && /work/venv-ext/bin/pip install aspire==0.14.3 mrcfile gemmi   # the versions measured: gemmi 0.7.5, mrcfile 1.5.4
    /work/venv-ext/bin/python benchmarks/external_sim_aspire.py --models DIR --out /work/evaldata/aspire

DIR holds PDB files from the MDAnalysisTests sdist (PyPI): only the reserved evaluation models 1hvr.pdb and
6msm.pdb(.bz2) are read; the generic picker is trained on other files of that package.

Conditions (1024² micrographs at 2 Å/px, 10 "train" micrographs for fine-tuning and 10 "test" ones each):

* ``octa24_1hvr``: an apoferritin-like hollow 24-mer. One HIV-protease monomer (1hvr chain A, heavy atoms,
  no ligand or water) at a generic orientation is copied by the 24 rotations of the octahedral group, on the
  smallest shell radius where no two copies have C-alpha atoms within 6 Å (searched over fixed-seed trial
  orientations). About 132 Å across, 260 kDa.
* ``cftr_6msm``: an asymmetric, elongated membrane protein (6msm, human CFTR, chains A and B, heavy atoms),
  about 147 Å at its longest.

Pipeline per micrograph: gemmi's electron-scattering density of the model on a 2 Å grid -> ASPIRE
``MicrographSimulation`` (uniform random orientations, amplitude 1, minimum centre distance 0.9 diameter)
with one ASPIRE ``CTFFilter`` per micrograph (300 kV, Cs 2.7 mm, amplitude contrast 0.1, defocus 1-3 µm,
astigmatism up to 500 Å, B envelope 60-150 Å²) -> ASPIRE ``CustomNoiseAdder`` with a coloured spectrum,
white plus a 1/f-like low-frequency excess (power 1 + 4 k0/(k + k0), k0 = 0.02 pi rad/px).
Then, outside ASPIRE, a carbon edge (darker, with CTF-filtered amorphous texture) and 2-3 dark ice
contamination blobs are added, and the particles whose centre lies within a radius of them are taken out
again (their CTF-filtered projections subtracted), so that those regions hold no particle: picks there are
false positives. Those regions are written as masks (``masks/<mic>.mrc``, 1 = no-particle region) for
reference; the evaluation does not use them.

SNR: per particle, the variance of its clean CTF-filtered projection inside the centred square box of side
the particle diameter, divided by the variance of the noise field (``noisy - clean`` of ASPIRE, before
carbon and contamination) at the micrograph's pixel size. Each micrograph draws a target mean SNR uniformly
in [0.05, 0.1] (``--snr``; with ``--suffix`` a harder copy of a condition has the same particles, orientations
and defocus, only more noise); the realised per-particle values are in ``metadata.json``. The noise is
mostly white while the particle's power sits at low frequencies, so particles stand out after a low-pass
filter at this definition's 0.05-0.1.

Outputs under OUT/<condition>/{train,test}/: ``mic_NN.mrc`` (float32, pixel size in the header),
``mic_NN.star`` (RELION: rlnCoordinateX, rlnCoordinateY in pixels; the true centres), ``masks/mic_NN.mrc``;
OUT/<condition>/metadata.json and check.png (the average clean image around the true centres, and one
micrograph with its true centres).
"""

from __future__ import annotations

import argparse
import bz2
import itertools
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import gemmi
import mrcfile
import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

# ASPIRE writes logs/ and aspire.err.log into the working directory unless its configuration (read from
# $ASPIREDIR/config.yaml at import) says otherwise: keep them out of the repository.
_ASPIRE_DIR = Path(tempfile.gettempdir()) / "external_sim_aspire"
_ASPIRE_DIR.mkdir(exist_ok=True)
(_ASPIRE_DIR / "config.yaml").write_text(
    f"logging:\n  log_dir: {_ASPIRE_DIR / 'logs'}\n  log_exceptions: 0\n  console_level: WARNING\n  tqdm_disable: True\n")
os.environ.setdefault("ASPIREDIR", str(_ASPIRE_DIR))

import aspire  # noqa: E402
from aspire.noise import CustomNoiseAdder
from aspire.operators import CTFFilter, FunctionFilter
from aspire.image import Image
from aspire.source import MicrographSimulation
from aspire.volume import Volume

SIDE = 1024
PIXEL = 2.0
N_PER_SET = 10  # per split; --n changes it for a quick look
CONDITIONS = {
    "octa24_1hvr": {"model": "1hvr.pdb", "chains": ["A"], "assembly": "octahedral", "n_particles": 130},
    "cftr_6msm": {"model": "6msm.pdb", "chains": ["A", "B"], "assembly": None, "n_particles": 110},
}
RESERVED = {"1hvr.pdb", "6msm.pdb", "6msm.pdb.bz2", "5a7u.pdb", "4E43.pdb"}


def octahedral_rotations() -> np.ndarray:
    """The 24 proper rotations of the octahedral group: signed permutation matrices with determinant +1."""
    mats = []
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1, -1), repeat=3):
            m = np.zeros((3, 3))
            for i, (p, s) in enumerate(zip(perm, signs)):
                m[i, p] = s
            if np.linalg.det(m) > 0:
                mats.append(m)
    return np.array(mats)


def read_model(models: Path, name: str) -> gemmi.Structure:
    """Heavy atoms of a reserved model, without ligands or water."""
    if name not in RESERVED:
        raise SystemExit(f"{name} is not one of the reserved evaluation models {sorted(RESERVED)}")
    path = models / name
    if not path.exists() and (models / (name + ".bz2")).exists():
        path = models / name
        path.write_bytes(bz2.decompress((models / (name + ".bz2")).read_bytes()))
    st = gemmi.read_structure(str(path))
    st.remove_ligands_and_waters()
    st.remove_hydrogens()
    return st


def atoms_of(st: gemmi.Structure, chains: list[str]) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Positions (Å), element names and a C-alpha flag of the atoms of the chosen chains."""
    xyz, el, ca = [], [], []
    for ch in st[0]:
        if ch.name in chains:
            for res in ch:
                for a in res:
                    xyz.append((a.pos.x, a.pos.y, a.pos.z))
                    el.append(a.element.name)
                    ca.append(a.name == "CA")
    return np.array(xyz), el, np.array(ca)


def octahedral_assembly(st: gemmi.Structure, chains: list[str], seed: int = 0) -> tuple[np.ndarray, list[str], dict]:
    """Copy a monomer by the octahedral group on the smallest shell without C-alpha clashes (< 6 Å)."""
    xyz, el, is_ca = atoms_of(st, chains)
    ca = xyz[is_ca]
    centre = xyz.mean(0)
    xyz, ca = xyz - centre, ca - centre
    group = octahedral_rotations()
    rng = np.random.default_rng(seed)
    best = None
    for trial in range(40):
        rot = Rotation.random(random_state=int(rng.integers(1 << 30))).as_matrix()
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        for radius in np.arange(30.0, 90.0, 1.0):
            copies = [(ca @ rot.T + radius * direction) @ g.T for g in group]
            tree = cKDTree(np.concatenate(copies[1:]))
            if sum(tree.query_ball_point(copies[0], 6.0, return_length=True)) == 0:
                full = np.concatenate([(xyz @ rot.T + radius * direction) @ g.T for g in group])
                outer = 2 * np.linalg.norm(full, axis=1).max()
                if best is None or outer < best[0]:
                    best = (outer, full, {"shell_radius_A": float(radius), "trial": trial})
                break
    outer, full, info = best
    return full, el * len(group), info


def density_map(xyz: np.ndarray, elements: list[str], box: int, pixel: float) -> np.ndarray:
    """Electron-scattering potential of the atoms on a (box,)*3 grid of `pixel` Å, centre of mass at box//2."""
    st = gemmi.Structure()
    st.cell = gemmi.UnitCell(box * pixel, box * pixel, box * pixel, 90, 90, 90)
    st.spacegroup_hm = "P 1"
    model = gemmi.Model("1")
    chain = gemmi.Chain("A")
    shift = (box // 2) * pixel - xyz.mean(0)
    # One residue per atom keeps gemmi happy with arbitrarily many atoms of any element.
    for i, (p, e) in enumerate(zip(xyz + shift, elements)):
        res = gemmi.Residue()
        res.name = "UNK"
        res.seqid = gemmi.SeqId(i + 1, " ")
        atom = gemmi.Atom()
        atom.name = e
        atom.element = gemmi.Element(e)
        atom.pos = gemmi.Position(*p)
        atom.b_iso = 20.0
        atom.occ = 1.0
        res.add_atom(atom)
        chain.add_residue(res)
    model.add_chain(chain)
    st.add_model(model)
    dc = gemmi.DensityCalculatorE()
    dc.d_min = 2 * pixel
    dc.grid.setup_from(st)
    dc.grid.set_size(box, box, box)
    dc.put_model_density_on_grid(st[0])
    # gemmi's grid is indexed (x, y, z); ASPIRE volumes are (z, y, x).
    return np.ascontiguousarray(np.array(dc.grid, copy=True).transpose(2, 1, 0), dtype=np.float32)


def noise_spectrum(scale: float = 1.0, k0: float = 0.02 * np.pi, excess: float = 4.0):
    """Power spectrum: scale x (white plus a 1/f-like excess below k0); omega in rad/px, pi = Nyquist."""

    def psd(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        k = np.sqrt(x * x + y * y)
        return scale * (1.0 + excess * k0 / (k + k0))

    return psd


def mean_power(psd, n: int) -> float:
    """Average of the power spectrum over ASPIRE's n x n frequency grid (the variance of the noise it makes)."""
    f = (np.arange(n) - n // 2) * (2 * np.pi / n)
    x, y = np.meshgrid(f, f, indexing="ij")
    return float(psd(x, y).mean())


def place(images: np.ndarray, centres: np.ndarray, side: int) -> np.ndarray:
    """Sum particle boxes into a micrograph, with MicrographSimulation's placement convention (centre at L//2)."""
    box = images.shape[-1]
    pad = box
    out = np.zeros((side + 2 * pad, side + 2 * pad), np.float64)
    for im, (r, c) in zip(images, centres.astype(int)):
        r0, c0 = r - box // 2 + pad, c - box // 2 + pad
        out[r0 : r0 + box, c0 : c0 + box] += im
    return out[pad : pad + side, pad : pad + side]


def exclusion_regions(rng: np.random.Generator, side: int) -> tuple[np.ndarray, np.ndarray]:
    """A carbon film beyond a gently curved edge, and 2-3 contamination blobs; boolean masks."""
    yy, xx = np.mgrid[0:side, 0:side].astype(float)
    angle = rng.uniform(0, 2 * np.pi)
    nx, ny = np.cos(angle), np.sin(angle)
    s = (xx - side / 2) * nx + (yy - side / 2) * ny
    t = -(xx - side / 2) * ny + (yy - side / 2) * nx
    edge = side * rng.uniform(0.28, 0.4) + 25 * np.sin(2 * np.pi * t / side * rng.uniform(0.5, 1.5) + rng.uniform(0, 6.3))
    carbon = s > edge
    contamination = np.zeros((side, side), bool)
    for _ in range(int(rng.integers(2, 4))):
        cy, cx = rng.uniform(0.1, 0.9, 2) * side
        r = rng.uniform(30, 80)
        blob = np.zeros_like(contamination)
        for _ in range(3):  # a lumpy outline from a few overlapping discs
            oy, ox = rng.normal(0, r / 3, 2)
            rr = r * rng.uniform(0.6, 1.0)
            blob |= (yy - cy - oy) ** 2 + (xx - cx - ox) ** 2 < rr**2
        contamination |= blob & ~carbon
    return carbon, contamination


def write_star(path: Path, centres_rc: np.ndarray) -> None:
    """RELION coordinates (X = column, Y = row, in pixels)."""
    lines = ["", "# true particle centres (external_sim_aspire.py)", "", "data_", "", "loop_",
             "_rlnCoordinateX #1", "_rlnCoordinateY #2"]
    lines += [f"{c:12.3f} {r:12.3f}" for r, c in centres_rc]
    path.write_text("\n".join(lines) + "\n")


def write_mrc(path: Path, data: np.ndarray, pixel: float) -> None:
    with mrcfile.new(path, overwrite=True) as m:
        m.set_data(np.asarray(data, dtype=np.int8 if data.dtype == bool else np.float32))
        m.voxel_size = pixel


def simulate_condition(name: str, spec: dict, models: Path, out: Path, seed: int, n_per_set: int = N_PER_SET,
                       snr_range: tuple[float, float] = (0.05, 0.1), folder: str | None = None,
                       splits: tuple[str, ...] = ("train", "test")) -> dict:
    """Simulate the train and test micrographs of one condition into out/<folder or name>."""
    folder = folder or name
    t0 = time.perf_counter()
    st = read_model(models, spec["model"])
    if spec["assembly"] == "octahedral":
        xyz, elements, info = octahedral_assembly(st, spec["chains"], seed=seed)
    else:
        xyz, elements, _ = atoms_of(st, spec["chains"])
        info = {}
    centred = xyz - xyz.mean(0)
    diameter = float(2 * np.linalg.norm(centred, axis=1).max())
    extent = np.ptp(centred @ np.linalg.svd(centred, full_matrices=False)[2].T, axis=0)
    d_px = diameter / PIXEL
    # The box holds the particle and the CTF's delocalisation around it (ASPIRE filters each box circularly).
    box = int(np.ceil(2 * d_px / 2) * 2)
    vol = density_map(xyz, elements, box, PIXEL)
    volume = Volume(vol / np.abs(vol).max(), pixel_size=PIXEL)
    meta = {
        "condition": folder, "snr_range": list(snr_range), "aspire_version": aspire.__version__, "gemmi_version": gemmi.__version__,
        "model": spec["model"], "chains": spec["chains"], "assembly": spec["assembly"], **info,
        "n_atoms": len(xyz), "mass_kDa_heavy_atoms": round(len(xyz) * 13.5 / 1000, 1),
        "diameter_A": round(diameter, 1), "principal_extent_A": [round(float(e), 1) for e in extent],
        "pixel_size_A": PIXEL, "micrograph_px": SIDE, "particle_box_px": box,
        "snr_definition": "var(clean CTF-filtered projection in the centred diameter-sized box) / var(noise field)",
        "micrographs": [],
    }
    psd = noise_spectrum()
    unit_var = mean_power(psd, 2 * SIDE)
    rng = np.random.default_rng(seed)
    half = int(round(d_px / 2))
    check_stack, check_rand = [], []
    for split_i, split in enumerate(("train", "test")):
        d = out / folder / split
        if split not in splits:  # still draw its random numbers, so the other split stays the same
            for _ in range(n_per_set):
                rng.uniform(size=5)
            continue
        if d.exists():
            shutil.rmtree(d)
        (d / "masks").mkdir(parents=True)
        for i in range(n_per_set):
            mseed = seed * 1000 + split_i * 100 + i
            defocus = rng.uniform(10000, 30000)
            astig = rng.uniform(0, 500)
            b_factor = rng.uniform(60, 150)
            ctf = CTFFilter(voltage=300, defocus_u=defocus + astig / 2, defocus_v=defocus - astig / 2,
                            defocus_ang=rng.uniform(0, np.pi), Cs=2.7, alpha=0.1, B=b_factor / 400.0)
            n = spec["n_particles"]
            sim = MicrographSimulation(
                volume, micrograph_size=SIDE, micrograph_count=1, particles_per_micrograph=n,
                particle_amplitudes=np.ones(n, dtype=np.float32), pixel_size=PIXEL, seed=mseed,
                ctf_filters=[ctf], boundary=half, interparticle_distance=int(np.ceil(0.9 * d_px)),
            )
            parts = sim.simulation.clean_images[:].asnumpy().astype(np.float64)
            centres = sim.centers[0].astype(int)  # (row, col)
            # The projections are the costly part (seconds each on 2 cores): project once, and compose the
            # micrograph as MicrographSimulation does. The first micrograph of each split checks that this
            # composition equals ASPIRE's own micrograph, so the STAR centres are where ASPIRE put the particles.
            clean = place(parts, centres, SIDE)
            placement_err = None
            if i == 0:
                aspire_clean = sim.clean_images[0].asnumpy()[0].astype(np.float64)
                placement_err = float(np.abs(clean - aspire_clean).max() / np.abs(aspire_clean).max())
            c0 = box // 2
            sig_var = np.array([p[c0 - half : c0 + half, c0 - half : c0 + half].var() for p in parts])
            snr_target = rng.uniform(*snr_range)
            noise_var = sig_var.mean() / snr_target
            scale = noise_var / unit_var
            sim.noise_adder = CustomNoiseAdder(FunctionFilter(noise_spectrum(scale)), seed=mseed)
            # What sim.images[0] returns: the noise adder applied to the clean micrograph.
            noisy = sim.noise_adder.forward(Image(clean[None].astype(np.float32), pixel_size=PIXEL)).asnumpy()[0].astype(np.float64)
            noise = noisy - clean
            real_noise_var = float(noise.var())
            snr = sig_var / real_noise_var

            carbon, contam = exclusion_regions(np.random.default_rng(mseed), SIDE)
            blocked = ndimage.binary_dilation(carbon | contam, iterations=half)
            keep = ~blocked[centres[:, 0], centres[:, 1]]
            removed = place(parts[~keep], centres[~keep], SIDE)
            sigma = np.sqrt(real_noise_var)
            soft_c = ndimage.gaussian_filter(carbon.astype(float), 2.0)
            texture = Image(np.random.default_rng(mseed + 1).normal(size=(1, SIDE, SIDE)).astype(np.float32) * soft_c[None].astype(np.float32),
                            pixel_size=PIXEL).filter(ctf).asnumpy()[0].astype(np.float64)
            texture *= 0.5 * sigma / max(texture[carbon].std(), 1e-12)
            soft_k = ndimage.gaussian_filter(contam.astype(float), 3.0)
            image = noisy - removed - 1.0 * sigma * soft_c + texture - 3.0 * sigma * soft_k
            stem = f"mic_{i:02d}"
            write_mrc(d / f"{stem}.mrc", image.astype(np.float32), PIXEL)
            write_mrc(d / "masks" / f"{stem}.mrc", carbon | contam, PIXEL)
            write_star(d / f"{stem}.star", centres[keep])

            kept_clean = clean - removed
            rr = np.random.default_rng(mseed + 2)
            for r, c in centres[keep]:
                if half <= r < SIDE - half and half <= c < SIDE - half:
                    check_stack.append(kept_clean[r - half : r + half, c - half : c + half])
            for r, c in rr.integers(half, SIDE - half, size=(int(keep.sum()), 2)):
                check_rand.append(kept_clean[r - half : r + half, c - half : c + half])
            meta["micrographs"].append({
                "split": split, "file": f"{split}/{stem}.mrc", "seed": mseed, "defocus_A": round(defocus, 1),
                "astigmatism_A": round(astig, 1), "b_factor_A2": round(b_factor, 1), "snr_target": round(snr_target, 4),
                "snr_mean": round(float(snr[keep].mean()), 4), "snr_min": round(float(snr[keep].min()), 4),
                "snr_max": round(float(snr[keep].max()), 4), "noise_var": real_noise_var,
                "n_simulated": int(n), "n_particles": int(keep.sum()), "n_removed_in_excluded_regions": int((~keep).sum()),
                "carbon_fraction": round(float(carbon.mean()), 3), "contamination_fraction": round(float(contam.mean()), 3),
                "placement_rel_error": placement_err,
            })
            print(f"{name} {split} {stem}: {keep.sum()} particles, SNR {snr[keep].mean():.3f} "
                  f"({snr[keep].min():.3f}-{snr[keep].max():.3f}), defocus {defocus / 1e4:.2f} µm, "
                  f"placement error {placement_err}", flush=True)
    meta["check"] = position_check(np.array(check_stack), np.array(check_rand), out / folder / "check.png", out / folder / "test" / "mic_00.mrc")
    meta["seconds"] = round(time.perf_counter() - t0, 1)
    (out / folder / "metadata.json").write_text(json.dumps(meta, indent=1))
    return meta


def position_check(stack: np.ndarray, rand: np.ndarray, png: Path, example: Path) -> dict:
    """Average clean image around the true centres: it must be a particle centred on the box, unlike random spots."""
    avg = stack.mean(0)
    n = avg.shape[0]
    yy, xx = np.mgrid[0:n, 0:n] - n / 2
    inner = (yy**2 + xx**2) < (n / 4) ** 2
    # Projected density is dark after the CTF at low frequency: weight by the low-passed negative signal.
    w = np.clip(-ndimage.gaussian_filter(avg, 2.0), 0, None)
    cy, cx = (w * yy).sum() / w.sum(), (w * xx).sum() / w.sum()
    energy_truth = float((stack[:, inner] ** 2).mean())
    energy_rand = float((rand[:, inner] ** 2).mean())
    result = {"n_boxes": int(len(stack)), "centroid_offset_px": [round(float(cy), 2), round(float(cx), 2)],
              "inner_energy_truth_over_random": round(energy_truth / max(energy_rand, 1e-30), 2)}
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        with mrcfile.open(example) as m:
            mic = np.asarray(m.data, dtype=float)
        rc = np.loadtxt(example.with_suffix(".star"), skiprows=8).reshape(-1, 2)
        fig, ax = plt.subplots(1, 3, figsize=(15, 5))
        ax[0].imshow(avg, cmap="gray")
        ax[0].set_title(f"mean clean box at truth (n={len(stack)})")
        ax[1].imshow(rand.mean(0), cmap="gray", vmin=avg.min(), vmax=avg.max())
        ax[1].set_title("mean clean box at random spots")
        ax[2].imshow(ndimage.gaussian_filter(mic, 3), cmap="gray")
        ax[2].scatter(rc[:, 0], rc[:, 1], s=8, facecolors="none", edgecolors="r")
        ax[2].set_title(f"{example.parent.name}/{example.name} (low-passed) + truth")
        fig.savefig(png, dpi=80)
        plt.close(fig)
    except Exception as exc:  # the numbers above are the check; the figure is a convenience
        result["plot_error"] = repr(exc)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="/work/evaldata/models", help="folder with the reserved PDB files")
    parser.add_argument("--out", default="/work/evaldata/aspire")
    parser.add_argument("--conditions", nargs="+", default=list(CONDITIONS), choices=list(CONDITIONS))
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--n", type=int, default=N_PER_SET, help="micrographs per split (train, test)")
    parser.add_argument("--snr", type=float, nargs=2, default=(0.05, 0.1), metavar=("LOW", "HIGH"),
                        help="range of each micrograph's mean per-particle SNR (default 0.05 0.1)")
    parser.add_argument("--splits", nargs="+", default=["train", "test"], choices=["train", "test"])
    parser.add_argument("--suffix", default="", help="appended to the condition's folder name (e.g. _snr0.02)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in args.conditions:
        # The seed follows the condition, not its place on the command line, so one condition alone is the same.
        meta = simulate_condition(name, CONDITIONS[name], Path(args.models), out, args.seed + list(CONDITIONS).index(name), args.n,
                                  tuple(args.snr), name + args.suffix, tuple(args.splits))
        snrs = [m["snr_mean"] for m in meta["micrographs"]]
        print(f"{name}: {meta['model']} diameter {meta['diameter_A']} Å, {meta['n_atoms']} atoms, box {meta['particle_box_px']} px; "
              f"{sum(m['n_particles'] for m in meta['micrographs'])} particles in {len(snrs)} micrographs, "
              f"mean SNR {min(snrs):.3f}-{max(snrs):.3f}; check {meta['check']}; {meta['seconds']} s", flush=True)


if __name__ == "__main__":
    main()
