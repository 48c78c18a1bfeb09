"""MRC / MRCS / MAP / REC / ST files: header sniffing, lazy reading and atomic writing.

The header is parsed with mrcfile's header dtype, but the data block is
opened here as a plain :class:`numpy.memmap`, so a 4 GB tomogram opens in
milliseconds and holds no memory until napari asks for a slice.  Arrays are
returned in ZYX (YX for one image, NYX for an image stack) whatever the
file's ``mapc/mapr/maps`` axis order.  Compressed files (``.gz``, ``.bz2``)
cannot be memory-mapped and are read whole.
"""

from __future__ import annotations

import bz2
import gzip
import os
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable
from typing import Any

import numpy as np
from mrcfile.dtypes import HEADER_DTYPE

from ..errors import CryoInputError
from .atomic import atomic_path, reserve_space

#: File name endings read as MRC.
MRC_SUFFIXES = (".mrc", ".mrcs", ".map", ".rec", ".st", ".ali", ".mrc.gz", ".mrcs.gz", ".map.gz", ".mrc.bz2", ".map.bz2", ".mrcs.bz2")

#: MRC mode -> numpy dtype (little-endian; swapped for big-endian files).
#: Mode 101 (4-bit) is unpacked on read; modes 3 and 4 are complex.
MODE_DTYPES: dict[int, np.dtype] = {
    0: np.dtype(np.int8),
    1: np.dtype(np.int16),
    2: np.dtype(np.float32),
    3: np.dtype([("re", np.int16), ("im", np.int16)]),
    4: np.dtype(np.complex64),
    6: np.dtype(np.uint16),
    12: np.dtype(np.float16),
}
IMAGE_MODES = (0, 1, 2, 6, 12, 101)
HEADER_BYTES = 1024
#: IMOD's stamp (bytes 152-155); its flags (156-159) bit 0 set means signed bytes.
IMOD_STAMP = 1146047817

#: What a damaged compressed file raises while it is read.
_READ_ERRORS = (OSError, EOFError, zlib.error)
#: Compressed data are read in pieces of this size, so that a header claiming more
#: data than the file holds allocates no more than the file has.
_READ_CHUNK = 64 * 2**20

# Samples taken for contrast limits and the NaN check: a few whole planes, so
# that a memory-mapped file is read in large contiguous pieces.
_SAMPLE_PLANES = 5
_SAMPLE_VOXELS = 2_000_000


@dataclass
class MrcInfo:
    """What an MRC header says, in ZYX order and Å.

    Attributes
    ----------
    path : pathlib.Path
        The file.
    shape : tuple of int
        Shape of the array that :func:`read_mrc` returns (ZYX, YX or NYX).
    kind : str
        ``"image"`` (one 2D image), ``"stack"`` (several 2D images),
        ``"volume"`` or ``"volume-stack"``.
    mode : int
        MRC data mode.
    dtype : numpy.dtype
        Data type of the array returned.
    voxel_size : tuple of float
        Voxel size in Å along (Z, Y, X); zero where the header has no cell.
    origin : tuple of float
        Position in Å of the first voxel along (Z, Y, X): the header origin
        when it is set, else ``nstart * voxel_size``.
    nstart : tuple of int
        ``nzstart, nystart, nxstart`` mapped to (Z, Y, X).
    axis_order : tuple of int
        ``mapc, mapr, maps`` as stored.
    ispg : int
        Space group number (0 for image stacks, 1 for volumes, 401+ for
        volume stacks).
    nsymbt : int
        Extended header size in bytes.
    exttyp : str
        Extended header type (e.g. ``FEI1``), empty when unset.
    big_endian : bool
        Whether the file is big-endian.
    compressed : str or None
        ``"gzip"``, ``"bzip2"`` or ``None``.
    stats : dict
        ``dmin``, ``dmax``, ``dmean``, ``rms`` from the header.
    labels : list of str
        The header's text labels.
    header : dict
        Every header field as plain Python values (kept in layer metadata).
    """

    path: Path
    shape: tuple[int, ...]
    kind: str
    mode: int
    dtype: np.dtype
    voxel_size: tuple[float, float, float]
    origin: tuple[float, float, float]
    nstart: tuple[int, int, int]
    axis_order: tuple[int, int, int]
    ispg: int
    nsymbt: int
    exttyp: str
    big_endian: bool
    compressed: str | None
    stats: dict[str, float]
    labels: list[str] = field(default_factory=list)
    header: dict[str, Any] = field(default_factory=dict)
    unsigned_bytes: bool = False

    @property
    def data_offset(self) -> int:
        """Byte offset of the data block."""
        return HEADER_BYTES + self.nsymbt

    @property
    def pixel_size(self) -> float:
        """The X voxel size in Å (the usual 'pixel size')."""
        return float(self.voxel_size[2])

    @property
    def is_stack(self) -> bool:
        """Whether the first axis counts images rather than Z."""
        return self.kind in ("stack", "volume-stack")


