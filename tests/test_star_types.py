"""Every STAR file the package writes keeps each column's type (#27).

Each writer's output is parsed twice: by ``starfile`` (the dtype of each
column must be what was written) and by a strict parser of the raw text, in
the way RELION reads it: every token of an integer label must be an integer
(``1``, never ``1.000000``), and names come back exactly as written.
"""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import starfile

from napari_cryo.cli import main
from napari_cryo.errors import CryoInputError
from napari_cryo.io.star import (
    BOOLEAN_LABELS,
    INTEGER_LABELS,
    NAME_LABELS,
    particle_table,
    read_star,
    write_coordinates,
    write_star,
)

INT_TOKEN = re.compile(r"^-?\d+$")
#: Labels RELION parses as integers that the package's files carry; checked even if the package's list lost them.
ESSENTIAL_INTEGERS = {
    "rlnOpticsGroup", "rlnClassNumber", "rlnRandomSubset", "rlnImageSize", "rlnImageDimensionality",
    "rlnGroupNumber", "rlnMicrographId", "rlnNrOfSignificantSamples", "rlnHelicalTubeID", "rlnTomoSizeX",
    "rlnCtfDataAreCtfPremultiplied",
}
STRICT_INTEGERS = ESSENTIAL_INTEGERS | set(INTEGER_LABELS) | set(BOOLEAN_LABELS)
REAL_PARTICLES = ("relion31.star", "relion31.v2.star", "relion31.6opticsgroups.star", "FinalRefinement-OriginalParticles-PfCRT.star")


def raw_blocks(path: Path) -> dict[str, dict[str, list[str]]]:
    """Block -> label -> its tokens, from the raw text; every loop row must have one token per label."""
    blocks: dict[str, dict[str, list[str]]] = {}
    lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    i, block = 0, None
    while i < len(lines):
        line = lines[i]
        if line.startswith("data_"):
            block = blocks.setdefault(line[5:], {})
            i += 1
        elif line.startswith("loop_"):
            labels = []
            i += 1
            while i < len(lines) and lines[i].startswith("_"):
                labels.append(lines[i].split()[0][1:])
                i += 1
            for label in labels:
                block[label] = []
            while i < len(lines) and not lines[i].startswith(("data_", "loop_", "_")):
                tokens = shlex.split(lines[i])
                assert len(tokens) == len(labels), f"{path.name}: row {lines[i]!r} has {len(tokens)} values for {len(labels)} labels"
                for label, token in zip(labels, tokens):
                    block[label].append(token)
                i += 1
        elif line.startswith("_"):
            label, value = shlex.split(line)
            block[label[1:]] = [value]
            i += 1
        else:
            raise AssertionError(f"{path.name}: stray line {line!r}")
    return blocks


def check_faithful(path: Path, names: dict[tuple[str, str], list[str]] | None = None,
                   kinds: dict[tuple[str, str], str] | None = None) -> dict[str, dict[str, list[str]]]:
    """Integer labels are integer tokens (and int64 in starfile); ``names`` come back as written; ``kinds`` match."""
    raw = raw_blocks(path)
    back = starfile.read(path, always_dict=True, parse_as_string=list(NAME_LABELS))
    assert set(raw) == set(back), path.name
    for block, columns in raw.items():
        for label, tokens in columns.items():
            if label in STRICT_INTEGERS:
                bad = [t for t in tokens if not INT_TOKEN.match(t)]
                assert not bad, f"{path.name} data_{block}: {label} written as {bad[:3]}"
                if isinstance(back[block], pd.DataFrame) and len(back[block]):
                    assert pd.api.types.is_integer_dtype(back[block][label]), (path.name, block, label)
    for (block, label), expected in (names or {}).items():
        assert raw[block][label] == list(expected), (path.name, block, label)
        assert list(back[block][label]) == list(expected), (path.name, block, label)
    for (block, label), kind in (kinds or {}).items():
        assert back[block][label].dtype.kind == kind, (path.name, block, label, back[block][label].dtype)
    return raw


