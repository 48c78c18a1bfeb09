"""Synthetic low-magnification grid atlases with exactly known square quality.

A rotated square mesh of grid bars, a circular grid rim, per-square ice
thickness (brightness), broken (empty) squares, cracks, contamination,
folded corners (loss of squareness), vignetting and noise.  Every square's
attributes are scored 0–4 as in XCryoNet, with an 'overall' score derived
from them, so extraction and scoring can be benchmarked exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import ndimage
from skimage.draw import disk, line_aa, polygon

ATTRIBUTES = ("brightness", "squareness", "cracking", "contamination", "overall")
#: Intensity of a square whose film is broken (no ice): the brightest a square gets.
EMPTY_LEVEL = 0.97


def squareness_score(lost_fraction: float | np.ndarray) -> np.ndarray:
    """0–4 squareness from the fraction of the square's area that is missing (folded, covered)."""
    return np.clip(4.0 - 8.0 * np.asarray(lost_fraction, dtype=float), 0.0, 4.0)


@dataclass
class SyntheticAtlas:
    """A simulated atlas.

    Attributes
    ----------
    image : numpy.ndarray
        (Y, X) float32 intensities (bright = thin ice), roughly 0..1.
    pixel_size : float
        Å per pixel.
    squares : pandas.DataFrame
        One row per grid square: ``center_y``, ``center_x``, ``side`` (px),
        ``angle`` (degrees), ``complete`` (entirely inside the image and the
        grid rim), ``empty`` (film broken), and the 0–4 scores
        ``brightness, squareness, cracking, contamination, overall``.
    lattice_angle : float
        Rotation of the mesh in degrees.
    pitch : float
        Mesh pitch in pixels.
    rim_center : tuple of float
        Centre of the circular grid rim, (y, x) in pixels.
    rim_radius : float
        Radius of the rim in pixels.
    """

    image: np.ndarray
    pixel_size: float
    squares: pd.DataFrame
    lattice_angle: float
    pitch: float
    rim_center: tuple[float, float] = (0.0, 0.0)
    rim_radius: float = 0.0


def overall_score(brightness: np.ndarray, squareness: np.ndarray, cracking: np.ndarray, contamination: np.ndarray) -> np.ndarray:
    """The 'overall' 0–4 score of a square from its attributes.

    Good squares have medium-thin ice (brightness 2–3), are whole, uncracked
    and clean; thick ice (dark) and broken film (very bright) are useless.
    """
    b = np.asarray(brightness, dtype=float)
    ice = 4.0 - 1.6 * np.abs(b - 2.5)
    score = ice - 0.8 * np.asarray(cracking) - 0.7 * np.asarray(contamination) - 0.6 * (4 - np.asarray(squareness))
    return np.clip(np.round(score), 0, 4).astype(int)