def compression_of(path: str | os.PathLike) -> str | None:
    """Return ``"gzip"``, ``"bzip2"`` or ``None`` from the file name."""
    name = str(path).lower()
    if name.endswith(".gz"):
        return "gzip"
    if name.endswith(".bz2"):
        return "bzip2"
    return None


def _open_raw(path: Path, compressed: str | None):
    if compressed == "gzip":
        return gzip.open(path, "rb")
    if compressed == "bzip2":
        return bz2.open(path, "rb")
    return open(path, "rb")


def _read_head(path: Path, compressed: str | None, nbytes: int = HEADER_BYTES) -> bytes:
    try:
        with _open_raw(path, compressed) as fh:
            return fh.read(nbytes)
    except FileNotFoundError:
        raise CryoInputError(path, "file not found") from None
    except IsADirectoryError:
        raise CryoInputError(path, "is a directory, not an MRC file") from None
    except _READ_ERRORS as exc:
        raise CryoInputError(path, f"cannot be read ({exc})") from None


def _parse_header(raw: bytes, path: Path) -> tuple[np.record, bool]:
    """Parse the 1024-byte header; return it and whether it is big-endian."""
    if len(raw) < HEADER_BYTES:
        raise CryoInputError(path, f"too short for an MRC file ({len(raw)} bytes, the header alone is {HEADER_BYTES})")
    header = np.frombuffer(raw[:HEADER_BYTES], dtype=HEADER_DTYPE)[0]
    machst = bytes(header["machst"])
    if machst[:1] == b"\x11":
        big = True
    elif machst[:1] in (b"\x44", b"\x4c"):
        big = False
    else:
        # Old files have no machine stamp: take the byte order whose mode is sane.
        big = not (0 <= int(header["mode"]) <= 101)
    if big:
        header = np.frombuffer(raw[:HEADER_BYTES], dtype=HEADER_DTYPE.newbyteorder(">"))[0]
    return header, big


def _axis_order(header: np.record) -> tuple[int, int, int]:
    order = (int(header["mapc"]), int(header["mapr"]), int(header["maps"]))
    if order == (0, 0, 0):  # unset in some old writers: the standard order
        return (1, 2, 3)
    return order


def _validate_header(header: np.record, path: Path) -> None:
    """Raise CryoInputError unless the header describes data we can read."""
    mapword = bytes(header["map"])
    nx, ny, nz, mode = (int(header[k]) for k in ("nx", "ny", "nz", "mode"))
    if mapword[:3] != b"MAP" and not (0 < nx < 1_000_000 and 0 < ny < 1_000_000 and 0 < nz < 10_000_000):
        raise CryoInputError(path, "is not an MRC file (no 'MAP' identifier and implausible dimensions)")
    if min(nx, ny, nz) <= 0:
        raise CryoInputError(path, f"header has non-positive dimensions nx={nx}, ny={ny}, nz={nz}")
    if mode not in MODE_DTYPES and mode != 101:
        raise CryoInputError(path, f"unknown MRC mode {mode} (known: 0, 1, 2, 3, 4, 6, 12, 101)")
    if sorted(_axis_order(header)) != [1, 2, 3]:
        raise CryoInputError(path, f"invalid axis order mapc/mapr/maps = {_axis_order(header)}")
    if int(header["nsymbt"]) < 0:
        raise CryoInputError(path, f"negative extended header size {int(header['nsymbt'])}")


