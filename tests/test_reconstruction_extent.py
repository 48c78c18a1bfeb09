"""The particles' extent read from the images, and the mask it puts on the stochastic first map."""

from __future__ import annotations

import numpy as np
import pytest

from napari_cryo.reconstruction.extent import MASK_MARGIN, first_map_mask, particle_radius, variance_profile
from napari_cryo.reconstruction.stochastic import StochasticSettings, stochastic_map
from napari_cryo.tasks import drain

TORCH_THREADS = 1


class _Images:
    """What the extent functions read of a ParticleData: a stack of images, its box and its mask radius."""

    def __init__(self, stack: np.ndarray, mask_radius: float = 0.9):
        self.stack = stack.astype(np.float32)
        self.box = self.original_box = stack.shape[-1]
        self.mask_radius = mask_radius

    def __len__(self) -> int:
        return len(self.stack)

    def images(self, indices, masked=True):
        assert not masked  # the edge of the images' own mask would look like the particles' edge
        return self.stack[np.asarray(indices)]


def _blobs(n: int, box: int, radius: float, snr: float, seed: int = 0, shift: float = 0.0) -> np.ndarray:
    """Random smooth textures inside a disc of ``radius`` pixels, moved by up to ``shift``, in white noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:box, :box] - box // 2
    out = np.empty((n, box, box))
    for i in range(n):
        dy, dx = rng.uniform(-shift, shift, 2)
        disc = np.hypot(yy - dy, xx - dx) <= radius
        texture = rng.normal(size=(box, box)).cumsum(0).cumsum(1)
        texture = (texture - texture.mean()) / texture.std()
        out[i] = disc * texture * np.sqrt(snr) + rng.normal(size=(box, box))
    return out


@pytest.mark.parametrize("radius", [8.0, 12.0, 18.0])
def test_the_particle_radius_is_where_the_images_stop_varying_more_than_noise(radius):
    data = _Images(_blobs(600, 48, radius, snr=0.2, seed=int(radius)))
    found = particle_radius(data) * 24
    assert radius <= found <= radius + 2.5, found


def test_off_centre_particles_read_wider_and_pure_noise_shows_no_particle():
    centred = particle_radius(_Images(_blobs(600, 48, 10.0, snr=0.2, seed=1)))
    shifted = particle_radius(_Images(_blobs(600, 48, 10.0, snr=0.2, seed=1, shift=3.0)))
    assert shifted > centred
    noise = _Images(np.random.default_rng(2).normal(size=(600, 48, 48)))
    profile, floor = variance_profile(noise)
    assert profile.shape == (24,) and floor == pytest.approx(1.0, abs=0.05)
    assert particle_radius(noise) is None or particle_radius(noise) < 0.2


def test_the_first_map_mask_leaves_a_margin_and_never_exceeds_the_images_mask():
    small = _Images(_blobs(600, 48, 8.0, snr=0.2, seed=3), mask_radius=0.9)
    assert first_map_mask(small) == pytest.approx(particle_radius(small) + MASK_MARGIN)
    large = _Images(_blobs(600, 48, 21.0, snr=0.2, seed=4), mask_radius=0.8)
    assert first_map_mask(large) == pytest.approx(0.8)
    flat = _Images(np.zeros((50, 48, 48)), mask_radius=0.9)
    assert particle_radius(flat) is None and first_map_mask(flat) == pytest.approx(0.9)


def test_a_masked_first_map_is_empty_outside_its_sphere(testdata, tmp_path):
    from napari_cryo.cli import main
    from napari_cryo.reconstruction.data import ParticleData

    out = tmp_path / "set"
    assert main(["simulate", "particles", str(testdata / "particles" / "hand-vol.mrc"), "--pixel-size", "4", "--n", "200",
                 "--box", "16", "--snr", "1.0", "--out", str(out), "--device", "cpu", "--seed", "1"]) == 0
    data = ParticleData(out / "particles.star")
    settings = StochasticSettings(box=16, batch_size=50, batches=4, radius_start=3, radius_end=5, mask_radius=0.5)
    (volume, _), items = drain(stochastic_map(data, settings, seed=0))
    assert "masked at 0.50" in items[-1].message
    r = np.sqrt(((np.mgrid[:16, :16, :16] - 8) ** 2).sum(0))
    assert np.all(volume[r >= 4.0] == 0) and np.abs(volume[r < 2]).max() > 0
