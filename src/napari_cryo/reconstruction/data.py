"""Particles for reconstruction, streamed from their stacks a batch at a time.

:class:`ParticleData` reads a RELION particle STAR file, resolves and checks
every stack it names, and gathers the per-particle CTF parameters, all in
the constructor and without reading any image.  Images are read only by
:meth:`ParticleData.images` (and the batch methods built on it), a few
hundred at a time, so memory does not grow with the number of particles:
the object itself holds a few small arrays per particle.

Images are read with positioned reads (``os.pread``) at the offsets the MRC
header gives rather than through a long-lived memory map: pages of a kept
memory map count towards the process's resident memory, so an epoch over a
large data set would look (and, under memory pressure, behave) as if the
whole stack were loaded.

Images of an odd size lose their last row and column as they are read (the
transforms, RELION's too, need an even box; the centre pixel ``L // 2`` and
the pixel size stay the same).  Each image then goes through, in order:
contrast inversion (optional), Fourier cropping to the working box, phase flipping (optional), normalisation to
zero mean and unit standard deviation of the background, and a soft
circular mask.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import scipy.fft

from ..errors import CryoInputError
from ..io.mrc import MODE_DTYPES, MrcInfo, read_header, read_mrc
from ..io.particles import parse_image_names, resolve_stack_path
from ..io.star import IMAGE_PIXEL_SIZE_COLUMNS, ParticleTable, particle_table

if TYPE_CHECKING:
    import torch

#: CTF parameter -> STAR column; per particle, from the row or its optics group.
CTF_COLUMNS = {
    "defocus_u": "rlnDefocusU",
    "defocus_v": "rlnDefocusV",
    "defocus_angle": "rlnDefocusAngle",
    "voltage": "rlnVoltage",
    "cs": "rlnSphericalAberration",
    "amplitude_contrast": "rlnAmplitudeContrast",
    "phase_shift": "rlnPhaseShift",
    "bfactor": "rlnCtfBfactor",
}
#: Values used when an optional CTF column is absent.
CTF_DEFAULTS = {"phase_shift": 0.0, "bfactor": 0.0}
#: Default mask radius as a fraction of the half box.
DEFAULT_MASK_RADIUS = 0.9
#: Width in pixels (of the working box) of the mask's cosine edge.
MASK_EDGE = 3.0
#: Below this fraction of the pixels outside the mask, statistics use the whole image.
MIN_BACKGROUND_FRACTION = 0.05

CtfFunction = Callable[[dict[str, np.ndarray], int, float], "np.ndarray | torch.Tensor"]


@dataclass
class ParticleBatch:
    """Images and CTF parameters of some particles, ready for a model.

    Attributes
    ----------
    indices : numpy.ndarray
        (B,) int64 particle indices (positions in the :class:`ParticleData`).
    images : torch.Tensor
        (B, box, box) float32 preprocessed images.
    ctf : dict of str to torch.Tensor, or None
        (B,) float32 CTF parameters in STAR units (keys of :data:`CTF_COLUMNS`),
        ``None`` when the data set has no CTF.
    """

    indices: np.ndarray
    images: torch.Tensor
    ctf: dict[str, torch.Tensor] | None


def soft_circular_mask(box: int, radius: float, edge: float = MASK_EDGE) -> np.ndarray:
    """A circular mask, 1 up to ``radius - edge`` and falling to 0 at ``radius``.

    Parameters
    ----------
    box : int
        Image size in pixels.
    radius : float
        Radius in pixels, from the centre pixel ``box // 2`` (the FFT origin
        after ``fftshift``, where the particle centre is).
    edge : float
        Width of the raised-cosine fall-off inside ``radius``, in pixels; the
        mask is exactly 0 from ``radius`` out, so a radius of at most half
        the box leaves the box edges at 0 (no wrap-around jump).

    Returns
    -------
    numpy.ndarray
        (box, box) float32.
    """
    r = _radius_grid(box)
    t = np.clip((r - (radius - edge)) / max(edge, 1e-6), 0.0, 1.0)
    return (0.5 * (1.0 + np.cos(np.pi * t))).astype(np.float32)


def normalise_background(images: np.ndarray, radius: float) -> np.ndarray:
    """Scale each image to zero mean and unit standard deviation of its background.

    The background is every pixel farther than ``radius`` from the centre;
    when that leaves fewer than :data:`MIN_BACKGROUND_FRACTION` of the pixels,
    the whole image is used instead.  A flat background (noiseless or
    zero-padded images) gives the mean only; the scale is then the whole
    image's standard deviation.

    Parameters
    ----------
    images : numpy.ndarray
        (B, L, L) images.
    radius : float
        Radius in pixels of the region the particle may occupy.

    Returns
    -------
    numpy.ndarray
        (B, L, L) float32, normalised.
    """
    images = np.asarray(images, dtype=np.float32)
    shape = images.shape
    background = (_radius_grid(shape[-1]) > radius).ravel()
    if background.mean() < MIN_BACKGROUND_FRACTION:
        background[:] = True
    # Weighted sums (einsum, not BLAS, which threads badly on small products) instead of gathering pixels.
    weights = (background / np.float32(background.sum())).astype(np.float32)
    flat = images.reshape(len(images), -1)
    centred = flat - np.einsum("ij,j->i", flat, weights)[:, None]  # two passes: no cancellation for large offsets
    std = np.sqrt(np.einsum("ij,ij,j->i", centred, centred, weights))
    flat_bg = ~(std > 1e-6 * np.abs(centred).max(axis=1))
    if flat_bg.any():
        # A flat background (noiseless or zero-padded images) cannot set the scale: use the whole image.
        std[flat_bg] = centred[flat_bg].std(axis=1)
    std[std == 0] = 1.0
    centred /= std[:, None]
    return centred.reshape(shape)


def fourier_crop(images: np.ndarray, box: int) -> np.ndarray:
    """Downsample images by keeping the central ``box`` x ``box`` of their spectrum.

    The ideal low-pass: frequencies below the new Nyquist frequency are kept
    exactly and nothing aliases.  The mean (the DC term) is kept.

    Parameters
    ----------
    images : numpy.ndarray
        (B, L, L) images.
    box : int
        New size, even and at most L.

    Returns
    -------
    numpy.ndarray
        (B, box, box) float32.
    """
    images = np.asarray(images, dtype=np.float32)
    size = images.shape[-1]
    if box == size:
        return images
    return _from_spectrum(_crop_spectrum(scipy.fft.rfft2(images), size, box), size, box)


def phase_flip(images: np.ndarray, ctf: np.ndarray) -> np.ndarray:
    """Multiply each image's spectrum by the sign of its CTF (+1 where the CTF is 0).

    Parameters
    ----------
    images : numpy.ndarray
        (B, L, L) images.
    ctf : numpy.ndarray
        (B, L, L // 2 + 1) CTF on the ``numpy.fft.rfft2`` grid (unshifted).

    Returns
    -------
    numpy.ndarray
        (B, L, L) float32.
    """
    images = np.asarray(images, dtype=np.float32)
    size = images.shape[-1]
    spectrum = scipy.fft.rfft2(images) * np.where(np.asarray(ctf) < 0, -1.0, 1.0).astype(np.float32)
    return scipy.fft.irfft2(spectrum, s=(size, size)).astype(np.float32)


def _radius_grid(box: int) -> np.ndarray:
    y, x = np.ogrid[:box, :box]
    c = box // 2
    return np.sqrt((y - c) ** 2 + (x - c) ** 2)


def _crop_spectrum(spectrum: np.ndarray, size: int, box: int) -> np.ndarray:
    """Keep frequencies -box/2 .. box/2-1 (rows) and 0 .. box/2 (columns) of an rfft2."""
    half = box // 2
    rows = np.concatenate([np.arange(half), np.arange(size - half, size)])
    return spectrum[:, rows, : half + 1]


def _from_spectrum(spectrum: np.ndarray, size: int, box: int) -> np.ndarray:
    # irfft2 divides by box**2 where the forward transform summed size**2 pixels.
    return (scipy.fft.irfft2(spectrum, s=(box, box)) * (box / size) ** 2).astype(np.float32)


def _physics_ctf() -> CtfFunction:
    """The reconstruction's own CTF (torch), adapted to numpy parameters."""
    import torch

    from .physics import ctf_2d

    def ctf_fn(params: dict[str, np.ndarray], box: int, pixel_size: float) -> np.ndarray:
        tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in params.items()}
        return ctf_2d(tensors, box, pixel_size).detach().cpu().numpy()

    return ctf_fn


