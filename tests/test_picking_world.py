"""The generic picker's training world: real atomic models, coloured noise, dense fields, exports."""

from __future__ import annotations

import dataclasses
import gzip

import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

from napari_cryo.errors import CryoInputError
from napari_cryo.picking.model import DEFAULT_HIGHPASS, LocalBackground, PickerModel
from napari_cryo.synthetic.atomic_models import (
    extent,
    helical_filament,
    parse_pdb_calpha,
    random_assembly,
    read_pdb_calpha,
    scaled_to,
    symmetric_assembly,
)
from napari_cryo.synthetic.micrograph import GOLD, NoiseSpectrum, place_particles, simulate_micrograph
from napari_cryo.synthetic.picking_world import export_like, random_conditions, simulate_conditions


def _pdb_line(serial: int, name: str, res: int, xyz: tuple[float, float, float], altloc: str = " ") -> str:
    return f"ATOM  {serial:5d} {name:<4}{altloc}ALA A{res:4d}    {xyz[0]:8.3f}{xyz[1]:8.3f}{xyz[2]:8.3f}  1.00  0.00           C"


def _helix(n: int = 80) -> np.ndarray:
    t = np.arange(n)
    return np.stack([2.3 * np.cos(t * 1.745), 2.3 * np.sin(t * 1.745), 1.5 * t], 1)


def _pdb_text(xyz: np.ndarray) -> str:
    lines = []
    for i, p in enumerate(xyz):
        lines.append(_pdb_line(3 * i + 1, "N", i + 1, tuple(p + 1.0)))
        lines.append(_pdb_line(3 * i + 2, "CA", i + 1, tuple(p)))
        lines.append(_pdb_line(3 * i + 3, "CA", i + 1, tuple(p + 5.0), altloc="B"))  # second conformer: skipped
    return "\n".join(["HEADER    TEST", *lines, "ENDMDL", _pdb_line(9999, "CA", 1, (99.0, 99.0, 99.0)), "END"])


def test_pdb_reader_takes_first_model_calphas_only(tmp_path):
    xyz = _helix(70)
    got = parse_pdb_calpha(_pdb_text(xyz))
    np.testing.assert_allclose(got, xyz, atol=1e-3)
    path = tmp_path / "helix.pdb.gz"
    path.write_bytes(gzip.compress(_pdb_text(xyz).encode()))
    np.testing.assert_allclose(read_pdb_calpha(path), xyz, atol=1e-3)


def test_pdb_reader_names_a_file_without_protein(tmp_path):
    path = tmp_path / "water.pdb"
    path.write_text("HETATM    1  O   HOH A   1       0.000   0.000   0.000\nEND\n")
    with pytest.raises(CryoInputError, match="water.pdb.*C-alpha"):
        read_pdb_calpha(path)
    broken = tmp_path / "broken.pdb.gz"
    broken.write_bytes(b"not gzip")
    with pytest.raises(CryoInputError, match="broken.pdb.gz"):
        read_pdb_calpha(broken)


@pytest.mark.parametrize("group, order", [("C5", 5), ("D3", 6), ("T", 12), ("O", 24), ("I", 60)])
def test_symmetric_assemblies_are_symmetric(group, order):
    rng = np.random.default_rng(0)
    mono = _helix(60)
    atoms = symmetric_assembly(mono, group, 20.0, rng)
    assert atoms.shape == (60 * order, 3)
    np.testing.assert_allclose(atoms.mean(0), 0, atol=1e-9)
    # Every symmetry operation maps the assembly onto itself.
    tree = cKDTree(atoms)
    for rot in Rotation.create_group(group):
        d, _ = tree.query(rot.apply(atoms))
        assert d.max() < 1e-6


