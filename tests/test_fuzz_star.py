"""Fuzz tests of the STAR readers (#27): random text and damaged real files.

Every path the package reads a user's STAR file through (the parser, the
particle and coordinate readers, the particle stacks, the napari reader and
``napari-cryo info``) may only fail with a one-line CryoInputError that
names the file.  Seeds are real files from ../shared/testdata with their
stacks beside them, so that damaged image names reach the stack code too.
The runs are derandomized, so CI sees the same cases every time.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from napari_cryo.cli import main
from napari_cryo.errors import CryoInputError
from napari_cryo.io._reader import get_star_reader, read_star_files
from napari_cryo.io.particles import ParticleStack
from napari_cryo.io.star import (
    convert_star_layout,
    particle_table,
    read_coordinates,
    read_star,
    sniff_star,
)

TESTDATA = Path(__file__).resolve().parents[1].parent / "shared" / "testdata"
SEED_FILES = (
    "star/relion31.star",
    "star/relion31.v2.star",
    "star/relion31.6opticsgroups.star",
    "star/FinalRefinement-OriginalParticles-PfCRT.star",
    "star/toy_projections.star",
    "star/one_loop.star",
    "star/rln3.1_data_style.star",
    "star/loop_double_quote.star",
    "star/two_single_line_loop_blocks.star",
    "star/postprocess.star",
    "star/empty_loop.star",
    "particles/empiar_10076_7.star",
    "real/Ucsf_stack_1142_DW_autopick.star",
)
STACKS = ("particles/relion31.mrcs", "particles/empiar_10076_7.mrc", "particles/toy_projections.mrcs")
#: A RELION 5 particle file in centred Å coordinates, placed through the tomograms.star beside it.
RELION5 = (
    "data_optics\nloop_\n_rlnOpticsGroup\n_rlnOpticsGroupName\n_rlnTomoTiltSeriesPixelSize\n1 optics1 1.35\n\n"
    "data_particles\nloop_\n_rlnTomoName\n_rlnCenteredCoordinateXAngst\n_rlnCenteredCoordinateYAngst\n"
    "_rlnCenteredCoordinateZAngst\n_rlnAngleRot\n_rlnAngleTilt\n_rlnAnglePsi\n_rlnOpticsGroup\n"
    "TS_01 10.5 -20.25 3.0 10 20 30 1\nTS_01 -100 40 -8 0 90 0 1\nTS_02 0 0 0 5 5 5 1\n"
)
TOMOGRAMS = (
    "data_global\nloop_\n_rlnTomoName\n_rlnTomoSizeX\n_rlnTomoSizeY\n_rlnTomoSizeZ\n_rlnTomoTomogramBinning\n"
    "TS_01 4000 4000 1000 4\nTS_02 4000 4000 1000 8\n"
)
#: Tokens that mean something to a STAR parser or to the readers.
TOKENS = (
    "data_", "data_optics", "data_particles", "loop_", "_rlnCoordinateX", "_rlnCoordinateY", "_rlnCoordinateZ",
    "_rlnImageName", "_rlnOpticsGroup", "_rlnMicrographName", "_rlnImagePixelSize", "_rlnOriginXAngst",
    "_rlnCenteredCoordinateXAngst", "_rlnTomoName", "_rlnAngleRot", "_rlnImageSize", "#", '"', "'", "nan", "inf",
    "-inf", "1e999", "-0", "0", "1", "2.5", "-7", "1@relion31.mrcs", "0@relion31.mrcs", "99@relion31.mrcs",
    "3@empiar_10076_7.mrc", "x@", "@", "<NA>", "\t", " ", "\n",
)
BAD_BYTES = (b"\xff", b"\xfe\xff", b"\x80", b"\xc3", b"\xed\xa0\x80", b"\x00", b"\r", b"\x1b", "é".encode("latin-1"))
FUZZ = settings(max_examples=300, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])


def _trim(text: str, max_rows: int = 8) -> str:
    """The file with at most ``max_rows`` data rows per loop: cases stay fast and damage lands on structure."""
    out, rows, in_rows = [], 0, False
    for line in text.splitlines(keepends=True):
        stripped = line.strip()
        if stripped.startswith(("data_", "loop_", "_")):
            in_rows, rows = stripped.startswith("_"), 0
        elif in_rows and stripped and not stripped.startswith("#"):
            rows += 1
            if rows > max_rows:
                continue
        out.append(line)
    return "".join(out)


def _seeds() -> list[bytes]:
    seeds = [_trim((TESTDATA / name).read_text(encoding="utf-8")).encode() for name in SEED_FILES]
    return [*seeds, RELION5.encode()]


SEEDS = _seeds()


def _expect_input_error(path: Path, read: Callable[[], object]) -> object | None:
    """Run one reader: its result, or None after a one-line CryoInputError naming a file; anything else escapes."""
    try:
        return read()
    except CryoInputError as exc:
        message = str(exc)
        assert exc.path is not None and "\n" not in message, message
        named = Path(exc.path)
        # the file itself, or a file it names (a stack, the output of convert) in the same folder
        assert named == path or named.parent == path.parent, message
        return None


def _info(path: Path) -> None:
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = main(["info", str(path)])
    assert code in (0, 2), err.getvalue()  # 1 would be an internal error
    if code == 2:
        assert err.getvalue().count("\n") == 1 and str(path) in err.getvalue(), err.getvalue()


#: The readers that parse the file again themselves; a case runs one of them (all would cost 4 parses).
WHOLE_READERS: tuple[Callable[[Path], object], ...] = (
    lambda path: read_star_files(str(path)),
    _info,
    lambda path: convert_star_layout(path, path.with_name("converted.star"), "3.1", overwrite=True),
    lambda path: convert_star_layout(path, path.with_name("converted.star"), "3.0", overwrite=True),
)


@pytest.fixture(scope="module")
def folder():
    """A folder with the stacks and the tomograms.star the seeds refer to, shared by the cases (the readers only read them)."""
    with tempfile.TemporaryDirectory(prefix="fuzzstar") as tmp:
        # one level down: the reader looks for a tomograms.star up to three folders above a
        # STAR file, and a test's tmp_path has the system temp folder among those
        folder = Path(tmp) / "case"
        folder.mkdir()
        for name in STACKS:
            shutil.copy(TESTDATA / name, folder / Path(name).name)
        (folder / "tomograms.star").write_text(TOMOGRAMS)
        yield folder


def check_only_input_errors(path: Path, content: bytes, whole: tuple[int, ...] = (0, 1, 2, 3)) -> None:
    """Write ``content`` to ``path`` and read it: only a one-line CryoInputError naming a file may escape.

    The parser runs once and the readers built on it reuse its blocks; the
    readers in ``whole`` (indices into :data:`WHOLE_READERS`) start from the file.
    """
    path.write_bytes(content)
    sniff_star(path)  # the npe2 sniff never raises at all
    get_star_reader(str(path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        blocks = _expect_input_error(path, lambda: read_star(path))
        if blocks is None:
            return  # every reader starts with this parse
        table = _expect_input_error(path, lambda: particle_table(path, blocks))
        if table is not None:
            _expect_input_error(path, lambda: read_coordinates(path, blocks))
            _expect_input_error(path, lambda: ParticleStack(path, table))
        for i in whole:
            _expect_input_error(path, lambda reader=WHOLE_READERS[i]: reader(path))


def _mutate(content: bytes, ops: list[tuple[int, int, int]], extras: list[bytes]) -> bytes:
    """Apply damage operations; positions are taken modulo the current size, so any draw applies."""
    data = bytearray(content)
    for kind, a, b in ops:
        lines = bytes(data).split(b"\n")
        extra = extras[(a + b) % len(extras)]
        if kind == 0 and data:  # flip bits of a byte
            data[a % len(data)] ^= (b % 255) + 1
        elif kind == 1:  # truncate
            data = data[: a % (len(data) + 1)]
        elif kind == 2:  # duplicate a line
            i = a % len(lines)
            lines.insert(i, lines[i])
            data = bytearray(b"\n".join(lines))
        elif kind == 3:  # remove a line
            del lines[a % len(lines)]
            data = bytearray(b"\n".join(lines))
        elif kind == 4:  # swap two tokens anywhere in the file
            tokens = bytes(data).split(b" ")
            i, j = a % len(tokens), b % len(tokens)
            tokens[i], tokens[j] = tokens[j], tokens[i]
            data = bytearray(b" ".join(tokens))
        elif kind == 5:  # swap two lines
            i, j = a % len(lines), b % len(lines)
            lines[i], lines[j] = lines[j], lines[i]
            data = bytearray(b"\n".join(lines))
        elif kind == 6:  # insert bytes (a token, or bytes that are not UTF-8)
            at = a % (len(data) + 1)
            data[at:at] = extra
        elif kind == 7:  # replace one whitespace-separated token
            tokens = bytes(data).split()
            if tokens:
                target = tokens[a % len(tokens)]
                start = bytes(data).find(target)
                data[start : start + len(target)] = extra
    return bytes(data)


_OPS = st.lists(st.tuples(st.integers(0, 7), st.integers(0, 2**16), st.integers(0, 2**16)), min_size=1, max_size=4)
_EXTRAS = [t.encode() for t in TOKENS] + list(BAD_BYTES)


@pytest.mark.parametrize("seed_index", range(len(SEEDS)), ids=[Path(n).name for n in SEED_FILES] + ["relion5"])
def test_seed_files_read(folder, seed_index):
    """The undamaged seeds: any error is one the data deserve (an empty loop)."""
    check_only_input_errors(folder / "seed.star", SEEDS[seed_index])


@FUZZ
@given(seed=st.integers(0, len(SEEDS) - 1), ops=_OPS, whole=st.integers(0, len(WHOLE_READERS) - 1))
# Cases that escaped before the readers were fixed: a cut leaving an empty loop with image names
# (KeyError), a line swap putting names into an angle column (ValueError) and a duplicated label
# (pandas errors in info and the napari reader), and an image name replaced by "nan" (TypeError).
@example(seed=3, ops=[(1, 304, 0)], whole=0)
@example(seed=0, ops=[(7, 986, 255)], whole=0)
@example(seed=5, ops=[(5, 4157, 1790)], whole=0)
@example(seed=5, ops=[(0, 0, 0), (1, 72, 0), (2, 6, 0)], whole=1)
@example(seed=5, ops=[(0, 0, 0), (1, 72, 0), (2, 6, 0)], whole=0)
def test_damaged_real_files(folder, seed, ops, whole):
    check_only_input_errors(folder / "damaged.star", _mutate(SEEDS[seed], ops, _EXTRAS), (whole,))


@settings(FUZZ, max_examples=100)
@given(ops=_OPS)
def test_damaged_tomograms_star(folder, ops):
    """A RELION 5 particle file beside a damaged tomograms.star (read to place its centred coordinates)."""
    tomo = folder / "tomo"
    tomo.mkdir(exist_ok=True)
    (tomo / "tomograms.star").write_bytes(_mutate(TOMOGRAMS.encode(), ops, _EXTRAS))
    check_only_input_errors(tomo / "relion5.star", RELION5.encode(), (0,))


_STAR_TEXT = st.lists(st.one_of(st.sampled_from(TOKENS), st.text(max_size=6)), max_size=40).map(
    lambda parts: " ".join(parts)
)


@settings(FUZZ, max_examples=1200)
@given(text=st.one_of(_STAR_TEXT, st.text(max_size=200)), encoding=st.sampled_from(["utf-8", "utf-16", "latin-1"]),
       whole=st.integers(0, len(WHOLE_READERS) - 1))
def test_random_text(folder, text, encoding, whole):
    check_only_input_errors(folder / "random.star", text.encode(encoding, errors="replace"), (whole,))


@settings(FUZZ, max_examples=500)
@given(data=st.binary(max_size=300))
def test_random_bytes(folder, data):
    check_only_input_errors(folder / "bytes.star", data, (1,))


def test_a_corrected_file_is_read_again(tmp_path):
    """starfile caches lines in linecache and keeps them after a failed parse: the fixed file must be read anew."""
    path = tmp_path / "edit.star"
    path.write_text("data_\nloop_\n_rlnCoordinateX\n_rlnCoordinateY\n1 2\n3 4 5\n")
    with pytest.raises(CryoInputError):
        read_star(path)
    path.write_text("data_\nloop_\n_rlnCoordinateX\n_rlnCoordinateY\n10 20\n30 40\n")
    assert read_star(path)[""]["rlnCoordinateX"].tolist() == [10, 30]


def test_mutations_change_files():
    """The damage operations do damage (a fuzz run that reads the seeds unchanged would prove nothing)."""
    seed = SEEDS[0]
    changed = {_mutate(seed, [(kind, 7, 3)], _EXTRAS) != seed for kind in range(8)}
    assert changed == {True}
    assert np.mean([len(s) for s in SEEDS]) > 300
