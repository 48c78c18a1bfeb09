"""Pose search, the stochastic first map and the ``search`` method of reconstruct."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import starfile
import torch

from napari_cryo.cli import main
from napari_cryo.geometry import euler_to_matrix
from napari_cryo.io.mrc import read_mrc
from napari_cryo.reconstruction.auto_decoding import global_round, global_round_due
from napari_cryo.reconstruction.encoder_run import EncoderRun, half_volumes_from_poses
from napari_cryo.reconstruction.phases import collapsed_views
from napari_cryo.reconstruction.poses import rotation_angles
from napari_cryo.reconstruction.search import (
    SearchSettings,
    global_search,
    local_offsets,
    rotation_grid,
    shift_grid,
)
from napari_cryo.tasks import drain
from napari_cryo.reconstruction.run import load_checkpoint

TORCH_THREADS = 2


@pytest.fixture(scope="module")
def dataset(testdata, tmp_path_factory) -> Path:
    """800 particles of 32 px (8 Å/px) from the real hand-vol map, SNR 1, origins of about 1 px."""
    out = tmp_path_factory.mktemp("search") / "set"
    code = main(["simulate", "particles", str(testdata / "particles" / "hand-vol.mrc"), "--pixel-size", "4",
                 "--n", "800", "--box", "32", "--snr", "1.0", "--shift-sigma", "8", "--out", str(out), "--device", "cpu",
                 "--seed", "3"])
    assert code == 0
    return out


def _truth(dataset: Path, pixel_size: float):
    gt = starfile.read(dataset / "ground_truth.star")["particles"]
    rot = euler_to_matrix(gt[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy()).astype(np.float32)
    shifts = (gt[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy() / pixel_size).astype(np.float32)
    return rot, shifts


def test_rotation_grid_covers_so3_at_its_spacing():
    grid = rotation_grid(20.0)
    step = math.radians(20.0)
    assert len(grid) == math.ceil(4 * math.pi / step**2) * math.ceil(2 * math.pi / step)
    np.testing.assert_allclose(np.einsum("nij,nkj->nik", grid, grid), np.broadcast_to(np.eye(3), grid.shape), atol=1e-5)
    probes = euler_to_matrix(np.random.default_rng(0).uniform([-180, 0, -180], [180, 180, 180], (200, 3)))
    nearest = [rotation_angles(np.broadcast_to(p, grid.shape), grid).min() for p in probes]
    assert max(nearest) < 20.0 and np.median(nearest) < 12.0


def test_shift_grid_and_local_offsets():
    xy = shift_grid(2.0, 1.0)
    assert [0.0, 0.0] in xy.tolist() and np.hypot(xy[:, 0], xy[:, 1]).max() <= 2.0 and len(xy) == 13
    assert shift_grid(0.0, 1.0).tolist() == [[0.0, 0.0]]
    off = local_offsets(4.0).numpy()
    angles = np.sort(rotation_angles(np.broadcast_to(np.eye(3), off.shape), off))
    assert len(off) == 27 and angles[0] == pytest.approx(0.0, abs=1e-3)
    np.testing.assert_allclose(np.unique(np.round(angles, 2)), [0.0, 4.0, round(4 * math.sqrt(2), 2), round(4 * math.sqrt(3), 2)], atol=0.02)


def test_global_search_finds_poses_and_origins_against_the_true_map(dataset):
    from napari_cryo.reconstruction.data import ParticleData

    data = ParticleData(dataset / "particles.star")
    truth, origins = _truth(dataset, data.pixel_size)
    ref, _ = read_mrc(dataset / "ground_truth_map.mrc")
    rows = np.arange(120)
    settings = SearchSettings(coarse_degrees=15, fine_degrees=2.0, max_shift=3.0, shift_step=1.0)
    (rot, shifts, err), items = drain(global_search(data, np.asarray(ref), 14, settings, rows=rows))
    assert items[-1].done == 120
    errors = rotation_angles(truth[rows], rot)
    assert np.median(errors) < 5.0, np.sort(errors)
    good = errors < 10
    assert np.median(np.linalg.norm(shifts[good] - origins[rows][good], axis=1)) < 0.6
    assert np.all((err > 0) & (err < 1))  # the unexplained fraction of the band's power
    # A pose held already is kept where it fits better than what a coarse search finds.
    coarse = SearchSettings(coarse_degrees=30, fine_degrees=8)
    (rot_a, _, err_a), _ = drain(global_search(data, np.asarray(ref), 14, coarse, rows=rows))
    (rot_b, _, err_b), _ = drain(global_search(data, np.asarray(ref), 14, coarse, rows=rows, previous=(truth, origins)))
    assert np.all(err_b <= err_a + 1e-6)
    assert np.median(rotation_angles(truth[rows], rot_b)) < np.median(rotation_angles(truth[rows], rot_a))


def test_local_search_refines_perturbed_poses(dataset):
    from napari_cryo.reconstruction.data import ParticleData
    from napari_cryo.reconstruction.search import _axis_angle

    data = ParticleData(dataset / "particles.star")
    truth, origins = _truth(dataset, data.pixel_size)
    ref, _ = read_mrc(dataset / "ground_truth_map.mrc")
    rows = np.arange(80)
    kick = _axis_angle(torch.as_tensor(np.random.default_rng(1).normal(size=(80, 3)), dtype=torch.float32)
                       / math.sqrt(3) * math.radians(15)).numpy()
    start = truth.copy()
    start[rows] = truth[rows] @ kick
    before = np.median(rotation_angles(truth[rows], start[rows]))
    settings = SearchSettings(coarse_degrees=0, local_degrees=8, fine_degrees=1.5, max_shift=3.0, shift_step=1.0)
    (rot, _, _), _ = drain(global_search(data, np.asarray(ref), 16, settings, rows=rows, previous=(start, origins)))
    after = np.median(rotation_angles(truth[rows], rot))
    assert after < 5.0 and after < 0.4 * before, (before, after)


def test_stochastic_first_map_resembles_the_particle(dataset):
    from napari_cryo.reconstruction.data import ParticleData
    from napari_cryo.reconstruction.fsc import align_maps, fsc
    from napari_cryo.reconstruction.physics import fourier_crop_volume
    from napari_cryo.reconstruction.stochastic import StochasticSettings, stochastic_map

    data = ParticleData(dataset / "particles.star").at_box(16)
    assert data.box == 16 and data.pixel_size == pytest.approx(16.0) and data.image_mask.shape == (16, 16)
    ref, _ = read_mrc(dataset / "ground_truth_map.mrc")
    ref16 = fourier_crop_volume(np.asarray(ref), 16).numpy()
    settings = StochasticSettings(box=16, batch_size=100, batches=40, radius_start=3, radius_end=6, memory_start=300, memory_end=800)
    (volume, rotations), items = drain(stochastic_map(data, settings, seed=0))
    assert volume.shape == (16, 16, 16) and np.all(np.isfinite(volume)) and items[-1].done == 40
    aligned = align_maps(ref16, volume, data.pixel_size)
    first = fsc(aligned.aligned, ref16, data.pixel_size)
    # Against a featureless start (a sphere of the particle's radial profile) the first map is far closer to the truth.
    z, y, x = np.mgrid[:16, :16, :16] - 8
    r = np.sqrt(x**2 + y**2 + z**2).round().astype(int)
    blob = (np.bincount(r.ravel(), ref16.ravel()) / np.bincount(r.ravel()))[r].astype(np.float32)
    sphere = fsc(align_maps(ref16, blob, data.pixel_size).aligned, ref16, data.pixel_size)
    assert first.resolution_px(0.5) < sphere.resolution_px(0.5)
    assert first.resolution_px(0.5) < 5.0, first.fsc


def test_search_method_end_to_end(dataset, tmp_path, capsys):
    from napari_cryo.reconstruction.backproject import reconstruct_halves
    from napari_cryo.reconstruction.data import ParticleData
    from napari_cryo.reconstruction.fsc import align_maps, fsc, uniform_rotations

    out = tmp_path / "search"
    code = main(["reconstruct", str(dataset / "particles.star"), "--out", str(out), "--method", "search",
                 "--max-minutes", "1.0", "--first-map-batches", "30", "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    for name in ("volume.mrc", "half1.mrc", "half2.mrc", "poses.star", "progress.csv", "fsc.png", "directions.png"):
        assert (out / name).exists(), name
    table = starfile.read(out / "poses.star")["particles"]
    assert len(table) == 800 and {"rlnAngleRot", "rlnOriginXAngst"} <= set(table.columns)
    rows = (out / "progress.csv").read_text().splitlines()
    assert rows[0] == "elapsed_s,phase,epoch,loss,pose_change_deg,map,resolution_A"
    phases = [r.split(",")[1] for r in rows[1:]]
    assert phases[0] == "first map" and "global search" in phases
    assert all(r.split(",")[5].startswith("intermediate_") for r in rows[1:])
    # The map is far closer to the truth than one back-projected at random poses.
    ref = np.asarray(read_mrc(dataset / "ground_truth_map.mrc")[0])
    volume = np.asarray(read_mrc(out / "volume.mrc")[0])
    data = ParticleData(dataset / "particles.star")
    random_map, _ = drain(reconstruct_halves(data, uniform_rotations(800).astype(np.float32), np.zeros((800, 2), np.float32)))
    found = fsc(align_maps(ref, volume, 8.0).aligned, ref, 8.0).resolution_px(0.5)
    chance = fsc(align_maps(ref, random_map.volume, 8.0).aligned, ref, 8.0).resolution_px(0.5)
    assert found < 4.0 and found < 0.25 * chance, (found, chance)


def test_search_method_pauses_and_resumes(dataset, tmp_path):
    from napari_cryo.reconstruction.data import ParticleData
    from napari_cryo.reconstruction.reconstruct import (
        CHECKPOINT,
        ReconstructionSettings,
        reconstruct,
    )

    data = ParticleData(dataset / "particles.star")
    settings = ReconstructionSettings(method="search", max_minutes=1.0, first_map_batches=20)
    seen = {"rounds": 0}

    def pause() -> bool:
        return seen["rounds"] >= 2

    def count(item):
        if isinstance(item, dict):
            seen["rounds"] += 1

    result, _ = drain(reconstruct(data, settings, tmp_path, pause=pause), count)
    assert result is None and (tmp_path / CHECKPOINT).exists()
    state = load_checkpoint(tmp_path / CHECKPOINT)
    assert state["phase"] in ("global search", "local search") and state["rotations"] is not None
    done = state["round"]
    result, items = drain(reconstruct(data, settings, tmp_path, resume=True))
    assert str(items[0].message).startswith("resumed")
    rounds = [i["epoch"] for i in items if isinstance(i, dict)]
    assert rounds and min(rounds) == done + 1 and result.rotations.shape == (800, 3, 3)


def test_global_round_of_auto_decoding_brings_back_particles_left_far_off(dataset):
    """cryoSPIN's global round: particles 90° off come back near the truth, each against its own half volume."""
    from scipy.spatial.transform import Rotation

    from napari_cryo.reconstruction import reconstruct as rec
    from napari_cryo.reconstruction.data import ParticleData
    from napari_cryo.reconstruction.models import rotation_from_6d, rotation_to_6d

    torch.set_num_threads(TORCH_THREADS)
    data = ParticleData(dataset / "particles.star")
    truth, origins = _truth(dataset, data.pixel_size)
    rng = np.random.default_rng(2)
    off = rng.random(len(data)) < 0.3
    axis = rng.normal(size=(len(data), 3))
    axis /= np.linalg.norm(axis, axis=1, keepdims=True)
    start = truth.copy()
    start[off] = (Rotation.from_rotvec(axis[off] * np.deg2rad(90)).as_matrix() @ truth[off]).astype(np.float32)
    # A band of 12.8 px at the switch (0.15 cycles/px, the default, leaves this 10-px particle too few frequencies).
    run = EncoderRun(data, rec.ReconstructionSettings(shared_radius=0.4), torch.device("cpu"))
    run.rot6d, run.shifts = rotation_to_6d(torch.as_tensor(start)), torch.as_tensor(origins)
    run.use_working_box()
    run.use_half_volumes(drain(half_volumes_from_poses(run, run.shared_band))[0], run.shared_band)
    old_halves = [h.clone() for h in run.halves]
    run.pose_adam.t += 3
    run.pose_adam.m += 1.0
    assert global_round_due(run, 0.5) and not global_round_due(run, 2.0)

    record, items = drain(global_round(run, "cpu"))
    errors = rotation_angles(truth, rotation_from_6d(run.rot6d).numpy())
    assert np.median(errors[off]) < 20.0, np.median(errors[off])  # from 90°
    assert np.median(errors[~off]) < 8.0, np.median(errors[~off])  # the 3.75° grid's last step, then pose steps refine
    assert record["phase"] == "global search" and record["band_px"] == pytest.approx(12.8) and 0.25 < record["moved_fraction"] < 0.8
    assert run.global_radii == [pytest.approx(12.8)] and not global_round_due(run, 0.5)  # the band must grow first
    moved = run.pose_adam.t == 0
    assert moved[torch.as_tensor(off)].float().mean() > 0.95 and torch.all(run.pose_adam.m[moved] == 0)
    assert torch.all(run.pose_adam.t[~moved] == 3)
    # The half volumes were solved again from the new poses, at the same band.
    assert run.half_band == pytest.approx(0.4) and not torch.allclose(run.halves[0], old_halves[0])
    assert any(getattr(i, "message", "") == "searching poses" for i in items)