def _as_numpy(values: object) -> np.ndarray:
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()  # type: ignore[union-attr]
    return np.asarray(values)


@dataclass(frozen=True)
class _StackReader:
    """How to read image k of one stack file with a positioned read."""

    path: Path
    shape: tuple[int, ...]  # as read_mrc returns it: (N, Y, X), (Y, X) for one image
    pixel_size: float  # from the header, 0 when unset
    dtype: np.dtype | None  # None: not readable by offset (compressed, 4-bit, unusual axes)
    offset: int
    image_bytes: int

    @classmethod
    def for_info(cls, info: MrcInfo) -> _StackReader:
        h = info.header
        plain = info.compressed is None and info.mode in MODE_DTYPES and info.axis_order == (1, 2, 3)
        dtype = None
        if plain:
            base = np.dtype(np.uint8) if info.unsigned_bytes else MODE_DTYPES[info.mode]
            dtype = base.newbyteorder(">" if info.big_endian else "<")
        nbytes = int(h["nx"]) * int(h["ny"]) * (dtype.itemsize if dtype is not None else 0)
        return cls(info.path, tuple(info.shape), info.pixel_size, dtype, info.data_offset, nbytes)

    def read(self, which: np.ndarray, out: np.ndarray) -> None:
        """Read images ``which`` (sorted) into ``out`` as float32."""
        shape = out.shape[1:]
        if self.dtype is None:
            data, _ = read_mrc(self.path)
            data = data.reshape(-1, *shape)
            out[:] = data[which]
            return
        fd = os.open(self.path, os.O_RDONLY)
        try:
            # One read per run of consecutive images: sequential data reads in big pieces.
            breaks = np.flatnonzero(np.diff(which) != 1) + 1
            for run in np.split(np.arange(len(which)), breaks):
                first, count = int(which[run[0]]), len(run)
                raw = os.pread(fd, count * self.image_bytes, self.offset + first * self.image_bytes)
                if len(raw) < count * self.image_bytes:
                    raise CryoInputError(self.path, f"file is truncated at image {first + count}")
                out[run] = np.frombuffer(raw, dtype=self.dtype).reshape(count, *shape)
        finally:
            os.close(fd)