def test_filaments_and_random_assemblies_have_the_requested_scale():
    rng = np.random.default_rng(1)
    fil = helical_filament(_helix(40), 10, 20.0, 60.0, 10.0, rng)
    assert fil.shape == (400, 3)
    assert np.ptp(fil[:, 2]) > 9 * 20.0 - 60  # ten units rising 20 Å each
    kinds = set()
    for _ in range(80):
        atoms, kind = random_assembly([_helix(60), _helix(90)], rng)
        kinds.add(kind.split(" ")[-1])
        assert abs(extent(scaled_to(atoms, 250.0)) - 250.0) < 1e-6
    assert {"ring", "cage", "filament", "complex", "monomer"} <= kinds


def _radial_power(image: np.ndarray) -> tuple[float, float]:
    f = np.abs(np.fft.fft2(image)) ** 2
    k = np.hypot(*np.meshgrid(np.fft.fftfreq(image.shape[0]), np.fft.fftfreq(image.shape[1]), indexing="ij"))
    return float(f[(k > 0.005) & (k < 0.02)].mean()), float(f[k > 0.4].mean())


def test_noise_spectrum_shapes_low_and_high_frequencies():
    rng = np.random.default_rng(0)
    white_lo, white_hi = _radial_power(NoiseSpectrum().filter((256, 256), rng))
    pink_lo, _ = _radial_power(NoiseSpectrum(pink=1.0).filter((256, 256), rng))
    roll_lo, roll_hi = _radial_power(NoiseSpectrum(rolloff=0.8).filter((256, 256), rng))
    assert 0.7 < white_lo / white_hi < 1.4
    assert pink_lo > 5 * white_lo
    assert roll_hi / roll_lo < 0.5 * white_hi / white_lo  # power falls towards Nyquist


def test_per_particle_snr_is_what_was_asked_and_scales_with_pixel_size():
    kw = dict(shape=(384, 384), pixel_size=3.0, diameter=150.0, n_particles=30, carbon_fraction=0.0, n_contamination=0, seed=2)
    a = simulate_micrograph(particle_snr=0.1, **kw)
    assert a.particle_snr == pytest.approx(0.1)
    # Noise stated at 1 Å/px averages down 9x in 3 Å pixels: the image is much cleaner.
    b = simulate_micrograph(particle_snr=0.1, snr_pixel_size=1.0, **kw)
    assert b.snr == pytest.approx(9 * a.snr, rel=1e-6)
    assert b.particle_snr == pytest.approx(0.1)


def test_dense_fields_touch_and_keep_their_spacing():
    rng = np.random.default_rng(3)
    picks = place_particles(rng, (2000, 2000), 5000, 54.0, 30.0)
    d, _ = cKDTree(picks).query(picks, k=2)
    assert d[:, 1].min() >= 54.0
    coverage = len(picks) * np.pi * 54.0**2 / 4 / 2000**2
    assert coverage > 0.4  # random sequential placement reaches ~0.5 before jamming

    mic = simulate_micrograph(shape=(512, 512), pixel_size=4.0, diameter=120.0, n_particles=1000, spacing=0.9,
                              carbon_fraction=0.0, n_contamination=0, n_gold=3, seed=4)
    d, _ = cKDTree(mic.picks).query(mic.picks, k=2)
    assert d[:, 1].min() < 120.0 / 4.0  # closer than a diameter: touching
    assert (mic.junk_mask == GOLD).any()
    # Gold is far darker than anything else.
    assert mic.image[mic.junk_mask == GOLD].mean() < np.percentile(mic.image, 5)


def test_exports_quantise_invert_and_rescale():
    rng = np.random.default_rng(5)
    base = random_conditions(rng)
    image = rng.normal(size=(64, 64)).astype(np.float32)
    eight = export_like(image, base.__class__(**(base.as_dict() | {"eight_bit": True, "jpeg_quality": 0, "white_particles": False, "denoise_sigma": 0.0})), rng)
    assert eight.min() >= 0 and eight.max() <= 255 and np.all(eight == np.round(eight))
    assert np.corrcoef(eight.ravel(), image.ravel())[0, 1] > 0.9
    white = export_like(image, base.__class__(**(base.as_dict() | {"eight_bit": False, "jpeg_quality": 0, "white_particles": True, "denoise_sigma": 0.0})), rng)
    assert np.corrcoef(white.ravel(), image.ravel())[0, 1] < -0.99


