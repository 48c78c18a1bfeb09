"""ParticleData: streaming, preprocessed particle images and CTF parameters for reconstruction."""

from __future__ import annotations

import gzip
import shutil
import warnings
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile

from napari_cryo.errors import CryoInputError
from napari_cryo.io.star import particle_table
from napari_cryo.reconstruction.data import (
    CTF_COLUMNS,
    ParticleData,
    fourier_crop,
    normalise_background,
    phase_flip,
    soft_circular_mask,
)
from napari_cryo.synthetic.particles import simulate_particles, write_particle_dataset

NO_MASK = 2.0  # a mask radius (fraction of the half box) past the corners: the mask is 1 everywhere


def write_stack(path: Path, data: np.ndarray, pixel_size: float = 2.0) -> Path:
    """Write an image stack with mrcfile (which, unlike write_mrc, keeps NaN values)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with mrcfile.new(path, data=data, overwrite=True) as mrc:
            mrc.set_image_stack()
            mrc.voxel_size = pixel_size
    return path


def write_star(path: Path, particles: dict, pixel_size: float | None = 2.0, ctf: bool = True) -> Path:
    """A RELION 3.1 particle file; ``particles`` holds at least rlnImageName."""
    table = pd.DataFrame(particles)
    n = len(table)
    optics = {"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["opticsGroup1"], "rlnImageDimensionality": [2]}
    if pixel_size is not None:
        optics["rlnImagePixelSize"] = [pixel_size]
    if ctf:
        rng = np.random.default_rng(n)
        table["rlnDefocusU"] = rng.uniform(10000, 20000, n).round(1)
        table["rlnDefocusV"] = (table["rlnDefocusU"] - 300).round(1)
        table["rlnDefocusAngle"] = rng.uniform(-180, 180, n).round(2)
        optics |= {"rlnVoltage": [300.0], "rlnSphericalAberration": [2.7], "rlnAmplitudeContrast": [0.1]}
    table["rlnOpticsGroup"] = 1
    starfile.write({"optics": pd.DataFrame(optics), "particles": table}, path)
    return path


def names(indices, stack: str) -> list[str]:
    return [f"{i + 1:06d}@{stack}" for i in indices]


@pytest.fixture(scope="module")
def simulated(tmp_path_factory) -> tuple[Path, pd.DataFrame, np.ndarray]:
    sim = simulate_particles(n=12, box=32, pixel_size=3.0, snr=1.0, seed=3)
    star = write_particle_dataset(tmp_path_factory.mktemp("sim"), sim)
    return star, sim.table, sim.images


# -- geometry, CTF, pixel size -----------------------------------------------


def test_simulated_dataset(simulated):
    star, table, _ = simulated
    data = ParticleData(star, box=16)
    assert len(data) == data.n == 12
    assert (data.original_box, data.box) == (32, 16)
    assert data.original_pixel_size == pytest.approx(3.0)
    assert data.pixel_size == data.original_pixel_size * 2  # scales exactly with the crop
    assert data.has_ctf and data.warnings == []
    np.testing.assert_allclose(data.ctf["defocus_u"], table["rlnDefocusU"], rtol=1e-6)
    np.testing.assert_allclose(data.ctf["defocus_angle"], table["rlnDefocusAngle"], rtol=1e-6, atol=1e-4)
    np.testing.assert_array_equal(data.ctf["voltage"], 300.0)
    np.testing.assert_array_equal(data.ctf["bfactor"], 0.0)  # absent column: default 0
    assert set(data.ctf) == set(CTF_COLUMNS) and all(v.dtype == np.float32 and v.shape == (12,) for v in data.ctf.values())
    assert list(data.image_names) == list(table["rlnImageName"])
    np.testing.assert_array_equal(data.optics_group, 1)
    images = data.images([5, 0, 11])
    assert images.shape == (3, 16, 16) and images.dtype == np.float32


def test_relion31_real_file(relion31_dataset):
    data = ParticleData(relion31_dataset, box=64)
    df = particle_table(relion31_dataset).table
    assert (len(data), data.original_box, data.box) == (5, 256, 64)
    assert data.original_pixel_size == pytest.approx(2.806)
    assert data.pixel_size == pytest.approx(2.806 * 4, rel=1e-12)
    for key in ("defocus_u", "defocus_v", "defocus_angle", "phase_shift", "bfactor"):
        np.testing.assert_allclose(data.ctf[key], df[CTF_COLUMNS[key]], rtol=1e-6)
    np.testing.assert_allclose(data.ctf["cs"], 0.01, rtol=1e-6)  # from the optics block
    np.testing.assert_allclose(data.ctf["amplitude_contrast"], 0.1, rtol=1e-6)
    images = data.images(range(5))
    assert images.shape == (5, 64, 64) and np.isfinite(images).all()


def test_relion30_real_file(testdata):
    """RELION 3.0 layout: CTF and pixel size (magnification, detector pixel) on each row."""
    data = ParticleData(testdata / "particles" / "empiar_10076_7.star")
    assert (len(data), data.box) == (7, 320)
    assert data.original_pixel_size == pytest.approx(5 * 1e4 / 38168)
    np.testing.assert_allclose(data.ctf["defocus_v"][[0, 6]], [14916.4, 14792.7], rtol=1e-6)
    np.testing.assert_allclose(data.ctf["amplitude_contrast"], 0.07, rtol=1e-6)
    assert data.images([6]).shape == (1, 320, 320)


def test_several_optics_groups(tmp_path, testdata):
    """The real six-group file (its stacks are not shipped): two particles per group, one stack written here."""
    src = testdata / "star" / "relion31.6opticsgroups.star"
    full = particle_table(src)
    keep = np.concatenate([np.flatnonzero(full.table["rlnOpticsGroup"] == g)[:2] for g in range(1, 7)])
    lines = src.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "data_particles")
    rows = [i for i in range(start, len(lines)) if "@" in lines[i]]
    out = lines[:start] + [line for line in lines[start:] if "@" not in line]
    for k, row in enumerate(keep):
        out.append(" ".join(f"{k + 1}@groups.mrcs" if "@" in tok else tok for tok in lines[rows[row]].split()))
    star = tmp_path / "groups.star"
    star.write_text("\n".join(out) + "\n")
    write_stack(tmp_path / "groups.mrcs", np.random.default_rng(0).normal(size=(len(keep), 196, 196)).astype(np.float32), 1.25)

    data = ParticleData(star, box=64)
    expected = full.table.iloc[keep]
    groups = expected["rlnOpticsGroup"].astype(int).to_numpy()
    np.testing.assert_array_equal(data.optics_group, groups)
    np.testing.assert_allclose(data.ctf["defocus_u"], expected["rlnDefocusU"], rtol=1e-6)
    optics = full.optics.set_index(full.optics["rlnOpticsGroup"].astype(int))
    np.testing.assert_allclose(data.ctf["cs"], optics.loc[groups, "rlnSphericalAberration"], rtol=1e-6)
    np.testing.assert_allclose(data.ctf["voltage"], 200.0)
    assert 2.6 in data.ctf["cs"] and 2.7 in data.ctf["cs"]
    assert any("pixel sizes from 1.24 to 1.25" in w for w in data.warnings)
    sub = ParticleData(star, rows=[11, 0])
    np.testing.assert_array_equal(sub.optics_group, groups[[11, 0]])
    assert list(sub.image_names) == ["12@groups.mrcs", "1@groups.mrcs"]


def test_missing_ctf_columns_warn(tmp_path):
    write_stack(tmp_path / "s.mrcs", np.zeros((3, 16, 16), np.float32))
    star = write_star(tmp_path / "p.star", {"rlnImageName": names(range(3), "s.mrcs")}, ctf=False)
    data = ParticleData(star)
    assert not data.has_ctf and data.ctf is None
    assert len(data.warnings) == 1
    assert "no CTF columns" in data.warnings[0] and "rlnDefocusU" in data.warnings[0]
    assert "without CTF correction" in data.warnings[0]
    assert data.batch([0, 1]).ctf is None
    with pytest.raises(CryoInputError, match="phase flipping needs the CTF"):
        ParticleData(star, phase_flip=True, ctf_fn=lambda p, b, px: np.ones((len(p), b, b // 2 + 1)))


# -- image processing ---------------------------------------------------------


def band_limited(size: int, scale: float = 1.0, seed: int = 0) -> np.ndarray:
    """A sum of cosines up to 6 cycles per box, sampled on a size x size grid spanning the same box."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:size, :size] / size
    image = np.full((size, size), 5.0)
    for _ in range(8):
        ky, kx = rng.integers(-6, 7, 2)
        image += rng.normal() * np.cos(2 * np.pi * (ky * y + kx * x) + rng.uniform(0, 2 * np.pi))
    return (scale * image).astype(np.float32)


