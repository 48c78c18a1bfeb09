"""Picking particles from segmentation volumes."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from napari_cryo.errors import CryoInputError
from napari_cryo.segmentation.particles import (
    PickedParticles,
    PickSettings,
    pick_particles,
    write_coordinates_tsv,
)


def ball(shape: tuple[int, int, int], centre, radius: float) -> np.ndarray:
    z, y, x = np.indices(shape, dtype=float)
    return (z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2 <= radius**2


def test_two_separate_spheres_give_two_centroids_volumes_and_weights():
    shape = (24, 30, 50)
    a, b = ball(shape, (12, 15, 12), 5), ball(shape, (11, 14, 36), 6)
    volume = np.zeros(shape, np.float32)
    volume[a] = 0.8
    volume[b] = 0.9
    for separate in (True, False):
        picked = pick_particles(volume, 2.0, PickSettings(threshold=0.5, separate=separate))
        assert len(picked) == 2
        # Sorted by weight: b is bigger and brighter.
        np.testing.assert_allclose(picked.coordinates, [[11, 14, 36], [12, 15, 12]], atol=1e-9)
        np.testing.assert_allclose(picked.volume, [b.sum() * 8.0, a.sum() * 8.0])
        np.testing.assert_allclose(picked.weight, [b.sum() * 0.9, a.sum() * 0.8], rtol=1e-6)


def test_centroids_are_weighted_by_the_prediction():
    volume = np.zeros((5, 5, 8), np.float32)
    volume[2, 2, 3] = 0.6
    volume[2, 2, 4] = 1.0
    volume[2, 3, 4] = 0.6
    picked = pick_particles(volume, 1.0, PickSettings(threshold=0.55, separate=False))
    assert len(picked) == 1
    np.testing.assert_allclose(picked.coordinates[0], [2, (2 * 0.6 + 2 * 1.0 + 3 * 0.6) / 2.2, (3 * 0.6 + 4 * 1.6) / 2.2])
    # At 0.7 only the brightest voxel is left.
    picked = pick_particles(volume, 1.0, PickSettings(threshold=0.7, separate=False))
    np.testing.assert_allclose(picked.coordinates, [[2, 2, 4]])
    np.testing.assert_allclose(picked.weight, [1.0])


def test_touching_spheres_are_separated():
    shape = (24, 24, 40)
    centres = [(12, 12, 13), (12, 12, 25)]  # radius 7, 12 apart: they overlap
    volume = np.zeros(shape, np.float32)
    volume[ball(shape, centres[0], 7) | ball(shape, centres[1], 7)] = 1.0
    merged = pick_particles(volume, 1.0, PickSettings(separate=False))
    assert len(merged) == 1
    np.testing.assert_allclose(merged.coordinates[0], [12, 12, 19], atol=1e-9)
    split = pick_particles(volume, 1.0, PickSettings(separate=True))
    assert len(split) == 2
    found = split.coordinates[np.argsort(split.coordinates[:, 2])]
    np.testing.assert_allclose(found, centres, atol=1.0)
    assert split.volume.sum() == merged.volume.sum()  # every voxel goes to one particle
    # A peak distance larger than the centres' separation keeps them together.
    together = pick_particles(volume, 1.0, PickSettings(separate=True, min_peak_distance=14.0))
    assert len(together) == 1


def test_separation_leaves_no_part_under_the_minimum_volume():
    shape = (30, 30, 56)
    # A particle with a lobe (a weaker response merged with it): two distance peaks 10 voxels apart,
    # parts of about 900 and 500 voxels, each under the minimum volume of 1000.
    lobed = np.zeros(shape, np.float32)
    lobed[ball(shape, (15, 15, 15), 6) | ball(shape, (15, 15, 25), 5)] = 1.0
    whole = pick_particles(lobed, 1.0, PickSettings(separate=False, min_volume=1000))
    assert len(whole) == 1
    kept = pick_particles(lobed, 1.0, PickSettings(separate=True, min_volume=1000))
    np.testing.assert_allclose(kept.coordinates, whole.coordinates)  # picked whole, not split and dropped
    assert len(pick_particles(lobed, 1.0, PickSettings(separate=True))) == 2  # without a minimum it splits
    # Two touching particles with a small nub: still two, and the nub's voxels go to them.
    pair = np.zeros(shape, np.float32)
    pair[ball(shape, (15, 15, 14), 7) | ball(shape, (15, 15, 26), 7) | ball(shape, (15, 15, 36), 3)] = 1.0
    split = pick_particles(pair, 1.0, PickSettings(separate=True, min_volume=500))
    assert len(split) == 2 and split.volume.sum() == np.count_nonzero(pair)
    np.testing.assert_allclose(np.sort(split.coordinates[:, 2]), [14, 26], atol=2.5)


def test_specks_of_noise_neither_break_nor_drive_the_separation(rng):
    shape = (24, 30, 40)
    volume = np.zeros(shape, np.float32)
    spheres = ball(shape, (12, 15, 13), 7) | ball(shape, (12, 15, 25), 7)
    volume[spheres] = 1.0
    specks = np.zeros(shape, bool)
    specks[::4, ::4, ::4] = True
    specks &= ~ndimage.binary_dilation(spheres, np.ones((3, 3, 3)), iterations=2)
    volume[specks] = 0.6
    picked = pick_particles(volume, 1.0, PickSettings())
    assert len(picked) == 2 + specks.sum()
    np.testing.assert_allclose(np.sort(picked.coordinates[:2, 2]), [13, 25], atol=1.0)
    np.testing.assert_allclose(picked.volume[2:], 1.0)


def test_default_peak_distance_follows_the_blobs_not_the_specks(rng):
    # A sphere with a ragged surface has many local maxima in its distance
    # map; at a 1-voxel peak distance it shatters.  Hundreds of one-voxel
    # specks (inscribed radius 1) must not pull the default down to that.
    shape = (24, 40, 40)
    ragged = ball(shape, (12, 12, 12), 8) & ~((rng.random(shape) < 0.3) & ~ball(shape, (12, 12, 12), 6))
    specks = np.zeros(shape, bool)
    specks[::3, ::3, ::3] = True
    specks &= ~ndimage.binary_dilation(ragged, np.ones((3, 3, 3)), iterations=2)
    volume = np.zeros(shape, np.float32)
    volume[ragged | specks] = 1.0
    assert specks.sum() > 1000  # more specks than blobs by far
    picked = pick_particles(volume, 1.0, PickSettings())
    assert (picked.volume > 1).sum() == 1
    shattered = pick_particles(volume, 1.0, PickSettings(min_peak_distance=1.0))
    assert (shattered.volume > 1).sum() > 5


def test_separation_does_not_split_a_single_sphere_or_a_plateau():
    shape = (20, 20, 20)
    volume = np.zeros(shape, np.float32)
    volume[ball(shape, (9.5, 9.5, 9.5), 6)] = 1.0  # even-sized: its distance map peaks on a plateau
    volume[1:3, 1:3, 1:3] = 1.0  # a 2x2x2 cube: flat distance map
    picked = pick_particles(volume, 1.0, PickSettings(separate=True))
    assert len(picked) == 2
    np.testing.assert_allclose(picked.coordinates, [[9.5, 9.5, 9.5], [1.5, 1.5, 1.5]])


def test_min_volume_drops_a_small_blob():
    shape = (20, 20, 40)
    big, small = ball(shape, (10, 10, 10), 5), ball(shape, (10, 10, 30), 2)
    volume = np.zeros(shape, np.float32)
    volume[big | small] = 1.0
    pixel = 2.0
    between = (small.sum() + 1) * pixel**3
    for separate in (True, False):
        kept = pick_particles(volume, pixel, PickSettings(min_volume=between, separate=separate))
        assert len(kept) == 1
        np.testing.assert_allclose(kept.coordinates, [[10, 10, 10]])
        exact = pick_particles(volume, pixel, PickSettings(min_volume=small.sum() * pixel**3, separate=separate))
        assert len(exact) == 2  # "below" the minimum is dropped, equal is kept


def test_min_spacing_keeps_the_heavier_particle_even_when_the_lighter_comes_first():
    shape = (12, 12, 24)
    volume = np.zeros(shape, np.float32)
    light = ball(shape, (3, 6, 8), 2)
    heavy = ball(shape, (7, 6, 14), 3)  # sqrt(4**2 + 6**2) = 7.21 voxels away
    volume[light] = 0.6
    volume[heavy] = 0.9
    labels, _ = ndimage.label(volume > 0)
    assert labels[3, 6, 8] == 1  # the lighter is first in label (raster) order
    pixel = 5.0
    both = pick_particles(volume, pixel, PickSettings(min_spacing=7.1 * pixel))
    assert len(both) == 2
    for separate in (True, False):
        one = pick_particles(volume, pixel, PickSettings(min_spacing=7.3 * pixel, separate=separate))
        assert len(one) == 1
        np.testing.assert_allclose(one.coordinates, [[7, 6, 14]])
        np.testing.assert_allclose(one.weight, [heavy.sum() * 0.9], rtol=1e-6)


def test_min_spacing_only_counts_kept_particles():
    # A (heaviest) - B - C in a row, 8 voxels apart; spacing 10 drops B
    # (near A), and C stays because the only particle near it, B, is gone.
    shape = (10, 10, 40)
    volume = np.zeros(shape, np.float32)
    volume[ball(shape, (5, 5, 6), 3)] = 1.0
    volume[ball(shape, (5, 5, 14), 2)] = 0.9
    volume[ball(shape, (5, 5, 22), 2)] = 0.8
    picked = pick_particles(volume, 1.0, PickSettings(min_spacing=10.0, separate=False))
    np.testing.assert_allclose(picked.coordinates, [[5, 5, 6], [5, 5, 22]])


def test_results_are_sorted_by_descending_weight(rng):
    shape = (16, 40, 40)
    volume = np.zeros(shape, np.float32)
    for k, centre in enumerate([(8, 8, 8), (8, 8, 30), (8, 30, 8), (8, 30, 30)]):
        volume[ball(shape, centre, 2 + k % 3)] = rng.uniform(0.6, 1.0)
    picked = pick_particles(volume, 1.0, PickSettings())
    assert len(picked) == 4
    assert (np.diff(picked.weight) <= 0).all()


def test_empty_volume_and_bad_input():
    picked = pick_particles(np.zeros((4, 5, 6)), 1.0, PickSettings())
    assert len(picked) == 0
    assert picked.coordinates.shape == (0, 3) and picked.volume.shape == (0,)
    with pytest.raises(CryoInputError, match="3-D"):
        pick_particles(np.zeros((5, 6)), 1.0, PickSettings())
    with pytest.raises(CryoInputError, match="pixel size"):
        pick_particles(np.zeros((4, 5, 6)), 0.0, PickSettings())
    with pytest.raises(CryoInputError, match="minimum spacing"):
        PickSettings(min_spacing=-1.0)
    with pytest.raises(CryoInputError, match="minimum volume"):
        PickSettings(min_volume=float("nan"))
    with pytest.raises(CryoInputError, match="minimum peak distance"):
        PickSettings(min_peak_distance=0.0)


def test_memmap_input(tmp_path):
    shape = (10, 12, 14)
    data = np.memmap(tmp_path / "vol.raw", dtype=np.float32, mode="w+", shape=shape)
    data[ball(shape, (5, 6, 7), 3)] = 0.75
    data.flush()
    picked = pick_particles(np.memmap(tmp_path / "vol.raw", dtype=np.float32, mode="r", shape=shape), 1.0, PickSettings())
    np.testing.assert_allclose(picked.coordinates, [[5, 6, 7]])


def test_tsv_header_and_content(tmp_path):
    particles = PickedParticles(
        coordinates=np.array([[1.0, 2.0, 3.0], [10.5, 20.25, 30.125]]),
        volume=np.array([1000.0, 1234567.5]),
        weight=np.array([12.5, 3.25]),
    )
    path = write_coordinates_tsv(tmp_path / "picks.tsv", particles, pixel_size=4.0)
    lines = path.read_text().splitlines()
    assert lines[0] == "x\ty\tz\tvolume_A3\tweight"
    table = np.loadtxt(path, delimiter="\t", skiprows=1)
    np.testing.assert_allclose(table, [[3, 2, 1, 1000, 12.5], [30.125, 20.25, 10.5, 1234567.5, 3.25]])
    assert lines[1].split("\t")[:3] == ["3.000", "2.000", "1.000"]
    with pytest.raises(CryoInputError, match="already exists"):
        write_coordinates_tsv(path, particles, pixel_size=4.0)
    write_coordinates_tsv(path, PickedParticles(), pixel_size=4.0, overwrite=True)
    assert path.read_text() == "x\ty\tz\tvolume_A3\tweight\n"
    assert [p.name for p in tmp_path.iterdir()] == ["picks.tsv"]  # no temporary file left


def test_picked_particles_round_trip_through_tsv(tmp_path):
    shape = (20, 20, 40)
    volume = np.zeros(shape, np.float32)
    volume[ball(shape, (5, 8, 10), 3)] = 0.7
    volume[ball(shape, (12, 10, 30), 4)] = 0.9
    picked = pick_particles(volume, 3.0, PickSettings())
    path = write_coordinates_tsv(tmp_path / "p.tsv", picked, 3.0)
    table = np.loadtxt(path, delimiter="\t", skiprows=1)
    np.testing.assert_allclose(table[:, :3], picked.coordinates[:, ::-1], atol=1e-3)
    np.testing.assert_allclose(table[:, 3], picked.volume)
    np.testing.assert_allclose(table[:, 4], picked.weight, rtol=1e-9)
