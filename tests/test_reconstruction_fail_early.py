"""A reconstruction checks every input before it starts: exit 2, one line naming the file, nothing written.

Each bad input is a small change to one good data set (24 particles of 16 px
with CTF columns).  The command must refuse it within a second or two,
before the output folder exists, and not minutes into the run as an
"internal error".  Odd image sizes are not refused: they lose their last row
and column (the centre pixel stays), as a cryo-EM user expects.
"""

from __future__ import annotations

import shutil
import time
import warnings
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile

from napari_cryo.cli import main
from napari_cryo.synthetic.particles import simulate_particles, write_particle_dataset

TORCH_THREADS = 1
#: A refusal must come before any work: well under this many seconds.
FAST_S = 2.0


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    """A good data set: particles.star and particles.mrcs (24 particles, 16 px, CTF)."""
    import napari_cryo.reconstruction.controller  # noqa: F401 - imported once here, not timed in the tests

    sim = simulate_particles(n=24, box=16, pixel_size=6.0, snr=1.0, seed=2)
    return write_particle_dataset(tmp_path_factory.mktemp("good") / "set", sim).parent


def _copy(good: Path, tmp_path: Path) -> Path:
    """A copy of the good data set to spoil; returns its STAR file."""
    target = tmp_path / "set"
    shutil.copytree(good, target)
    return target / "particles.star"


def _edit(star: Path, particles=None, optics=None) -> Path:
    """Rewrite ``star`` after changing its blocks (functions of the DataFrames)."""
    blocks = starfile.read(star, always_dict=True)
    if particles is not None:
        blocks["particles"] = particles(blocks["particles"])
    if optics is not None:
        blocks["optics"] = optics(blocks["optics"])
    starfile.write(blocks, star, overwrite=True)
    return star


def _refused(capsys, star: Path, out: Path, *extra: str, names: str) -> str:
    start = time.perf_counter()
    # A short budget: where a check is missing the run must end, not take the default 20 minutes.
    code = main(["reconstruct", str(star), "--out", str(out), "--device", "cpu", "--max-minutes", "0.02", *extra])
    elapsed = time.perf_counter() - start
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and "error" in lines[0] and "internal" not in lines[0], err
    assert names in lines[0], err
    assert elapsed < FAST_S, f"refused after {elapsed:.1f} s"
    assert not out.exists(), sorted(p.name for p in out.iterdir())
    return lines[0]


def _drop_column(column: str):
    return lambda table: table.drop(columns=column)


def _set(column: str, value, row: int | None = None):
    def change(table: pd.DataFrame) -> pd.DataFrame:
        table = table.copy()
        if row is None:
            table[column] = value
        else:
            table[column] = table[column].astype(object)
            table.loc[row, column] = value
        return table

    return change


@pytest.mark.parametrize(
    "spoil, extra, names",
    [
        (lambda s: _edit(s, particles=_set("rlnDefocusU", "n/a", row=5)), (), "rlnDefocusU"),
        (lambda s: _edit(s, optics=_drop_column("rlnVoltage")), (), "rlnVoltage"),
        (lambda s: _edit(s, optics=_set("rlnImagePixelSize", 0.0)), (), "pixel size"),
        (lambda s: _edit(s, optics=_set("rlnImagePixelSize", -6.0)), (), "pixel size"),
        (lambda s: _edit(s, particles=lambda t: t.head(5)), (), "5 particles"),
        (lambda s: (s.parent / "particles.mrcs").unlink() or s, (), "particles.mrcs"),
        (lambda s: _edit(s, particles=_set("rlnImageName", "000099@particles.mrcs", row=3)), (), "asks for image 99"),
        (lambda s: s, ("--box", "15"), "box 15"),
        (lambda s: s, ("--box", "18"), "box 18"),
        (lambda s: s, ("--amortized-box", "15"), "--amortized-box"),
        (lambda s: s, ("--amortized-box", "20"), "amortized box"),
        (lambda s: s, ("--batch-size", "0"), "--batch-size"),
        (lambda s: s, ("--max-minutes", "0"), "--max-minutes"),
    ],
    ids=["ctf-not-a-number", "ctf-column-missing", "pixel-size-zero", "pixel-size-negative", "too-few-particles",
         "stack-missing", "image-past-the-stack", "box-odd", "box-too-big", "amortized-box-odd", "amortized-box-too-big",
         "batch-size-zero", "no-time"],
)
def test_bad_input_is_refused_at_once_and_writes_nothing(capsys, good, tmp_path, spoil, extra, names):
    star = spoil(_copy(good, tmp_path))
    line = _refused(capsys, star, tmp_path / "out", *extra, names=names)
    if not extra:  # a problem of the data set names its file
        assert "particles.star" in line or "particles.mrcs" in line, line


