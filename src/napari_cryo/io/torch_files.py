"""Torch files: written atomically with a clear error on a full disk; from other people, read without running their code.

``torch.save`` writes a zip archive of stored (uncompressed) members.
``torch.load`` reads anything else as a bare pickle, and unpacks compressed
members whatever size they claim, so both are refused here before torch
sees the file; what passes is unpickled with ``weights_only=True`` (tensors,
numbers, strings, lists and dicts only; torch >= 2.10, see
docs/dependencies.md).
"""

from __future__ import annotations

import io
import os
import reprlib
import zipfile
from pathlib import Path
from typing import Any

import torch

from ..errors import CryoInputError
from .atomic import atomic_path

ZIP_MAGIC = b"PK\x03\x04"
#: The largest model file read: the package's own are a few MB.
MAX_MODEL_BYTES = 256 * 2**20


def archive_problem(source: bytes | str | os.PathLike) -> str | None:
    """Why torch must not read ``source`` (the bytes or the file), or None.

    Parameters
    ----------
    source : bytes or path-like
        The file's contents, or the file.

    Returns
    -------
    str or None
        "not a torch archive", "a damaged torch archive", a compressed
        member's name, or None when the file is what ``torch.save`` writes.
    """
    if isinstance(source, bytes):
        head, opened = source[:4], io.BytesIO(source)
    else:
        with open(source, "rb") as fh:
            head = fh.read(4)
        opened = source
    if head != ZIP_MAGIC:
        return "not a torch archive"
    try:
        with zipfile.ZipFile(opened) as archive:
            packed = [i.filename for i in archive.infolist() if i.compress_type != zipfile.ZIP_STORED]
    except Exception:  # noqa: BLE001 - a damaged central directory fails in many ways
        return "a damaged torch archive"
    return f"{packed[0][:100]} is compressed, which torch.save never does" if packed else None


def load_model_payload(path: Path, fmt: str, version: int, what: str, max_bytes: int = MAX_MODEL_BYTES) -> dict[str, Any]:
    """A model file's dict, unpickled without running code, with its format and version checked.

    Parameters
    ----------
    path : pathlib.Path
        The model file.
    fmt : str
        The ``format`` string the payload must carry.
    version : int
        The newest format version this package reads.
    what : str
        The kind of model, for messages ("picking model").
    max_bytes : int
        The largest file accepted.

    Raises
    ------
    CryoInputError
        If the file is missing, too large, not a torch archive, unsafe, of
        another format or of a newer version.
    """
    if not path.is_file():
        raise CryoInputError(path, "model file not found")
    size = path.stat().st_size
    if size > max_bytes:
        raise CryoInputError(path, f"is too large for a {what} ({size} bytes, at most {max_bytes})")
    problem = archive_problem(path)
    if problem:
        raise CryoInputError(path, f"is not a model file ({problem})")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds for non-model files
        raise CryoInputError(path, f"is not a model file ({type(exc).__name__})") from None
    found = payload.get("format") if isinstance(payload, dict) else None
    if not isinstance(found, str) or found != fmt:
        raise CryoInputError(path, f"is not a napari-cryo {what}")
    written = payload.get("version", 0)
    if type(written) is not int or written < 0:
        raise CryoInputError(path, f"has a bad format version {reprlib.repr(written)}")
    if written > version:
        raise CryoInputError(path, f"was written by a newer napari-cryo (format {written}; this one reads up to {version})")
    return payload


def save_torch(obj: Any, path: str | os.PathLike, overwrite: bool = True) -> Path:
    """Write ``obj`` with ``torch.save``, atomically.

    torch's own file writer reports a failed write (a full disk, a file-size
    limit) as a ``RuntimeError`` without the system's reason, which would
    reach the user as an internal error.  The file is therefore serialised in
    memory and written with plain file I/O, whose ``OSError``
    :func:`~napari_cryo.io.atomic.atomic_path` reports in one line naming
    the file.

    Parameters
    ----------
    obj : object
        What to save (tensors and plain values, so that it loads with ``weights_only``).
    path : str or os.PathLike
        The file.
    overwrite : bool
        Whether an existing file may be replaced.

    Returns
    -------
    pathlib.Path
        The file written.

    Raises
    ------
    CryoInputError
        If the file may not be written, or the disk refuses the write (the old file is kept).
    """
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    with atomic_path(path, overwrite=overwrite) as tmp, open(tmp, "wb") as fh:
        fh.write(buffer.getbuffer())
    return Path(path)
