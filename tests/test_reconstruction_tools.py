"""The command-line tools around reconstruction: simulate particles, fsc, compare-poses."""

from __future__ import annotations

import json
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import starfile
from scipy import ndimage

from napari_cryo.cli import main
from napari_cryo.geometry import euler_to_matrix, matrix_to_euler
from napari_cryo.io.mrc import read_mrc


TORCH_THREADS = 1


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def hand_map(testdata) -> Path:
    path = testdata / "particles" / "hand-vol.mrc"
    data, info = read_mrc(path)
    assert data.shape == (64, 64, 64) and info.pixel_size == pytest.approx(1.0)
    return path


@pytest.fixture(scope="module")
def dataset(hand_map, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sim") / "set"
    code = main(["simulate", "particles", str(hand_map), "--n", "200", "--box", "32", "--snr", "0.5",
                 "--shift-sigma", "3", "--out", str(out), "--device", "cpu", "--seed", "3"])
    assert code == 0
    return out


def project(volume: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Real-space ∫ V(Aᵀ·(x, y, z)) dz by trilinear sampling (independent of the Fourier code)."""
    box = volume.shape[0]
    c = box // 2
    z, y, x = np.meshgrid(*[np.arange(box) - c] * 3, indexing="ij")
    xyz = np.stack([x, y, z], axis=-1) @ matrix  # rows: (Aᵀ r)ᵀ = rᵀ A
    coords = np.stack([xyz[..., 2], xyz[..., 1], xyz[..., 0]]) + c
    return ndimage.map_coordinates(volume, coords, order=1, mode="constant").sum(axis=0)


def test_simulate_writes_relion_files(dataset):
    names = sorted(p.name for p in dataset.iterdir())
    assert names == ["ground_truth.star", "ground_truth_map.mrc", "particles.mrcs", "particles.star"]
    with mrcfile.open(dataset / "particles.mrcs", permissive=True) as mrc:
        images = np.array(mrc.data)
        assert images.shape == (200, 32, 32)
        assert float(mrc.voxel_size.x) == pytest.approx(2.0)  # 1 Å · 64 / 32
        assert int(mrc.header.ispg) == 0
        assert float(mrc.header.dmean) == pytest.approx(images.mean(), abs=1e-4)
        assert float(mrc.header.rms) == pytest.approx(images.std(), rel=1e-3)
        assert float(mrc.header.dmax) == pytest.approx(images.max())
    particles = starfile.read(dataset / "particles.star", always_dict=True)
    truth = starfile.read(dataset / "ground_truth.star", always_dict=True)
    assert particles["optics"]["rlnImagePixelSize"][0] == pytest.approx(2.0)
    assert particles["optics"]["rlnImageSize"][0] == 32
    rows = particles["particles"]
    assert rows["rlnImageName"][0] == "000001@particles.mrcs" and len(rows) == 200
    assert not {"rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst"} & set(rows.columns)
    assert {"rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle"} <= set(rows.columns)
    gt = truth["particles"]
    assert list(gt["rlnImageName"]) == list(rows["rlnImageName"])
    assert {"rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst"} <= set(gt.columns)
    assert 2.0 < gt["rlnOriginXAngst"].std() < 4.0
    # Uniform rotations: cos(tilt) is uniform on [-1, 1].
    assert abs(np.cos(np.deg2rad(gt["rlnAngleTilt"])).mean()) < 0.15
    gt_map, info = read_mrc(dataset / "ground_truth_map.mrc")
    assert gt_map.shape == (32, 32, 32) and info.pixel_size == pytest.approx(2.0)


def test_simulated_images_follow_the_star_poses_and_origins(hand_map, tmp_path, capsys):
    out = tmp_path / "clean"
    code, stdout, _ = run(capsys, "simulate", "particles", hand_map, "--n", "4", "--box", "32", "--snr", "inf", "--no-ctf",
                          "--shift-sigma", "4", "--out", out, "--device", "cpu")
    assert code == 0 and "wrote 4 particles" in stdout
    volume = np.array(read_mrc(out / "ground_truth_map.mrc")[0], dtype=np.float64)
    images = np.array(read_mrc(out / "particles.mrcs")[0])
    gt = starfile.read(out / "ground_truth.star", always_dict=True)["particles"]
    angles = gt[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy()
    origins = gt[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy() / 2.0
    assert np.abs(origins).max() > 1.0
    for image, a, (ox, oy) in zip(images, euler_to_matrix(angles), origins):
        # RELION origins: the experimental image is the projection moved by minus the origin.
        expected = ndimage.shift(project(volume, a), (-oy, -ox), order=3, mode="constant")
        assert np.corrcoef(image.ravel(), expected.ravel())[0, 1] > 0.98


def test_simulated_noise_has_the_stated_snr(hand_map, tmp_path):
    # 0.5 µm defocus: the first CTF lobe spans most of this small box's frequencies.
    common = ["simulate", "particles", str(hand_map), "--n", "50", "--box", "32", "--device", "cpu", "--seed", "9", "--defocus-median", "5000"]
    assert main([*common, "--snr", "inf", "--out", str(tmp_path / "clean")]) == 0
    assert main([*common, "--snr", "0.25", "--out", str(tmp_path / "noisy")]) == 0
    clean = np.array(read_mrc(tmp_path / "clean" / "particles.mrcs")[0], dtype=np.float64)
    noisy = np.array(read_mrc(tmp_path / "noisy" / "particles.mrcs")[0], dtype=np.float64)
    ratio = clean.var(axis=(1, 2)) / (noisy - clean).var(axis=(1, 2))
    assert np.median(ratio) == pytest.approx(0.25, rel=0.1)
    # RELION's CTF is positive at low frequency: CTF-modulated projections still correlate
    # positively with the plain projections (same seed, same poses).
    assert main([*common, "--snr", "inf", "--no-ctf", "--out", str(tmp_path / "plain")]) == 0
    plain = np.array(read_mrc(tmp_path / "plain" / "particles.mrcs")[0], dtype=np.float64)
    corr = [np.corrcoef(a.ravel(), b.ravel())[0, 1] for a, b in zip(clean, plain)]
    assert np.median(corr) > 0.5 and min(corr) > 0


def test_simulate_bad_input(testdata, hand_map, tmp_path, capsys):
    code, _, err = run(capsys, "simulate", "particles", testdata / "particles" / "spike-vol.mrc", "--n", "3", "--out", tmp_path / "a")
    assert code == 2 and "spike-vol.mrc: is not a cubic 3D map" in err and err.count("\n") == 1
    code, _, err = run(capsys, "simulate", "particles", hand_map, "--n", "3", "--box", "31", "--out", tmp_path / "b")
    assert code == 2 and "--box must be an even number" in err
    code, _, err = run(capsys, "simulate", "particles", tmp_path / "missing.mrc", "--n", "3", "--out", tmp_path / "c")
    assert code == 2 and "missing.mrc" in err
    assert run(capsys, "simulate", "particles", hand_map, "--n", "2", "--box", "16", "--out", tmp_path / "d")[0] == 0
    code, _, err = run(capsys, "simulate", "particles", hand_map, "--n", "2", "--box", "16", "--out", tmp_path / "d")
    assert code == 2 and "already exists (use --overwrite" in err
    assert run(capsys, "simulate", "particles", hand_map, "--n", "2", "--box", "16", "--out", tmp_path / "d", "--overwrite")[0] == 0


def test_fsc_cli(dataset, hand_map, tmp_path, capsys):
    gt_map = dataset / "ground_truth_map.mrc"
    code, out, _ = run(capsys, "fsc", gt_map, gt_map)
    assert code == 0 and "FSC 0.5" in out and "FSC 0.143" in out and "4.00 Å (2.00 px)" in out
    code, out, _ = run(capsys, "fsc", gt_map, gt_map, "--json", "--plot", tmp_path / "fsc.png")
    summary = json.loads(out)
    assert code == 0 and summary["resolution_0.143_A"] == pytest.approx(4.0) and summary["box"] == 32
    assert (tmp_path / "fsc.png").stat().st_size > 1000
    code, _, err = run(capsys, "fsc", gt_map, hand_map)
    assert code == 2 and "hand-vol.mrc: box 64x64x64 differs from ground_truth_map.mrc's 32x32x32" in err
    code, _, err = run(capsys, "fsc", gt_map, gt_map, "--mask", hand_map)
    assert code == 2 and "hand-vol.mrc" in err and "differs" in err


def test_fsc_cli_superposes_a_rotated_mirrored_map(dataset, tmp_path, capsys):
    gt_map = dataset / "ground_truth_map.mrc"
    volume = np.array(read_mrc(gt_map)[0], dtype=np.float64)
    # Mirror through the XY plane about the centre (z -> -z), then turn 40° about Z.
    mirrored = np.roll(volume[::-1], 1, axis=0)
    turned = ndimage.rotate(mirrored, 40.0, axes=(2, 1), reshape=False, order=3)
    from napari_cryo.io.mrc import write_mrc

    write_mrc(tmp_path / "moved.mrc", turned.astype(np.float32), 2.0)
    code, out, _ = run(capsys, "fsc", gt_map, tmp_path / "moved.mrc", "--json")
    plain = json.loads(out)["resolution_0.5_A"]
    code, out, _ = run(capsys, "fsc", gt_map, tmp_path / "moved.mrc", "--align", "--json")
    summary = json.loads(out)
    assert code == 0 and summary["alignment"]["mirrored"] is True
    assert summary["alignment"]["angle_deg"] == pytest.approx(40.0, abs=3.0)
    assert summary["resolution_0.5_A"] < 0.5 * plain
    code, out, _ = run(capsys, "fsc", gt_map, tmp_path / "moved.mrc", "--align")
    assert code == 0 and "mirrored (other hand)" in out


def _write_estimate(dataset: Path, path: Path, g: np.ndarray, t_angst: np.ndarray, rename: bool = False) -> None:
    blocks = starfile.read(dataset / "ground_truth.star", always_dict=True)
    rows = blocks["particles"].copy()
    a = euler_to_matrix(rows[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy())
    est = a @ g
    rows[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]] = matrix_to_euler(est)
    shift = est[:, :2, :] @ t_angst
    rows["rlnOriginXAngst"] = rows["rlnOriginXAngst"] + shift[:, 0]
    rows["rlnOriginYAngst"] = rows["rlnOriginYAngst"] + shift[:, 1]
    if rename:
        rows["rlnImageName"] = [n.replace("particles.mrcs", "other.mrcs") for n in rows["rlnImageName"]]
    else:
        # A different directory for the same stack still matches.
        rows["rlnImageName"] = [n.replace("@", "@Extract/job012/") for n in rows["rlnImageName"]]
    starfile.write({"optics": blocks["optics"], "particles": rows.iloc[::-1]}, path)


def test_compare_poses_cli(dataset, tmp_path, capsys):
    gt = dataset / "ground_truth.star"
    code, out, _ = run(capsys, "compare-poses", gt, gt)
    assert code == 0 and "200 matched" in out and "median 0.00°" in out
    from scipy.spatial.transform import Rotation

    g = Rotation.random(random_state=2).as_matrix()
    t = np.array([3.0, -1.5, 2.0])
    _write_estimate(dataset, tmp_path / "est.star", g, t)
    code, out, _ = run(capsys, "compare-poses", tmp_path / "est.star", gt, "--json")
    summary = json.loads(out)
    assert code == 0 and summary["matched"] == 200
    assert summary["rotation"]["median_error_deg"] < 0.05 and summary["rotation"]["mirrored"] is False
    assert summary["shift"]["median_error_A"] < 0.01
    np.testing.assert_allclose(summary["shift"]["map_translation_A"], t, atol=0.01)
    code, out, _ = run(capsys, "compare-poses", tmp_path / "est.star", gt, "--no-align", "--json")
    assert json.loads(out)["rotation"]["median_error_deg"] > 10.0
    code, out, _ = run(capsys, "compare-poses", tmp_path / "est.star", gt)
    assert code == 0 and "hand              same" in out and "shift error" in out


def test_compare_poses_bad_input(dataset, tmp_path, capsys):
    gt = dataset / "ground_truth.star"
    code, _, err = run(capsys, "compare-poses", dataset / "particles.star", gt)
    assert code == 2 and "particles.star: has no particle angles" in err
    _write_estimate(dataset, tmp_path / "other.star", np.eye(3), np.zeros(3), rename=True)
    code, _, err = run(capsys, "compare-poses", tmp_path / "other.star", gt)
    assert code == 2 and "other.star: has no image in common with ground_truth.star" in err
    code, _, err = run(capsys, "compare-poses", tmp_path / "missing.star", gt)
    assert code == 2 and "missing.star" in err
