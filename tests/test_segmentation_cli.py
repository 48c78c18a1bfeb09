"""``napari-cryo segment``: train, group, apply, pick, mesh, and bad input."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from napari_cryo.cli import main
from napari_cryo.io.mrc import read_mrc, write_mrc
from napari_cryo.segmentation.group import ModelGroup
from napari_cryo.segmentation.model import SegmentationModel


@pytest.fixture(scope="module")
def painted(tmp_path_factory) -> dict[str, Path]:
    """A small synthetic tomogram with two painted slices (membrane=1, carbon=2)."""
    from napari_cryo.synthetic.tomogram import simulate_tomogram

    d = tmp_path_factory.mktemp("seg")
    t = simulate_tomogram(shape=(32, 96, 96), pixel_size=12.0, n_vesicles=2, n_bound=3, n_free=3, n_filaments=0, snr=2.0, seed=3)
    labels = np.zeros_like(t.labels)
    for z in (4, 12, 20):
        labels[z] = np.where(np.isin(t.labels[z], (1, 2)), t.labels[z], 0)
    write_mrc(d / "tomo.mrc", t.volume, 12.0, origin=(120.0, 0.0, 240.0))
    write_mrc(d / "tomo_labels.mrc", labels, 12.0, labels=True)
    np.save(d / "truth.npy", t.labels)
    return {"dir": d, "tomo": d / "tomo.mrc", "labels": d / "tomo_labels.mrc"}


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_train_group_apply_pick_mesh(capsys, painted, tmp_path):
    code, out, err = _run(
        capsys, "segment", "train", painted["tomo"], "--labels", painted["labels"], "--feature", "membrane=1", "--feature", "carbon=2",
        "--box", 32, "--epochs", 2, "--budget", 0, "--boxes-per-slice", 6, "--copies", 2, "--out", tmp_path / "run", "--device", "cpu",
    )
    assert code == 0, err
    membrane, carbon = tmp_path / "run_membrane.scnm", tmp_path / "run_carbon.scnm"
    assert membrane.exists() and carbon.exists() and (tmp_path / "run_membrane.loss.png").exists()
    assert not (tmp_path / "run_membrane.ckpt").exists()  # the checkpoint goes once the model is written
    model = SegmentationModel.load(membrane)
    assert model.title == "membrane" and model.pixel_size == 12.0 and model.box_size == 32 and len(model.history) == 2

    group = tmp_path / "g.scnmgroup"
    code, out, err = _run(
        capsys, "segment", "group", membrane, carbon, "--interaction", "membrane avoids carbon radius=5 threshold=0.5",
        "--emit", "carbon", "--absorb", "membrane", "--out", group,
    )
    assert code == 0, err
    loaded = ModelGroup.load(group)
    assert loaded.titles == ["membrane", "carbon"] and loaded.graph.interactions[0].kind == "avoid"
    assert loaded.graph.interactions[0].mode == "robust"  # the default of a new interaction
    assert loaded.graph.emit == {"carbon"} and loaded.graph.absorb == {"membrane"}

    out_dir = tmp_path / "seg"
    code, out, err = _run(capsys, "segment", "apply", group, painted["tomo"], "--out", out_dir, "--device", "cpu")
    assert code == 0, err
    assert "tomo.mrc: membrane avoids carbon: removes " in err  # each interaction's effect
    seg = out_dir / "tomo__membrane.mrc"
    assert seg.exists() and (out_dir / "tomo__carbon.mrc").exists()
    data, info = read_mrc(seg)
    assert data.shape == (32, 96, 96) and data.dtype == np.float32
    assert info.voxel_size == pytest.approx((12.0, 12.0, 12.0)) and info.origin == pytest.approx((120.0, 0.0, 240.0))
    # Competition was applied: the absorbing membrane is zero wherever carbon is higher.
    carbon_map, _ = read_mrc(out_dir / "tomo__carbon.mrc")
    assert not np.any((np.asarray(carbon_map) > np.asarray(data)) & (np.asarray(data) > 0))
    # Nothing is overwritten without --overwrite.
    code, _, err = _run(capsys, "segment", "apply", group, painted["tomo"], "--out", out_dir)
    assert code == 2 and "already exists" in err



def test_pick_and_mesh(capsys, tmp_path):
    # Two spheres of radius 5 px and a 1-voxel speck, as a segmentation at 12 Å with an origin.
    zz, yy, xx = np.mgrid[0:32, 0:64, 0:64]
    prob = np.zeros((32, 64, 64), np.float32)
    for c in ((16, 20, 20), (16, 40, 44)):
        prob[(zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 <= 25] = 0.9
    prob[5, 5, 5] = 0.9
    seg = tmp_path / "tomo__particle.mrc"
    write_mrc(seg, prob, 12.0, origin=(0.0, 0.0, 240.0))
    code, out, err = _run(capsys, "segment", "pick", seg, "--threshold", 0.5, "--min-volume", 10 * 12.0**3, "--min-spacing", 50, "--out", tmp_path / "picks.star")
    assert code == 0, err
    import starfile

    table = starfile.read(tmp_path / "picks.star")["particles"]
    assert len(table) == 2 and table["rlnTomoName"].iloc[0] == "tomo"
    xyz = table[["rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ"]].to_numpy()
    np.testing.assert_allclose(sorted(map(tuple, xyz)), [(20, 20, 16), (44, 40, 16)], atol=0.01)
    code, out, err = _run(capsys, "segment", "pick", seg, "--threshold", 0.3, "--out", tmp_path / "picks.tsv")
    assert code == 0 and (tmp_path / "picks.tsv").read_text().startswith("x\ty\tz")

    code, out, err = _run(capsys, "segment", "mesh", seg, "--level", 0.5, "--min-volume", 10 * 12.0**3, "--out", tmp_path / "particle.obj")
    assert code == 0, err
    text = (tmp_path / "particle.obj").read_text()
    vertices = np.array([[float(v) for v in line.split()[1:]] for line in text.splitlines() if line.startswith("v ")])
    # In Å, X first, the origin added: the first sphere is centred at x = 20 px * 12 Å + 240 Å.
    near = vertices[np.linalg.norm(vertices - [480, 240, 192], axis=1) < 100]
    assert len(near) > 50 and np.allclose(np.linalg.norm(near - [480, 240, 192], axis=1), 5.5 * 12, atol=12)
    assert vertices[:, 2].min() > 100  # the speck near the corner was dropped
    code, _, err = _run(capsys, "segment", "mesh", seg, "--level", 0.95, "--out", tmp_path / "none.obj")
    assert code == 2 and "nothing" in err and not (tmp_path / "none.obj").exists()


def test_apply_keeps_real_map_geometry(capsys, painted, testdata, tmp_path):
    """A real EMDB map (non-zero origin) segmented at another pixel size keeps its header geometry."""
    model = SegmentationModel.new("vgg", "density", box_size=32, pixel_size=12.0)
    model.save(tmp_path / "d.scnm")
    shutil.copy(testdata / "mrc" / "EMD-3197.map", tmp_path / "EMD-3197.map")
    code, out, err = _run(capsys, "segment", "apply", tmp_path / "d.scnm", tmp_path / "EMD-3197.map", "--out", tmp_path / "o")
    assert code == 0, err
    _, src = read_mrc(tmp_path / "EMD-3197.map")
    data, info = read_mrc(tmp_path / "o" / "EMD-3197__density.mrc")
    assert data.shape == src.shape and info.voxel_size == pytest.approx(src.voxel_size) and info.origin == pytest.approx(src.origin)


def test_architectures_listed(capsys):
    code, out, _ = _run(capsys, "segment", "architectures")
    assert code == 0
    names = [line.split(":")[0].split()[0] for line in out.splitlines()]
    assert {"unet", "vgg", "resnet", "inception", "pix2pix"} <= set(names) and "vgg (default)" in out


def test_bad_inputs(capsys, painted, tmp_path):
    base = ["segment", "train", painted["tomo"], "--box", 32, "--epochs", 1, "--out", tmp_path / "m.scnm"]
    # Labels of another shape.
    write_mrc(tmp_path / "small.mrc", np.zeros((4, 8, 8), np.uint8), 12.0, labels=True)
    code, _, err = _run(capsys, *base, "--labels", tmp_path / "small.mrc", "--feature", "membrane=1")
    assert code == 2 and "small.mrc" in err and "shape" in err and len(err.strip().splitlines()) == 1
    # A feature nobody painted.
    code, _, err = _run(capsys, *base, "--labels", painted["labels"], "--feature", "ribosome=7")
    assert code == 2 and "ribosome" in err and "no annotation" in err
    assert not (tmp_path / "m.scnm").exists()
    # Unknown architecture, by name.
    code, _, err = _run(capsys, *base, "--labels", painted["labels"], "--feature", "membrane=1", "--architecture", "alexnet")
    assert code == 2 and "alexnet" in err and "vgg" in err
    # A model file of the wrong kind.
    (tmp_path / "fake.scnm").write_bytes(b"\x00" * 100)
    code, _, err = _run(capsys, "segment", "apply", tmp_path / "fake.scnm", painted["tomo"], "--out", tmp_path / "o")
    assert code == 2 and "fake.scnm" in err and "not a zip" in err
    # An interaction naming a missing model, and a cycle.
    model = SegmentationModel.new("vgg", "membrane", box_size=32)
    model.save(tmp_path / "membrane.scnm")
    SegmentationModel.new("vgg", "particle", box_size=32).save(tmp_path / "particle.scnm")
    code, _, err = _run(capsys, "segment", "group", tmp_path / "membrane.scnm", "--interaction", "ribosome colocalizes membrane", "--out", tmp_path / "g.scnmgroup")
    assert code == 2 and "ribosome" in err
    code, _, err = _run(
        capsys, "segment", "group", tmp_path / "membrane.scnm", tmp_path / "particle.scnm",
        "--interaction", "particle colocalizes membrane", "--interaction", "membrane avoids particle", "--out", tmp_path / "g.scnmgroup",
    )
    assert code == 2 and "cycle" in err
    assert not (tmp_path / "g.scnmgroup").exists()
    code, _, err = _run(capsys, "segment", "group", tmp_path / "membrane.scnm", "--interaction", "membrane likes carbon", "--out", tmp_path / "g.scnmgroup")
    assert code == 2 and "likes" in err