def test_random_conditions_cover_the_ranges_the_issue_names():
    rng = np.random.default_rng(6)
    conds = [random_conditions(rng) for _ in range(400)]
    diam = np.array([c.diameter for c in conds])
    assert diam.min() < 100 and diam.max() > 330 and diam.min() >= 80 and diam.max() <= 400
    assert min(c.particle_snr for c in conds) < 0.03
    assert any(c.denoise_sigma > 0 for c in conds) and any(c.white_particles for c in conds)
    assert any(c.eight_bit for c in conds) and any(c.jpeg_quality for c in conds)
    assert max(c.coverage for c in conds) > 0.38 and any(c.spacing < 1 for c in conds)
    assert any(c.gold for c in conds) and any(c.carbon_hole and c.carbon for c in conds)


def test_simulate_conditions_returns_labelled_micrographs_from_real_chains():
    rng = np.random.default_rng(7)
    cond = dataclasses.replace(random_conditions(rng, working_side=(96, 128)), carbon=0.0, contamination=0, coverage=0.3)
    image, mic, shapes = simulate_conditions(cond, [_helix(80), _helix(120)], seed=1)
    assert image.shape == mic.image.shape == (cond.side, cond.side)
    assert len(mic.picks) >= 1 and len(shapes) == cond.n_shapes
    assert np.isfinite(image).all()


def test_local_background_removes_slow_gradients_but_keeps_particles():
    yy, xx = np.mgrid[0:256, 0:256].astype(np.float32)
    ramp = torch.from_numpy(0.05 * xx + 3.0 * np.sin(yy / 150.0))[None, None]
    spot = torch.zeros_like(ramp)
    spot[..., 120:140, 120:140] = 1.0
    out = LocalBackground(40.0)(ramp + spot)
    inner = (slice(None), slice(None), slice(40, -40), slice(40, -40))
    assert float(out[inner].std()) < 0.1 * float(ramp[inner].std())  # the slow part is (nearly) gone
    assert out[..., 125:135, 125:135].mean() > 0.7  # a particle-sized spot survives


def test_model_files_keep_the_highpass(tmp_path):
    model = PickerModel.new()
    assert model.highpass == DEFAULT_HIGHPASS
    path = model.save(tmp_path / "m.pt")
    assert PickerModel.load(path).highpass == DEFAULT_HIGHPASS
    # Files from before the high-pass existed load without one.
    payload = torch.load(path, weights_only=True)
    del payload["highpass"]
    torch.save(payload, tmp_path / "old.pt")
    assert PickerModel.load(tmp_path / "old.pt").highpass == 0.0
    payload["highpass"] = -1.0
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(CryoInputError, match="highpass"):
        PickerModel.load(tmp_path / "bad.pt")


def test_normalisation_ignores_units_offsets_and_8_bit_quantisation():
    from napari_cryo.picking.preprocess import normalise

    image = simulate_micrograph(shape=(256, 256), pixel_size=4.0, diameter=120.0, n_particles=20, seed=8).image
    ref = normalise(image)
    counts = normalise(image * 37.0 + 4000.0)  # electron counts on an offset
    np.testing.assert_allclose(counts, ref, atol=1e-3)
    eight = np.clip(np.round((image - image.mean()) / (8 * image.std()) * 255 + 127.5), 0, 255).astype(np.uint8)
    assert np.corrcoef(normalise(eight).ravel(), ref.ravel())[0, 1] > 0.97
    assert abs(float(np.median(normalise(eight)))) < 0.2 and 0.5 < float(normalise(eight).std()) < 2.0
