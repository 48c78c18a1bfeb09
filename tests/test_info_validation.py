"""``napari-cryo info`` fails exactly where the napari reader fails, with the reader's message (#27)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from napari_cryo.cli import main
from napari_cryo.errors import CryoInputError
from napari_cryo.io._reader import get_star_reader, read_mrc_files, read_star_files
from napari_cryo.io.star import read_star

OPTICS = "data_optics\nloop_\n_rlnOpticsGroup\n_rlnImagePixelSize\n1 2.5\n\n"
COORDS = "data_particles\nloop_\n_rlnCoordinateX\n_rlnCoordinateY\n_rlnOpticsGroup\n"


def reader_error(path: Path) -> str | None:
    """The message of the CryoInputError napari's reader raises on ``path``, None when it opens it.

    A STAR file the reader declines (a pipeline or postprocess file: no
    layers in it) is only parsed, as napari never hands it to the reader.
    """
    try:
        if path.name.endswith(".star"):
            if get_star_reader(str(path)) is None:
                read_star(path)
            else:
                read_star_files(str(path))
        else:
            read_mrc_files(str(path))
    except CryoInputError as exc:
        return str(exc)
    return None


def check_info_matches_reader(path: Path, capsys) -> str | None:
    """Run ``info``; assert it exits 2 with the reader's one line exactly when the reader raises."""
    expected = reader_error(path)
    capsys.readouterr()
    code = main(["info", str(path)])
    out, err = capsys.readouterr()
    if expected is None:
        assert code == 0, (path.name, err)
        assert "block" in out or "shape" in out
    else:
        lines = err.strip().splitlines()
        assert code == 2, (path.name, expected, out[:200])
        assert len(lines) == 1 and "Traceback" not in err, err
        assert lines[0].endswith(expected) and str(path) in lines[0], (lines[0], expected)
        assert out == ""  # no summary of a file the reader refuses
    return expected


def _mrc(path: Path, data: np.ndarray | None = None, **patch: int) -> Path:
    """A small valid MRC, then header words patched (byte offset -> int32 value)."""
    import mrcfile

    with mrcfile.new(path, overwrite=True) as m:  # mrcfile, as the package refuses to write NaN
        m.set_data(np.arange(4 * 6 * 8, dtype=np.float32).reshape(4, 6, 8) if data is None else data)
        m.voxel_size = 2.0
    raw = bytearray(path.read_bytes())
    for offset, value in patch.items():
        raw[int(offset[1:]) : int(offset[1:]) + 4] = np.int32(value).tobytes()
    path.write_bytes(bytes(raw))
    return path


def _bad_files(folder: Path, testdata: Path) -> dict[str, Path]:
    """Broken and odd inputs, each named for what is wrong with it."""
    def star(name: str, text: str) -> Path:
        return _write(folder / name, text)

    relion = (testdata / "star" / "relion31.star").read_text()
    emd = (testdata / "mrc" / "EMD-3197.map").read_bytes()
    nan = np.ones((3, 8, 8), np.float32)
    nan[1, 2, 3] = np.nan
    files = {
        "non-numeric coordinates": star("words.star", OPTICS + COORDS + "10 20 1\nten 30 1\n"),
        "missing coordinate Y": star("nox.star", "data_\nloop_\n_rlnCoordinateX\n_rlnAutopickFigureOfMerit\n1 0.5\n2 0.7\n"),
        "missing value": star("gap.star", OPTICS + COORDS + "10 20 1\n11 nan 1\n"),
        "unknown optics group": star("group.star", OPTICS + "2 3.0\n\n" + COORDS + "10 20 1\n11 21 3\n"),
        "zero pixel size": star("zero.star", OPTICS.replace("2.5", "0") + COORDS + "10 20 1\n"),
        "images without stacks": star("images.star", "data_\nloop_\n_rlnImageName\n1@nowhere.mrcs\n2@nowhere.mrcs\n"),
        "bad image name": star("name.star", "data_\nloop_\n_rlnImageName\nx@@\n"),
        "empty loop": star("emptyloop.star", "data_\nloop_\n_rlnCoordinateX\n_rlnImageName\n"),
        "empty STAR": star("empty.star", ""),
        "blank STAR": star("blank.star", "\n  \n\t\n"),
        "no data block": star("nodata.star", "loop_\n_rlnCoordinateX\n1\n"),
        "binary STAR": _write(folder / "binary.star", bytes(range(256)) * 4),
        "Latin-1 STAR": _write(folder / "latin.star", (OPTICS + COORDS + "10 20 1\n").encode() + "# caf\xe9\n".encode("latin-1")),
        "truncated real STAR": star("cut.star", relion[: len(relion) * 2 // 3]),
        "real STAR, a row cut short": star("short.star", relion.rstrip().rsplit(" ", 6)[0] + "\n"),
        "pipeline (not particles)": testdata / "star" / "default_pipeline.star",
        "good coordinates": star("good.star", OPTICS + COORDS + "10 20 1\n11 21 1\n"),
        "truncated MRC": _write(folder / "cut.mrc", emd[:1500]),
        "MRC data cut": _write(folder / "datacut.mrc", emd[:-100]),
        "complex MRC (mode 4)": _mrc(folder / "complex.mrc", b12=4),
        "unknown mode MRC": _mrc(folder / "mode9.mrc", b12=9),
        "negative size MRC": _mrc(folder / "neg.mrc", b0=-8),
        "empty MRC": _write(folder / "empty.mrc", b""),
        "PNG named .mrc": _write(folder / "picture.mrc", (testdata / "mrc" / "emd_3197.png").read_bytes()),
        "NaN MRC": _mrc(folder / "nan.mrc", nan),
        "truncated gzip MRC": _write(folder / "cut.mrc.gz", gzip.compress(emd)[:-300]),
        "good MRC": _mrc(folder / "good.mrc"),
    }
    return files


def _write(path: Path, content: str | bytes) -> Path:
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        path.write_bytes(content)
    return path


def test_info_refuses_what_the_reader_refuses(tmp_path, testdata, capsys):
    files = _bad_files(tmp_path, testdata)
    verdicts = {what: check_info_matches_reader(path, capsys) for what, path in files.items()}
    accepted = {what for what, message in verdicts.items() if message is None}
    # the set is not vacuous: the reader refuses all but the good and the declined files
    assert accepted == {"good coordinates", "good MRC", "pipeline (not particles)"}, accepted
    assert "ten" in verdicts["non-numeric coordinates"] and "complex" in verdicts["complex MRC (mode 4)"]


def test_info_on_every_real_file(testdata, capsys):
    """Files written by other tools: info and the reader agree on each (and open most)."""
    suffixes = (".star", ".mrc", ".mrcs", ".map", ".gz", ".bz2")
    paths = [p for p in sorted(testdata.rglob("*")) if p.is_file() and p.name.lower().endswith(suffixes)]
    refused = [p.name for p in paths if check_info_matches_reader(p, capsys) is not None]
    assert len(paths) > 25 and len(refused) < 5, refused


@pytest.mark.parametrize("json_flag", [[], ["--json"]])
def test_info_shows_what_the_reader_assumed(tmp_path, testdata, capsys, json_flag):
    """relion31.star's stack is elsewhere: the reader opens its coordinates and says so; so does info."""
    src = tmp_path / "relion31.star"
    src.write_text((testdata / "star" / "relion31.star").read_text())
    capsys.readouterr()
    assert main(["info", *json_flag, str(src)]) == 0
    out = capsys.readouterr().out
    assert "particle images not opened" in out and "not found" in out
