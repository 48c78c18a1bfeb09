"""Compare estimated particle poses with the truth, up to the ambiguities of ab initio work.

An ab initio map comes out in an arbitrary orientation and either hand, and
the poses with it.  With RELION matrices ``A`` (reference -> particle frame,
``image = ∫ V(Aᵀ·r) dz``):

* a map rotated by ``G`` (``V'(x) = V(Gᵀx)``) gives the same images with
  poses ``A·Gᵀ``: estimated poses relate to the truth by a fixed rotation
  multiplied on the **right**, ``estimated_i = truth_i · R0``;
* the mirrored map ``V'(x) = V(F·x)``, ``F = diag(1, 1, −1)``, gives the same
  images with poses ``F·A·F`` (projection along Z cannot tell ``z`` from
  ``−z``), so a mirrored reconstruction has ``estimated_i = F·truth_i·F·R0``;
* a map translated by ``t`` gives origins ``origin_i + (A_i·t)_xy`` (RELION
  origin semantics, see :mod:`.physics`); rotations and mirroring leave the
  origins alone.

:func:`rotation_errors` finds ``R0`` and the hand, :func:`shift_errors` the
translation, each robustly (a few wrong poses do not pull them), and reports
the per-particle errors that remain.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.spatial.transform import Rotation

_MIRROR = np.diag([1.0, 1.0, -1.0])


@dataclass
class PoseComparison:
    """Per-particle rotation errors after the best global alignment.

    Attributes
    ----------
    errors : numpy.ndarray
        (N,) angle in degrees between each estimated rotation and the
        aligned truth.
    mean, median : float
        Of :attr:`errors`, degrees.
    rotation : numpy.ndarray
        (3, 3) global ``R0`` with ``estimated_i ≈ T_i · R0``, where ``T_i``
        is ``truth_i``, or ``F·truth_i·F`` when :attr:`mirrored`.
    mirrored : bool
        The estimated poses belong to the mirror image of the true map.
    other_hand_median : float
        Median error (degrees) with the other hand, for judging how clearly
        the hand was decided (``nan`` without alignment).
    other_hand_fraction : float
        Fraction of all particles that are more than 45° off but follow the
        *other* hand, under a global rotation of their own, to within 30°:
        the poses mix two reconstructions of opposite hands (``nan`` without
        alignment).  Random poses give about 0.008 of the off particles.
    """

    errors: np.ndarray
    mean: float
    median: float
    rotation: np.ndarray = field(default_factory=lambda: np.eye(3))
    mirrored: bool = False
    other_hand_median: float = float("nan")
    other_hand_fraction: float = float("nan")

    def fraction_within(self, degrees: float) -> float:
        """Fraction of particles with an error below ``degrees``."""
        return float(np.mean(self.errors < degrees)) if len(self.errors) else float("nan")

    def as_dict(self) -> dict[str, object]:
        """Summary as plain values (without the per-particle errors)."""
        from ..geometry import matrix_to_euler

        return {
            "particles": int(len(self.errors)),
            "mean_error_deg": float(self.mean),
            "median_error_deg": float(self.median),
            "within_5_deg": self.fraction_within(5.0),
            "within_15_deg": self.fraction_within(15.0),
            "mirrored": bool(self.mirrored),
            "other_hand_median_error_deg": float(self.other_hand_median),
            "other_hand_fraction": float(self.other_hand_fraction),
            "global_rotation": self.rotation.tolist(),
            "global_rotation_euler_deg": matrix_to_euler(self.rotation).tolist(),
        }


@dataclass
class ShiftComparison:
    """Per-particle origin errors after the best global translation.

    Attributes
    ----------
    errors : numpy.ndarray
        (N,) distance between estimated and aligned true origins (the units
        of the input: Å or pixels).
    mean, median : float
        Of :attr:`errors`.
    translation : numpy.ndarray
        (3,) XYZ map translation ``t`` with ``estimated_i ≈ truth_i +
        (A_i·t)_xy`` (zero without alignment).
    """

    errors: np.ndarray
    mean: float
    median: float
    translation: np.ndarray = field(default_factory=lambda: np.zeros(3))


def rotation_angles(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Angle in degrees of ``aᵀ·b`` for stacks of rotation matrices (numerically safe near 0)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    rel = np.einsum("...ji,...jk->...ik", a, b)
    # |R - I|_F = 2√2·sin(θ/2): accurate for small angles, where acos(trace) is not.
    diff = np.linalg.norm(rel - np.eye(3), axis=(-2, -1))
    return np.rad2deg(2.0 * np.arcsin(np.clip(diff / (2.0 * np.sqrt(2.0)), 0.0, 1.0)))


def _robust_mean_rotation(relative: np.ndarray, iterations: int = 12, seed: int = 0) -> np.ndarray:
    """Robust average of rotations: the chordal (quaternion) mean, reweighted.

    Starts from the sample with the smallest median distance to a subset of
    the others (so a majority of outliers cannot drag the start), then
    repeats a weighted chordal mean with Cauchy weights scaled by the
    current median residual.
    """
    n = len(relative)
    rng = np.random.default_rng(seed)
    probe = relative[rng.choice(n, size=min(n, 64), replace=False)]
    sample = relative[rng.choice(n, size=min(n, 2000), replace=False)]
    medians = [np.median(rotation_angles(np.broadcast_to(p, sample.shape), sample)) for p in probe]
    current = probe[int(np.argmin(medians))]
    rots = Rotation.from_matrix(relative)
    for _ in range(iterations):
        residual = rotation_angles(np.broadcast_to(current, relative.shape), relative)
        scale = max(2.0 * float(np.median(residual)), 0.5)
        weights = 1.0 / (1.0 + (residual / scale) ** 2)
        new = rots.mean(weights=weights).as_matrix()
        if rotation_angles(current, new) < 1e-4:
            current = new
            break
        current = new
    return current


def rotation_errors(estimated: np.ndarray, truth: np.ndarray, align: bool = True) -> PoseComparison:
    """Rotation errors of estimated poses, after the best global rotation and hand.

    Parameters
    ----------
    estimated, truth : numpy.ndarray
        (N, 3, 3) RELION matrices of the same particles, in the same order.
    align : bool
        Find the global rotation ``R0`` and hand first (ab initio poses are
        only defined up to them); else compare as given.

    Returns
    -------
    PoseComparison

    Raises
    ------
    ValueError
        If the shapes differ or there are no particles.
    """
    est = np.asarray(estimated, dtype=np.float64)
    tru = np.asarray(truth, dtype=np.float64)
    if est.shape != tru.shape or est.ndim != 3 or est.shape[1:] != (3, 3):
        raise ValueError(f"expected two (N, 3, 3) arrays of the same shape, got {est.shape} and {tru.shape}")
    if len(est) == 0:
        raise ValueError("no particles to compare")
    if not align:
        err = rotation_angles(tru, est)
        return PoseComparison(errors=err, mean=float(err.mean()), median=float(np.median(err)))
    results = []
    for mirrored in (False, True):
        t = _MIRROR @ tru @ _MIRROR if mirrored else tru
        # estimated_i = T_i · R0  =>  T_iᵀ · estimated_i = R0 for every particle.
        r0 = _robust_mean_rotation(np.einsum("nji,njk->nik", t, est))
        err = rotation_angles(t @ r0, est)
        results.append((float(np.median(err)), mirrored, r0, err))
    results.sort(key=lambda r: r[0])
    median, mirrored, r0, err = results[0]
    # A hand mixture: ab initio maps can grow from two seeds of opposite hands, each
    # explaining part of the views.  The particles far off then agree among themselves
    # with the other hand, under a rotation of their own.
    off = err > 45.0
    mixed = 0.0
    if off.sum() >= max(10, 0.02 * len(err)):
        t = tru[off] if mirrored else _MIRROR @ tru[off] @ _MIRROR
        r1 = _robust_mean_rotation(np.einsum("nji,njk->nik", t, est[off]))
        mixed = float(np.sum(rotation_angles(t @ r1, est[off]) < 30.0)) / len(err)
    return PoseComparison(
        errors=err, mean=float(err.mean()), median=median, rotation=r0, mirrored=mirrored, other_hand_median=results[1][0],
        other_hand_fraction=mixed,
    )


def shift_errors(estimated: np.ndarray, truth: np.ndarray, rotations: np.ndarray | None = None, align: bool = True) -> ShiftComparison:
    """Origin errors, after the global translation of the map that best explains them.

    Parameters
    ----------
    estimated, truth : numpy.ndarray
        (N, 2) origins (x, y), RELION semantics, in the same units.
    rotations : numpy.ndarray, optional
        (N, 3, 3) *estimated* RELION matrices; needed to align.
    align : bool
        Fit the map translation ``t`` (``estimated_i − truth_i =
        (A_i·t)_xy``) by least squares, refit without the worst residuals,
        and report what remains.

    Returns
    -------
    ShiftComparison
    """
    est = np.asarray(estimated, dtype=np.float64)
    tru = np.asarray(truth, dtype=np.float64)
    if est.shape != tru.shape or est.ndim != 2 or est.shape[1] != 2:
        raise ValueError(f"expected two (N, 2) arrays of the same shape, got {est.shape} and {tru.shape}")
    diff = est - tru
    t = np.zeros(3)
    if align and rotations is not None and len(est) >= 2:
        a = np.asarray(rotations, dtype=np.float64)[:, :2, :]
        keep = np.ones(len(est), dtype=bool)
        for _ in range(2):
            t, *_ = np.linalg.lstsq(a[keep].reshape(-1, 3), diff[keep].reshape(-1), rcond=None)
            residual = np.linalg.norm(diff - a @ t, axis=1)
            keep = residual <= max(3.0 * float(np.median(residual)), 1e-9)
        diff = diff - a @ t
    err = np.linalg.norm(diff, axis=1)
    return ShiftComparison(errors=err, mean=float(err.mean()), median=float(np.median(err)), translation=t)
