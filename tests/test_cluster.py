"""Batch commands on dask.distributed (``--scheduler``): the same files as in process, failures by name, re-runs skip.

One LocalCluster of two single-threaded worker processes serves the module (reached by address and by
scheduler file, as a user's cluster would be); one test starts and stops its own with ``--scheduler local:2``.
The in-process references run with one torch thread, like the workers, because the order of torch's
reductions (and so the last digits of a float) depends on the number of threads.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from napari_cryo.cli import main
from napari_cryo.io.mrc import write_mrc

distributed = pytest.importorskip("distributed")


def cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


#: The text labels of an MRC header: mrcfile stamps the time of writing there.
MRC_LABELS = slice(224, 1024)


def contents(path: Path) -> bytes:
    """A file's bytes, without the time stamp of an MRC header."""
    data = bytearray(path.read_bytes())
    if path.suffix == ".mrc":
        data[MRC_LABELS] = bytes(MRC_LABELS.stop - MRC_LABELS.start)
    return bytes(data)


def same_files(a: Path, b: Path) -> list[str]:
    """The names of the files in ``a``, after checking ``b`` holds the same names with the same bytes."""
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    for name in names:
        assert contents(a / name) == contents(b / name), name
    return names


def stamps(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}


@pytest.fixture(scope="module")
def client():
    from napari_cryo.cluster import _one_torch_thread, local_cluster

    with local_cluster(2) as cluster, distributed.Client(cluster) as c:
        c.run(_one_torch_thread)
        yield c


