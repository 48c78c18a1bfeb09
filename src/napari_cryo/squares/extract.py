"""Finding grid squares in a low-magnification atlas.

1. **Lattice.** The autocorrelation of the thresholded atlas has peaks at the
   lattice vectors; the nearest one gives the mesh pitch and rotation
   (any angle; real atlases are often near 45°).
2. **Template.** A square hole inside a frame of grid bars, drawn at that
   pitch and rotation with the atlas's own bright and dark levels; the hole
   size (bar width) is the one whose template correlates best.
3. **Matching.** Normalised cross-correlation of the template with the atlas;
   peaks are square centres.  NCC ignores overall brightness, so thick-ice
   (dark) and broken (bright) squares are found alike.
4. **Completeness.** A square whose corners leave the image or the grid (the
   rim, found as the smoothed region with a lattice in it) is flagged
   ``complete = False`` and is not scored.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import ndimage
from skimage.feature import match_template, peak_local_max
from skimage.filters import threshold_otsu

from ..errors import CryoInputError
from ..tasks import Progress, drain

N_SIDES = 8  # hole sizes tried by the coarse scan of bar widths
FIND_STEPS = N_SIDES + 5  # progress steps of iter_find_squares


@dataclass
class Lattice:
    """The mesh: pitch (px), rotation (degrees, in [0, 90)), hole side (px)."""

    pitch: float
    angle: float
    side: float


def normalise_atlas(image: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Atlas scaled so grid bars are ~0 and the brightest squares ~1; returns (image, dark, bright)."""
    img = np.asarray(image, dtype=np.float32)
    sample = img[:: max(1, img.shape[0] // 512), :: max(1, img.shape[1] // 512)]
    dark, bright = np.percentile(sample, [2, 99.7])
    if bright <= dark:
        raise CryoInputError(None, "the atlas has no contrast (all pixels alike)")
    return (img - dark) / (bright - dark), float(dark), float(bright)


def estimate_lattice(norm: np.ndarray, min_pitch: float = 8.0) -> Lattice:
    """Pitch and rotation from the autocorrelation of the bright (hole) mask."""
    smooth = ndimage.gaussian_filter(norm, 1.0)
    mask = (smooth > threshold_otsu(smooth)).astype(np.float32)
    mask -= mask.mean()
    h, w = mask.shape
    spec = np.fft.rfft2(mask, s=(2 * h, 2 * w))
    ac = np.fft.fftshift(np.fft.irfft2(np.abs(spec) ** 2, s=(2 * h, 2 * w)))
    cy, cx = h, w
    ac /= ac[cy, cx]
    yy, xx = np.ogrid[: 2 * h, : 2 * w]
    r = np.hypot(yy - cy, xx - cx)
    # The central lobe (the size of one hole) falls off to a first minimum; lattice peaks lie beyond it.
    ri = r.astype(int)
    profile = np.bincount(ri.ravel(), ac.ravel()) / np.maximum(np.bincount(ri.ravel()), 1)
    limit = min(h, w) // 2
    dips = np.flatnonzero((profile[1:limit - 1] < profile[: limit - 2]) & (profile[1:limit - 1] <= profile[2:limit])) + 1
    r0 = max(min_pitch / 2, float(dips[0]) if len(dips) else min_pitch)
    ac_masked = np.where(r > r0, ac, -np.inf)
    half = min(h, w) // 2
    window = ac_masked[cy - half : cy + half, cx - half : cx + half]
    peaks = peak_local_max(np.nan_to_num(window, neginf=-1.0), min_distance=max(3, int(min_pitch // 2)), threshold_abs=0.1, num_peaks=40)
    if len(peaks) == 0:
        raise CryoInputError(None, "no grid lattice found in the atlas (no repeating squares)")
    vecs = (peaks - half).astype(float)
    dist = np.hypot(vecs[:, 0], vecs[:, 1])
    # Each candidate v, with v rotated by 90° (the mesh is square), generates a lattice.  Score it
    # by the contrast between the autocorrelation at its points and at its cell centres.  The
    # true lattice has peaks at its points and troughs at its cell centres.  A diagonal or
    # doubled vector (a sublattice) has true lattice points at both, so no contrast.  A spurious
    # short vector has half-cell points among its own, so little contrast.  (A peak's value
    # against the value at v/2 does not tell: with large holes v/2 lies in the central lobe.)
    filled = np.nan_to_num(window, neginf=-1.0)
    at_peak = ndimage.maximum_filter(filled, size=5)
    at_trough = ndimage.minimum_filter(filled, size=5)
    best_score, best = -np.inf, None
    for vy, vx in vecs[np.argsort(dist)[:16]]:
        length = float(np.hypot(vy, vx))
        reach = min(half - 3.0, 2.6 * length)
        n = int(np.ceil(reach / length)) + 1
        k, l = np.meshgrid(np.arange(-n, n + 1), np.arange(-n, n + 1), indexing="ij")
        means = []
        for offset, values in ((0.0, at_peak), (0.5, at_trough)):
            py, px = (k + offset) * vy + (l + offset) * vx, (k + offset) * vx - (l + offset) * vy
            inside = (np.hypot(py, px) <= reach) & (np.hypot(py, px) > 0)
            if not inside.any():  # a lattice too coarse for this image: no point to average
                break
            means.append(float(np.mean(values[np.round(py[inside] + half).astype(int), np.round(px[inside] + half).astype(int)])))
        if len(means) < 2:
            continue
        score = means[0] - means[1]
        if score > best_score:
            best_score, best = score, (vy, vx)
    if best is None or best_score <= 0:
        raise CryoInputError(None, "no grid lattice found in the atlas (no repeating squares)")
    vy, vx = best
    pitch = float(np.hypot(vy, vx))
    angle = float(np.degrees(np.arctan2(vy, vx)) % 90.0)
    return Lattice(pitch=pitch, angle=angle, side=0.0)


def _bin(image: np.ndarray, factor: int) -> np.ndarray:
    """Mean over ``factor`` x ``factor`` blocks (edges trimmed)."""
    if factor <= 1:
        return image
    h, w = (image.shape[0] // factor) * factor, (image.shape[1] // factor) * factor
    return image[:h, :w].reshape(h // factor, factor, w // factor, factor).mean(axis=(1, 3))


def square_template(pitch: float, side: float, angle: float, dark: float = 0.0, bright: float = 1.0, oversample: int = 4) -> np.ndarray:
    """A square hole of ``side`` px centred in bars, rotated by ``angle`` degrees (anti-aliased)."""
    size = int(np.ceil(pitch * 1.05)) | 1
    n = size * oversample
    coords = (np.arange(n) + 0.5) / oversample - size / 2
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    a = np.deg2rad(angle)
    u = np.cos(a) * xx + np.sin(a) * yy
    v = -np.sin(a) * xx + np.cos(a) * yy
    inside = (np.abs(u) <= side / 2) & (np.abs(v) <= side / 2)
    tpl = np.where(inside, bright, dark).astype(np.float32)
    return tpl.reshape(size, oversample, size, oversample).mean(axis=(1, 3))


def grid_region(norm: np.ndarray, bar: float) -> np.ndarray:
    """Mask of the meshed part of the grid (inside the rim).

    The bright holes, closed over the bar width and with their gaps filled,
    cover the mesh; outside it (the rim, or beyond the grid) nothing is
    bright, so a square cut by the rim has corners outside the mask.
    """
    smooth = ndimage.gaussian_filter(norm, 1.0)
    holes = smooth > 0.5 * threshold_otsu(smooth)
    radius = max(1.0, bar * 0.75)
    # Closing with a disc, through distance transforms (fast for any radius).
    dilated = ndimage.distance_transform_edt(~holes) <= radius
    region = ndimage.distance_transform_edt(dilated) > radius
    region = ndimage.binary_fill_holes(region)
    labels, n = ndimage.label(region)
    if n > 1:
        sizes = ndimage.sum(region, labels, index=np.arange(1, n + 1))
        region = labels == (int(np.argmax(sizes)) + 1)
    return region


def fit_rim(region: np.ndarray, min_points: int = 50) -> tuple[tuple[float, float], float] | None:
    """Fit the circular grid rim to the meshed region's boundary (away from the image edge).

    Returns ((centre_y, centre_x), radius), or None when too little of the
    rim is in view or the boundary is not circular.
    """
    h, w = region.shape
    edge = region & ~ndimage.binary_erosion(region)
    edge[:3, :] = edge[-3:, :] = edge[:, :3] = edge[:, -3:] = False
    pts = np.argwhere(edge).astype(float)
    if len(pts) < min_points:
        return None
    keep = np.ones(len(pts), bool)
    # Algebraic circle fits that drop the points well inside the circle.  The boundary runs on
    # the rim where the rim cuts holes, and on hole edges inside it where a bar or a dark square
    # faces the rim; nothing lies outside the rim.  Dropping outliers on both sides would pull
    # the radius in by several pixels, and with it flag complete squares at the rim as cut.
    for _ in range(6):
        y, x = pts[keep, 0], pts[keep, 1]
        a = np.column_stack([2 * y, 2 * x, np.ones(len(y))])
        (cy, cx, c), *_ = np.linalg.lstsq(a, y**2 + x**2, rcond=None)
        radius = float(np.sqrt(max(c + cy**2 + cx**2, 0.0)))
        signed = np.hypot(pts[:, 0] - cy, pts[:, 1] - cx) - radius
        keep = signed > -max(2.0, 2.0 * float(np.median(np.abs(signed[keep]))))
    resid = np.abs(signed)
    # The rim bounds the mesh: the fitted circle should enclose (almost) all of the region.
    yy, xx = np.nonzero(region)
    outside = np.mean(np.hypot(yy - cy, xx - cx) > radius * 1.03)
    if radius <= 0 or outside > 0.05 or np.median(resid[keep]) > 0.02 * radius:
        return None
    return (float(cy), float(cx)), radius


def _corners(cx: np.ndarray, cy: np.ndarray, side: float, angle: float) -> np.ndarray:
    """(N, 4, 2) corner polygons in YX."""
    a = np.deg2rad(angle)
    c, s = np.cos(a), np.sin(a)
    uv = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * side / 2
    xs = cx[:, None] + c * uv[None, :, 0] - s * uv[None, :, 1]
    ys = cy[:, None] + s * uv[None, :, 0] + c * uv[None, :, 1]
    return np.stack([ys, xs], axis=-1)


def find_squares(image: np.ndarray, min_pitch: float = 8.0, ncc_threshold: float = 0.25) -> tuple[pd.DataFrame, Lattice]:
    """Detect the grid squares of an atlas (:func:`iter_find_squares` run to its end)."""
    return drain(iter_find_squares(image, min_pitch, ncc_threshold))[0]


def iter_find_squares(
    image: np.ndarray, min_pitch: float = 8.0, ncc_threshold: float = 0.25
) -> Generator[Progress, None, tuple[pd.DataFrame, Lattice]]:
    """Detect the grid squares of an atlas, yielding :class:`~napari_cryo.tasks.Progress` between steps.

    Parameters
    ----------
    image : numpy.ndarray
        (Y, X) atlas.
    min_pitch : float
        Smallest mesh pitch considered, in pixels.
    ncc_threshold : float
        Lowest normalised cross-correlation accepted as a square.

    Returns
    -------
    squares : pandas.DataFrame
        ``center_y, center_x, side, angle, complete, ncc`` per square
        (pixels and degrees), sorted top to bottom, left to right.
    lattice : Lattice
        The mesh found.
        (Both are the generator's return value.)

    Raises
    ------
    CryoInputError
        If no lattice or no square is found.
    """
    total = FIND_STEPS

    def step(done: int, message: str) -> Progress:
        return Progress(done, total, message)

    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 2:
        raise CryoInputError(None, f"an atlas must be a 2D image, got shape {image.shape}")
    yield step(0, "normalising")
    full, _, _ = normalise_atlas(image)
    yield step(1, "finding the lattice")
    # Match on a binned copy with ~60 px per mesh cell: the same answer, many times faster.
    coarse = estimate_lattice(_bin(full, max(1, int(min(full.shape) // 512))), min_pitch)
    f0 = max(1, int(min(full.shape) // 512))
    factor = max(1, int(coarse.pitch * f0 // 60))
    norm = _bin(full, factor)
    yield step(2, "refining the lattice")
    lattice = estimate_lattice(norm, min_pitch)
    hole = norm > threshold_otsu(ndimage.gaussian_filter(norm, 1.0))
    bright = float(np.median(norm[hole])) if hole.any() else 1.0
    dark = float(np.median(norm[~hole])) if (~hole).any() else 0.0

    def match(frac: float) -> tuple[float, float, np.ndarray, np.ndarray]:
        side = lattice.pitch * frac
        ncc = match_template(norm, square_template(lattice.pitch, side, lattice.angle, dark, bright), pad_input=True, mode="reflect")
        # Neighbouring squares are at least 0.7 pitch apart in x or y (at 45°), so a square
        # neighbourhood of half-width 0.45 pitch never suppresses a real square.
        peaks = peak_local_max(ncc, min_distance=max(2, int(lattice.pitch * 0.45)), threshold_abs=ncc_threshold, exclude_border=False)
        score = float(np.mean(ncc[peaks[:, 0], peaks[:, 1]])) if len(peaks) else -1.0
        return score, side, ncc, peaks

    # The hole size: a coarse scan of bar widths, then bisection around the best.  The side
    # decides which squares the rim or the image edge cuts, so it is worth a pixel.
    fracs = np.linspace(0.5, 0.92, N_SIDES)
    matches = []
    for k, frac in enumerate(fracs):
        yield step(3 + k, f"matching templates {k + 1}/{len(fracs)}")
        matches.append(match(frac))
    _, side, ncc, peaks = max(matches, key=lambda m: m[0])
    if len(peaks) == 0:
        raise CryoInputError(None, "no squares found in the atlas")
    yield step(3 + len(fracs), "sizing the squares")
    side = _bisect_side(norm, peaks, lattice, side, float(fracs[1] - fracs[0]) * lattice.pitch, dark, bright)
    # Sub-pixel centres: parabola through the NCC peak and its neighbours; back to full pixels.
    cy, cx = _subpixel(ncc, peaks)
    cy, cx = (cy + 0.5) * factor - 0.5, (cx + 0.5) * factor - 0.5
    side *= factor
    lattice = Lattice(pitch=lattice.pitch * factor, angle=lattice.angle, side=float(side))
    norm = full
    corners = _corners(cx, cy, side, lattice.angle)
    h, w = image.shape
    inside_image = np.all((corners[..., 0] >= 0) & (corners[..., 0] <= h - 1) & (corners[..., 1] >= 0) & (corners[..., 1] <= w - 1), axis=1)
    yield step(4 + len(fracs), "finding the grid rim")
    region = grid_region(norm, lattice.pitch - side)
    rim = fit_rim(region)
    if rim is not None:
        (ry, rx), radius = rim
        inside_grid = np.all(np.hypot(corners[..., 0] - ry, corners[..., 1] - rx) <= radius + 0.01 * side, axis=1)
    else:  # no circular rim in view: test the corners against the meshed region itself
        inner = _corners(cx, cy, side * 0.92, lattice.angle)
        iy = np.clip(np.round(inner[..., 0]).astype(int), 0, h - 1)
        ix = np.clip(np.round(inner[..., 1]).astype(int), 0, w - 1)
        inside_grid = np.all(region[iy, ix], axis=1)
    squares = pd.DataFrame(
        {
            "center_y": cy,
            "center_x": cx,
            "side": side,
            "angle": lattice.angle,
            "complete": inside_image & inside_grid,
            "ncc": ncc[peaks[:, 0], peaks[:, 1]],
        }
    )
    order = np.lexsort((squares["center_x"].to_numpy(), np.round(squares["center_y"].to_numpy() / (lattice.pitch / 2))))
    yield step(total, f"{len(squares)} squares")
    return squares.iloc[order].reset_index(drop=True), lattice


def _bisect_side(norm: np.ndarray, peaks: np.ndarray, lattice: Lattice, side: float, step: float, dark: float, bright: float) -> float:
    """The hole side to about a pixel: bisection from ``side`` with a first ``step`` (pixels).

    Templates are scored only at the squares already found: the centres do
    not move with the side, and a whole-image match per step would double
    the time of an atlas.
    """
    windows = _windows(norm, peaks, square_template(lattice.pitch, side, lattice.angle).shape[0])

    def score(s: float) -> float:
        return _ncc_at(windows, square_template(lattice.pitch, s, lattice.angle, dark, bright))

    scored = {side: score(side)}
    for _ in range(3):
        step /= 2
        for candidate in (side - step, side + step):
            scored[candidate] = score(candidate)
        side = max(scored, key=scored.get)
    return side


def _windows(image: np.ndarray, centres: np.ndarray, size: int) -> np.ndarray:
    """(P, size, size) windows of ``image`` centred on ``centres`` (YX pixels), reflected at the edges."""
    half = size // 2
    padded = np.pad(image, half, mode="reflect")
    view = np.lib.stride_tricks.sliding_window_view(padded, (size, size))
    return view[centres[:, 0], centres[:, 1]]


def _ncc_at(windows: np.ndarray, template: np.ndarray) -> float:
    """Mean normalised cross-correlation of a template with each window (as :func:`match_template` at the centre)."""
    t = template - template.mean()
    w = windows - windows.mean(axis=(1, 2), keepdims=True)
    num = np.einsum("pij,ij->p", w, t)
    den = np.sqrt(np.einsum("pij,pij->p", w, w) * float(np.sum(t * t)))
    return float(np.mean(num / np.maximum(den, 1e-12)))


def _subpixel(ncc: np.ndarray, peaks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    h, w = ncc.shape
    out = []
    for axis in (0, 1):
        p = peaks[:, axis].astype(int)
        lo = np.clip(p - 1, 0, (h if axis == 0 else w) - 1)
        hi = np.clip(p + 1, 0, (h if axis == 0 else w) - 1)
        if axis == 0:
            a, b, c = ncc[lo, peaks[:, 1]], ncc[p, peaks[:, 1]], ncc[hi, peaks[:, 1]]
        else:
            a, b, c = ncc[peaks[:, 0], lo], ncc[peaks[:, 0], p], ncc[peaks[:, 0], hi]
        denom = a - 2 * b + c
        delta = np.where(np.abs(denom) > 1e-9, 0.5 * (a - c) / denom, 0.0)
        out.append(p + np.clip(delta, -0.5, 0.5))
    return out[0], out[1]


def square_corners(squares: pd.DataFrame) -> np.ndarray:
    """(N, 4, 2) YX corner polygons of a square table (for a Shapes layer)."""
    return np.concatenate(
        [
            _corners(np.array([r.center_x]), np.array([r.center_y]), float(r.side), float(r.angle))
            for r in squares.itertuples()
        ]
    ) if len(squares) else np.zeros((0, 4, 2))


def crop_squares(image: np.ndarray, squares: pd.DataFrame, size: int = 64, margin: float = 1.1) -> np.ndarray:
    """Axis-aligned crops of each square (rotated upright), resampled to ``size``² (:func:`iter_crop_squares` run to its end)."""
    return drain(iter_crop_squares(image, squares, size, margin))[0]


def iter_crop_squares(
    image: np.ndarray, squares: pd.DataFrame, size: int = 64, margin: float = 1.1, chunk: int = 32
) -> Generator[Progress, None, np.ndarray]:
    """Axis-aligned crops of each square (rotated upright), resampled to ``size``², yielding progress every ``chunk`` squares.

    Intensities are those of :func:`normalise_atlas` (bars ~0, bright squares
    ~1), so brightness stays comparable between squares and atlases.
    Returns the (N, size, size) crops.
    """
    norm, _, _ = normalise_atlas(image)
    out = np.zeros((len(squares), size, size), dtype=np.float32)
    coords = (np.arange(size) + 0.5) / size - 0.5
    vv, uu = np.meshgrid(coords, coords, indexing="ij")
    for i, r in enumerate(squares.itertuples()):
        if i % chunk == 0:
            yield Progress(i, len(squares), "cropping squares")
        extent = float(r.side) * margin
        a = np.deg2rad(float(r.angle))
        u, v = uu * extent, vv * extent
        x = r.center_x + np.cos(a) * u - np.sin(a) * v
        y = r.center_y + np.sin(a) * u + np.cos(a) * v
        out[i] = ndimage.map_coordinates(norm, [y, x], order=1, mode="constant", cval=0.0)
    return out


def paste_maps(maps: np.ndarray, squares: pd.DataFrame, shape: tuple[int, int], margin: float = 1.1) -> np.ndarray:
    """Put per-square maps (N, S, S), in crop coordinates, back into atlas coordinates (max where they overlap)."""
    out = np.zeros(shape, dtype=np.float32)
    size = maps.shape[-1]
    for m, r in zip(maps, squares.itertuples()):
        extent = float(r.side) * margin
        half = extent / np.sqrt(2)
        y0, y1 = int(max(0, r.center_y - half)), int(min(shape[0], r.center_y + half + 1))
        x0, x1 = int(max(0, r.center_x - half)), int(min(shape[1], r.center_x + half + 1))
        if y0 >= y1 or x0 >= x1:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(float)
        a = np.deg2rad(float(r.angle))
        dx, dy = xx - r.center_x, yy - r.center_y
        u = np.cos(a) * dx + np.sin(a) * dy
        v = -np.sin(a) * dx + np.cos(a) * dy
        iu = (u / extent + 0.5) * size - 0.5
        iv = (v / extent + 0.5) * size - 0.5
        inside = (iu >= -0.5) & (iu <= size - 0.5) & (iv >= -0.5) & (iv <= size - 0.5)
        vals = ndimage.map_coordinates(m, [iv, iu], order=1, mode="nearest")
        region = out[y0:y1, x0:x1]
        region[inside] = np.maximum(region[inside], vals[inside])
    return out
