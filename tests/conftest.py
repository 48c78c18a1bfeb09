"""Shared fixtures: the real test files in ../shared/testdata and small synthetic data."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
TESTDATA = Path(os.environ.get("NAPARI_CRYO_TESTDATA", ROOT.parent / "shared" / "testdata"))


@pytest.fixture(scope="session")
def testdata() -> Path:
    """The directory of real files written by other tools (see its README)."""
    assert TESTDATA.is_dir(), f"test data not found at {TESTDATA} (set NAPARI_CRYO_TESTDATA)"
    return TESTDATA


@pytest.fixture
def relion31_dataset(tmp_path: Path, testdata: Path) -> Path:
    """relion31.star with its stack beside it (the STAR names a longer path)."""
    shutil.copy(testdata / "star" / "relion31.star", tmp_path / "relion31.star")
    shutil.copy(testdata / "particles" / "relion31.mrcs", tmp_path / "relion31.mrcs")
    return tmp_path / "relion31.star"


@pytest.fixture(autouse=True)
def torch_threads(request):
    """Torch's thread count for a test module that sets ``TORCH_THREADS`` (restored afterwards).

    Tiny tensors gain nothing from threads, and spinning threads stall when
    other jobs share the CPU, so most torch modules ask for one.
    """
    n = getattr(request.module, "TORCH_THREADS", None)
    if n is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture
def longest_gui_gap(qtbot):
    """Measure how long the main thread goes without a beat of a 20-ms QTimer while a widget action runs.

    Call it with ``start`` (presses the action; returns its worker, anything but None) and
    ``done`` (true once the action and whatever it chains have finished); it returns the longest
    gap between two beats in seconds.  A GUI thread that does the work itself misses beats.
    """
    import time

    def measure(start, done, timeout_ms: int = 120000) -> float:
        import torch
        from qtpy.QtCore import QTimer

        # torch imports its compiler with the first optimizer, once per process, holding the GIL for
        # up to ~0.3 s: that is torch's start-up, not the widget's, so it happens before timing.
        import torch._dynamo  # noqa: F401

        torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))])
        beats: list[float] = []
        timer = QTimer()
        timer.setInterval(20)
        timer.timeout.connect(lambda: beats.append(time.perf_counter()))
        timer.start()
        try:
            qtbot.wait(100)
            assert start() is not None
            qtbot.waitUntil(done, timeout=timeout_ms)
            qtbot.wait(100)
        finally:
            timer.stop()
        return float(np.max(np.diff(beats)))

    return measure