def source_kinds(path: Path) -> dict[tuple[str, str], str]:
    """The numeric dtype kind ('i' or 'f') of every numeric column of a real STAR file, as starfile reads it."""
    src = starfile.read(path, always_dict=True, parse_as_string=list(NAME_LABELS))
    return {(b, c): df[c].dtype.kind for b, df in src.items() if isinstance(df, pd.DataFrame) for c in df.columns
            if df[c].dtype.kind in "if"}


def test_integer_lists_cover_relion_essentials():
    assert ESSENTIAL_INTEGERS <= set(INTEGER_LABELS) | set(BOOLEAN_LABELS)
    assert not set(INTEGER_LABELS) & set(NAME_LABELS)


@pytest.mark.parametrize("name", REAL_PARTICLES)
def test_poses_keep_integer_columns(tmp_path, testdata, name):
    """reconstruct's poses.star: rlnOpticsGroup was written as 1.000000 in both blocks."""
    from napari_cryo.reconstruction.outputs import write_poses

    src = testdata / "star" / name
    pt = particle_table(src)
    n = len(pt.table)
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(n, 3, 3)))
    out = write_poses(tmp_path / "poses.star", pt, q * np.sign(np.linalg.det(q))[:, None, None], rng.normal(size=(n, 2)))
    kinds = {key: kind for key, kind in source_kinds(src).items() if key[1] not in ("rlnOriginX", "rlnOriginY")}
    if pt.version == "3.0":  # one unnamed block in, one data_particles block out
        kinds = {("particles", c): k for (_, c), k in kinds.items()}
    names = {("particles", c): list(pt.table[c]) for c in ("rlnMicrographName", "rlnImageName") if c in pt.table}
    raw = check_faithful(out, names, kinds)
    assert "rlnOpticsGroup" in raw["particles"] or pt.version == "3.0"


@pytest.mark.parametrize("layout", ["3.0", "3.1"])
@pytest.mark.parametrize("name", REAL_PARTICLES[::2])
def test_convert_keeps_integer_columns(tmp_path, testdata, capsys, name, layout):
    src = testdata / "star" / name
    out = tmp_path / "out.star"
    assert main(["convert", str(src), str(out), "--layout", layout]) == 0, capsys.readouterr().err
    raw = check_faithful(out)
    table = raw["particles" if layout == "3.1" else ""]
    for label in ("rlnClassNumber", "rlnRandomSubset", "rlnNrOfSignificantSamples"):
        if any(label in block for block in raw_blocks(src).values()):
            assert label in table
    names = particle_table(src).table["rlnImageName"].tolist()
    assert table["rlnImageName"] == names


@pytest.mark.parametrize("layout", ["3.0", "3.1"])
@pytest.mark.parametrize("ndim", [2, 3])
def test_write_coordinates_types(tmp_path, testdata, layout, ndim):
    rng = np.random.default_rng(1)
    points = rng.uniform(0, 500, (6, ndim))
    features = pd.DataFrame({
        "rlnClassNumber": np.array([1, 2, 3, 1, 2, 3], dtype=float),  # ints that pandas upcast to float
        "rlnRandomSubset": [1, 2, 1, 2, 1, 2],
        "rlnHelicalTubeID": pd.array([4, 4, 5, 5, 6, 6], dtype="Int64"),
        "rlnCtfDataAreCtfPremultiplied": [False] * 6,
        "rlnAutopickFigureOfMerit": rng.normal(size=6),
        "rlnDefocusU": np.full(6, 12000.0),  # a float label with whole values stays float
        "rlnImageName": [f"{i:06d}@Extract/job007/0001.mrcs" for i in range(1, 7)],
        "myCount": np.arange(6),
    })
    optics = particle_table(testdata / "star" / "relion31.star").optics
    name = "0001" if ndim == 2 else "007"  # names that look like numbers
    out = write_coordinates(tmp_path / "c.star", points, features, 1.5, layout=layout, micrograph_name=name, optics=optics)
    block = "particles" if layout == "3.1" else ""
    group = "rlnMicrographName" if ndim == 2 else "rlnTomoName"
    kinds = {(block, c): "i" for c in ("rlnClassNumber", "rlnRandomSubset", "rlnHelicalTubeID", "myCount")}
    kinds.update({(block, "rlnDefocusU"): "f", (block, "rlnAutopickFigureOfMerit"): "f"})
    raw = check_faithful(out, {(block, group): [name] * 6, (block, "rlnImageName"): list(features["rlnImageName"])}, kinds)
    assert raw[block]["rlnCtfDataAreCtfPremultiplied"] == ["0"] * 6
    if layout == "3.1":
        assert raw["optics"]["rlnOpticsGroup"] == ["1"] and raw["optics"]["rlnImageSize"] == ["256"]
        assert raw["particles"]["rlnOpticsGroup"] == ["1"] * 6
    # the package's own reader gives the names back as written
    sets = read_star(out)
    assert list(sets[block][group]) == [name] * 6