def _odd_copy(good: Path, tmp_path: Path) -> Path:
    """The good data set with one more row and column of noise on every image (17 px)."""
    star = _copy(good, tmp_path)
    with mrcfile.open(good / "particles.mrcs", permissive=True) as mrc:
        images, voxel = np.asarray(mrc.data, dtype=np.float32), float(mrc.voxel_size.x)
    odd = np.random.default_rng(0).normal(size=(len(images), 17, 17)).astype(np.float32)
    odd[:, :16, :16] = images
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with mrcfile.new(star.parent / "particles.mrcs", data=odd, overwrite=True) as mrc:
            mrc.set_image_stack()
            mrc.voxel_size = voxel
    return star


def test_an_odd_image_size_loses_its_last_row_and_column(good, tmp_path):
    from napari_cryo.reconstruction.data import ParticleData

    even = ParticleData(good / "particles.star")
    odd = ParticleData(_odd_copy(good, tmp_path))
    assert (odd.stack_box, odd.original_box, odd.box) == (17, 16, 16)
    assert odd.pixel_size == pytest.approx(even.pixel_size)
    np.testing.assert_array_equal(odd.raw_images([0, 7]), even.raw_images([0, 7]))
    np.testing.assert_allclose(odd.images([3, 1]), even.images([3, 1]), atol=1e-6)
    assert any("odd size" in w and "17x17" in w for w in odd.warnings)
    # An explicit box is checked against the even size.
    with pytest.raises(Exception, match=r"from 4 to the image size 16 \(the even part of 17\)"):
        ParticleData(odd.star_path, box=18)


def test_an_odd_image_size_reconstructs(capsys, good, tmp_path):
    """Before, a 17-px stack without --box failed minutes in with an internal error."""
    from napari_cryo.io.mrc import read_mrc

    star = _odd_copy(good, tmp_path)
    out = tmp_path / "odd"
    code = main(["reconstruct", str(star), "--out", str(out), "--max-minutes", "0.01", "--heads", "2", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "odd size" in err
    volume, info = read_mrc(out / "volume.mrc")
    assert volume.shape == (16, 16, 16) and info.voxel_size == pytest.approx((6.0, 6.0, 6.0))


def test_a_failed_last_checkpoint_is_reported_not_swallowed(capsys, good, tmp_path, monkeypatch):
    """The run fails; its last checkpoint cannot be written either: both are said, the file named."""
    from napari_cryo.reconstruction import run as run_module
    from napari_cryo.reconstruction.encoder_run import EncoderRun

    calls = {"n": 0}
    original = EncoderRun.errors

    def failing(self, target, model, radius):
        calls["n"] += 1
        if calls["n"] > 3:  # past the first epoch (one batch each), so there is something to checkpoint
            raise RuntimeError("simulated failure")
        return original(self, target, model, radius)

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(EncoderRun, "errors", failing)
    monkeypatch.setattr(run_module.torch, "save", full_disk)
    out = tmp_path / "out"
    code = main(["reconstruct", str(good / "particles.star"), "--out", str(out), "--max-minutes", "1", "--batch-size", "32",
                 "--heads", "2", "--checkpoint-minutes", "100", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 1 and "simulated failure" in err, err
    warning = [line for line in err.splitlines() if "checkpoint" in line and "warning" in line]
    assert len(warning) == 1 and str(out / "checkpoint.pt") in warning[0] and "No space left" in warning[0], err
    assert not (out / "checkpoint.pt").exists()
