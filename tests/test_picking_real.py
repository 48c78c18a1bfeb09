"""Real micrographs (#30 item 6): the shipped generic model against other programs' picks.

The data are ../shared/testdata/real/ (see its README); the tests skip when
that folder is absent.  The reference picks are algorithmic (RELION
autopick, Topaz), not a complete truth, so the bars are sanity checks a good
generic picker passes with room to spare: most reference particles found,
nothing picked on ice contamination, agreement with Topaz where Topaz is
confident.  Settings and their grounds are in benchmarks/real_picking_checks.py,
which prints the same figures for docs/benchmarks.md.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from napari_cryo.io.mrc import read_mrc
from napari_cryo.io.star import read_star
from napari_cryo.picking.evaluate import dark_regions, found_fraction
from napari_cryo.picking.model import PickerModel
from napari_cryo.picking.picks import pick_micrograph

TORCH_THREADS = 2
REAL = Path(os.environ.get("NAPARI_CRYO_TESTDATA", Path(__file__).resolve().parents[2] / "shared" / "testdata")) / "real"

# UCSF: 4x-binned K2 frame, pixel size not in the header: 4 Å/px assumed; particles about 40 px across.
UCSF_PIXEL, UCSF_DIAMETER = 4.0, 160.0
# Magellon: 0.79 Å/px binned 8x; apoferritin-sized rings about 19 px across.
MAGELLON_PIXEL, MAGELLON_DIAMETER = 6.32, 120.0

pytestmark = pytest.mark.skipif(not REAL.is_dir(), reason=f"real test data not found at {REAL}")


def _inside(yx: np.ndarray, shape: tuple[int, int], margin: float) -> np.ndarray:
    return (yx[:, 0] >= margin) & (yx[:, 0] <= shape[0] - 1 - margin) & (yx[:, 1] >= margin) & (yx[:, 1] <= shape[1] - 1 - margin)


@pytest.fixture(scope="module")
def model() -> PickerModel:
    return PickerModel.generic()


@pytest.fixture(scope="module")
def ucsf(model):
    """Image, contamination mask, autopicks (YX) clear of the contamination and the edge, and our picks at two thresholds."""
    image = np.asarray(read_mrc(REAL / "Ucsf_stack_1142_DW.mrc")[0], dtype=np.float32)
    table = read_star(REAL / "Ucsf_stack_1142_DW_autopick.star")[""]
    refs = table[["rlnCoordinateY", "rlnCoordinateX"]].to_numpy(float)
    d = UCSF_DIAMETER / UCSF_PIXEL
    contamination = dark_regions(image, d)
    clear = ndimage.distance_transform_edt(~contamination)
    iy, ix = np.round(refs).astype(int).T
    refs = refs[(clear[iy, ix] >= d / 2) & _inside(refs, image.shape, d / 2)]
    result = pick_micrograph(model, image, UCSF_PIXEL, UCSF_DIAMETER)
    picks = {t: result.picks(t)[0] for t in (model.threshold, 0.2)}
    return image, contamination, refs, picks


def test_ucsf_contamination_is_found(ucsf):
    """The check below is only worth something if the contamination mask holds the large dark patch."""
    image, contamination, refs, _ = ucsf
    labels, n = ndimage.label(contamination)
    assert n >= 1 and 0.05 < contamination.mean() < 0.3
    assert contamination[150, 800]  # inside the patch in the top right corner
    assert not contamination[600, 300]  # plain ice
    assert 30 <= len(refs) <= 40  # 45 autopicks less those on the patch's edge and at the image edge


def test_ucsf_nothing_picked_on_the_contamination(ucsf, model):
    image, contamination, _, picks = ucsf
    for threshold, yx in picks.items():
        assert len(yx) > 0
        iy, ix = np.clip(np.round(yx).astype(int), 0, np.array(image.shape) - 1).T
        assert not contamination[iy, ix].any(), threshold


def test_ucsf_most_autopicks_are_found(ucsf, model):
    *_, refs, picks = ucsf
    found = found_fraction(picks[model.threshold], refs, UCSF_DIAMETER / UCSF_PIXEL / 2)
    assert found >= 0.6, found


def test_magellon_agrees_with_topaz_where_topaz_is_confident(model):
    image = np.asarray(read_mrc(REAL / "magellon_00018ex_ds8.mrc")[0], dtype=np.float32)
    topaz = json.loads((REAL / "magellon_00018ex_ds8_topaz_picks.json").read_text())
    yx = np.array([[p["y_ds"], p["x_ds"]] for p in topaz], dtype=float)
    score = np.array([p["score"] for p in topaz], dtype=float)
    d = MAGELLON_DIAMETER / MAGELLON_PIXEL
    confident = yx[(score >= np.median(score)) & _inside(yx, image.shape, d / 2)]
    assert len(confident) >= 40
    ours, _ = pick_micrograph(model, image, MAGELLON_PIXEL, MAGELLON_DIAMETER).picks(model.threshold)
    # Topaz's confident picks are found ...
    assert found_fraction(ours, confident, d / 2) >= 0.9
    # ... and most of ours are particles Topaz also picked (at any score).
    assert found_fraction(yx, ours, d / 2) >= 0.75
    assert 0.7 * len(confident) <= len(ours) <= 1.5 * len(yx)
