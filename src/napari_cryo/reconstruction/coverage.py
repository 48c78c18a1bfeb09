"""How evenly a set of poses samples Fourier space: the sampling compensation factor.

By the Fourier-slice theorem each particle fills one central plane of the
map's transform, the plane perpendicular to its viewing direction.  A
direction ``k`` of Fourier space is sampled by every particle whose plane
passes within a small angle of it.  Following Baldwin & Lyumkis (2020,
*Prog. Biophys. Mol. Biol.* 160:53), with ``S(k)`` that sampling divided by
what uniformly distributed views give, the sampling compensation factor is
``SCF = 1 / mean_k(1 / S(k))``: 1 for uniform views, lower as views cluster,
0 once any direction of Fourier space is left empty.

Why a reconstruction reports it: the half-map FSC measures how well two
independent halves agree, not whether the poses are right.  Amortized pose
encoders that fail tend to send most images to a few views; both halves then
reconstruct the same wrong arrangement and can agree up to Nyquist (see
``docs/reconstruction.md``, *Reading the FSC plot*).  Such collapsed poses
leave whole cones of Fourier space empty, which this measure shows at once.
Real preferred orientation shows in it too, and there the map's resolution
differs by direction, so a warning is right either way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: Below this SCF a run warns that its half-map FSC is not a measure of the map.
UNEVEN_SCF = 0.5
#: Fewest particles expected per sampled direction under uniform views (sets the plane thickness on small sets).
_MIN_EXPECTED = 50


@dataclass(frozen=True)
class ViewCoverage:
    """How a set of viewing directions fills Fourier space.

    Attributes
    ----------
    scf : float
        Sampling compensation factor (1: uniform views; 0: some direction empty).
    empty_fraction : float
        Fraction of directions of Fourier space that no particle's central plane reaches.
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
    def even(self) -> bool:
        """Whether the views cover Fourier space well enough for the half-map FSC to describe the map."""
        return self.scf >= UNEVEN_SCF

    def describe(self) -> str:
        """One line: the SCF and, where there are any, the empty directions."""
        text = f"viewing directions: SCF {self.scf:.2f}"
        if self.empty_fraction > 0:
            text += f", {100 * self.empty_fraction:.1f}% of Fourier-space directions unsampled"
        return text

    def warning(self) -> str | None:
        """A warning for uneven coverage, else None."""
        if self.even:
            return None
        return (f"{self.describe()} (uniform views give 1): the poses cover Fourier space unevenly, so the half-map "
                "FSC can claim a resolution the map does not have; check the viewing-direction plot")

    def as_dict(self) -> dict[str, float | int]:
        return {"scf": round(self.scf, 4), "empty_fraction": round(self.empty_fraction, 4),
                "thickness_deg": round(self.thickness_deg, 2), "particles": self.particles}


def sphere_directions(n: int) -> np.ndarray:
    """``n`` nearly uniform unit vectors (a Fibonacci sphere), shape (n, 3)."""
    i = np.arange(n) + 0.5
    z = 1.0 - 2.0 * i / n
    phi = i * math.pi * (3.0 - math.sqrt(5.0))
    r = np.sqrt(1.0 - z**2)
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=-1)


def view_coverage(rotations: np.ndarray, thickness_deg: float = 5.0, directions: int = 2000) -> ViewCoverage:
    """Measure how evenly poses sample Fourier space.

    Parameters
    ----------
    rotations : ndarray, shape (N, 3, 3)
        RELION rotation matrices; each one's third row is the viewing direction in the map's frame.
    thickness_deg : float
        A particle's central plane samples the directions within this angle of it.  Widened on small
        sets so that uniform views put at least 50 particles on every direction, else counting noise
        alone would lower the SCF.
    directions : int
        Directions of Fourier space tested (a Fibonacci sphere).

    Returns
    -------
    ViewCoverage
    """
    rot = np.asarray(rotations, dtype=np.float64).reshape(-1, 3, 3)
    n = len(rot)
    if n == 0:
        return ViewCoverage(0.0, 1.0, float(thickness_deg), 0)
    # For uniform views, k·v is uniform on [-1, 1]: a fraction t of planes lies within asin(t) of k.
    t = min(1.0, max(math.sin(math.radians(thickness_deg)), _MIN_EXPECTED / n))
    views = rot[:, 2, :]
    k = sphere_directions(directions)
    hits = np.zeros(len(k))
    for start in range(0, n, 4096):  # bounded memory at any number of particles
        hits += (np.abs(views[start : start + 4096] @ k.T) < t).sum(axis=0)
    sampling = hits / (n * t)
    empty = float(np.mean(sampling == 0))
    scf = 0.0 if empty > 0 else float(1.0 / np.mean(1.0 / sampling))
    return ViewCoverage(scf=scf, empty_fraction=empty, thickness_deg=math.degrees(math.asin(t)), particles=n)