def test_napari_writer_hooks_keep_types(tmp_path, testdata):
    from napari_cryo.io._writer import write_points_star30, write_points_star31
    from napari_cryo.io.layers import star_layer_data

    for name in ("relion31.star", "relion31.6opticsgroups.star"):
        src = testdata / "star" / name
        points = [layer for layer in star_layer_data(src) if layer[2] == "points"]
        for writer, block in ((write_points_star31, "particles"), (write_points_star30, "")):
            data, meta, _ = points[0]
            out = tmp_path / f"{writer.__name__}_{name}"
            written = writer(str(out), data, meta)
            dropped = {"rlnOpticsGroup", "rlnImagePixelSize", "rlnMicrographPixelSize"} if block == "" else set()
            kinds = {(block, c): k for (_, c), k in source_kinds(src).items() if c in meta["features"].columns and c not in dropped}
            names = {(block, "rlnMicrographName"): list(meta["features"]["rlnMicrographName"].astype(str)),
                     (block, "rlnImageName"): list(meta["features"]["rlnImageName"].astype(str))}
            raw = check_faithful(Path(written[0]), names, kinds)
            assert "rlnClassNumber" in raw[block]


def test_picking_export_types(tmp_path):
    from napari_cryo.picking.export import write_picks

    out = write_picks(tmp_path / "m_picks.star", np.array([[10.0, 20.0], [30.5, 40.25]]), np.array([0.9, 0.1]), 1.2, "0042.mrc")
    raw = check_faithful(out, {("particles", "rlnMicrographName"): ["0042.mrc"] * 2}, {("particles", "rlnAutopickFigureOfMerit"): "f"})
    assert raw["particles"]["rlnOpticsGroup"] == ["1", "1"] and raw["optics"]["rlnOpticsGroup"] == ["1"]


def test_squares_ranked_types(tmp_path):
    from napari_cryo.squares.model import SCORES
    from napari_cryo.squares.ranked import write_ranked

    n = 5
    scored = pd.DataFrame({"center_x": np.arange(n) * 10.0, "center_y": np.arange(n) * 5.0, "side": 8.0, "angle": 0.0,
                           "complete": [True, True, False, True, True]})
    for j, s in enumerate(SCORES):
        scored[s] = np.where(scored["complete"], np.linspace(0, 1, n) + j, np.nan)  # NaN for the incomplete square
    scored["rank"] = [4, 3, 0, 2, 1]
    _, star = write_ranked(tmp_path, scored, "007", 12.5)
    raw = check_faithful(star, {("particles", "rlnMicrographName"): ["007"] * 4},
                         {("particles", "rnkSquareRank"): "i", ("particles", "rnkSquareOverall"): "f"})
    assert raw["particles"]["rnkSquareRank"] == ["1", "2", "3", "4"]


def test_segmentation_picks_types(tmp_path):
    from napari_cryo.segmentation.particles import PickedParticles, write_picks

    picks = PickedParticles(np.array([[1.0, 2.0, 3.0], [4.5, 5.5, 6.5]]), np.array([1000.0, 2000.0]), np.array([3.0, 1.0]))
    out = write_picks(tmp_path / "p.star", picks, 10.0, "01")
    check_faithful(out, {("particles", "rlnTomoName"): ["01", "01"]},
                   {("particles", "rlnAutopickFigureOfMerit"): "f", ("particles", "napariCryoVolumeA3"): "f"})