def test_collapsed_views_are_caught_after_the_set_epochs_only(dataset):
    from scipy.spatial.transform import Rotation

    from napari_cryo.reconstruction import reconstruct as rec
    from napari_cryo.reconstruction.data import ParticleData
    from napari_cryo.reconstruction.models import rotation_to_6d

    data = ParticleData(dataset / "particles.star")
    run = EncoderRun(data, rec.ReconstructionSettings(collapse_scf=0.5, collapse_epochs=3), torch.device("cpu"))
    rng = np.random.default_rng(0)
    # Views within 10° of one direction, turned freely in plane: the encoder's collapse.
    tilt = Rotation.from_rotvec(rng.normal(scale=np.deg2rad(5), size=(len(data), 3)))
    spin = Rotation.from_euler("z", rng.uniform(0, 360, (len(data), 1)), degrees=True)
    run.rot6d = rotation_to_6d(torch.as_tensor((tilt * spin).as_matrix(), dtype=torch.float32))
    run.epoch = 2
    assert collapsed_views(run) is None  # too early
    run.epoch = 3
    coverage = collapsed_views(run)
    assert coverage is not None and coverage.scf < 0.5
    run.rot6d = rotation_to_6d(torch.as_tensor(Rotation.random(len(data), random_state=1).as_matrix(), dtype=torch.float32))
    assert collapsed_views(run) is None  # uniform views
    for other in (rec.ReconstructionSettings(method="cryoai", collapse_scf=0.5, collapse_epochs=3), rec.ReconstructionSettings(collapse_scf=0, collapse_epochs=3)):
        run.s = other
        run.rot6d = rotation_to_6d(torch.as_tensor((tilt * spin).as_matrix(), dtype=torch.float32))
        assert collapsed_views(run) is None


