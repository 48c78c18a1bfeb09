"""How far from the box centre the particles reach, measured on the images themselves.

A reference map is compared with the images only inside the particle: the
rest of the box holds nothing but noise, which at low SNR the comparison
fits as readily as the particle.  RELION asks for the particle's diameter
to mask its references; here the images give it.  Noise adds the same
variance at every pixel, while the particles add theirs only where they
are, so the per-pixel variance over many images, averaged in rings about
the centre, is a flat floor plus a bump as wide as the particles' rotational
average (blurred by their origins and the CTF).  The floor is read in the
box's corners, outside the inscribed circle, where a sensibly boxed particle
never reaches.
"""

from __future__ import annotations

import numpy as np

#: The particles end where their variance above the floor falls below this fraction of its peak.
SIGNAL_FRACTION = 0.05
#: Images sampled for the profile (more changes the radius by well under a pixel).
SAMPLE = 2000


def variance_profile(data, sample: int = SAMPLE, seed: int = 0) -> tuple[np.ndarray, float]:
    """The images' per-pixel variance averaged in 1-pixel rings about the centre, and the noise floor.

    Parameters
    ----------
    data : ParticleData
        The particles (at any box).
    sample : int
        At most this many images, drawn at random, are used.
    seed : int
        Chooses the sample.

    Returns
    -------
    profile : numpy.ndarray
        (box // 2,) mean variance in the ring ``r <= d < r + 1`` pixels.
    floor : float
        Median variance in the corners (``d >= box / 2``).
    """
    n = len(data)
    rows = np.sort(np.random.default_rng(seed).choice(n, min(n, sample), replace=False))
    box = data.box or data.original_box
    total = np.zeros((box, box))
    for start in range(0, len(rows), 256):
        images = np.asarray(data.images(rows[start : start + 256], False), dtype=np.float64)
        images -= images.mean(axis=(1, 2), keepdims=True)
        total += (images**2).sum(axis=0)
    variance = total / len(rows)
    yy, xx = np.mgrid[:box, :box]
    d = np.hypot(yy - box // 2, xx - box // 2)
    ring = np.floor(d).astype(int)
    inside = ring < box // 2
    profile = np.bincount(ring[inside], variance[inside], box // 2) / np.maximum(np.bincount(ring[inside], minlength=box // 2), 1)
    return profile, float(np.median(variance[d >= box / 2]))


def particle_radius(data, sample: int = SAMPLE, seed: int = 0) -> float | None:
    """Radius of the particles' images, as a fraction of the half box, or None where the images do not show one.

    The first ring from the peak outwards where the variance above the
    corners' floor falls below :data:`SIGNAL_FRACTION` of its peak.  None
    when the excess never falls that low inside the box (particles as big
    as the box, or a background that is not flat) or when there is no
    excess at all.

    Parameters
    ----------
    data : ParticleData
        The particles.
    sample, seed : int
        See :func:`variance_profile`.

    Returns
    -------
    float or None
    """
    profile, floor = variance_profile(data, sample, seed)
    excess = profile - floor
    peak = int(np.argmax(excess))
    if excess[peak] <= 0:
        return None
    low = np.flatnonzero(excess[peak:] < SIGNAL_FRACTION * excess[peak])
    if len(low) == 0:
        return None
    return float((peak + low[0]) / (len(profile)))


#: Room left between the particles' measured radius and the mask: the radius is that of their rotational
#: average in projection, and an elongated particle reaches further along its long axis.
MASK_MARGIN = 0.15


def first_map_mask(data) -> float:
    """The radius (fraction of the half box) of the sphere that masks the stochastic first map.

    :func:`particle_radius` plus :data:`MASK_MARGIN`, at most the images'
    own mask radius (``data.mask_radius``, which is also the fallback when
    the images show no particle edge).

    Parameters
    ----------
    data : ParticleData
        The particles, at any box.

    Returns
    -------
    float
    """
    widest = min(1.0, float(data.mask_radius))
    radius = particle_radius(data)
    return widest if radius is None else min(widest, radius + MASK_MARGIN)
