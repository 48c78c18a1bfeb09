"""Surfaces from segmentation volumes, OBJ files and napari layer data."""

from __future__ import annotations

import numpy as np
import pytest

from napari_cryo.errors import CryoInputError
from napari_cryo.segmentation.meshes import (
    Mesh,
    mesh_from_volume,
    read_obj,
    surface_layer_data,
    write_obj,
)


def soft_ball(shape, centre, radius: float) -> np.ndarray:
    """1 inside, 0 outside, linear across one voxel so the 0.5 level is at ``radius`` exactly."""
    z, y, x = np.indices(shape, dtype=float)
    d = np.sqrt((z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2)
    return np.clip(0.5 + radius - d, 0.0, 1.0).astype(np.float32)


def signed_volume_xyz(mesh: Mesh) -> float:
    """Enclosed volume, positive when faces wind outward in XYZ."""
    xyz = mesh.vertices[:, ::-1].astype(np.float64)
    a, b, c = xyz[mesh.faces[:, 0]], xyz[mesh.faces[:, 1]], xyz[mesh.faces[:, 2]]
    return float(np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6.0)


def edges_are_shared_by_two_faces(faces: np.ndarray) -> bool:
    edges = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
    _, counts = np.unique(edges, axis=0, return_counts=True)
    return bool((counts == 2).all())


def test_sphere_has_the_right_radius_area_and_outward_winding():
    pixel, r_vox = 5.0, 9.0
    centre = np.array([12.0, 13.0, 14.0])
    mesh = mesh_from_volume(soft_ball((25, 27, 29), centre, r_vox), level=0.5, pixel_size=pixel)
    r = r_vox * pixel
    assert mesh.vertices.dtype == np.float32 and mesh.faces.dtype == np.int32 and mesh.values.dtype == np.float32
    distance = np.linalg.norm(mesh.vertices - centre * pixel, axis=1)
    np.testing.assert_allclose(distance, r, rtol=0.02)
    assert mesh.area() == pytest.approx(4 * np.pi * r**2, rel=0.03)
    assert signed_volume_xyz(mesh) == pytest.approx(4 / 3 * np.pi * r**3, rel=0.03)
    assert edges_are_shared_by_two_faces(mesh.faces)
    np.testing.assert_array_equal(mesh.values, 1.0)
    assert mesh.pixel_size == pixel


def test_origin_shifts_vertices_and_coarse_step_still_works():
    volume = soft_ball((20, 20, 20), (10, 10, 10), 6)
    plain = mesh_from_volume(volume, 0.5, 2.0)
    shifted = mesh_from_volume(volume, 0.5, 2.0, origin=(100.0, -50.0, 7.5))
    np.testing.assert_allclose(shifted.vertices, plain.vertices + np.float32([100.0, -50.0, 7.5]), atol=1e-4)
    coarse = mesh_from_volume(volume, 0.5, 2.0, step=2)
    assert 0 < len(coarse.vertices) < len(plain.vertices) / 2
    np.testing.assert_allclose(np.linalg.norm(coarse.vertices - 20.0, axis=1), 12.0, rtol=0.1)


def test_objects_at_the_box_edge_are_closed_and_the_pad_is_undone():
    volume = np.ones((4, 5, 6), np.float32)
    mesh = mesh_from_volume(volume, 0.5, pixel_size=2.0)
    assert edges_are_shared_by_two_faces(mesh.faces)
    # With the outside at 0, the 0.5 level lies half a voxel beyond the box.
    np.testing.assert_allclose(mesh.vertices.min(axis=0), [-1.0, -1.0, -1.0])
    np.testing.assert_allclose(mesh.vertices.max(axis=0), [7.0, 9.0, 11.0])
    assert signed_volume_xyz(mesh) > 0


def test_min_volume_drops_small_components_and_values_index_surfaces():
    shape = (20, 20, 40)
    volume = np.maximum(soft_ball(shape, (10, 10, 10), 6), soft_ball(shape, (10, 10, 30), 2))
    pixel = 3.0
    both = mesh_from_volume(volume, 0.5, pixel)
    assert sorted(np.unique(both.values)) == [1.0, 2.0]
    small_voxels = int((soft_ball(shape, (10, 10, 30), 2) >= 0.5).sum())
    big = mesh_from_volume(volume, 0.5, pixel, min_volume=(small_voxels + 1) * pixel**3)
    np.testing.assert_array_equal(big.values, 1.0)
    np.testing.assert_allclose(np.linalg.norm(big.vertices - 10 * pixel, axis=1), 6 * pixel, rtol=0.03)
    # The kept surface is exactly as before.
    kept = both.values == both.values[np.argmin(both.vertices[:, 2])]
    assert len(big.vertices) == kept.sum()
    everything = mesh_from_volume(volume, 0.5, pixel, min_volume=1e9)
    assert len(everything.vertices) == 0


def test_hollow_shell_has_two_surfaces():
    shape = (24, 24, 24)
    shell = np.minimum(soft_ball(shape, (12, 12, 12), 9), 1.0 - soft_ball(shape, (12, 12, 12), 5))
    mesh = mesh_from_volume(shell, 0.5, 1.0)
    assert sorted(np.unique(mesh.values)) == [1.0, 2.0]
    expected = 4 / 3 * np.pi * (9**3 - 5**3)
    assert signed_volume_xyz(mesh) == pytest.approx(expected, rel=0.05)


def test_empty_mesh_when_nothing_reaches_the_level(tmp_path):
    for volume in (np.zeros((5, 6, 7)), np.full((5, 6, 7), np.nan)):
        mesh = mesh_from_volume(volume, 0.5, 2.0)
        assert mesh.vertices.shape == (0, 3) and mesh.faces.shape == (0, 3) and mesh.values.shape == (0,)
        assert mesh.area() == 0.0
    path = write_obj(tmp_path / "empty.obj", mesh)
    back = read_obj(path)
    assert back.vertices.shape == (0, 3) and back.faces.shape == (0, 3)
    assert surface_layer_data(back)[0].shape == (0, 3)


def test_levels_at_or_below_zero():
    volume = soft_ball((16, 16, 16), (8, 8, 8), 5) - 1.0  # -1 outside, 0 inside
    mesh = mesh_from_volume(volume, -0.5, 1.0)
    np.testing.assert_allclose(np.linalg.norm(mesh.vertices - 8.0, axis=1), 5.0, rtol=0.03)


def test_bad_input():
    with pytest.raises(CryoInputError, match="3-D"):
        mesh_from_volume(np.zeros((4, 4)), 0.5, 1.0)
    with pytest.raises(CryoInputError, match="pixel size"):
        mesh_from_volume(np.zeros((4, 4, 4)), 0.5, -1.0)
    with pytest.raises(CryoInputError, match="step"):
        mesh_from_volume(np.zeros((4, 4, 4)), 0.5, 1.0, step=0)
    with pytest.raises(CryoInputError, match="minimum volume"):
        mesh_from_volume(np.zeros((4, 4, 4)), 0.5, 1.0, min_volume=-1)


def test_obj_round_trip_and_format(tmp_path):
    mesh = mesh_from_volume(soft_ball((14, 16, 18), (6, 8, 9), 4), 0.5, 2.5, origin=(1.0, 2.0, 3.0))
    path = write_obj(tmp_path / "ball.obj", mesh)
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    assert lines[0].startswith("#") and "napari-cryo" in lines[0] and "Å" in lines[0]
    first_v = next(line for line in lines if line.startswith("v "))
    np.testing.assert_allclose([float(w) for w in first_v.split()[1:]], mesh.vertices[0][::-1], atol=1e-3)
    first_f = next(line for line in lines if line.startswith("f "))
    assert [int(w) for w in first_f.split()[1:]] == list(mesh.faces[0] + 1)
    back = read_obj(path)
    np.testing.assert_allclose(back.vertices, mesh.vertices, atol=1e-3)
    np.testing.assert_array_equal(back.faces, mesh.faces)
    np.testing.assert_array_equal(back.values, mesh.values)
    assert back.pixel_size == 2.5
    np.testing.assert_array_equal(back.origin, [1.0, 2.0, 3.0])
    assert signed_volume_xyz(back) > 0


def test_overwrite_is_refused_without_the_flag(tmp_path):
    mesh = mesh_from_volume(soft_ball((10, 10, 10), (5, 5, 5), 3), 0.5, 1.0)
    path = write_obj(tmp_path / "m.obj", mesh)
    before = path.read_text()
    with pytest.raises(CryoInputError, match="already exists"):
        write_obj(path, Mesh())
    assert path.read_text() == before
    write_obj(path, Mesh(), overwrite=True)
    assert "\nv " not in path.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.obj"]


def test_read_obj_accepts_common_variants(tmp_path):
    path = tmp_path / "quad.obj"
    path.write_text(
        "# another tool\nmtllib x.mtl\no square\n"
        "v 0 0 0\nv 1 0 0\nv 1 1 0 0.5 0.5 0.5\nv 0 1 0\nvn 0 0 1\nvt 0 0\n"
        "f 1/1/1 2/1/1 3/1/1 4/1/1\nf -4 -3 -2\n"
    )
    mesh = read_obj(path)
    np.testing.assert_array_equal(mesh.faces, [[0, 1, 2], [0, 2, 3], [0, 1, 2]])
    np.testing.assert_array_equal(mesh.vertices[1], [0, 0, 1])  # ZYX of x=1
    assert mesh.pixel_size == 1.0
    np.testing.assert_array_equal(mesh.values, 1.0)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("v 1 2\n", "line 1 .*x, y and z"),
        ("v 0 0 0\nv 1 0 0\nv a 1 0\n", "line 3"),
        ("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 4\n", "line 4 .*vertex 4"),
        ("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2\n", "at least 3"),
        ("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 0 1 2\n", "vertex 0"),
        ("v 0 0 inf\n", "not finite"),
        (b"\xff\xfe binary", "not a text OBJ"),
    ],
)
def test_read_obj_names_the_file_when_malformed(tmp_path, content, problem):
    path = tmp_path / "bad.obj"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with pytest.raises(CryoInputError, match=problem) as info:
        read_obj(path)
    assert info.value.path == str(path)


def test_read_obj_missing_file(tmp_path):
    with pytest.raises(CryoInputError, match="does not exist"):
        read_obj(tmp_path / "none.obj")


def test_surface_layer_data_is_in_voxels_of_the_source_volume():
    volume = soft_ball((12, 12, 12), (6, 5, 4), 3)
    mesh = mesh_from_volume(volume, 0.5, 4.0, origin=(40.0, 80.0, -8.0))
    vertices, faces, values = surface_layer_data(mesh)
    assert vertices.dtype == np.float32
    np.testing.assert_allclose(vertices, mesh_from_volume(volume, 0.5, 1.0).vertices, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(vertices - [6, 5, 4], axis=1), 3.0, rtol=0.05)
    np.testing.assert_array_equal(faces, mesh.faces)
    np.testing.assert_array_equal(values, mesh.values)
