"""Dense fields (#30 item 5): touching particles come out as separate picks, sparse ones as one pick each.

The pure tests build particle-probability maps by hand, so they judge the
pick extraction alone (peaks, spacing, thresholds) whatever the network; the
last two run the shipped generic model on simulated micrographs.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial import cKDTree

from napari_cryo.picking.evaluate import score_picks
from napari_cryo.picking.model import PARTICLE, PickerModel
from napari_cryo.picking.picks import PickResult, extract_picks, pick_micrograph
from napari_cryo.picking.preprocess import DIAMETER_PX, Scaling
from napari_cryo.synthetic.micrograph import place_particles, simulate_micrograph

TORCH_THREADS = 2


def _blob_map(shape: tuple[int, int], centres: np.ndarray, diameter: float, rng: np.random.Generator) -> np.ndarray:
    """Probability map: a Gaussian blob of random height (0.6-1) and width (sigma 0.2-0.3 diameter) per centre.

    Blobs of touching particles overlap: halfway between two centres one
    diameter apart each is still 0.1-0.25 of its height, so at a low
    threshold neighbours form one connected region.
    """
    prob = np.zeros(shape, dtype=np.float32)
    r = int(np.ceil(0.9 * diameter))
    for cy, cx in centres:
        height, sigma = rng.uniform(0.6, 1.0), rng.uniform(0.2, 0.3) * diameter
        y0, y1 = max(0, int(cy) - r), min(shape[0], int(cy) + r + 1)
        x0, x1 = max(0, int(cx) - r), min(shape[1], int(cx) + r + 1)
        yy, xx = np.mgrid[y0:y1, x0:x1]
        blob = height * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))
        np.maximum(prob[y0:y1, x0:x1], blob.astype(np.float32), out=prob[y0:y1, x0:x1])
    return prob


def _found(picks: np.ndarray, truth: np.ndarray, radius: float) -> float:
    """Fraction of true centres with a pick within ``radius``."""
    if len(picks) == 0:
        return 0.0
    d, _ = cKDTree(picks).query(truth)
    return float(np.mean(d <= radius))


def test_touching_particles_in_a_4k_micrograph_are_700_picks():
    """700 particles of 108 px in 4096², touching (centres one diameter apart at the closest)."""
    rng = np.random.default_rng(7)
    side, diameter = 4096, 108.0
    truth = place_particles(rng, (side, side), 700, diameter, diameter / 2 + 2)
    assert len(truth) == 700
    d, _ = cKDTree(truth).query(truth, k=2)
    assert d[:, 1].min() < 1.02 * diameter  # some really touch
    # The network's view: 1 Å pixels, 108 Å particles -> DIAMETER_PX working pixels per diameter.
    f = DIAMETER_PX / diameter
    work_side = int(round(side * f))
    scaling = Scaling(work_side / side, work_side / side)
    prob = np.zeros((3, work_side, work_side), dtype=np.float32)
    prob[PARTICLE] = _blob_map((work_side, work_side), scaling.to_working(truth), DIAMETER_PX, rng)
    result = PickResult(prob, scaling, 1.0, diameter / DIAMETER_PX, diameter, (side, side))
    for threshold in (0.02, 0.05, 0.1, 0.3, 0.5):
        yx, scores = result.picks(threshold)
        assert abs(len(yx) - 700) <= 7, (threshold, len(yx))
        assert _found(yx, truth, diameter / 4) >= 0.99, threshold
        # No pick between two particles (where the centroid of a merged pair would lie).
        dist, _ = cKDTree(truth).query(yx)
        assert np.mean(dist > diameter / 4) <= 0.01, threshold


@pytest.mark.parametrize("spacing", [1.0, 0.8])
def test_a_row_of_touching_blobs_gives_one_pick_each(spacing):
    """Blobs closer than a diameter (elongated particles side by side) still split while above the minimum distance."""
    d = DIAMETER_PX
    centres = np.array([[50.0, 30.0 + i * spacing * d] for i in range(6)])
    prob = _blob_map((100, int(60 + 6 * spacing * d)), centres, d, np.random.default_rng(1))
    assert prob[50, int(30 + spacing * d / 2)] > 0.1  # one connected region at threshold 0.1
    for threshold in (0.05, 0.1, 0.5):
        yx, _ = extract_picks(prob, threshold, min_distance=d / 2)
        assert len(yx) == 6, (threshold, len(yx))
        np.testing.assert_allclose(yx[np.argsort(yx[:, 1])], centres, atol=0.1 * d)


def test_one_lumpy_particle_is_one_pick():
    """A particle whose blob has two lobes closer than the minimum distance is one pick, at the blob's centroid."""
    d = DIAMETER_PX
    rng = np.random.default_rng(3)
    truth = place_particles(rng, (400, 400), 40, 3 * d, d)
    lobes = np.concatenate([truth + [0.0, 0.15 * d], truth - [0.0, 0.15 * d]])
    prob = _blob_map((400, 400), lobes, 0.6 * d, rng)
    yx, _ = extract_picks(prob, 0.1, min_distance=d / 2)
    assert len(yx) == len(truth)
    dist, _ = cKDTree(truth).query(yx)
    assert dist.max() < 0.1 * d


