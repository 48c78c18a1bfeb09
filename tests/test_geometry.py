import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from napari_cryo.geometry import euler_to_matrix, matrix_to_euler, particle_axes, viewing_directions

# cryoDRGN's tests (test_convert_from_relion) give this matrix for RELION angles
# (-147.9485, 22.58999, 162.539): an independent check of the convention.
CRYODRGN_ANGLES = (-147.9485, 22.58999, 162.539)
CRYODRGN_MATRIX = np.array(
    [
        [0.90571941, 0.21306972, 0.36643367],
        [-0.27142096, 0.95553406, 0.11526193],
        [-0.32558103, -0.20385275, 0.92327734],
    ]
)


def test_golden_matrix_from_cryodrgn():
    np.testing.assert_allclose(euler_to_matrix(CRYODRGN_ANGLES), CRYODRGN_MATRIX, atol=1e-7)


@pytest.mark.parametrize(
    "angles, expected",
    [
        ((90, 0, 0), [[0, 1, 0], [-1, 0, 0], [0, 0, 1]]),
        ((0, 0, 90), [[0, 1, 0], [-1, 0, 0], [0, 0, 1]]),
        ((0, 90, 0), [[0, 0, -1], [0, 1, 0], [1, 0, 0]]),
        ((0, 0, 0), np.eye(3)),
    ],
)
def test_known_matrices(angles, expected):
    np.testing.assert_allclose(euler_to_matrix(angles), expected, atol=1e-12)


def test_matches_scipy_intrinsic_zyz_transposed(rng):
    angles = np.column_stack([rng.uniform(-180, 180, 500), rng.uniform(0, 180, 500), rng.uniform(-180, 180, 500)])
    ref = Rotation.from_euler("ZYZ", angles, degrees=True).as_matrix().transpose(0, 2, 1)
    np.testing.assert_allclose(euler_to_matrix(angles), ref, atol=1e-12)


def test_round_trip_and_ranges(rng):
    angles = np.column_stack([rng.uniform(-180, 180, 500), rng.uniform(0, 180, 500), rng.uniform(-180, 180, 500)])
    back = matrix_to_euler(euler_to_matrix(angles))
    np.testing.assert_allclose(euler_to_matrix(back), euler_to_matrix(angles), atol=1e-9)
    np.testing.assert_allclose(back, angles, atol=1e-6)
    assert back[:, 1].min() >= 0 and back[:, 1].max() <= 180


@pytest.mark.parametrize("angles", [(20, 0, 30), (20, 180, 30), (0, 180, -40), (-170, 0, 175)])
def test_gimbal_lock(angles):
    m = euler_to_matrix(angles)
    back = matrix_to_euler(m)
    assert back[0] == 0.0
    np.testing.assert_allclose(euler_to_matrix(back), m, atol=1e-12)


def test_matrices_are_rotations(rng):
    m = euler_to_matrix(rng.uniform(-180, 180, (50, 3)))
    np.testing.assert_allclose(m @ m.transpose(0, 2, 1), np.broadcast_to(np.eye(3), m.shape), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(m), 1.0)


def test_directions():
    # Tilt 90: A @ z (third column) is -X; the projection direction (third row) is +X.
    np.testing.assert_allclose(particle_axes((0, 90, 0))[0], [-1, 0, 0], atol=1e-12)
    np.testing.assert_allclose(viewing_directions((0, 90, 0))[0], [1, 0, 0], atol=1e-12)
