"""npe2 sample-data hooks: each returns napari layer data with the ground truth.

Layers follow the suite's conventions (scale in Å, units angstrom); ground
truth comes as extra layers that start hidden, so the widgets built on
these samples can be checked by eye against the truth.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .. import layer_meta as meta
from ..io.layers import LayerData
from ..io.mrc import contrast_limits_for

SEED = 0


def _image(data: np.ndarray, name: str, pixel_size: float, labels: tuple[str, ...], **extra: Any) -> LayerData:
    kwargs = {
        "name": name,
        "scale": (pixel_size,) * data.ndim,
        "units": ("angstrom",) * data.ndim,
        "axis_labels": labels,
        "contrast_limits": contrast_limits_for(data[::4, ::4] if data.ndim == 2 else data[::4, ::4, ::4], 0.5, 99.5),
        "colormap": "gray",
        "metadata": {meta.PIXEL_SIZE: pixel_size, meta.PIXEL_SIZE_KNOWN: True, meta.SYNTHETIC: True, **extra},
    }
    return (data, kwargs, "image")


def atlas_sample() -> list[LayerData]:
    """A 1024² grid atlas (0.5 µm/px, 400 mesh, rotated lattice) with the true squares."""
    from .atlas import simulate_atlas

    atlas = simulate_atlas(seed=SEED)
    sq = atlas.squares
    points = sq[["center_y", "center_x"]].to_numpy()
    features = sq.drop(columns=["center_y", "center_x"]).reset_index(drop=True)
    features["overall"] = features["overall"].astype(float)  # a continuous colour scale, not categories
    truth = (
        points,
        {
            "name": "atlas ground truth",
            "scale": (atlas.pixel_size,) * 2,
            "units": ("angstrom", "angstrom"),
            "features": features,
            "size": atlas.pitch * 0.3,
            "face_color": "overall",
            "face_colormap": "viridis",
            "visible": False,
            "metadata": {meta.SYNTHETIC: True, "lattice_angle": atlas.lattice_angle, "pitch_px": atlas.pitch},
        },
        "points",
    )
    return [_image(atlas.image, "atlas", atlas.pixel_size, ("y", "x")), truth]


def micrograph_sample() -> list[LayerData]:
    """A 1024² micrograph (2 Å/px, 150 Å particles, carbon and contamination) with true picks."""
    from .micrograph import simulate_micrograph

    mic = simulate_micrograph(seed=SEED)
    px = mic.pixel_size
    picks = (
        mic.picks,
        {
            "name": "micrograph ground truth",
            "scale": (px, px),
            "units": ("angstrom", "angstrom"),
            "features": {"structure": mic.structure},
            "size": mic.diameter / px,
            "face_color": "transparent",
            "border_color": "lime",
            "border_width": 0.05,
            "visible": False,
            "metadata": {meta.SYNTHETIC: True, meta.PIXEL_SIZE: px, meta.PIXEL_SIZE_KNOWN: True, meta.MICROGRAPH_NAME: "micrograph"},
        },
        "points",
    )
    junk = (
        mic.junk_mask,
        {"name": "micrograph junk (truth)", "scale": (px, px), "units": ("angstrom", "angstrom"), "visible": False, "opacity": 0.4},
        "labels",
    )
    image = _image(mic.image, "micrograph", px, ("y", "x"), diameter=mic.diameter, defocus=mic.defocus)
    return [image, junk, picks]


def tomogram_sample() -> list[LayerData]:
    """A 96×256×256 tomogram (10 Å/px) with vesicles, carbon, particles, filaments and truth."""
    from .tomogram import simulate_tomogram

    tomo = simulate_tomogram(seed=SEED)
    px = tomo.pixel_size
    picks = (
        tomo.particles,
        {
            "name": "tomogram particles (truth)",
            "scale": (px,) * 3,
            "units": ("angstrom",) * 3,
            "features": {"membrane_bound": tomo.membrane_bound},
            "size": 200.0 / px,
            "face_color": "transparent",
            "border_color": "lime",
            "visible": False,
            "metadata": {meta.SYNTHETIC: True, meta.PIXEL_SIZE: px, meta.PIXEL_SIZE_KNOWN: True},
        },
        "points",
    )
    labels = (
        tomo.labels,
        {
            "name": "tomogram features (truth)",
            "scale": (px,) * 3,
            "units": ("angstrom",) * 3,
            "visible": False,
            "opacity": 0.4,
            "metadata": {"features": tomo.features},
        },
        "labels",
    )
    return [_image(tomo.volume, "tomogram", px, ("z", "y", "x")), labels, picks]


def particles_sample() -> list[LayerData]:
    """200 particles (64², 3 Å/px, SNR 0.1, CTF) written with their STAR file, opened by the reader.

    The files go to a fresh temporary directory (named in the layer's
    metadata), so the sample is exactly what opening a RELION data set gives.
    """
    from ..io.layers import star_layer_data
    from .particles import simulate_particles, write_particle_dataset

    particles = simulate_particles(seed=SEED)
    folder = Path(tempfile.mkdtemp(prefix="napari-cryo-particles-"))
    star = write_particle_dataset(folder, particles)
    layers = star_layer_data(star)
    for _, kwargs, _ in layers:
        kwargs["name"] = "particles"
        kwargs["metadata"][meta.SYNTHETIC] = True
    return layers