def test_excluded_peak_does_not_suppress_its_neighbour():
    d = DIAMETER_PX
    centres = np.array([[30.0, 30.0], [30.0, 30.0 + 0.4 * d]])
    prob = _blob_map((60, 80), centres, 0.5 * d, np.random.default_rng(0))
    prob[30, 30] = 1.0  # the excluded one is the stronger
    exclude = np.zeros_like(prob, dtype=bool)
    exclude[:, :34] = True
    yx, _ = extract_picks(prob, 0.3, min_distance=d / 2, exclude=exclude)
    assert len(yx) == 1 and abs(yx[0, 1] - centres[1, 1]) < 2


def test_flat_and_empty_maps():
    assert len(extract_picks(np.zeros((40, 40)), 0.5, 5)[0]) == 0
    flat = np.zeros((40, 40))
    flat[10:20, 10:20] = 0.8  # one plateau: one pick at its centre
    yx, scores = extract_picks(flat, 0.5, 5)
    np.testing.assert_allclose(yx, [[14.5, 14.5]])
    assert scores[0] == pytest.approx(0.8)


# The shipped model.  Bars for a good generic picker; the model at the time of writing
# (see the report in docs/benchmarks.md) clears them with room to spare.


def test_generic_model_on_a_dense_micrograph():
    """700 particles of 108 Å at 2 Å/px in 2048² (the density of 700 in 4096² at 1 Å/px), centres >= 1.05 diameters apart."""
    mic = simulate_micrograph(
        shape=(2048, 2048), pixel_size=2.0, diameter=108.0, n_particles=700, snr=0.1, carbon_fraction=0.0, n_contamination=0, seed=3
    )
    n = len(mic.picks)
    assert n == 700
    model = PickerModel.generic()
    result = pick_micrograph(model, mic.image, mic.pixel_size, mic.diameter)
    half_diameter = mic.diameter / 2 / mic.pixel_size
    yx, scores = result.picks(model.threshold)
    # About one pick per particle (not one per merged blob). The shipped model also puts a few picks in the gaps
    # between touching particles (47 of 747 here, counted as seconds of the nearest particle; docs/benchmarks.md).
    assert abs(len(yx) - n) <= 0.08 * n, len(yx)
    assert _found(yx, mic.picks, half_diameter) >= 0.95
    dist, which = cKDTree(mic.picks).query(yx)
    close = which[dist < half_diameter]
    assert len(close) - len(np.unique(close)) <= 0.08 * n
    # At a low threshold touching particles' blobs join; each must still be found.
    yx, scores = result.picks(0.05)
    assert _found(yx, mic.picks, half_diameter) >= 0.97
    # The shipped model centres picks in touching fields within a quarter diameter for most particles (its
    # localisation there is looser than the first generic model's: see docs/benchmarks.md).
    assert score_picks(yx, scores, mic.picks, half_diameter / 2).average_precision >= 0.85


def test_generic_model_gives_no_double_picks_in_a_sparse_field():
    model = PickerModel.generic()
    picks, truth, doubles = 0, 0, 0
    for seed, snr in ((11, 0.1), (12, 0.3)):
        mic = simulate_micrograph(seed=seed, snr=snr)
        result = pick_micrograph(model, mic.image, mic.pixel_size, mic.diameter)
        yx, _ = result.picks(model.threshold)
        # A double pick: two picks whose nearest particle is the same one, within half a diameter.
        dist, which = cKDTree(mic.picks).query(yx)
        close = which[dist < mic.diameter / 2 / mic.pixel_size]
        doubles += len(close) - len(np.unique(close))
        picks, truth = picks + len(yx), truth + len(mic.picks)
    assert doubles <= 0.01 * truth, doubles
    assert abs(picks - truth) <= 0.05 * truth, (picks, truth)


def test_a_narrow_blob_whose_smoothed_peak_lies_outside_it_is_still_picked():
    yy, xx = np.mgrid[0:60, 0:60]
    prob = np.where((yy - 30) ** 2 + (xx - 30) ** 2 <= 64, 0.45, 0.0)  # broad, below the threshold
    prob[30, 39] = 0.6  # one pixel above it, at the broad blob's edge
    yx, scores = extract_picks(prob, 0.5, 5, smooth=2.0)
    np.testing.assert_allclose(yx, [[30, 39]])
    assert scores[0] == pytest.approx(0.6)


def test_predict_uses_a_faithful_inference_copy_that_follows_weight_changes():
    """predict runs a folded, channels-last copy of the network (#30 speed target): same output, never stale."""
    import torch

    from napari_cryo.picking.picks import predict

    model = PickerModel.new(seed=2)
    image = np.random.default_rng(0).normal(size=(96, 128)).astype(np.float32)

    def plain() -> np.ndarray:
        with torch.no_grad():
            return torch.softmax(model.net.eval()(torch.from_numpy(image)[None, None]), dim=1)[0].numpy()

    first = predict(model, image)
    np.testing.assert_allclose(first, plain(), atol=1e-5)
    with torch.no_grad():
        model.net.head.bias[PARTICLE] += 2.0  # an in-place change, as an optimiser step makes
    np.testing.assert_allclose(predict(model, image), plain(), atol=1e-5)
    assert not np.allclose(predict(model, image), first, atol=1e-3)
    model.net.load_state_dict(PickerModel.new(seed=3).net.state_dict())
    np.testing.assert_allclose(predict(model, image), plain(), atol=1e-5)
    # Tiles give (nearly: the overlap is about half the receptive field) the same map as one piece.
    wide = np.random.default_rng(1).normal(size=(96, 400)).astype(np.float32)
    np.testing.assert_allclose(predict(model, wide, tile=200), predict(model, wide), atol=2e-3)