class ParticleData:
    """Particle images and CTF parameters of a STAR file, streamed for reconstruction.

    Everything that can be checked without reading images is checked here,
    so a bad data set fails at once with a :class:`CryoInputError` that names
    the file.  Images are read by :meth:`images`, never all at once.

    Parameters
    ----------
    star_path : str or os.PathLike
        RELION particle STAR file (3.0 or 3.1+, one or several optics
        groups) whose ``rlnImageName`` entries (``N@stack.mrcs``) name the
        images.  Stacks are found as :func:`~napari_cryo.io.particles.resolve_stack_path`
        describes.
    box : int, optional
        Working box in pixels: images are Fourier-cropped to it.  Even and
        at most the image size; ``None`` keeps the image size.
    mask_radius : float, optional
        Radius of the circular mask as a fraction of the half box (1 touches
        the box edges), default :data:`DEFAULT_MASK_RADIUS` (0.9).  The mask
        falls from 1 to 0 over the last :data:`MASK_EDGE` (3) pixels of the
        working box inside the radius, and is 0 outside it; the pixels
        outside the radius are the background for normalisation.  A radius
        of 1.5 or more leaves the images unmasked (and normalised over the
        whole image).
    normalise : bool
        Scale each image to zero mean and unit standard deviation of its
        background (see :func:`normalise_background`).
    phase_flip : bool
        Multiply each spectrum by the sign of its CTF.  Needs CTF columns.
    invert : bool
        Invert the contrast, for stacks with dark particles on a light background
        (as projected in a raw micrograph); RELION-extracted particles are white.
    rows : sequence of int, optional
        Use only these rows of the particle table (0-based), in this order.
    ctf_fn : callable, optional
        ``ctf_fn(params, box, pixel_size)`` -> (B, box, box // 2 + 1) CTF on
        the ``rfft2`` grid, where ``params`` maps the keys of
        :data:`CTF_COLUMNS` to (B,) arrays.  Used for phase flipping;
        defaults to :func:`napari_cryo.reconstruction.physics.ctf_2d`.

    Attributes
    ----------
    star_path : pathlib.Path
        The STAR file.
    table : ParticleTable
        The whole particle table and its optics.
    n : int
        Number of particles (also ``len(data)``).
    stack_box : int
        Image size in the stacks.
    original_box, box : int
        Image size used (``stack_box``, less one when odd) and working size
        after Fourier cropping.
    original_pixel_size, pixel_size : float
        Å per pixel of the stacks and of the working box.
    ctf : dict of str to numpy.ndarray, or None
        (N,) float32 CTF parameters in STAR units (Å, degrees, kV, mm,
        fraction), ``None`` without CTF columns.
    optics_group : numpy.ndarray
        (N,) int32 ``rlnOpticsGroup`` (1 when the file has none).
    image_names : numpy.ndarray
        (N,) ``rlnImageName`` strings, to match poses to particles.
    warnings : list of str
        What the data set lacks or what was assumed, for the user.

    Raises
    ------
    CryoInputError
        For an empty STAR file, no ``rlnImageName``, missing stacks, stacks
        with images of different or non-square sizes, an image number past
        the end of its stack, a bad ``box``, ``mask_radius`` or ``rows``,
        some CTF columns without the others, non-numeric CTF values, pixel
        sizes that are not positive numbers, or phase flipping without CTF
        columns.
    """

    def __init__(
        self,
        star_path: str | os.PathLike,
        box: int | None = None,
        mask_radius: float | None = None,
        normalise: bool = True,
        phase_flip: bool = False,
        invert: bool = False,
        rows: Sequence[int] | None = None,
        ctf_fn: CtfFunction | None = None,
    ) -> None:
        self.star_path = Path(star_path)
        self.table: ParticleTable = particle_table(self.star_path)
        self.warnings: list[str] = []
        self.normalise = bool(normalise)
        self.phase_flip = bool(phase_flip)
        self.invert = bool(invert)
        df = self.table.table
        if len(df) == 0:
            raise CryoInputError(self.star_path, "holds no particle rows")
        if "rlnImageName" not in df.columns:
            raise CryoInputError(self.star_path, "has no rlnImageName column, so no particle images")
        self.rows = self._check_rows(rows, len(df))
        self.n = len(self.rows)

        names = df["rlnImageName"].iloc[self.rows]
        self.image_names = names.astype(str).str.strip().to_numpy(dtype=object)
        index, stacks = parse_image_names(names, self.star_path)
        self._index = index
        self._readers, self._stack_id = self._open_stacks(stacks, index)
        self.stack_box = int(self._readers[0].shape[-1])
        self.original_box = self.stack_box - self.stack_box % 2
        if self.original_box < 4:
            raise CryoInputError(self._readers[0].path, f"images are {self.stack_box}x{self.stack_box} pixels, too small to reconstruct from")
        if self.original_box != self.stack_box:
            self.warnings.append(f"images are {self.stack_box}x{self.stack_box} pixels, an odd size: their last row and column are left out "
                                 f"(box {self.original_box}, same centre and pixel size)")
        self.box = self._check_box(box)
        self.mask_radius = DEFAULT_MASK_RADIUS if mask_radius is None else float(mask_radius)
        if not (np.isfinite(self.mask_radius) and self.mask_radius > 0):
            raise CryoInputError(None, f"mask radius must be a positive fraction of the half box, got {mask_radius}")
        self._mask = soft_circular_mask(self.box, self.mask_radius * self.box / 2)

        self.ctf = self._read_ctf()
        group = self.table.table.get("rlnOpticsGroup")
        self.optics_group = (
            np.ones(self.n, dtype=np.int32) if group is None else group.iloc[self.rows].to_numpy(dtype=np.int32)
        )
        self.original_pixel_size = self._read_pixel_size()
        self.pixel_size = self.original_pixel_size * self.original_box / self.box
        premultiplied = self.table.optics_column("rlnCtfDataAreCtfPremultiplied")
        if premultiplied is not None and (pd.to_numeric(premultiplied, errors="coerce").iloc[self.rows] == 1).any():
            self.warnings.append("images are CTF-premultiplied (rlnCtfDataAreCtfPremultiplied = 1)")

        self._ctf_fn: CtfFunction | None = None
        if self.phase_flip:
            if self.ctf is None:
                raise CryoInputError(self.star_path, "phase flipping needs the CTF columns, which the file lacks")
            self._ctf_fn = ctf_fn if ctf_fn is not None else _physics_ctf()

    def at_box(self, box: int) -> ParticleData:
        """The same particles and options at another working box (sharing the open stacks).

        Parameters
        ----------
        box : int
            Even, at most the image size.

        Returns
        -------
        ParticleData
        """
        other = copy.copy(self)
        other.box = self._check_box(box)
        other._mask = soft_circular_mask(other.box, self.mask_radius * other.box / 2)
        other.pixel_size = self.original_pixel_size * self.original_box / other.box
        return other

    # -- checks done once, before any image is read -------------------------

    def _check_rows(self, rows: Sequence[int] | None, total: int) -> np.ndarray:
        if rows is None:
            return np.arange(total, dtype=np.int64)
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if len(rows) == 0:
            raise CryoInputError(self.star_path, "the rows selected hold no particles")
        bad = rows[(rows < 0) | (rows >= total)]
        if len(bad):
            raise CryoInputError(self.star_path, f"row {int(bad[0])} out of range: the file has {total} particles (rows 0..{total - 1})")
        return rows

    def _open_stacks(self, stacks: np.ndarray, index: np.ndarray) -> tuple[list[_StackReader], np.ndarray]:
        unique = list(dict.fromkeys(stacks))
        resolved = [resolve_stack_path(name, self.star_path) for name in unique]
        missing = [name for name, path in zip(unique, resolved) if path is None]
        if missing:
            shown = ", ".join(repr(m) for m in missing[:3])
            more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            raise CryoInputError(self.star_path, f"{len(missing)} of {len(unique)} referenced stacks not found: {shown}{more}")
        readers = []
        for path in resolved:
            info = read_header(path)  # type: ignore[arg-type]
            if info.kind == "volume-stack":
                raise CryoInputError(path, "holds volumes, not particle images")
            if info.mode in (3, 4):
                raise CryoInputError(path, f"mode {info.mode} holds complex (Fourier) data, not particle images")
            ny, nx = info.shape[-2:]
            if ny != nx:
                raise CryoInputError(path, f"images are {nx}x{ny} pixels, not square")
            if info.compressed:
                self.warnings.append(f"{path.name} is compressed: every read decompresses it (decompress it to go faster)")
            readers.append(_StackReader.for_info(info))
        sizes = {r.shape[-1]: r.path.name for r in readers}
        if len(sizes) > 1:
            listed = ", ".join(f"{s}x{s} ({name})" for s, name in sorted(sizes.items()))
            raise CryoInputError(self.star_path, f"stacks hold images of different sizes: {listed}; choose rows of one size")
        lookup = {name: i for i, name in enumerate(unique)}
        stack_id = np.fromiter((lookup[s] for s in stacks), dtype=np.int32, count=len(stacks))
        counts = np.array([r.shape[0] if len(r.shape) == 3 else 1 for r in readers])
        over = np.flatnonzero(index >= counts[stack_id])
        if len(over):
            i = int(over[0])
            raise CryoInputError(
                self.star_path,
                f"rlnImageName {self.image_names[i]} asks for image {index[i] + 1}, {readers[stack_id[i]].path.name} has {counts[stack_id[i]]}",
            )
        return readers, stack_id

    def _check_box(self, box: int | None) -> int:
        if box is None:
            return self.original_box
        if int(box) != box or box < 4 or box % 2 or box > self.original_box:
            odd = f" (the even part of {self.stack_box})" if self.stack_box != self.original_box else ""
            raise CryoInputError(
                self.star_path, f"box {box} must be an even number of pixels from 4 to the image size {self.original_box}{odd}"
            )
        return int(box)

    def _column(self, column: str) -> np.ndarray | None:
        values = self.table.optics_column(column)
        if values is None:
            return None
        numbers = pd.to_numeric(values.iloc[self.rows], errors="coerce").to_numpy(dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(numbers))
        if len(bad):
            row = int(self.rows[bad[0]])
            raise CryoInputError(self.star_path, f"column {column} has a non-numeric or missing value in row {row + 1}")
        return numbers.astype(np.float32)

    def _read_ctf(self) -> dict[str, np.ndarray] | None:
        values = {key: self._column(column) for key, column in CTF_COLUMNS.items()}
        missing = [CTF_COLUMNS[k] for k, v in values.items() if v is None and k not in CTF_DEFAULTS]
        present = [CTF_COLUMNS[k] for k, v in values.items() if v is not None and k not in CTF_DEFAULTS]
        if missing and present:
            # Half a CTF is a damaged file, not a data set without CTF: reconstructing without it would hide that.
            raise CryoInputError(self.star_path, f"has {', '.join(present)} but no {', '.join(missing)}: the CTF needs them all")
        if missing:
            self.warnings.append(f"no CTF columns ({', '.join(missing)} missing): reconstructing without CTF correction")
            return None
        return {
            key: v if v is not None else np.full(self.n, CTF_DEFAULTS[key], dtype=np.float32) for key, v in values.items()
        }

    def _read_pixel_size(self) -> float:
        px = self.table.pixel_size(IMAGE_PIXEL_SIZE_COLUMNS)
        if px is not None:
            values = px.iloc[self.rows].to_numpy(dtype=float)
            bad = np.flatnonzero(~(np.isfinite(values) & (values > 0)))
            if len(bad):
                row = int(self.rows[bad[0]])
                raise CryoInputError(self.star_path, f"particle {row + 1} has no usable pixel size ({values[bad[0]]:g} Å); pixel sizes must be positive")
            low, high = float(values.min()), float(values.max())
            if high - low > 1e-3 * high:
                self.warnings.append(f"particles have pixel sizes from {low:g} to {high:g} Å; {values[0]:g} Å is used")
            return float(values[0])
        header = self._readers[0].pixel_size
        if header > 0:
            return float(header)
        if self.ctf is not None:
            raise CryoInputError(self.star_path, "no pixel size (rlnImagePixelSize) in the file or the stack header, needed for the CTF")
        self.warnings.append("no pixel size in the file or the stack header: assuming 1 Å")
        return 1.0

    # -- reading ------------------------------------------------------------

    def __len__(self) -> int:
        return self.n

    @property
    def has_ctf(self) -> bool:
        """Whether the file has CTF parameters."""
        return self.ctf is not None

    @property
    def stack_paths(self) -> list[Path]:
        """The resolved stack files."""
        return [r.path for r in self._readers]

    @property
    def image_mask(self) -> np.ndarray:
        """The soft circular mask applied to every image (box, box), for models that must see the same."""
        return self._mask

    def raw_images(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Read images as stored (float32), without any processing.

        Parameters
        ----------
        indices : sequence of int
            Particle indices, 0..n-1, in any order (repeats allowed).

        Returns
        -------
        numpy.ndarray
            (B, original_box, original_box) float32, in the order asked
            (an odd stack size without its last row and column).

        Raises
        ------
        IndexError
            If an index is out of range.
        CryoInputError
            If an image holds NaN or infinite values (naming the stack and
            the particle).
        """
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(indices) and (indices.min() < 0 or indices.max() >= self.n):
            raise IndexError(f"particle indices must be in 0..{self.n - 1}")
        size, stored = self.original_box, self.stack_box
        out = np.empty((len(indices), size, size), dtype=np.float32)
        stack, image = self._stack_id[indices], self._index[indices]
        order = np.lexsort((image, stack))  # per stack file, in file order
        starts = np.flatnonzero(np.diff(stack[order])) + 1
        for group in np.split(order, starts):
            if len(group) == 0:
                continue
            block = np.empty((len(group), stored, stored), dtype=np.float32)
            self._readers[stack[group[0]]].read(image[group], block)
            out[group] = block[:, :size, :size]  # an odd size loses its last row and column; the centre L // 2 stays
        self._check_finite(out, indices)
        return out

    def _check_finite(self, images: np.ndarray, indices: np.ndarray) -> None:
        finite = np.isfinite(images).all(axis=(1, 2))
        if finite.all():
            return
        j = int(np.flatnonzero(~finite)[0])
        i = int(indices[j])
        what = "NaN" if np.isnan(images[j]).any() else "infinite"
        path = self._readers[self._stack_id[i]].path
        raise CryoInputError(path, f"particle {i} (rlnImageName {self.image_names[i]}) holds {what} values")

    def images(self, indices: Sequence[int] | np.ndarray, masked: bool = True) -> np.ndarray:
        """Read and preprocess particle images.

        Inverted (if asked), Fourier-cropped to :attr:`box`, phase-flipped
        (if asked), normalised (if asked) and multiplied by the soft mask.

        Parameters
        ----------
        indices : sequence of int
            Particle indices, 0..n-1, in any order.
        masked : bool
            Apply the soft circular mask.  Alignment compares masked images
            (less background noise); back-projection takes them unmasked, as
            RELION does: the CTF spreads a particle's signal beyond the mask,
            and a map back-projected from masked images loses it (on
            noise-free 32-px images at 2 µm defocus the map came out at half
            its scale, correlation 0.95 with the truth, instead of 0.999).

        Returns
        -------
        numpy.ndarray
            (B, box, box) float32, in the order asked.
        """
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        images = self.raw_images(indices)
        if self.invert:
            images = np.negative(images, out=images)
        size, box = self.original_box, self.box
        if box != size or self.phase_flip:
            # One transform pair does both the crop and the flip.
            spectrum = scipy.fft.rfft2(images)
            if box != size:
                spectrum = _crop_spectrum(spectrum, size, box)
            if self.phase_flip:
                params = {k: v[indices] for k, v in self.ctf.items()}  # type: ignore[union-attr]
                ctf = _as_numpy(self._ctf_fn(params, box, self.pixel_size))  # type: ignore[misc]
                spectrum *= np.where(ctf < 0, -1.0, 1.0).astype(np.float32)
            images = _from_spectrum(spectrum, size, box)
        if self.normalise:
            images = normalise_background(images, self.mask_radius * box / 2)
        return images * self._mask if masked else images

    def batch(self, indices: Sequence[int] | np.ndarray, masked: bool = True) -> ParticleBatch:
        """Images and CTF parameters of some particles as torch tensors.

        Parameters
        ----------
        indices : sequence of int
            Particle indices, 0..n-1.
        masked : bool
            Apply the soft circular mask (see :meth:`images`).

        Returns
        -------
        ParticleBatch
        """
        import torch

        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        images = torch.from_numpy(self.images(indices, masked))
        ctf = None if self.ctf is None else {k: torch.from_numpy(v[indices]) for k, v in self.ctf.items()}
        return ParticleBatch(indices=indices, images=images, ctf=ctf)

    def batches(self, batch_size: int, shuffle: bool = True, seed: int = 0, epoch: int = 0, rows: np.ndarray | None = None,
                count: int | None = None) -> Iterator[ParticleBatch]:
        """One epoch over every particle (or ``rows``), ``batch_size`` at a time (the last batch may be smaller).

        Parameters
        ----------
        batch_size : int
            Particles per batch.
        shuffle : bool
            Visit the particles in a random order, the same for the same
            ``seed`` and ``epoch``; else in order.
        seed, epoch : int
            Choose the order.
        rows : numpy.ndarray, optional
            Only these particles (a rank's share of a run shared by several processes).
        count : int, optional
            Exactly this many batches of near-equal size instead (some may be
            empty), so that ranks with shares of different sizes stay in step.

        Yields
        ------
        ParticleBatch
        """
        if batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
        rows = np.arange(self.n) if rows is None else np.asarray(rows, dtype=np.int64)
        order = rows[np.random.default_rng([seed, epoch]).permutation(len(rows))] if shuffle else rows
        parts = np.array_split(order, count) if count is not None else [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        for part in parts:
            yield self.batch(part)

    def half_sets(self, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Split the particles into two random halves for the gold-standard FSC.

        Parameters
        ----------
        seed : int
            The same seed gives the same halves.

        Returns
        -------
        tuple of numpy.ndarray
            Sorted int64 particle indices; disjoint, together all particles,
            the first half one larger when ``n`` is odd.
        """
        order = np.random.default_rng(seed).permutation(self.n)
        half = (self.n + 1) // 2
        return np.sort(order[:half]), np.sort(order[half:])

    def __repr__(self) -> str:
        return (
            f"ParticleData({self.star_path.name!r}, n={self.n}, box={self.box} "
            f"(from {self.original_box}), pixel_size={self.pixel_size:.4g} Å, ctf={self.has_ctf})"
        )
