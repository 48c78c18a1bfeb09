"""How evenly poses sample Fourier space (the sampling compensation factor) and where a run reports it."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from napari_cryo.reconstruction.coverage import UNEVEN_SCF, view_coverage


def _uniform(n: int, seed: int = 1) -> np.ndarray:
    return Rotation.random(n, random_state=seed).as_matrix()


def _views(rotations: np.ndarray) -> np.ndarray:
    return rotations[:, 2, :]  # RELION: the map-frame direction projected along


def test_uniform_views_cover_fourier_space():
    coverage = view_coverage(_uniform(2000))
    assert coverage.scf > 0.97 and coverage.empty_fraction == 0 and coverage.even
    assert coverage.warning() is None and "SCF" in coverage.describe()


def test_top_views_leave_the_cone_their_planes_never_reach():
    r = _uniform(8000, seed=2)
    top = r[np.abs(_views(r)[:, 2]) > math.cos(math.radians(30))]
    coverage = view_coverage(top, thickness_deg=5.0)
    # Planes whose normals lie within 30° of ±z reach directions at least 60° - 5° from z; the two polar cones
    # of half-angle 55° cover 1 - cos 55° of the sphere.
    assert coverage.empty_fraction == pytest.approx(1 - math.cos(math.radians(55)), abs=0.03)
    assert coverage.scf == 0.0 and not coverage.even
    assert "SCF 0.00" in coverage.warning() and "unsampled" in coverage.warning()


def test_side_views_alone_still_sample_every_direction():
    r = _uniform(8000, seed=3)
    side = r[np.abs(_views(r)[:, 2]) < 0.1]
    coverage = view_coverage(side)
    assert coverage.empty_fraction == 0
    assert UNEVEN_SCF < coverage.scf < 0.95


def test_coverage_depends_on_viewing_directions_only():
    r = _uniform(3000, seed=4)
    top = r[np.abs(_views(r)[:, 2]) > 0.8]
    in_plane = Rotation.from_euler("z", np.random.default_rng(0).uniform(0, 360, (len(top), 1)), degrees=True).as_matrix()
    turned = in_plane @ top  # the same views, each image turned in its plane
    assert view_coverage(turned) == view_coverage(top)
    # Rotating the map frame moves the empty cones but not how much is empty.
    moved = top @ Rotation.from_euler("x", 90, degrees=True).as_matrix()
    assert view_coverage(moved).empty_fraction == pytest.approx(view_coverage(top).empty_fraction, abs=0.01)


def test_small_sets_widen_the_planes_rather_than_count_noise():
    coverage = view_coverage(_uniform(200))
    assert 5.0 < coverage.thickness_deg <= 20.0 and coverage.scf > 0.95
    # Still wide enough to see a collapse: 200 poses in one view.
    r = _uniform(200)
    same_view = Rotation.from_euler("z", np.linspace(0, 360, 200)[:, None], degrees=True).as_matrix() @ r[0]
    assert not view_coverage(same_view).even
    # Too few to tell clustering from counting noise: not measured, and no warning.
    few = view_coverage(_uniform(40))
    assert not few.measured and few.even and few.warning() is None and "too few" in few.describe()
    assert not view_coverage(np.zeros((0, 3, 3))).measured


def test_rotations_that_are_not_finite_are_left_out():
    r = _uniform(1000)
    r[:100] = np.nan
    coverage = view_coverage(r)
    assert coverage.particles == 900 and coverage.scf > 0.95
    with pytest.raises(ValueError, match="directions"):
        view_coverage(r, directions=0)


def test_uneven_views_are_written_on_the_fsc_plot(tmp_path):
    from napari_cryo.reconstruction.fsc import fsc, plot_fsc
    from napari_cryo.reconstruction.outputs import direction_title, fsc_note

    r = _uniform(4000, seed=5)
    collapsed = view_coverage(r[np.abs(_views(r)[:, 2]) > 0.9])
    assert fsc_note(view_coverage(r)) is None
    note = fsc_note(collapsed)
    assert note is not None and "overstate" in note
    rng = np.random.default_rng(0)
    volume = rng.normal(size=(16, 16, 16))
    figure = plot_fsc({"half maps": fsc(volume, volume + rng.normal(size=volume.shape), 2.0)}, note=note)
    assert any(note == t.get_text() for t in figure.axes[0].texts)
    assert direction_title(collapsed).endswith("SCF 0.00")