@pytest.mark.parametrize("box", [32, 48])
def test_fourier_crop_band_limited(tmp_path, box):
    big = np.stack([band_limited(64, seed=s) for s in range(3)])
    small = np.stack([band_limited(box, seed=s) for s in range(3)])
    write_stack(tmp_path / "s.mrcs", big)
    star = write_star(tmp_path / "p.star", {"rlnImageName": names(range(3), "s.mrcs")})
    data = ParticleData(star, box=box, normalise=False, mask_radius=NO_MASK)
    out = data.images([2, 0, 1])
    np.testing.assert_allclose(out, small[[2, 0, 1]], atol=2e-4)
    np.testing.assert_allclose(out.mean(axis=(1, 2)), big[[2, 0, 1]].mean(axis=(1, 2)), rtol=1e-5)
    np.testing.assert_allclose(fourier_crop(big, 32), big[:, ::2, ::2], atol=2e-4)
    np.testing.assert_array_equal(fourier_crop(big, 64), big)


def test_normalisation_and_mask(tmp_path):
    rng = np.random.default_rng(1)
    raw = rng.normal(7.0, 3.0, (4, 32, 32)).astype(np.float32)
    raw[:, 12:20, 12:20] += 40.0  # a bright 'particle' that must not set the scale
    write_stack(tmp_path / "s.mrcs", raw)
    star = write_star(tmp_path / "p.star", {"rlnImageName": names(range(4), "s.mrcs")})
    radius = 0.9 * 16

    norm = normalise_background(raw, radius)
    y, x = np.ogrid[:32, :32]
    r = np.hypot(y - 16, x - 16)
    background = norm[:, r > radius]
    np.testing.assert_allclose(background.mean(axis=1), 0.0, atol=1e-5)
    np.testing.assert_allclose(background.std(axis=1), 1.0, atol=1e-5)

    data = ParticleData(star)  # default: normalised, mask radius 0.9 of the half box
    out = data.images(range(4))
    inside = r <= radius - 3
    np.testing.assert_allclose(out[:, inside], norm[:, inside], atol=1e-5)
    np.testing.assert_array_equal(out[:, r >= radius], 0.0)  # corners and all the background

    whole = ParticleData(star, mask_radius=NO_MASK).images(range(4))  # no background left: whole image
    np.testing.assert_allclose(whole.mean(axis=(1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(whole.std(axis=(1, 2)), 1.0, atol=1e-5)
    inverted = ParticleData(star, invert=True).images(range(4))
    np.testing.assert_allclose(inverted, -out, atol=1e-5)


def test_soft_mask():
    mask = soft_circular_mask(64, 0.9 * 32)
    assert mask.shape == (64, 64) and mask.dtype == np.float32
    assert mask[32, 32] == 1.0 and mask[32, 32 + 25] == 1.0
    assert 0.0 < mask[32, 32 + 27] < 1.0  # the cosine edge, 3 px inside the radius 28.8
    assert (mask[32, 32 + 29 :] == 0.0).all() and (mask[[0, 0, -1, -1], [0, -1, 0, -1]] == 0.0).all()
    assert (mask >= 0).all() and (mask <= 1).all()


def test_order_kept_across_stacks(tmp_path):
    """Three stacks (float32, int16, gzip-compressed) interleaved in the STAR; images come back in the order asked."""
    ids = {"a.mrcs": [0, 1, 2, 3], "b.mrcs": [10, 11, 12], "c.mrcs.gz": [20, 21, 22, 23, 24]}
    write_stack(tmp_path / "a.mrcs", np.stack([np.full((16, 16), v, np.float32) for v in ids["a.mrcs"]]))
    write_stack(tmp_path / "b.mrcs", np.stack([np.full((16, 16), v, np.int16) for v in ids["b.mrcs"]]))
    plain = write_stack(tmp_path / "c.mrcs", np.stack([np.full((16, 16), v, np.float32) for v in ids["c.mrcs.gz"]]))
    with open(plain, "rb") as src, gzip.open(tmp_path / "c.mrcs.gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    entries = [(stack, i, v) for stack, values in ids.items() for i, v in enumerate(values)]
    rng = np.random.default_rng(2)
    entries = [entries[k] for k in rng.permutation(len(entries))]
    star = write_star(tmp_path / "p.star", {"rlnImageName": [f"{i + 1}@{s}" for s, i, _ in entries]})
    value = np.array([v for _, _, v in entries], dtype=np.float32)

    data = ParticleData(star, normalise=False, mask_radius=NO_MASK)
    assert any("c.mrcs.gz is compressed" in w for w in data.warnings)
    ask = np.array([5, 0, 11, 3, 3, 7, 1, 10, 2, 9, 8, 4, 6])
    out = data.images(ask)
    np.testing.assert_array_equal(out[:, 8, 8], value[ask])
    np.testing.assert_array_equal(out.min(axis=(1, 2)), out.max(axis=(1, 2)))
    assert data.images([]).shape == (0, 16, 16)
    with pytest.raises(IndexError):
        data.images([len(data)])


def test_phase_flip_with_injected_ctf(tmp_path):
    rng = np.random.default_rng(4)
    raw = rng.normal(size=(5, 32, 32)).astype(np.float32)
    write_stack(tmp_path / "s.mrcs", raw)
    star = write_star(tmp_path / "p.star", {"rlnImageName": names(range(5), "s.mrcs")})
    calls = []

    def ctf_fn(params, box, pixel_size):
        calls.append((params, box, pixel_size))
        ky = np.fft.fftfreq(box, d=pixel_size)[:, None]
        kx = np.fft.rfftfreq(box, d=pixel_size)[None, :]
        return np.cos(2e-2 * params["defocus_u"][:, None, None] * (kx**2 + ky**2))

    for box in (32, 16):
        data = ParticleData(star, box=box, normalise=False, mask_radius=NO_MASK, phase_flip=True, ctf_fn=ctf_fn)
        ask = [3, 1, 4]
        out = data.images(ask)
        params, got_box, px = calls[-1]
        assert (got_box, px) == (box, data.pixel_size)
        np.testing.assert_array_equal(params["defocus_u"], data.ctf["defocus_u"][ask])
        ctf = ctf_fn(params, box, px)
        assert (ctf < 0).any() and (ctf > 0).any()
        expected = np.fft.rfft2(fourier_crop(raw[ask], box)) * np.sign(ctf)
        np.testing.assert_allclose(np.fft.rfft2(out), expected, atol=2e-3)
        np.testing.assert_allclose(phase_flip(fourier_crop(raw[ask], box), ctf), out, atol=1e-5)


# -- bad input ------------------------------------------------------------------


def test_nan_image_names_particle(tmp_path):
    stack = np.random.default_rng(0).normal(size=(20, 16, 16)).astype(np.float32)
    stack[17, 3, 4] = np.nan
    stack[19, 0, 0] = np.inf
    write_stack(tmp_path / "stack.mrcs", stack)
    star = write_star(tmp_path / "p.star", {"rlnImageName": names(range(20), "stack.mrcs")})
    data = ParticleData(star)  # nothing is read yet
    with pytest.raises(CryoInputError, match=r"particle 17 \(rlnImageName 000018@stack.mrcs\) holds NaN values") as err:
        data.images([2, 17])
    assert Path(err.value.path).name == "stack.mrcs"
    with pytest.raises(CryoInputError, match="particle 19 .* holds infinite values"):
        data.images([19])
    with pytest.raises(CryoInputError, match="holds (NaN|infinite) values"):
        list(data.batches(8))


def test_empty_star(tmp_path):
    empty_loop = tmp_path / "empty.star"
    empty_loop.write_text("data_particles\n\nloop_\n_rlnImageName #1\n_rlnDefocusU #2\n")
    no_rows = tmp_path / "coords.star"
    no_rows.write_text("data_particles\n\nloop_\n_rlnCoordinateX #1\n_rlnCoordinateY #2\n_rlnImageName #3\n")
    for star in (empty_loop, no_rows):
        with pytest.raises(CryoInputError, match="no rows|no particle rows|no data") as err:
            ParticleData(star)
        assert err.value.path == str(star)


def test_missing_stacks_listed(tmp_path):
    write_stack(tmp_path / "a.mrcs", np.zeros((2, 16, 16), np.float32))
    image_names = names([0], "a.mrcs") + names([0], "b.mrcs") + names([1], "c.mrcs") + names([0], "a.mrcs")
    star = write_star(tmp_path / "p.star", {"rlnImageName": image_names})
    with pytest.raises(CryoInputError, match=r"2 of 3 referenced stacks not found: 'b.mrcs', 'c.mrcs'") as err:
        ParticleData(star)
    assert err.value.path == str(star)


def test_inconsistent_and_bad_sizes(tmp_path):
    write_stack(tmp_path / "a.mrcs", np.zeros((2, 16, 16), np.float32))
    write_stack(tmp_path / "b.mrcs", np.zeros((2, 24, 24), np.float32))
    write_stack(tmp_path / "c.mrcs", np.zeros((2, 16, 24), np.float32))
    star = write_star(tmp_path / "p.star", {"rlnImageName": names([0, 1], "a.mrcs") + names([0], "b.mrcs")})
    with pytest.raises(CryoInputError, match=r"different sizes: 16x16 \(a.mrcs\), 24x24 \(b.mrcs\)") as err:
        ParticleData(star)
    assert err.value.path == str(star)
    star = write_star(tmp_path / "q.star", {"rlnImageName": names([0], "c.mrcs")})
    with pytest.raises(CryoInputError, match="not square") as err:
        ParticleData(star)
    assert Path(err.value.path).name == "c.mrcs"
    star = write_star(tmp_path / "r.star", {"rlnImageName": names([0, 2], "a.mrcs")})
    with pytest.raises(CryoInputError, match="asks for image 3, a.mrcs has 2"):
        ParticleData(star)


def test_bad_box_rows_and_columns(tmp_path):
    write_stack(tmp_path / "a.mrcs", np.zeros((3, 16, 16), np.float32))
    star = write_star(tmp_path / "p.star", {"rlnImageName": names(range(3), "a.mrcs")})
    for box in (15, 18, 2):
        with pytest.raises(CryoInputError, match=f"box {box} must be an even number") as err:
            ParticleData(star, box=box)
        assert err.value.path == str(star)
    with pytest.raises(CryoInputError, match="row 3 out of range: the file has 3 particles"):
        ParticleData(star, rows=[0, 3])
    with pytest.raises(CryoInputError, match="row -1 out of range"):
        ParticleData(star, rows=[-1])
    with pytest.raises(CryoInputError, match="mask radius"):
        ParticleData(star, mask_radius=0)
    coords = tmp_path / "coords.star"
    starfile.write({"particles": pd.DataFrame({"rlnCoordinateX": [1.0], "rlnCoordinateY": [2.0]})}, coords)
    with pytest.raises(CryoInputError, match="no rlnImageName"):
        ParticleData(coords)


# -- batches, half sets, memory -------------------------------------------------


def test_batches_deterministic(simulated):
    star, _, _ = simulated
    data = ParticleData(star, box=16)
    first = [b.indices for b in data.batches(5, seed=1, epoch=0)]
    assert [len(i) for i in first] == [5, 5, 2]
    assert sorted(np.concatenate(first)) == list(range(12))
    again = [b.indices for b in data.batches(5, seed=1, epoch=0)]
    assert all((a == b).all() for a, b in zip(first, again))
    other = np.concatenate([b.indices for b in data.batches(5, seed=1, epoch=1)])
    assert not (other == np.concatenate(first)).all()
    assert (np.concatenate([b.indices for b in data.batches(5, shuffle=False)]) == np.arange(12)).all()
    batch = next(data.batches(4, seed=2))
    assert batch.indices.dtype == np.int64 and tuple(batch.images.shape) == (4, 16, 16)
    assert str(batch.images.dtype) == "torch.float32"
    np.testing.assert_array_equal(batch.images.numpy(), data.images(batch.indices))
    np.testing.assert_array_equal(batch.ctf["defocus_u"].numpy(), data.ctf["defocus_u"][batch.indices])


def test_half_sets(simulated):
    star, _, _ = simulated
    data = ParticleData(star, rows=range(11))
    a, b = data.half_sets(seed=0)
    assert (len(a), len(b)) == (6, 5)
    assert not set(a) & set(b) and sorted(set(a) | set(b)) == list(range(11))
    a2, b2 = data.half_sets(seed=0)
    assert (a == a2).all() and (b == b2).all()
    assert any(not np.array_equal(a, data.half_sets(seed=s)[0]) for s in range(1, 5))


def test_object_holds_no_images(simulated):
    """Only small per-particle arrays: a few tens of bytes per particle, no image data."""
    star, _, images = simulated
    data = ParticleData(star)
    arrays = [v for v in vars(data).values() if isinstance(v, np.ndarray)]
    arrays += list(data.ctf.values())
    per_particle = sum(a.nbytes for a in arrays if a.shape[:1] == (len(data),)) / len(data)
    assert per_particle < 100
    assert sum(a.nbytes for a in arrays) < images.nbytes / 2
