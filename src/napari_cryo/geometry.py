"""Rotations in RELION's ZYZ Euler convention.

RELION's matrix ``A(rot, tilt, psi) = Rz(psi) @ Ry(tilt) @ Rz(rot)`` (each a
passive rotation) takes a point of the reference map to the particle's
frame: the projection of the map along Z after applying ``A`` is the
particle image.  All STAR reads and writes in napari-cryo go through these
two functions so the convention lives in one place.
"""

from __future__ import annotations

import numpy as np


def euler_to_matrix(angles: np.ndarray) -> np.ndarray:
    """RELION Euler angles (rot, tilt, psi) in degrees -> rotation matrices.

    Parameters
    ----------
    angles : numpy.ndarray
        (3,) or (N, 3) angles in degrees.

    Returns
    -------
    numpy.ndarray
        (3, 3) or (N, 3, 3) matrices ``A`` as RELION's ``Euler_angles2matrix``.
    """
    angles = np.asarray(angles, dtype=float)
    single = angles.ndim == 1
    a = np.deg2rad(np.atleast_2d(angles))
    ca, cb, cg = np.cos(a[:, 0]), np.cos(a[:, 1]), np.cos(a[:, 2])
    sa, sb, sg = np.sin(a[:, 0]), np.sin(a[:, 1]), np.sin(a[:, 2])
    m = np.empty((a.shape[0], 3, 3))
    m[:, 0, 0] = cg * cb * ca - sg * sa
    m[:, 0, 1] = cg * cb * sa + sg * ca
    m[:, 0, 2] = -cg * sb
    m[:, 1, 0] = -sg * cb * ca - cg * sa
    m[:, 1, 1] = -sg * cb * sa + cg * ca
    m[:, 1, 2] = sg * sb
    m[:, 2, 0] = sb * ca
    m[:, 2, 1] = sb * sa
    m[:, 2, 2] = cb
    return m[0] if single else m


def matrix_to_euler(matrices: np.ndarray) -> np.ndarray:
    """Rotation matrices -> RELION Euler angles (rot, tilt, psi) in degrees.

    The inverse of :func:`euler_to_matrix`, with tilt in [0, 180] and rot,
    psi in (-180, 180]; at tilt 0 or 180 (gimbal lock) rot is set to 0 and
    the whole in-plane angle goes to psi.

    Parameters
    ----------
    matrices : numpy.ndarray
        (3, 3) or (N, 3, 3) rotation matrices.

    Returns
    -------
    numpy.ndarray
        (3,) or (N, 3) angles in degrees.
    """
    m = np.asarray(matrices, dtype=float)
    single = m.ndim == 2
    m = m.reshape(-1, 3, 3)
    tilt = np.arccos(np.clip(m[:, 2, 2], -1.0, 1.0))
    sb = np.sin(tilt)
    regular = sb > 1e-6
    rot = np.where(regular, np.arctan2(m[:, 2, 1], m[:, 2, 0]), 0.0)
    psi = np.where(regular, np.arctan2(m[:, 1, 2], -m[:, 0, 2]), 0.0)
    # Gimbal lock: A is one rotation about Z (by psi+rot or psi-rot); put it all in psi.
    psi = np.where(regular, psi, np.arctan2(m[:, 0, 1], m[:, 1, 1]))
    out = np.rad2deg(np.stack([rot, tilt, psi], axis=1))
    out[:, [0, 2]] = (out[:, [0, 2]] + 180.0) % 360.0 - 180.0
    out[:, [0, 2]] = np.where(out[:, [0, 2]] == -180.0, 180.0, out[:, [0, 2]])
    return out[0] if single else out


def viewing_directions(angles: np.ndarray) -> np.ndarray:
    """Unit projection directions, XYZ in the reference frame (third row of ``A``)."""
    return euler_to_matrix(angles).reshape(-1, 3, 3)[:, 2, :]


def particle_axes(angles: np.ndarray) -> np.ndarray:
    """Direction of each particle's reference Z axis in the micrograph/tomogram frame, XYZ.

    ``A`` maps reference coordinates to the particle frame, so the reference
    Z axis lands on ``A @ (0, 0, 1)``, the third column of ``A``.
    """
    return euler_to_matrix(angles).reshape(-1, 3, 3)[:, :, 2]