def simulate_atlas(
    shape: tuple[int, int] = (1024, 1024),
    pixel_size: float = 5000.0,
    pitch_um: float = 63.5,
    bar_um: float = 18.0,
    lattice_angle: float | None = None,
    rim_fraction: float = 0.47,
    noise: float = 0.03,
    vignetting: float = 0.25,
    seed: int = 0,
) -> SyntheticAtlas:
    """Simulate a grid atlas.

    Parameters
    ----------
    shape : tuple of int
        (Y, X) size in pixels.
    pixel_size : float
        Å per pixel (atlases are typically 0.2–1 µm per pixel).
    pitch_um, bar_um : float
        Mesh pitch and grid-bar width in µm (400 mesh: 63.5 and ~18).
    lattice_angle : float, optional
        Mesh rotation in degrees; random in [0, 90) if omitted.
    rim_fraction : float
        Radius of the grid rim as a fraction of the image size.
    noise : float
        Standard deviation of additive noise.
    vignetting : float
        Relative fall-off of illumination at the corners.
    seed : int
        Random seed.

    Returns
    -------
    SyntheticAtlas
    """
    rng = np.random.default_rng(seed)
    ny, nx = shape
    theta_deg = float(rng.uniform(0, 90)) if lattice_angle is None else float(lattice_angle)
    theta = np.deg2rad(theta_deg)
    pitch = pitch_um * 1e4 / pixel_size
    bar = bar_um * 1e4 / pixel_size
    side = pitch - bar
    cos, sin = np.cos(theta), np.sin(theta)
    origin = np.array([nx / 2, ny / 2]) + rng.uniform(-pitch / 2, pitch / 2, 2)

    yy, xx = np.mgrid[0:ny, 0:nx].astype(np.float64)
    u = cos * (xx - origin[0]) + sin * (yy - origin[1])
    v = -sin * (xx - origin[0]) + cos * (yy - origin[1])
    iu, iv = np.floor(u / pitch).astype(int), np.floor(v / pitch).astype(int)
    fu, fv = u / pitch - iu, v / pitch - iv
    half_bar = bar / 2 / pitch
    in_hole = (fu > half_bar) & (fu < 1 - half_bar) & (fv > half_bar) & (fv < 1 - half_bar)

    rim_c = np.array([nx / 2, ny / 2]) + rng.normal(0, 0.02, 2) * np.array([nx, ny])
    rim_r = rim_fraction * min(nx, ny)
    in_rim = (xx - rim_c[0]) ** 2 + (yy - rim_c[1]) ** 2 <= rim_r**2

    i_lo, i_hi, j_lo, j_hi = iu.min(), iu.max(), iv.min(), iv.max()
    ni, nj = i_hi - i_lo + 1, j_hi - j_lo + 1
    n_sq = ni * nj
    thickness = np.clip(rng.normal(0.45, 0.22, n_sq), 0.05, 1.0)
    # Ice is thicker towards the rim on many grids.
    empty = rng.random(n_sq) < 0.07
    cracking = np.where(rng.random(n_sq) < 0.25, rng.integers(1, 5, n_sq), 0)
    contamination = np.where(rng.random(n_sq) < 0.3, rng.integers(1, 5, n_sq), 0)
    fold = np.where(rng.random(n_sq) < 0.15, rng.uniform(0.15, 0.5, n_sq), 0.0)

    transmission = np.exp(-2.2 * thickness)
    transmission[empty] = EMPTY_LEVEL
    level = transmission[(iu - i_lo) * nj + (iv - j_lo)]
    image = np.where(in_hole & in_rim, level, 0.03).astype(np.float64)

    rows = []
    for i in range(i_lo, i_hi + 1):
        for j in range(j_lo, j_hi + 1):
            k = (i - i_lo) * nj + (j - j_lo)
            cu, cv = (i + 0.5) * pitch, (j + 0.5) * pitch
            cx = origin[0] + cos * cu - sin * cv
            cy = origin[1] + sin * cu + cos * cv
            corners_uv = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * side / 2
            corners = np.stack(
                [cx + cos * corners_uv[:, 0] - sin * corners_uv[:, 1], cy + sin * corners_uv[:, 0] + cos * corners_uv[:, 1]],
                axis=1,
            )
            inside_img = np.all((corners >= 0) & (corners <= np.array([nx - 1, ny - 1])))
            inside_rim = np.all(np.sum((corners - rim_c) ** 2, axis=1) <= rim_r**2)
            touches = np.any((corners >= -side) & (corners <= np.array([nx + side, ny + side])))
            if not touches:
                continue
            visible = inside_img and inside_rim
            if not empty[k] and visible:
                _decorate(image, rng, corners, cx, cy, side, cos, sin, cracking[k], contamination[k], fold[k], level_of=transmission[k])
            squareness = int(squareness_score(2.0 * fold[k] ** 2).round())
            brightness = int(np.clip(round(4.0 * transmission[k] / EMPTY_LEVEL), 0, 4))
            rows.append(
                {
                    "center_y": cy,
                    "center_x": cx,
                    "side": side,
                    "angle": theta_deg,
                    "complete": bool(visible),
                    "empty": bool(empty[k]),
                    "brightness": brightness,
                    "squareness": squareness,
                    "cracking": int(cracking[k]) if not empty[k] else 0,
                    "contamination": int(contamination[k]) if not empty[k] else 0,
                }
            )
    squares = pd.DataFrame(rows)
    overall = overall_score(squares["brightness"], squares["squareness"], squares["cracking"], squares["contamination"])
    squares["overall"] = np.where(squares["empty"], 0, overall)
    in_image = (squares.center_x > -side / 2) & (squares.center_x < nx + side / 2) & (squares.center_y > -side / 2) & (squares.center_y < ny + side / 2)
    squares = squares[in_image].reset_index(drop=True)

    r2 = ((xx - nx / 2) ** 2 + (yy - ny / 2) ** 2) / ((nx / 2) ** 2 + (ny / 2) ** 2)
    image *= 1.0 - vignetting * r2
    image = ndimage.gaussian_filter(image, 0.7)
    image += rng.normal(0, noise, shape)
    return SyntheticAtlas(
        image=image.astype(np.float32),
        pixel_size=pixel_size,
        squares=squares,
        lattice_angle=theta_deg,
        pitch=pitch,
        rim_center=(float(rim_c[1]), float(rim_c[0])),
        rim_radius=float(rim_r),
    )


def _decorate(image, rng, corners, cx, cy, side, cos, sin, n_cracks, n_spots, fold, level_of) -> None:
    """Draw cracks (bright lines), contamination (dark spots) and a folded corner."""
    ny, nx = image.shape

    def to_xy(a: float, b: float) -> tuple[float, float]:
        return cx + cos * a - sin * b, cy + sin * a + cos * b

    half = side / 2 * 0.92
    for _ in range(int(n_cracks)):
        a0, b0, a1, b1 = rng.uniform(-half, half, 4)
        x0, y0 = to_xy(a0, b0)
        x1, y1 = to_xy(a1, b1)
        rr, cc, val = line_aa(int(y0), int(x0), int(y1), int(x1))
        ok = (rr >= 0) & (rr < ny) & (cc >= 0) & (cc < nx)
        image[rr[ok], cc[ok]] = np.maximum(image[rr[ok], cc[ok]], 0.95 * val[ok])
    for _ in range(int(n_spots)):
        a, b = rng.uniform(-half * 0.8, half * 0.8, 2)
        x, y = to_xy(a, b)
        rr, cc = disk((y, x), rng.uniform(0.05, 0.12) * side, shape=image.shape)
        image[rr, cc] = 0.08
    if fold > 0:
        # A folded corner: a right triangle with legs of 2 * fold * side along both edges,
        # so the square loses 2 * fold**2 of its area (see squareness_score).
        i = int(rng.integers(4))
        corner = corners[i]
        p1 = corner + (corners[(i + 1) % 4] - corner) * fold * 2
        p2 = corner + (corners[(i - 1) % 4] - corner) * fold * 2
        tri = np.array([corner, p1, p2])
        rr, cc = polygon(tri[:, 1], tri[:, 0], shape=image.shape)
        image[rr, cc] = 0.03
