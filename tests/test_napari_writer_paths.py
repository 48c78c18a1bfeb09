"""The napari writer hooks write exactly the path napari gives them, or refuse it (issue #27).

napari's save dialog asks about replacing the very path it passes (npe2 adds
the extension to a name typed without one), so a hook may replace that path
and no other: it never completes a name to another file nobody asked about.
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_cryo.errors import CryoInputError
from napari_cryo.io._writer import write_image_mrc, write_labels_mrc, write_points_star30, write_points_star31
from napari_cryo.io.mrc import read_mrc, write_mrc
from napari_cryo.io.star import read_coordinates, write_coordinates

IMAGE = np.arange(16, dtype=np.float32).reshape(4, 4)
META = {"scale": (2.0, 2.0)}


def _listing(folder):
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in folder.iterdir()}


def _write_image(path, data, meta):
    return write_image_mrc(path, data, meta)


def _write_stack(path, data, meta):
    return write_image_mrc(path, np.stack([data, data]), {"scale": (1.0, 2.0, 2.0), "metadata": {"mrc_kind": "stack"}})


def _write_labels(path, data, meta):
    return write_labels_mrc(path, data.astype(np.uint8), meta)


MRC_WRITERS = [_write_image, _write_stack, _write_labels]


@pytest.mark.parametrize("writer", MRC_WRITERS)
@pytest.mark.parametrize("existing", ["foo.mrc", "foo.mrcs"])
def test_a_name_without_extension_leaves_the_file_with_one_alone(tmp_path, writer, existing):
    write_mrc(tmp_path / existing, np.zeros((4, 4), np.float32), 1.0)
    before = _listing(tmp_path)
    with pytest.raises(CryoInputError, match="foo: has no MRC extension") as info:
        writer(str(tmp_path / "foo"), IMAGE, META)
    assert str(tmp_path / "foo") in str(info.value) and "\n" not in str(info.value)
    assert _listing(tmp_path) == before


@pytest.mark.parametrize("writer", [write_points_star31, write_points_star30])
def test_points_without_star_extension_leave_the_star_file_alone(tmp_path, writer):
    write_coordinates(tmp_path / "picks.star", np.ones((3, 2)), None, 2.0)
    before = _listing(tmp_path)
    with pytest.raises(CryoInputError, match="picks: has no STAR extension"):
        writer(str(tmp_path / "picks"), np.zeros((5, 2)), META)
    assert _listing(tmp_path) == before


@pytest.mark.parametrize(
    "writer, name",
    [(_write_image, "x.txt"), (_write_labels, "seg.tif"), (_write_stack, "s.mrc.gz"), (write_points_star31, "p.csv"), (write_points_star30, "p.star.txt")],
)
def test_a_wrong_extension_is_refused_and_nothing_written(tmp_path, writer, name):
    data = np.zeros((5, 2)) if writer in (write_points_star31, write_points_star30) else IMAGE
    with pytest.raises(CryoInputError, match="nothing was written"):
        writer(str(tmp_path / name), data, META)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["map.MRC", "stack.mrcs", "vol.map", "t.rec", "tilt.st", "a.ali", "run_2.5A.mrc"])
def test_the_exact_path_is_written(tmp_path, name):
    (out,) = write_image_mrc(str(tmp_path / name), IMAGE, META)
    assert out == str(tmp_path / name) and [p.name for p in tmp_path.iterdir()] == [name]
    np.testing.assert_array_equal(read_mrc(out)[0], IMAGE)


def test_a_stack_goes_to_the_mrc_name_it_was_given(tmp_path):
    (out,) = _write_stack(str(tmp_path / "particles.mrc"), IMAGE, META)
    assert out == str(tmp_path / "particles.mrc") and [p.name for p in tmp_path.iterdir()] == ["particles.mrc"]
    data, info = read_mrc(out)
    assert data.shape == (2, 4, 4) and info.kind == "stack"


@pytest.mark.parametrize("writer", [write_points_star31, write_points_star30])
def test_the_exact_star_path_is_written_and_replaced(tmp_path, writer):
    path = tmp_path / "picks.star"
    write_coordinates(path, np.ones((3, 2)), None, 2.0)
    (out,) = writer(str(path), np.full((5, 2), 7.0), META)  # napari asked about this very file
    assert out == str(path) and [p.name for p in tmp_path.iterdir()] == ["picks.star"]
    (cs,) = read_coordinates(out)
    assert len(cs.points) == 5


def test_napari_adds_the_extension_before_calling_the_hook(tmp_path):
    """What napari does with a name typed without extension: npe2 completes it, then calls the hook."""
    import npe2

    npe2.PluginManager.instance().discover()
    written = npe2.write(str(tmp_path / "foo"), [(IMAGE, META, "image")], plugin_name="napari-cryo")
    assert written == [str(tmp_path / "foo.mrc")] and [p.name for p in tmp_path.iterdir()] == ["foo.mrc"]