@pytest.fixture
def one_thread():
    """Torch on one thread in this process, as on the workers (restored afterwards)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    """Tiny micrographs, tomograms, segmentations and atlases, a bad file of each kind and two tiny models."""
    import torch

    from napari_cryo.segmentation.model import SegmentationModel
    from napari_cryo.squares.model import SquareModel, XCryoNet
    from napari_cryo.synthetic import simulate_micrograph
    from napari_cryo.synthetic.atlas import simulate_atlas

    root = tmp_path_factory.mktemp("cluster")
    rng = np.random.default_rng(0)
    mics = []
    for i in range(3):
        mics.append(root / f"mic{i}.mrc")
        write_mrc(mics[-1], simulate_micrograph(shape=(256, 256), pixel_size=3.0, diameter=150, n_particles=10, seed=i).image, 3.0)
    tomos = []
    for i in range(2):
        tomos.append(root / f"tomo{i}.mrc")
        write_mrc(tomos[-1], rng.normal(size=(12, 48, 48)).astype(np.float32), 12.0)
    segs = []
    for i in range(2):
        volume = np.zeros((16, 32, 32), np.float32)
        for z, y, x in rng.integers(4, 28, size=(4, 3)):
            volume[max(z - 2, 0):z + 2, y - 2:y + 2, x - 2:x + 2] = 0.9
        segs.append(root / f"seg{i}.mrc")
        write_mrc(segs[-1], volume, 10.0)
    atlases = []
    for i in range(2):
        atlases.append(root / f"atlas{i}.mrc")
        write_mrc(atlases[-1], simulate_atlas(shape=(512, 512), seed=20 + i).image, 5000.0)
    bad = root / "bad.mrc"
    bad.write_bytes(b"not an MRC file" * 50)
    SegmentationModel.new("vgg", "membrane", box_size=32, pixel_size=12.0).save(root / "membrane.scnm")
    torch.manual_seed(0)
    SquareModel(XCryoNet(channels=8)).save(root / "squares.pt")
    return {"root": root, "mics": mics, "tomos": tomos, "segs": segs, "atlases": atlases, "bad": bad,
            "seg_model": root / "membrane.scnm", "square_model": root / "squares.pt"}


def test_pick_run_matches_in_process_skips_finished_and_overwrites(capsys, client, data, tmp_path, one_thread):
    argv = ["pick", "run", *data["mics"], "--diameter", 150, "--threshold", 0.2]
    code, _, err = cli(capsys, *argv, "--out", tmp_path / "here")
    assert code == 0, err
    code, out, err = cli(capsys, *argv, "--out", tmp_path / "there", "--scheduler", client.scheduler.address)
    assert code == 0, err
    assert same_files(tmp_path / "here", tmp_path / "there") == ["mic0_picks.star", "mic1_picks.star", "mic2_picks.star"]
    assert "3 micrograph(s) done" in out

    before = stamps(tmp_path / "there")
    (tmp_path / "there" / "mic1_picks.star").unlink()  # as if the run had stopped before it
    code, out, err = cli(capsys, *argv, "--out", tmp_path / "there", "--scheduler", client.scheduler.address)
    assert code == 0, err
    assert "1 micrograph(s) done, 2 skipped" in out
    after = stamps(tmp_path / "there")
    assert after["mic0_picks.star"] == before["mic0_picks.star"] and after["mic2_picks.star"] == before["mic2_picks.star"]
    same_files(tmp_path / "here", tmp_path / "there")

    code, out, err = cli(capsys, *argv, "--out", tmp_path / "there", "--scheduler", client.scheduler.address, "--overwrite")
    assert code == 0, err
    assert "3 micrograph(s) done" in out and "skipped" not in out
    assert all(stamps(tmp_path / "there")[name] != after[name] for name in after)


def test_a_bad_micrograph_is_reported_and_the_others_finish_on_a_local_cluster(capsys, data, tmp_path):
    mics = data["mics"]
    out_dir = tmp_path / "picks"
    code, out, err = cli(capsys, "pick", "run", mics[0], data["bad"], *mics[1:], "--diameter", 150, "--out", out_dir, "--scheduler", "local:2")
    assert code == 2
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith(f"napari-cryo pick: error: {data['bad']}: "), err
    assert "3 micrograph(s) done, 1 failed" in err
    assert sorted(p.name for p in out_dir.iterdir()) == ["mic0_picks.star", "mic1_picks.star", "mic2_picks.star"]


def test_segment_apply_and_pick_match_in_process(capsys, client, data, tmp_path, one_thread):
    scheduler_file = tmp_path / "scheduler.json"  # what Client.write_scheduler_file writes, less what is not read
    scheduler_file.write_text(json.dumps({"address": client.scheduler.address}))
    apply = ["segment", "apply", data["seg_model"], *data["tomos"]]
    code, _, err = cli(capsys, *apply, "--device", "cpu", "--out", tmp_path / "seg_here")
    assert code == 0, err
    code, out, err = cli(capsys, *apply, data["bad"], "--device", "cpu", "--out", tmp_path / "seg_there", "--scheduler", scheduler_file)
    assert code == 2 and f"napari-cryo segment: error: {data['bad']}: " in err and "2 tomogram(s) done, 1 failed" in err
    assert same_files(tmp_path / "seg_here", tmp_path / "seg_there") == ["tomo0__membrane.mrc", "tomo1__membrane.mrc"]
    assert str(tmp_path / "seg_there" / "tomo0__membrane.mrc") in out

    pick = ["segment", "pick", *data["segs"], "--threshold", 0.5]
    code, _, err = cli(capsys, *pick, "--out", tmp_path / "picks_here")
    assert code == 0, err
    code, _, err = cli(capsys, *pick, "--out", tmp_path / "picks_there", "--scheduler", client.scheduler.address)
    assert code == 0, err
    assert same_files(tmp_path / "picks_here", tmp_path / "picks_there") == ["seg0_particles.star", "seg1_particles.star"]
    code, out, err = cli(capsys, *pick, "--out", tmp_path / "picks_there", "--scheduler", client.scheduler.address)
    assert code == 0 and "0 segmentation(s) done, 2 skipped" in out, err


def test_squares_extract_and_score_match_in_process(capsys, client, data, tmp_path, one_thread):
    extract = ["squares", "extract", *data["atlases"]]
    code, _, err = cli(capsys, *extract, "--out", tmp_path / "ex_here")
    assert code == 0, err
    code, _, err = cli(capsys, *extract, "--out", tmp_path / "ex_there", "--scheduler", client.scheduler.address)
    assert code == 0, err
    assert same_files(tmp_path / "ex_here", tmp_path / "ex_there") == ["atlas0_extracted.csv", "atlas1_extracted.csv"]

    score = ["squares", "score", data["square_model"], *data["atlases"], "--device", "cpu"]
    code, _, err = cli(capsys, *score, "--out", tmp_path / "sc_here")
    assert code == 0, err
    code, _, err = cli(capsys, *score, "--out", tmp_path / "sc_there", "--scheduler", client.scheduler.address)
    assert code == 0, err
    names = same_files(tmp_path / "sc_here", tmp_path / "sc_there")
    assert len(names) == 8 and "atlas1_squares.star" in names
    (tmp_path / "sc_there" / "atlas0_attention_cracking.mrc").unlink()  # an atlas left half written is done again
    code, out, err = cli(capsys, *score, "--out", tmp_path / "sc_there", "--scheduler", client.scheduler.address)
    assert code == 0 and "1 atlas(s) done, 1 skipped" in out, err
    same_files(tmp_path / "sc_here", tmp_path / "sc_there")


def test_python_api_loads_the_model_once_per_worker(client, data, tmp_path):
    from napari_cryo.cluster import model_loads
    from napari_cryo.picking.batch import PickRunSettings, pick_batch

    mics = [str(p) for p in data["mics"]]
    more = []
    for i in range(3):  # six micrographs on two workers: several tasks per worker
        more.append(tmp_path / f"copy{i}.mrc")
        more[-1].write_bytes(Path(mics[i]).read_bytes())
    before = client.run(model_loads)
    report = pick_batch(client, [*mics, *map(str, more), str(data["bad"])], tmp_path / "picks", PickRunSettings(diameter=150.0))
    assert report.exit_status == 2 and [o.source for o in report.failed] == [str(data["bad"])]
    assert len(report.finished) == 6 and all(isinstance(v, int) for v in report.values())
    after = client.run(model_loads)
    # Earlier tests' models may have pushed the picker out of a worker's cache, but this batch read it once at most per worker.
    assert all(after[w][len(before[w]):].count("generic") <= 1 for w in after), (before, after)
    assert sum(after[w][len(before[w]):].count("generic") for w in after) >= 1


def test_scheduler_values_and_a_missing_extra(capsys, monkeypatch, data, tmp_path):
    from napari_cryo.cluster import available_cores, parse_scheduler
    from napari_cryo.errors import CryoInputError

    assert parse_scheduler("local").workers == available_cores()
    assert parse_scheduler("local:3").workers == 3
    assert parse_scheduler("tcp://10.0.0.1:8786").target == "tcp://10.0.0.1:8786"
    (tmp_path / "not_json.json").write_text("{")
    (tmp_path / "no_address.json").write_text('{"type": "Scheduler"}')
    for wrong in ("local:0", "local:x", str(tmp_path / "nothing.json"), str(tmp_path / "not_json.json"), str(tmp_path / "no_address.json")):
        with pytest.raises(CryoInputError):
            parse_scheduler(wrong)
    monkeypatch.setitem(sys.modules, "distributed", None)  # as if the extra were not installed
    code, _, err = cli(capsys, "pick", "run", data["mics"][0], "--diameter", 150, "--out", tmp_path / "p", "--scheduler", "local:1")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "napari-cryo[cluster]" in err
    assert not (tmp_path / "p").exists()


def test_a_local_cluster_leaves_this_process_environment_and_the_workers_memory_trimming_alone(monkeypatch):
    """dask's nanny writes one NumPy thread and a 64 KiB trim threshold into the environment of the process
    that starts it; every program started afterwards inherited them (a segmentation model then trained at
    half speed), and the workers' torch ran at half speed too."""
    from napari_cryo.cluster import connect

    for name in ("MALLOC_TRIM_THRESHOLD_", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    before = dict(os.environ)
    with connect("local:1") as client:
        assert dict(os.environ) == before
        seen = client.run(lambda: (os.environ.get("MALLOC_TRIM_THRESHOLD_"), os.environ.get("OMP_NUM_THREADS")))
        assert list(seen.values()) == [(None, "1")], seen
    assert dict(os.environ) == before