def test_cryospin_after_collapsed_views_starts_from_a_stochastic_first_map(dataset, tmp_path):
    """Forced (every SCF is below 1.5): the run switches after the first epoch and still finds the map."""
    from napari_cryo.reconstruction.data import ParticleData
    from napari_cryo.reconstruction.fsc import align_maps, fsc
    from napari_cryo.reconstruction.reconstruct import (
        MapUpdate,
        ReconstructionSettings,
        reconstruct,
    )

    # A 2-minute budget: on a slow CI machine the first map and its global search alone took 1 minute.
    torch.set_num_threads(TORCH_THREADS)
    data = ParticleData(dataset / "particles.star")
    settings = ReconstructionSettings(max_minutes=2.0, collapse_scf=1.5, collapse_epochs=1, first_map_batches=30, shared_radius=0.4)
    result, items = drain(reconstruct(data, settings, tmp_path, device="cpu"))
    phases = [r["phase"] for r in result.history]
    assert phases[:3] == ["amortized", "first map", "global search"] and phases[3] == "auto-decoding", phases
    assert result.history[2]["band_px"] == pytest.approx(6.0)  # 0.1875 cycles/px of 32 px
    assert any("views collapsed" in getattr(i, "message", "") for i in items)
    assert any(isinstance(i, MapUpdate) and i.label == "first map (stochastic search)" for i in items)
    rows = (tmp_path / "progress.csv").read_text().splitlines()
    assert [r.split(",")[1] for r in rows[1:4]] == ["amortized", "first map", "global search"]
    assert rows[2].split(",")[5].startswith("intermediate_")
    ref = np.asarray(read_mrc(dataset / "ground_truth_map.mrc")[0])
    found = fsc(align_maps(ref, result.volume, data.pixel_size).aligned, ref, data.pixel_size).resolution_px(0.5)
    assert found < 4.0, found  # the bound test_search_method_end_to_end holds the search method to


