"""Convert MRC to MRC (new pixel size, plain float32 or integer modes) or STAR between RELION 3.0 and 3.1+ layouts."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ..errors import CryoInputError
from ..io.atomic import check_outputs
from ..io.mrc import MRC_SUFFIXES, read_mrc, write_mrc
from ..io.star import convert_star_layout

HELP = "MRC -> MRC with a new pixel size; STAR between RELION 3.0 and 3.1+ layouts"


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help="input MRC-family or STAR file")
    parser.add_argument("output", help="output file of the same family (.mrc/.mrcs/.map or .star)")
    parser.add_argument("--pixel-size", type=float, default=None, metavar="A",
                        help="MRC: new voxel size in Å written to the header (the data are not resampled)")
    parser.add_argument("--layout", choices=("3.0", "3.1"), default="3.1",
                        help="STAR: RELION layout of the output (default 3.1: optics + particles)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")


def _kind(path: Path) -> str | None:
    name = path.name.lower()
    if name.endswith(".star"):
        return "star"
    if name.endswith(MRC_SUFFIXES):
        return "mrc"
    return None


def convert_mrc(src: Path, dst: Path, pixel_size: float | None, overwrite: bool) -> Path:
    """Copy an MRC file plane by plane with an optional new voxel size.

    The origin keeps its meaning: a header origin in Å is kept in Å, an
    ``nstart`` origin is kept in voxels.  Integer data stay integer.
    """
    from tqdm import tqdm

    if dst.name.lower().endswith((".gz", ".bz2")):
        raise CryoInputError(dst, "compressed output is not supported; write .mrc and compress it afterwards")
    data, info = read_mrc(src)
    if pixel_size is not None and not (np.isfinite(pixel_size) and pixel_size > 0):
        raise CryoInputError(None, f"--pixel-size must be positive, got {pixel_size}")
    if data.ndim == 4:
        raise CryoInputError(src, "volume stacks cannot be converted yet")
    n_sp = 2 if info.kind in ("image", "stack") else 3
    old = info.voxel_size[-n_sp:]
    if pixel_size is None and info.pixel_size <= 0:
        raise CryoInputError(src, "has no pixel size in its header; give one with --pixel-size")
    new = tuple(float(pixel_size) for _ in range(n_sp)) if pixel_size is not None else tuple(old)
    header_origin = info.header["origin"]
    if any(header_origin) or not any(v > 0 for v in old):
        origin = info.origin[-n_sp:]
    else:
        origin = tuple(s * v for s, v in zip(info.nstart[-n_sp:], new))
    with tqdm(total=data.shape[0] if data.ndim == 3 else 1, desc=f"writing {dst.name}", unit="plane", disable=None) as bar:
        write_mrc(
            dst,
            data,
            new,
            origin,
            is_stack=info.kind == "stack",
            labels=info.mode in (0, 1, 6),
            overwrite=overwrite,
            text_labels=info.labels[:9] + [f"napari-cryo convert from {src.name}"],
            progress=lambda done, total: bar.update(done - bar.n),
        )
    return dst


def main(args: argparse.Namespace) -> int:
    src, dst = Path(args.input), Path(args.output)
    if not src.exists():
        raise CryoInputError(src, "file not found")
    kin, kout = _kind(src), _kind(dst)
    if kin is None:
        raise CryoInputError(src, "unknown file type (expected an MRC-family or .star file)")
    if kout != kin:
        raise CryoInputError(dst, f"cannot convert {kin.upper()} to {'this file type' if kout is None else kout.upper()}")
    if src.resolve() == dst.resolve():
        raise CryoInputError(dst, "is the input file; write to a new name")
    check_outputs([dst], overwrite=args.overwrite)  # the one file written, checked before reading the input
    if not dst.parent.is_dir():
        raise CryoInputError(dst, f"directory {dst.parent} does not exist")
    if kin == "mrc":
        convert_mrc(src, dst, args.pixel_size, args.overwrite)
    else:
        if args.pixel_size is not None:
            raise CryoInputError(None, "--pixel-size applies to MRC files; STAR pixel sizes come from the optics")
        convert_star_layout(src, dst, args.layout, overwrite=args.overwrite)
    print(f"wrote {dst}")
    return 0