def test_simulated_datasets_types(tmp_path):
    from napari_cryo.reconstruction.simulate import SimulationSettings, simulate_dataset
    from napari_cryo.synthetic import simulate_particles, write_particle_dataset
    from napari_cryo.tasks import drain

    star = write_particle_dataset(tmp_path / "synthetic", simulate_particles(n=3, box=16, seed=3))
    check_faithful(star)
    volume = np.random.default_rng(0).normal(size=(16, 16, 16)).astype(np.float32)
    result, _ = drain(simulate_dataset(volume, 2.0, tmp_path / "sim", SimulationSettings(n=3, seed=1)))
    for name in ("particles.star", "ground_truth.star"):
        raw = check_faithful(Path(result["files"][name]), kinds={("particles", "rlnRandomSubset"): "i"})
        assert raw["optics"]["rlnImageSize"] == ["16"]


def test_write_star_refuses_a_fraction_in_an_integer_label(tmp_path):
    out = tmp_path / "bad.star"
    table = pd.DataFrame({"rlnCoordinateX": [1.0, 2.0], "rlnClassNumber": [1.0, 1.5]})
    with pytest.raises(CryoInputError, match=r"bad\.star: rlnClassNumber .*row 2 has 1\.5"):
        write_star({"particles": table}, out)
    with pytest.raises(CryoInputError, match="rlnOpticsGroup"):
        write_star({"particles": table.assign(rlnClassNumber=1, rlnOpticsGroup=[1, np.nan])}, out)
    with pytest.raises(CryoInputError, match="rlnImageSize"):
        write_star({"general": {"rlnImageSize": "big"}}, out)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_write_star_types_after_a_merge(tmp_path):
    """A left merge that leaves a gap turns ints into floats in pandas; whole values are written as integers again."""
    particles = pd.DataFrame({"rlnCoordinateX": [1.0, 2.0, 3.0, 4.0], "key": [1, 2, 2, 3]})
    groups = pd.DataFrame({"key": [1, 2], "rlnOpticsGroup": [1, 2], "rlnGroupNumber": [7, 8]})
    merged = particles.merge(groups, on="key", how="left").drop(columns="key")
    merged = merged.fillna({"rlnOpticsGroup": 2, "rlnGroupNumber": 8})  # the gap is filled, the floats stay
    assert merged["rlnOpticsGroup"].dtype.kind == "f"
    out = write_star({"particles": merged, "general": {"rlnOpticsGroup": 2.0, "rlnCtfDataAreCtfPremultiplied": True}},
                     tmp_path / "m.star")
    raw = check_faithful(out)
    assert raw["particles"]["rlnOpticsGroup"] == ["1", "2", "2", "2"] and raw["particles"]["rlnGroupNumber"] == ["7", "8", "8", "8"]
    assert raw["general"] == {"rlnOpticsGroup": ["2"], "rlnCtfDataAreCtfPremultiplied": ["1"]}


def test_names_that_look_like_syntax_are_quoted(tmp_path):
    names = ["_odd.mrc", "#1.mrc", "data_x.mrc", "with space.mrc", "007"]
    out = write_star({"particles": pd.DataFrame({"rlnMicrographName": names, "rlnCoordinateX": np.arange(5.0)})}, tmp_path / "q.star")
    check_faithful(out, {("particles", "rlnMicrographName"): names})


def test_reader_keeps_names_as_written(tmp_path, testdata):
    src = tmp_path / "n.star"
    src.write_text("data_\nloop_\n_rlnCoordinateX\n_rlnCoordinateY\n_rlnMicrographName\n_rlnOpticsGroup\n1 2 0001 1\n3 4 0002 1\n")
    pt = particle_table(src)
    assert list(pt.table["rlnMicrographName"]) == ["0001", "0002"]
    assert pd.api.types.is_integer_dtype(pt.table["rlnOpticsGroup"])
    shutil.copy(src, tmp_path / "copy.star")
    out = tmp_path / "out.star"
    assert main(["convert", str(tmp_path / "copy.star"), str(out), "--layout", "3.0"]) == 0
    check_faithful(out, {("", "rlnMicrographName"): ["0001", "0002"]})
