"""How evenly a set of poses samples Fourier space: the sampling compensation factor.

By the Fourier-slice theorem each particle fills one central plane of the
map's transform, the plane perpendicular to its viewing direction.  A
direction ``k`` of Fourier space is sampled by every particle whose plane
passes within a small angle of it.  Following Baldwin & Lyumkis (2020,
*Prog. Biophys. Mol. Biol.* 150:160), with ``S(k)`` that sampling divided by
what uniformly distributed views give, the sampling compensation factor is
``SCF = 1 / mean_k(1 / S(k))``: 1 for uniform views, lower as views cluster,
0 once any direction of Fourier space is left empty.

Why a reconstruction reports it: the half-map FSC measures how well two
independent halves agree, not whether the poses are right.  Amortized pose
encoders that fail tend to send most images to a few views; both halves then
reconstruct the same wrong arrangement and can agree up to Nyquist (see
``docs/user-guide/reconstruction.md``, *Reading the FSC plot*).  Such collapsed poses
leave whole cones of Fourier space empty, which this measure shows at once.
Real preferred orientation shows in it too, and there the map's resolution
differs by direction, so a warning is right either way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: Below this SCF a run warns that its half-map FSC is not a measure of the map.  napari-cryo's own choice,
#: not the paper's: side views alone give 0.81, and every collapsed run measured gave 0.17 or less.
UNEVEN_SCF = 0.5
#: Fewest particles expected per sampled direction under uniform views (sets the plane thickness on small sets).
_MIN_EXPECTED = 50
#: The widest a plane is made on small sets; wider would smooth over real clustering.
_MAX_THICKNESS_DEG = 20.0
#: Fewer poses than this cannot tell clustering from counting noise: the SCF is not measured.
MIN_PARTICLES = 150


@dataclass(frozen=True)
class ViewCoverage:
    """How a set of viewing directions fills Fourier space.

    Attributes
    ----------
    scf : float
        Sampling compensation factor (1: uniform views; 0: some direction empty; NaN: too few poses).
    empty_fraction : float
        Fraction of directions of Fourier space that no particle's central plane reaches (NaN: too few poses).
    thickness_deg : float
        Angle within which a plane counts as passing through a direction.
    particles : int
        Number of poses.
    """

    scf: float
    empty_fraction: float
    thickness_deg: float
    particles: int

    @property
    def measured(self) -> bool:
        """Whether there were enough poses to measure the SCF (``MIN_PARTICLES``)."""
        return math.isfinite(self.scf)

    @property
    def even(self) -> bool:
        """Whether the views cover Fourier space well enough for the half-map FSC to describe the map.

        Sets too small to measure count as even: they get no warning.
        """
        return not self.measured or self.scf >= UNEVEN_SCF

    def describe(self) -> str:
        """One line for people: the SCF and, where there are any, the empty directions.

        Returns
        -------
        str
        """
        if not self.measured:
            return f"viewing directions: {self.particles} poses, too few to measure the SCF (needs {MIN_PARTICLES})"
        text = f"viewing directions: SCF {self.scf:.2f}"
        if self.empty_fraction > 0:
            text += f", {100 * self.empty_fraction:.1f}% of Fourier-space directions unsampled"
        return text

    def warning(self) -> str | None:
        """A warning for uneven coverage, else None.

        Returns
        -------
        str or None
        """
        if self.even:
            return None
        return (f"{self.describe()} (uniform views give 1): the poses cover Fourier space unevenly, so the half-map "
                "FSC can claim a resolution the map does not have; check the viewing-direction plot")


def sphere_directions(n: int) -> np.ndarray:
    """The pose search's Fibonacci directions as unit vectors, shape (n, 3)."""
    from .search import fibonacci_directions

    rot, tilt = np.radians(fibonacci_directions(n))
    return np.stack([np.sin(tilt) * np.cos(rot), np.sin(tilt) * np.sin(rot), np.cos(tilt)], axis=-1)


def view_coverage(rotations: np.ndarray, thickness_deg: float = 5.0, directions: int = 2000) -> ViewCoverage:
    """Measure how evenly poses sample Fourier space.

    Parameters
    ----------
    rotations : ndarray, shape (N, 3, 3)
        RELION rotation matrices; each one's third row is the viewing direction in the map's frame.
        Rows that are not finite are left out.
    thickness_deg : float
        A particle's central plane samples the directions within this angle of it.  Widened (up to 20°)
        on small sets so that uniform views put about 50 particles on every direction, else counting
        noise alone would lower the SCF.
    directions : int
        Directions of Fourier space tested (a Fibonacci sphere).

    Returns
    -------
    ViewCoverage
        With ``scf`` NaN when fewer than ``MIN_PARTICLES`` poses are finite.
    """
    if directions < 1:
        raise ValueError(f"directions must be at least 1, not {directions}")
    rot = np.asarray(rotations, dtype=np.float64).reshape(-1, 3, 3)
    rot = rot[np.isfinite(rot).all(axis=(1, 2))]
    n = len(rot)
    # For uniform views, k·v is uniform on [-1, 1]: a fraction t of planes lies within asin(t) of k.
    t = min(math.sin(math.radians(_MAX_THICKNESS_DEG)), max(math.sin(math.radians(thickness_deg)), _MIN_EXPECTED / max(n, 1)))
    thickness = math.degrees(math.asin(t))
    if n < MIN_PARTICLES:
        return ViewCoverage(scf=float("nan"), empty_fraction=float("nan"), thickness_deg=thickness, particles=n)
    views = rot[:, 2, :].astype(np.float32)
    k = sphere_directions(directions).astype(np.float32)
    hits = np.zeros(len(k))
    chunk = max(1, 2**21 // len(k))  # about 8 MB of products at a time, at any number of particles
    for start in range(0, n, chunk):
        hits += (np.abs(views[start : start + chunk] @ k.T) < t).sum(axis=0)
    sampling = hits / (n * t)
    empty = float(np.mean(sampling == 0))
    scf = 0.0 if empty > 0 else float(1.0 / np.mean(1.0 / sampling))
    return ViewCoverage(scf=scf, empty_fraction=empty, thickness_deg=thickness, particles=n)
