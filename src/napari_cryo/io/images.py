"""2D micrographs that are not MRC: TIFF, PNG and JPEG.

Denoisers and viewers export micrographs as 8-bit PNG or JPEG or as TIFF,
and pickers such as Topaz and crYOLO read them, so the picking command line
does too.  These files carry no pixel size napari-cryo can trust (TIFF
resolution tags are usually dots per inch), so the user gives it.  Colour
images are reduced to their luminance; multi-page files are refused.
tifffile reads TIFF and imageio (Pillow) reads PNG and JPEG: both come with
scikit-image.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import CryoInputError

#: File name endings read as plain 2D images.
IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
_LUMINANCE = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601 weights of R, G, B


def is_plain_image(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a TIFF, PNG or JPEG file (by its ending)."""
    return Path(path).name.lower().endswith(IMAGE_SUFFIXES)


def _is_tiff(path: Path) -> bool:
    return path.name.lower().endswith((".tif", ".tiff"))


def _as_2d(shape: tuple[int, ...], path: Path) -> tuple[int, int]:
    """The (Y, X) size of an image of ``shape`` (grey, grey+alpha, RGB or RGBA; one page), or a clear error."""
    dims = tuple(int(s) for s in shape)
    if len(dims) == 3 and dims[0] == 1:
        dims = dims[1:]
    if len(dims) == 3 and dims[-1] in (2, 3, 4):
        dims = dims[:2]
    if len(dims) != 2 or min(dims) < 2:
        raise CryoInputError(path, f"is not a single 2D image (shape {tuple(shape)}); give one micrograph per file")
    return dims[0], dims[1]


def plain_image_shape(path: str | os.PathLike) -> tuple[int, int]:
    """The (Y, X) size of a TIFF, PNG or JPEG micrograph, from its header.

    Raises
    ------
    CryoInputError
        If the file is missing, unreadable or not a single 2D image.
    """
    path = Path(path)
    if not path.is_file():
        raise CryoInputError(path, "file not found")
    try:
        if _is_tiff(path):
            import tifffile

            with tifffile.TiffFile(path) as tif:
                if len(tif.series) != 1:
                    raise CryoInputError(path, f"holds {len(tif.series)} images; give one micrograph per file")
                shape = tif.series[0].shape
        else:
            import imageio.v3 as iio

            shape = iio.improps(path).shape
    except CryoInputError:
        raise
    except Exception as exc:  # noqa: BLE001 - the image libraries raise many kinds for damaged files
        raise CryoInputError(path, f"cannot be read as an image ({type(exc).__name__})") from None
    return _as_2d(shape, path)


def read_plain_image(path: str | os.PathLike) -> np.ndarray:
    """A TIFF, PNG or JPEG micrograph as a float32 (Y, X) array (colour reduced to luminance).

    Raises
    ------
    CryoInputError
        If the file is missing, unreadable or not a single 2D image.
    """
    path = Path(path)
    plain_image_shape(path)  # one page, 2D: checked before the pixels are read
    try:
        if _is_tiff(path):
            import tifffile

            data = tifffile.imread(path)
        else:
            import imageio.v3 as iio

            data = iio.imread(path)
    except Exception as exc:  # noqa: BLE001
        raise CryoInputError(path, f"cannot be read as an image ({type(exc).__name__})") from None
    data = np.asarray(data)
    if data.ndim == 3 and data.shape[0] == 1:
        data = data[0]
    if data.ndim == 3 and data.shape[-1] == 2:  # grey + alpha: the alpha channel is not image
        data = data[..., 0]
    elif data.ndim == 3:  # RGB or RGBA
        data = data[..., :3].astype(np.float32) @ _LUMINANCE
    if data.dtype.kind == "c":
        raise CryoInputError(path, "holds complex values, not a micrograph")
    return np.asarray(data, dtype=np.float32)
