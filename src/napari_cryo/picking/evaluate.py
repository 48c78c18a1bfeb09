"""Precision and recall of picks against ground truth.

A pick matches a true particle when it lies within ``match_radius`` of it
(by default half the particle radius); picks are matched greedily in order
of decreasing score, each true particle at most once, which is how
detection benchmarks (and Topaz's own evaluation) count hits.

For real micrographs, where the reference is another program's picks and
not a complete truth, :func:`found_fraction` and :func:`dark_regions` give
sanity checks: how many reference picks have a pick nearby, and where the
large dark patches of ice contamination are, on which nothing should be
picked.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree


@dataclass
class PickingScores:
    """Summary of a precision-recall curve.

    Attributes
    ----------
    average_precision : float
        Area under the precision-recall curve (all-points interpolation).
    precision, recall, f1 : float
        At the threshold with the best F1.
    threshold : float
        That threshold (a score).
    precision_at_90_recall : float
        Best precision at recall ≥ 0.9 (0 if never reached).
    n_picks, n_true : int
        Counts.
    curve : dict
        ``scores``, ``precision``, ``recall`` arrays in score order.
    """

    average_precision: float
    precision: float
    recall: float
    f1: float
    threshold: float
    precision_at_90_recall: float
    n_picks: int
    n_true: int
    curve: dict

    def as_dict(self) -> dict:
        """The scalar fields."""
        return {k: v for k, v in self.__dict__.items() if k != "curve"}


def match_picks(picks: np.ndarray, scores: np.ndarray, truth: np.ndarray, match_radius: float) -> np.ndarray:
    """Boolean per pick (in descending-score order): whether it is a true positive."""
    order = np.argsort(-np.asarray(scores), kind="stable")
    picks = np.asarray(picks, dtype=float).reshape(-1, 2)[order]
    hit = np.zeros(len(picks), dtype=bool)
    if len(truth) == 0 or len(picks) == 0:
        return hit
    tree = cKDTree(np.asarray(truth, dtype=float).reshape(-1, 2))
    used = np.zeros(len(truth), dtype=bool)
    for i, p in enumerate(picks):
        for j in sorted(tree.query_ball_point(p, match_radius), key=lambda j: np.sum((truth[j] - p) ** 2)):
            if not used[j]:
                used[j] = hit[i] = True
                break
    return hit


def score_picks(
    picks: list[np.ndarray] | np.ndarray,
    scores: list[np.ndarray] | np.ndarray,
    truth: list[np.ndarray] | np.ndarray,
    match_radius: float,
) -> PickingScores:
    """Precision/recall over one or several micrographs.

    Parameters
    ----------
    picks, scores, truth : array or list of arrays
        Per micrograph: (N, 2) picks, (N,) scores, (M, 2) true centres, all
        in the same pixel units.
    match_radius : float
        Largest distance of a hit, in those units.
    """
    if isinstance(picks, np.ndarray) and picks.ndim == 2:
        picks, scores, truth = [picks], [scores], [truth]
    all_scores, all_hits, n_true = [], [], 0
    for p, s, t in zip(picks, scores, truth):
        t = np.asarray(t, dtype=float).reshape(-1, 2)
        n_true += len(t)
        hits = match_picks(p, s, t, match_radius)
        all_hits.append(hits)
        all_scores.append(np.sort(np.asarray(s, dtype=float))[::-1])
    s = np.concatenate(all_scores) if all_scores else np.zeros(0)
    h = np.concatenate(all_hits) if all_hits else np.zeros(0, bool)
    order = np.argsort(-s, kind="stable")
    s, h = s[order], h[order]
    tp = np.cumsum(h)
    fp = np.cumsum(~h)
    precision = tp / np.maximum(tp + fp, 1)
    recall = tp / max(n_true, 1)
    # All-points interpolated AP: precision made monotone, summed over recall steps.
    mono = np.maximum.accumulate(precision[::-1])[::-1] if len(precision) else precision
    ap = float(np.sum(np.diff(np.concatenate([[0.0], recall])) * mono)) if len(recall) else 0.0
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    best = int(np.argmax(f1)) if len(f1) else 0
    at90 = precision[recall >= 0.9]
    return PickingScores(
        average_precision=ap,
        precision=float(precision[best]) if len(f1) else 0.0,
        recall=float(recall[best]) if len(f1) else 0.0,
        f1=float(f1[best]) if len(f1) else 0.0,
        threshold=float(s[best]) if len(f1) else float("nan"),
        precision_at_90_recall=float(at90.max()) if len(at90) else 0.0,
        n_picks=int(len(s)),
        n_true=int(n_true),
        curve={"scores": s, "precision": precision, "recall": recall},
    )


def found_fraction(picks: np.ndarray, reference: np.ndarray, radius: float) -> float:
    """Fraction of ``reference`` positions with at least one pick within ``radius``.

    Unlike :func:`score_picks` this does not pair picks with references one
    to one, so it measures recall only; both are (N, 2) arrays in the same
    pixel units.
    """
    reference = np.asarray(reference, dtype=float).reshape(-1, 2)
    picks = np.asarray(picks, dtype=float).reshape(-1, 2)
    if len(reference) == 0:
        return float("nan")
    if len(picks) == 0:
        return 0.0
    distance, _ = cKDTree(picks).query(reference)
    return float(np.mean(distance <= radius))


def dark_regions(image: np.ndarray, diameter: float, min_area: float = 10.0, depth: float = 5.0) -> np.ndarray:
    """Mask of large, very dark patches of a micrograph: ice contamination (dark particles assumed).

    The image is smoothed over a fifth of a particle diameter, so particles
    and noise fade while a thick patch stays dark; pixels more than
    ``depth`` robust spreads (half the 16-84 % range) below the median are
    dark, and connected dark regions of at least ``min_area`` particle
    areas, holes filled, are kept.

    Parameters
    ----------
    image : numpy.ndarray
        (Y, X) micrograph.
    diameter : float
        Particle diameter in pixels.
    min_area : float
        Smallest region kept, in particle areas (pi diameter^2 / 4).
    depth : float
        Darkness threshold in robust spreads.

    Returns
    -------
    numpy.ndarray
        (Y, X) boolean mask.
    """
    smooth = ndimage.gaussian_filter(np.asarray(image, dtype=np.float32), 0.2 * diameter)
    lo, centre, hi = np.percentile(smooth, [16, 50, 84])
    dark = smooth < centre - depth * max((hi - lo) / 2.0, 1e-12)
    labels, n = ndimage.label(dark)
    if n == 0:
        return dark
    area = np.bincount(labels.ravel(), minlength=n + 1)
    big = area >= min_area * np.pi * diameter**2 / 4
    big[0] = False
    return ndimage.binary_fill_holes(big[labels])