def test_origin_prior_is_a_gaussian_over_a_disc_of_two_sigma():
    from napari_cryo.reconstruction.stochastic import origin_prior

    origins, log_prior = origin_prior(1.0, 1.0)
    assert len(origins) == 13 and np.hypot(*origins.numpy().T).max() <= 2.0 + 1e-6
    centre = int(np.flatnonzero((origins == 0).all(dim=1).numpy())[0])
    assert log_prior[centre] == 0 and float(log_prior.min()) == pytest.approx(-2.0)
    origins, log_prior = origin_prior(0.0)
    assert origins.tolist() == [[0.0, 0.0]] and log_prior.tolist() == [0.0]


def test_soft_insert_puts_each_image_back_at_its_origin_and_rotation():
    from napari_cryo.reconstruction.physics import insert_slices, insert_weights, shift_images
    from napari_cryo.reconstruction.stochastic import origin_prior, soft_insert

    box = 16
    gen = torch.Generator().manual_seed(0)
    grid = torch.as_tensor(rotation_grid(30.0))
    origins, _ = origin_prior(1.0)
    centred = torch.randn(2, box, box // 2 + 1, dtype=torch.complex64, generator=gen)
    ctf2 = torch.rand(2, box, box // 2 + 1, generator=gen)
    truth_rot, truth_origin = [5, 40], [3, 11]
    # The images as recorded: content moved by minus the origin (RELION's rlnOrigin).
    recorded = shift_images(centred, origins[truth_origin], box)
    loglik = torch.full((2, len(origins), len(grid)), -1e4)
    loglik[0, truth_origin[0], truth_rot[0]] = loglik[1, truth_origin[1], truth_rot[1]] = 0.0
    num, wts, best = soft_insert(recorded, ctf2, loglik, grid, origins, top_k=4)
    assert best.tolist() == truth_rot
    expected, _ = insert_slices(centred, grid[truth_rot], box)
    torch.testing.assert_close(num, expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(wts, insert_weights(ctf2, grid[truth_rot], box), atol=1e-5, rtol=1e-5)
    # Two origins equally likely at the kept rotation: the image goes in as the mean of its two centrings.
    loglik[0, :, :] = -1e4
    loglik[0, [0, 12], truth_rot[0]] = 0.0
    num, _, _ = soft_insert(recorded[:1], ctf2[:1], loglik[:1], grid, origins, top_k=1)
    mean = 0.5 * (shift_images(recorded[:1], -origins[0:1], box) + shift_images(recorded[:1], -origins[12:13], box))
    torch.testing.assert_close(num, insert_slices(mean, grid[truth_rot[:1]], box)[0], atol=1e-4, rtol=1e-4)


def test_the_first_map_looks_for_origins_within_a_third_of_the_largest_origin_searched(dataset, monkeypatch):
    from napari_cryo.reconstruction import refine
    from napari_cryo.reconstruction.data import ParticleData
    from napari_cryo.reconstruction.extent import first_map_mask

    seen = {}

    def fake_map(small, settings, **_):
        seen["settings"], seen["box"] = settings, small.box
        return np.zeros((small.box,) * 3, dtype=np.float32), None
        yield

    monkeypatch.setattr(refine, "stochastic_map", fake_map)
    data = ParticleData(dataset / "particles.star")
    volume = drain(refine.first_map(data, 7, 0, None, "cpu", max_shift=0.15))[0]
    assert volume.shape == (32, 32, 32) and seen["box"] == 32
    assert seen["settings"].batches == 7 and seen["settings"].origin_sigma == pytest.approx(0.15 * 32 / 3)
    # Masked as wide as the images show the particles, never wider than the images' own mask.
    assert seen["settings"].mask_radius == pytest.approx(first_map_mask(data.at_box(32))) and 0.3 < seen["settings"].mask_radius <= 0.9
    drain(refine.first_map(data, 7, 0, None, "cpu"))
    assert seen["settings"].origin_sigma == 0
