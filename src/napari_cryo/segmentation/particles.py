"""Picking particles from a segmentation volume.

A prediction volume (Z, Y, X) of probabilities is thresholded; each blob of
the mask is a particle, or, with ``separate``, is split into particles by a
watershed of its distance map seeded at the map's peaks; a split never
leaves a part smaller than the minimum volume (its voxels go to the parts
beside it), so separating never loses a particle that picking it whole
would keep.  Particles smaller than a minimum volume are dropped, and of two particles closer than the
minimum spacing only the heavier (larger summed prediction) is kept.

Coordinates are in voxels (ZYX in arrays, XYZ in the TSV file); volumes in
Å^3; weights are sums of prediction values.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree
from skimage.feature import peak_local_max
from skimage.segmentation import watershed

from ..errors import CryoInputError
from ..io.atomic import atomic_path

_FULL = np.ones((3, 3, 3), dtype=bool)  # 26-connectivity


def _finite(value: float, name: str) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise CryoInputError(None, f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(value):
        raise CryoInputError(None, f"{name} must be finite, got {value}")
    return value


def _positive_pixel_size(pixel_size: float) -> float:
    pixel_size = _finite(pixel_size, "pixel size")
    if pixel_size <= 0:
        raise CryoInputError(None, f"pixel size must be positive, got {pixel_size}")
    return pixel_size


@dataclass
class PickSettings:
    """How to turn a segmentation into particles.

    Parameters
    ----------
    threshold : float
        Voxels with a value >= threshold belong to particles.
    min_volume : float
        Particles smaller than this, in Å^3, are dropped.
    min_spacing : float
        Minimum centre-to-centre distance in Å; of two closer particles the
        lighter is dropped.  0 keeps all.
    separate : bool
        Split touching particles by a watershed of the distance map.
    min_peak_distance : float or None
        When separating, peaks of the distance map closer than this (in Å,
        along any axis) give one particle.  None uses half the typical blob
        size: the largest inscribed radius of the blob holding the median
        foreground voxel, after ``min_volume`` has removed small blobs (so
        specks of noise, with few voxels, hardly count).  Two touching
        spheres are then split unless their centres are closer than about
        one radius.
    """

    threshold: float = 0.5
    min_volume: float = 0.0
    min_spacing: float = 0.0
    separate: bool = True
    min_peak_distance: float | None = None

    def __post_init__(self) -> None:
        self.threshold = _finite(self.threshold, "threshold")
        self.min_volume = _finite(self.min_volume, "minimum volume")
        if self.min_volume < 0:
            raise CryoInputError(None, f"minimum volume must not be negative, got {self.min_volume} Å^3")
        self.min_spacing = _finite(self.min_spacing, "minimum spacing")
        if self.min_spacing < 0:
            raise CryoInputError(None, f"minimum spacing must not be negative, got {self.min_spacing} Å")
        self.separate = bool(self.separate)
        if self.min_peak_distance is not None:
            self.min_peak_distance = _finite(self.min_peak_distance, "minimum peak distance")
            if self.min_peak_distance <= 0:
                raise CryoInputError(None, f"minimum peak distance must be positive, got {self.min_peak_distance} Å")


@dataclass(eq=False)  # arrays have no single truth value
class PickedParticles:
    """Particles found in a volume, heaviest first.

    Attributes
    ----------
    coordinates : numpy.ndarray
        (N, 3) float ZYX centres in voxels, weighted by the prediction.
    volume : numpy.ndarray
        (N,) volumes in Å^3 (voxel count times pixel size cubed).
    weight : numpy.ndarray
        (N,) sums of the prediction over each particle's voxels.
    """

    coordinates: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    volume: np.ndarray = field(default_factory=lambda: np.zeros(0))
    weight: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def __len__(self) -> int:
        return len(self.weight)


def pick_particles(volume: np.ndarray, pixel_size: float, settings: PickSettings) -> PickedParticles:
    """Find particles in a segmentation volume.

    Parameters
    ----------
    volume : numpy.ndarray
        (Z, Y, X) prediction, e.g. probabilities in [0, 1]; any array-like
        (a memory map is read as needed).
    pixel_size : float
        Voxel size in Å.
    settings : PickSettings
        Threshold, minimum volume, minimum spacing and separation.

    Returns
    -------
    PickedParticles
        Sorted by descending weight.

    Raises
    ------
    CryoInputError
        If the volume is not 3-D or the pixel size is not positive.
    """
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise CryoInputError(None, f"a segmentation volume must be 3-D, got shape {volume.shape}")
    pixel_size = _positive_pixel_size(pixel_size)
    voxel_volume = pixel_size**3

    mask = volume >= settings.threshold
    blobs, n = ndimage.label(mask, structure=_FULL)
    del mask
    if n == 0:
        return PickedParticles()
    # Blobs below the minimum volume can only split into smaller particles,
    # which would be dropped too: remove them before the costly separation.
    small = np.bincount(blobs.ravel(), minlength=n + 1) * voxel_volume < settings.min_volume
    small[0] = False
    if small.any():
        blobs[small[blobs]] = 0
    if settings.separate:
        labels = _separate(blobs, settings.min_peak_distance, pixel_size, settings.min_volume / voxel_volume)
    else:
        labels = blobs
    del blobs

    # Measure from the foreground voxels only: memory scales with the
    # particles, not with the box.
    flat = np.flatnonzero(labels)
    which = labels.ravel()[flat]
    n_labels = int(which.max()) + 1 if which.size else 1
    values = volume.ravel()[flat].astype(np.float64)
    count = np.bincount(which, minlength=n_labels)[1:]
    weight = np.bincount(which, weights=values, minlength=n_labels)[1:]
    centre = np.empty((len(count), 3))
    for axis, index in enumerate(np.unravel_index(flat, labels.shape)):
        weighted = np.bincount(which, weights=values * index, minlength=n_labels)[1:]
        plain = np.bincount(which, weights=index, minlength=n_labels)[1:]
        # A particle of zero total weight (threshold <= 0) has no weighted
        # centre; fall back to its geometric centre.
        with np.errstate(invalid="ignore", divide="ignore"):
            centre[:, axis] = np.where(weight > 0, weighted / weight, plain / np.maximum(count, 1))

    particle_volume = count * voxel_volume
    keep = (count > 0) & (particle_volume >= settings.min_volume)
    centre, particle_volume, weight = centre[keep], particle_volume[keep], weight[keep]
    order = np.argsort(-weight, kind="stable")
    centre, particle_volume, weight = centre[order], particle_volume[order], weight[order]

    if settings.min_spacing > 0 and len(weight) > 1:
        keep = _spaced(centre * pixel_size, settings.min_spacing)
        centre, particle_volume, weight = centre[keep], particle_volume[keep], weight[keep]
    return PickedParticles(coordinates=centre, volume=particle_volume, weight=weight)


def _separate(blobs: np.ndarray, min_peak_distance: float | None, pixel_size: float, min_voxels: float = 0.0) -> np.ndarray:
    """Split the blobs of a label volume at the peaks of their distance maps.

    Relabels ``blobs`` in place and returns it: a blob keeps its label for
    its first part, further parts get new labels after the largest.  A part
    under ``min_voxels`` loses its seed and the watershed runs again, so its
    voxels join the parts beside it; a blob left with one seed stays whole.
    An irregular blob (a particle merged with a weaker response beside it)
    has several distance peaks, and splitting it into parts that are each
    too small would drop the particle.  Works
    blob by blob on bounding boxes, so memory follows the largest blob.
    Outside the volume counts as background, so a blob cut by the box edge
    still peaks inside the box.
    """
    boxes = ndimage.find_objects(blobs)
    distances: dict[int, np.ndarray] = {}
    radius, size = [], []
    for index, box in enumerate(boxes, start=1):
        if box is None:
            continue
        own = blobs[box] == index
        size.append(int(own.sum()))
        if min(own.shape) <= 2:
            # Every voxel touches the background: a flat distance map of 1
            # gives one seed, so there is nothing to split.
            radius.append(1.0)
            continue
        distance = ndimage.distance_transform_edt(np.pad(own, 1))[1:-1, 1:-1, 1:-1]
        distances[index] = distance.astype(np.float32)
        radius.append(float(distances[index].max()))
    if min_peak_distance is None:
        spacing = _weighted_median(np.array(radius), np.array(size)) if radius else 1.0
    else:
        spacing = min_peak_distance / pixel_size
    spacing = max(1, round(spacing))

    next_label = len(boxes) + 1
    for index, distance in distances.items():
        box = boxes[index - 1]
        if max(s.stop - s.start for s in box) - 1 <= spacing:
            continue  # all voxels within the peak distance: one peak at most
        peaks = np.zeros(distance.shape, dtype=bool)
        peaks[tuple(peak_local_max(distance, min_distance=spacing, exclude_border=False).T)] = True
        # Peaks on a plateau touch each other: make them one seed.
        seeds, n_seeds = ndimage.label(peaks, structure=_FULL)
        if n_seeds <= 1:
            continue
        own = blobs[box] == index
        parts = watershed(-distance, seeds, mask=own, connectivity=3)
        big = np.bincount(parts[own], minlength=n_seeds + 1) >= min_voxels
        big[0] = False
        if not big.all() and n_seeds > 1:
            n_seeds = int(big.sum())
            if n_seeds <= 1:
                continue
            seeds = np.where(big[seeds], np.cumsum(big)[seeds], 0)
            parts = watershed(-distance, seeds, mask=own, connectivity=3)
        parts = parts[own]
        blobs[box][own] = np.where(parts == 1, index, parts + (next_label - 2))
        next_label += n_seeds - 1
    return blobs


def _weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    """The value below and above which lie half of the total weight."""
    order = np.argsort(values)
    cumulative = np.cumsum(weights[order])
    return float(values[order][np.searchsorted(cumulative, cumulative[-1] / 2.0)])


def _spaced(points: np.ndarray, min_spacing: float) -> np.ndarray:
    """Indices of points to keep so none is closer than ``min_spacing`` to another.

    ``points`` are sorted heaviest first; each point is dropped if it is
    closer than ``min_spacing`` to a heavier point that is kept.
    """
    pairs = cKDTree(points).query_pairs(min_spacing, output_type="ndarray")
    if len(pairs):
        gap = np.linalg.norm(points[pairs[:, 0]] - points[pairs[:, 1]], axis=1)
        pairs = pairs[gap < min_spacing]  # query_pairs includes the boundary
    # query_pairs gives i < j, so i is the heavier; visiting pairs by i, a
    # point's own fate is settled before it can drop others.
    pairs = pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))] if len(pairs) else pairs
    dropped = np.zeros(len(points), dtype=bool)
    for i, j in pairs:
        if not dropped[i]:
            dropped[j] = True
    return np.flatnonzero(~dropped)


def write_coordinates_tsv(
    path: str | os.PathLike, particles: PickedParticles, pixel_size: float, overwrite: bool = False
) -> Path:
    """Write particles as tab-separated text, atomically.

    The header is ``x  y  z  volume_A3  weight`` (tab-separated); x, y, z are
    in pixels.  The pixel size is not written (the coordinates' unit is the
    tomogram's pixel); it is checked so that a call cannot silently pass
    coordinates in another unit.

    Parameters
    ----------
    path : str or os.PathLike
        Output file.
    particles : PickedParticles
        The particles, coordinates ZYX in voxels.
    pixel_size : float
        Voxel size in Å of the coordinates; must be positive.
    overwrite : bool
        Whether an existing file may be replaced.

    Returns
    -------
    pathlib.Path
        The file written.

    Raises
    ------
    CryoInputError
        If the file exists and ``overwrite`` is false, or cannot be written.
    """
    _positive_pixel_size(pixel_size)
    zyx = np.asarray(particles.coordinates, dtype=float).reshape(-1, 3)
    table = np.column_stack([zyx[:, ::-1], np.asarray(particles.volume, float), np.asarray(particles.weight, float)])
    with atomic_path(path, overwrite=overwrite) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            f.write("x\ty\tz\tvolume_A3\tweight\n")
            np.savetxt(f, table, fmt=["%.3f", "%.3f", "%.3f", "%.10g", "%.10g"], delimiter="\t")
    return Path(path)


def write_picks(
    path: str | os.PathLike,
    particles: PickedParticles,
    pixel_size: float,
    tomogram: str,
    overwrite: bool = False,
) -> Path:
    """Write picks from a segmentation: the one writer of the widget and ``napari-cryo segment pick``.

    A ``.tsv`` or ``.txt`` path gets tab-separated text (:func:`write_coordinates_tsv`);
    anything else a RELION STAR file with ``rlnCoordinateX/Y/Z`` in pixels, the weight as
    ``rlnAutopickFigureOfMerit``, the volume in Å³ as ``napariCryoVolumeA3`` and the
    tomogram as ``rlnTomoName``.

    Parameters
    ----------
    path : str or os.PathLike
        Output file.
    particles : PickedParticles
        The particles, coordinates ZYX in voxels.
    pixel_size : float
        Voxel size in Å.
    tomogram : str
        The tomogram's name (see :func:`~.files.tomogram_name`).
    overwrite : bool
        Whether an existing file may be replaced.

    Returns
    -------
    pathlib.Path
        The file written.
    """
    import pandas as pd

    from ..io.star import write_coordinates

    if Path(path).suffix.lower() in (".tsv", ".txt"):
        return write_coordinates_tsv(path, particles, pixel_size, overwrite=overwrite)
    features = pd.DataFrame({"rlnAutopickFigureOfMerit": np.asarray(particles.weight, float), "napariCryoVolumeA3": np.asarray(particles.volume, float)})
    coordinates = np.asarray(particles.coordinates, dtype=float).reshape(-1, 3)
    return write_coordinates(path, coordinates, features, pixel_size, micrograph_name=tomogram, overwrite=overwrite)