def _data_nbytes(nx: int, ny: int, nz: int, mode: int) -> int:
    if mode == 101:  # 4-bit values, each row padded to a whole byte
        return ((nx + 1) // 2) * ny * nz
    return nx * ny * nz * MODE_DTYPES[mode].itemsize


def _to_python(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        if value.dtype.kind == "S" or value.dtype.kind == "V":
            return [bytes(v).decode("ascii", "replace").rstrip("\x00 ") for v in np.atleast_1d(value)]
        return [_to_python(v) for v in value.tolist()] if value.ndim else value.item()
    if isinstance(value, (bytes, np.bytes_, np.void)):
        return bytes(value).decode("ascii", "replace").rstrip("\x00 ")
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple):
        return [_to_python(v) for v in value]
    return value


def header_to_dict(header: np.record) -> dict[str, Any]:
    """Convert a header record to a dict of plain Python values."""
    out: dict[str, Any] = {}
    for name in header.dtype.names:
        value = header[name]
        if name in ("cella", "cellb", "origin"):
            out[name] = [float(value[k]) for k in value.dtype.names]
        elif name == "label":
            out[name] = [bytes(v).decode("ascii", "replace").rstrip("\x00 ") for v in value]
        elif name in ("map", "exttyp"):
            out[name] = bytes(value).decode("ascii", "replace").rstrip("\x00 ")
        elif name in ("machst", "extra1", "extra2"):
            out[name] = bytes(value).hex()
        else:
            out[name] = _to_python(value)
    return out


def read_header(path: str | os.PathLike, check_size: bool = True) -> MrcInfo:
    """Read and check an MRC header without touching the data block.

    Parameters
    ----------
    path : str or os.PathLike
        The file (may be gzip- or bzip2-compressed).
    check_size : bool
        Whether to compare the file size with the size the header implies
        (skipped for compressed files, whose size is unknown until read).

    Returns
    -------
    MrcInfo
        The header in ZYX order and Å.

    Raises
    ------
    CryoInputError
        If the file is missing, is not an MRC file, has an unknown mode or
        axis order, or its size disagrees with the header.
    """
    path = Path(path)
    compressed = compression_of(path)
    raw = _read_head(path, compressed)
    header, big = _parse_header(raw, path)
    _validate_header(header, path)

    nx, ny, nz, mode = (int(header[k]) for k in ("nx", "ny", "nz", "mode"))
    nsymbt = int(header["nsymbt"])
    if check_size and compressed is None:
        expected = HEADER_BYTES + nsymbt + _data_nbytes(nx, ny, nz, mode)
        actual = path.stat().st_size
        if actual < expected:
            raise CryoInputError(
                path,
                f"file is truncated: the header ({nx}x{ny}x{nz}, mode {mode}) needs {expected} bytes, the file has {actual}",
            )
        if actual > expected:
            raise CryoInputError(
                path,
                f"header disagrees with the file size: {nx}x{ny}x{nz} in mode {mode} "
                f"needs {expected} bytes, the file has {actual} ({actual - expected} extra)",
            )

    order = _axis_order(header)
    # Data axes in file order are (sections, rows, columns) = (maps, mapr, mapc).
    file_axes = (order[2], order[1], order[0])
    file_shape = (nz, ny, nx)
    zyx_shape = tuple(file_shape[file_axes.index(a)] for a in (3, 2, 1))
    starts_file = (int(header["nzstart"]), int(header["nystart"]), int(header["nxstart"]))
    nstart = tuple(starts_file[file_axes.index(a)] for a in (3, 2, 1))

    cell = header["cella"]
    sampling = (int(header["mz"]), int(header["my"]), int(header["mx"]))
    cell_zyx = (float(cell["z"]), float(cell["y"]), float(cell["x"]))
    # A cell that is not a finite positive size gives no voxel size (0), never NaN or infinity.
    voxel = tuple(_voxel_size(c, m) for c, m in zip(cell_zyx, sampling))
    origin_hdr = header["origin"]
    origin_zyx = (float(origin_hdr["z"]), float(origin_hdr["y"]), float(origin_hdr["x"]))
    if not all(np.isfinite(origin_zyx)):
        origin_zyx = (0.0, 0.0, 0.0)
    if any(origin_zyx):
        origin = origin_zyx
    else:
        origin = tuple(float(s * v) for s, v in zip(nstart, voxel))

    ispg = int(header["ispg"])
    name = path.name.lower().replace(".gz", "").replace(".bz2", "")
    stack_name = name.endswith((".mrcs", ".st", ".ali"))
    # file-order sampling along sections (mz, or whichever of mx/my maps to sections)
    mz = int(header[("mx", "my", "mz")[order[2] - 1]])
    if ispg >= 401 and mz > 0 and nz % mz == 0 and nz > mz:
        if order != (1, 2, 3):
            raise CryoInputError(path, f"volume stacks with axis order {order} are not supported")
        kind = "volume-stack"
        shape: tuple[int, ...] = (nz // mz, mz, ny, nx)
    elif zyx_shape[0] == 1:
        kind = "image"
        shape = zyx_shape[1:]
    elif order[2] == 3 and (stack_name or (ispg == 0 and mz != nz)):
        # ispg 0 means 'images' in MRC2014, but IMOD and others write tomograms
        # with ispg 0 and the cell spanning all sections (mz == nz): those are volumes.
        kind = "stack"
        shape = zyx_shape
    else:
        kind = "volume"
        shape = zyx_shape

    imod_stamp, imod_flags = np.frombuffer(raw[152:160], dtype=(">i4" if big else "<i4"))
    unsigned_bytes = mode == 0 and int(imod_stamp) == IMOD_STAMP and not (int(imod_flags) & 1)
    if unsigned_bytes:
        dtype = np.dtype(np.uint8)  # IMOD writes unsigned bytes and says so in its flags
    elif mode in MODE_DTYPES:
        dtype = MODE_DTYPES[mode]
    else:
        dtype = np.dtype(np.uint8)  # mode 101 is unpacked to one byte per value
    stats = {k: float(header[k]) for k in ("dmin", "dmax", "dmean", "rms")}
    nlabl = max(0, min(10, int(header["nlabl"])))
    labels = [bytes(v).decode("ascii", "replace").rstrip("\x00 ") for v in header["label"][:nlabl]]
    return MrcInfo(
        path=path,
        shape=tuple(int(s) for s in shape),
        kind=kind,
        mode=mode,
        dtype=dtype,
        voxel_size=voxel,  # type: ignore[arg-type]
        origin=origin,  # type: ignore[arg-type]
        nstart=nstart,  # type: ignore[arg-type]
        axis_order=order,
        ispg=ispg,
        nsymbt=nsymbt,
        exttyp=bytes(header["exttyp"]).decode("ascii", "replace").rstrip("\x00 "),
        big_endian=big,
        compressed=compressed,
        unsigned_bytes=bool(unsigned_bytes),
        stats=stats,
        labels=labels,
        header=header_to_dict(header),
    )


def _voxel_size(cell: float, sampling: int) -> float:
    """Å per voxel from a cell length and its sampling; 0 (unknown) unless both are finite and positive."""
    if sampling <= 0 or not np.isfinite(cell) or cell <= 0:
        return 0.0
    size = cell / sampling
    return size if np.isfinite(size) else 0.0


def sniff_mrc(path: str | os.PathLike) -> MrcInfo | None:
    """Return the header if ``path`` looks like an MRC file, else ``None``.

    Cheap (reads 1024 bytes) and never raises: this is what npe2's
    ``get_reader`` calls to decide whether to accept a file.  Files whose
    header is valid but whose size is wrong are accepted here, so that the
    reader can report the problem rather than napari saying 'no reader'.
    """
    try:
        return read_header(path, check_size=False)
    except Exception:  # noqa: BLE001 - a sniffer must never raise
        return None


def _unpack_4bit(raw: np.ndarray, nx: int, ny: int, nz: int) -> np.ndarray:
    row_bytes = (nx + 1) // 2
    packed = raw.reshape(nz, ny, row_bytes)
    out = np.empty((nz, ny, row_bytes * 2), dtype=np.uint8)
    out[..., 0::2] = packed & 0x0F
    out[..., 1::2] = packed >> 4
    return out[..., :nx]


def _file_array(info: MrcInfo, mmap: bool) -> np.ndarray:
    """The data block in file order (sections, rows, columns)."""
    h = info.header
    nx, ny, nz, mode = h["nx"], h["ny"], h["nz"], info.mode
    shape = (nz, ny, nx)
    if mode == 101:
        raw = _read_data_bytes(info)
        return _unpack_4bit(np.frombuffer(raw, dtype=np.uint8), nx, ny, nz)
    dtype = (np.dtype(np.uint8) if info.unsigned_bytes else MODE_DTYPES[mode]).newbyteorder(">" if info.big_endian else "<")
    if mmap and info.compressed is None:
        try:
            return np.memmap(info.path, dtype=dtype, mode="r", offset=info.data_offset, shape=shape)
        except (OSError, ValueError) as exc:
            raise CryoInputError(info.path, f"cannot be memory-mapped ({exc})") from None
    raw = _read_data_bytes(info)
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def _read_data_bytes(info: MrcInfo) -> bytes | bytearray:
    """The data block, read whole (compressed files, mode 101), checked against the size the header gives."""
    h = info.header
    need = _data_nbytes(h["nx"], h["ny"], h["nz"], info.mode)
    try:
        with _open_raw(info.path, info.compressed) as fh:
            fh.seek(info.data_offset)  # compressed streams seek forward by reading in pieces
            raw = _read_at_most(fh, need)
            extra = fh.read(1)
    except _READ_ERRORS as exc:
        raise CryoInputError(info.path, f"cannot be read ({exc})") from None
    if len(raw) < need:
        raise CryoInputError(info.path, f"file is truncated: the header needs {need} data bytes, the file has {len(raw)}")
    if extra and info.compressed is not None:
        raise CryoInputError(info.path, "header disagrees with the file size: data continue past the size the header gives")
    return raw


def _read_at_most(fh: Any, size: int) -> bytes | bytearray:
    """Up to ``size`` bytes, read in pieces: a header's size is trusted no further than the data go."""
    if size <= _READ_CHUNK:
        return fh.read(size)
    data = bytearray()  # grows in place (realloc), so a large file is not held twice
    while len(data) < size:
        piece = fh.read(min(_READ_CHUNK, size - len(data)))
        if not piece:
            break
        data += piece
    return data


def read_mrc(path: str | os.PathLike, mmap: bool = True) -> tuple[np.ndarray, MrcInfo]:
    """Read an MRC file as a ZYX (YX, NYX) array plus its header.

    Parameters
    ----------
    path : str or os.PathLike
        The file.
    mmap : bool
        Memory-map uncompressed files (the default).  The returned array is
        then a read-only view of the file: nothing is read until it is
        indexed.

    Returns
    -------
    data : numpy.ndarray
        The data in ZYX order (YX for a single image, NYX for a stack,
        NZYX for a volume stack), native byte order for in-memory reads.
    info : MrcInfo
        The header.

    Raises
    ------
    CryoInputError
        For any problem with the file (see :func:`read_header`) and for
        complex data, which has no image to show.
    """
    info = read_header(path)
    if info.mode in (3, 4):
        raise CryoInputError(info.path, f"mode {info.mode} holds complex (Fourier) data, not an image")
    data = _file_array(info, mmap)
    order = info.axis_order
    file_axes = (order[2], order[1], order[0])
    if file_axes != (3, 2, 1):
        data = np.transpose(data, [file_axes.index(a) for a in (3, 2, 1)])
    data = data.reshape(info.shape)
    if not isinstance(data, np.memmap) and data.dtype.byteorder == ">":
        data = data.astype(data.dtype.newbyteorder("="))
    return data, info


def sample_planes(data: Any, max_planes: int = _SAMPLE_PLANES, max_voxels: int = _SAMPLE_VOXELS) -> np.ndarray:
    """Return a small, representative sample of a (possibly lazy) array.

    A few evenly spaced whole planes are read, then thinned in Y and X, so
    that a memory-mapped or dask array is read in large pieces and the cost
    does not grow with the number of planes.
    """
    arr = data
    while arr.ndim > 3:  # volume stacks: the middle volume
        arr = arr[arr.shape[0] // 2]
    if arr.ndim == 3:
        n = arr.shape[0]
        idx = np.unique(np.linspace(0, n - 1, min(n, max_planes)).round().astype(int))
        arr = np.stack([np.asarray(arr[int(i)]) for i in idx])
    arr = np.asarray(arr)
    step = max(1, int(np.ceil(np.sqrt(arr.size / max_voxels))))
    return arr[..., ::step, ::step]


def contrast_limits_for(sample: np.ndarray, low: float = 0.1, high: float = 99.9) -> tuple[float, float]:
    """Robust display limits from a sample: percentiles, widened if flat."""
    values = np.asarray(sample, dtype=np.float64).ravel()
    values = values[np.isfinite(values)]
    if values.size == 0:
        return (0.0, 1.0)
    lo, hi = np.percentile(values, [low, high])
    if hi <= lo:
        lo, hi = float(values.min()), float(values.max())
        if hi <= lo:
            hi = lo + 1.0
    return (float(lo), float(hi))


def check_finite_sample(sample: np.ndarray, path: Path | None) -> None:
    """Raise CryoInputError if the sample holds NaN or infinite values."""
    if sample.dtype.kind == "f":
        bad = ~np.isfinite(sample)
        if bad.any():
            raise CryoInputError(path, f"contains NaN or infinite values ({int(bad.sum())} in a sample of {sample.size} voxels)")


def _normalise_voxel(voxel_size: float | tuple[float, ...] | None, ndim: int) -> tuple[float, float, float]:
    if voxel_size is None:
        return (1.0, 1.0, 1.0)
    if np.isscalar(voxel_size):
        v = float(voxel_size)  # type: ignore[arg-type]
        return (v, v, v)
    vs = [float(v) for v in voxel_size]  # type: ignore[union-attr]
    if len(vs) == 2:
        return (vs[0], vs[0], vs[1]) if ndim == 2 else (1.0, vs[0], vs[1])
    if len(vs) != 3:
        raise ValueError(f"voxel size needs 1, 2 or 3 values, got {len(vs)}")
    return (vs[0], vs[1], vs[2])


def label_dtype(max_value: int, min_value: int = 0) -> np.dtype:
    """Smallest MRC integer dtype that holds a labels volume."""
    if min_value >= -128 and max_value <= 127:
        return np.dtype(np.int8)
    if min_value >= 0 and max_value <= 65535:
        return np.dtype(np.uint16)
    if min_value >= -32768 and max_value <= 32767:
        return np.dtype(np.int16)
    raise ValueError(f"label values {min_value}..{max_value} do not fit any MRC integer mode")


def write_mrc(
    path: str | os.PathLike,
    data: Any,
    voxel_size: float | tuple[float, ...] | None = None,
    origin: tuple[float, ...] | None = None,
    *,
    is_stack: bool | None = None,
    labels: bool = False,
    overwrite: bool = False,
    text_labels: list[str] | None = None,
    chunk_planes: int = 16,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write an array to an MRC file atomically.

    Parameters
    ----------
    path : str or os.PathLike
        Output file (``.mrc``, ``.mrcs``, ``.map``, ...).
    data : array-like
        YX, ZYX or NYX data (numpy, memory-mapped or dask); written plane by
        plane, so a large lazy array is never loaded whole.
    voxel_size : float or tuple of float, optional
        Voxel size in Å: one value, or per axis in ZYX (YX) order.
    origin : tuple of float, optional
        Position in Å of the first voxel, ZYX (YX) order.  Written as
        ``nxstart/nystart/nzstart`` when it is a whole number of voxels (as
        EMDB maps do), else in the header ``origin`` field.
    is_stack : bool, optional
        Whether a 3D array is a stack of images (``ispg`` 0); defaults to
        ``True`` for ``.mrcs`` names.
    labels : bool
        Write integer label data in the smallest integer mode that fits
        (int8, uint16 or int16) instead of float32.
    overwrite : bool
        Replace an existing file.
    text_labels : list of str, optional
        Up to 10 header text labels (80 characters each).
    chunk_planes : int
        Planes copied at a time.
    progress : callable, optional
        Called as ``progress(planes_done, planes_total)`` after each chunk.

    Returns
    -------
    pathlib.Path
        The written file.

    Raises
    ------
    CryoInputError
        If the file exists without ``overwrite``, the data are empty, not
        2D/3D, or contain NaN or infinite values.
    """
    import mrcfile

    path = Path(path)
    if not hasattr(data, "shape"):
        data = np.asarray(data)
    ndim = len(data.shape)
    if ndim not in (2, 3):
        raise CryoInputError(path, f"can only write 2D or 3D data, got {ndim}D with shape {tuple(data.shape)}")
    if 0 in data.shape:
        raise CryoInputError(path, f"cannot write empty data of shape {tuple(data.shape)}")
    if is_stack is None:
        is_stack = path.name.lower().endswith(".mrcs")
    vz, vy, vx = _normalise_voxel(voxel_size, ndim)
    org = tuple(float(o) for o in origin) if origin is not None else (0.0, 0.0, 0.0)
    if len(org) not in (2, 3):
        raise ValueError(f"origin needs 2 or 3 values, got {len(org)}")
    oz, oy, ox = org if len(org) == 3 else (0.0, *org)
    if is_stack:
        oz = 0.0

    if labels:
        lo, hi = _minmax(data)
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise CryoInputError(path, "label data contain NaN or infinite values; nothing was written")
        try:
            out_dtype = label_dtype(int(hi), int(lo))
        except ValueError as exc:
            raise CryoInputError(path, str(exc)) from None
    else:
        out_dtype = np.dtype(np.float32)

    shape3 = (1, *data.shape) if ndim == 2 else tuple(data.shape)
    with atomic_path(path, overwrite=overwrite) as tmp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            mrc = mrcfile.new_mmap(tmp, shape=shape3, mrc_mode=_MODE_OF[out_dtype], overwrite=True)
        try:
            reserve_space(tmp)
            for start in range(0, shape3[0], chunk_planes):
                stop = min(shape3[0], start + chunk_planes)
                block = np.asarray(data if ndim == 2 else data[start:stop])
                if ndim == 2:
                    block = block[None]
                if block.dtype.kind in "fc" and not np.isfinite(block).all():
                    raise CryoInputError(path, "data contain NaN or infinite values; nothing was written")
                mrc.data[start:stop] = block.astype(out_dtype, copy=False)
                if progress is not None:
                    progress(stop, shape3[0])
            if is_stack and ndim == 3:
                mrc.header.ispg = 0
            else:
                mrc.header.ispg = 1 if ndim == 3 else 0
            # Cell sampling of a stack counts one image in Z, as RELION writes it.
            mz = 1 if (is_stack or ndim == 2) else shape3[0]
            mrc.header.mx, mrc.header.my, mrc.header.mz = shape3[2], shape3[1], mz
            mrc.header.cella = (vx * shape3[2], vy * shape3[1], vz * mz)
            starts = [o / v if v > 0 else 0.0 for o, v in ((ox, vx), (oy, vy), (oz, vz))]
            if all(abs(s - round(s)) < 1e-6 for s in starts):
                mrc.header.nxstart, mrc.header.nystart, mrc.header.nzstart = (int(round(s)) for s in starts)
                mrc.header.origin = (0.0, 0.0, 0.0)
            else:
                mrc.header.nxstart = mrc.header.nystart = mrc.header.nzstart = 0
                mrc.header.origin = (ox, oy, oz)
            mrc.update_header_stats()
            for text in (text_labels or [])[:10]:
                mrc.add_label(text[:80])
        finally:
            mrc.close()
    return path


_MODE_OF = {np.dtype(np.int8): 0, np.dtype(np.int16): 1, np.dtype(np.float32): 2, np.dtype(np.uint16): 6}


def _minmax(data: Any, chunk: int = 16) -> tuple[float, float]:
    lo, hi = np.inf, -np.inf
    if len(data.shape) == 2:
        arr = np.asarray(data)
        return float(arr.min()), float(arr.max())
    for start in range(0, data.shape[0], chunk):
        block = np.asarray(data[start : start + chunk])
        lo, hi = min(lo, float(block.min())), max(hi, float(block.max()))
    return lo, hi
