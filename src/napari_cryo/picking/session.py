"""The state of picking one micrograph interactively, without Qt.

The picking controller keeps one :class:`MicrographSession` per micrograph.  It
combines the model's picks at the current threshold with the user's
corrections: particles added by hand are kept whatever the threshold, and
picks the user deleted become false positives, which are never shown again
and train as background when the model is retrained.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

from .picks import PickResult

SOURCE_AUTO, SOURCE_MANUAL = "auto", "manual"


@dataclass
class MicrographSession:
    """Picking state of one micrograph.

    Attributes
    ----------
    pixel_size : float
        Å per pixel of the micrograph.
    diameter : float
        Particle diameter in Å.
    result : PickResult or None
        The cached network output (None before the first pick).
    threshold : float
        Current particle-probability threshold.
    min_distance : float or None
        Minimum distance between picks in Å (None: the radius).
    manual : numpy.ndarray
        (N, 2) YX particles added by hand.
    false_positives : numpy.ndarray
        (M, 2) YX picks the user rejected.
    """

    pixel_size: float
    diameter: float
    result: PickResult | None = None
    threshold: float = 0.5
    min_distance: float | None = None
    manual: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    false_positives: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    # The network's picks at the last (result, threshold, min distance): the widget asks for
    # them again on every redraw and count, and extracting them is the slow part.
    _network_picks: tuple | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def radius_px(self) -> float:
        """Particle radius in micrograph pixels."""
        return self.diameter / 2.0 / self.pixel_size

    def auto_picks(self, threshold: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Network picks at ``threshold``, minus those near a rejected pick or a manual one."""
        if self.result is None:
            return np.zeros((0, 2)), np.zeros(0)
        settings = (self.threshold if threshold is None else threshold, self.min_distance)
        cached = self._network_picks
        if cached is None or cached[0] is not self.result or cached[1] != settings:
            cached = self._network_picks = (self.result, settings, self.result.picks(*settings))
        yx, scores = cached[2]
        keep = np.ones(len(yx), dtype=bool)
        for other in (self.false_positives, self.manual):
            if len(other) and len(yx):
                d, _ = cKDTree(other).query(yx)
                keep &= d > 0.5 * self.radius_px
        return yx[keep], scores[keep]

    def points(self) -> tuple[np.ndarray, pd.DataFrame]:
        """All current picks (automatic then manual) and their features."""
        yx, scores = self.auto_picks()
        data = np.concatenate([yx, self.manual]) if len(self.manual) else yx
        features = pd.DataFrame(
            {
                "rlnAutopickFigureOfMerit": np.concatenate([scores, np.ones(len(self.manual))]),
                "source": pd.Categorical([SOURCE_AUTO] * len(yx) + [SOURCE_MANUAL] * len(self.manual), categories=[SOURCE_AUTO, SOURCE_MANUAL]),
            }
        )
        return data.reshape(-1, 2), features

    def count(self, threshold: float) -> int:
        """How many picks a threshold would give (for the slider's label)."""
        return len(self.auto_picks(threshold)[0]) + len(self.manual)

    def sync_from_layer(self, data: np.ndarray, sources: np.ndarray) -> None:
        """Take the user's edits from the Points layer.

        Points marked ``manual`` (or added without a source) are manual
        picks; automatic picks missing from the layer were deleted and become
        false positives.
        """
        data = np.asarray(data, dtype=float).reshape(-1, 2)
        sources = np.asarray(sources, dtype=object)
        manual = data[sources != SOURCE_AUTO]
        kept_auto = data[sources == SOURCE_AUTO]
        expected, _ = self.auto_picks()
        if len(expected):
            if len(kept_auto):
                d, _ = cKDTree(kept_auto).query(expected)
                deleted = expected[d > 1e-6]
                # An automatic pick the user moved is now the user's own pick.
                d_kept, _ = cKDTree(expected).query(kept_auto)
                manual = np.concatenate([manual, kept_auto[d_kept > 1e-6]])
            else:
                deleted = expected
            self.add_false_positives(deleted)
        self.manual = manual.reshape(-1, 2)

    def add_false_positives(self, yx: np.ndarray) -> None:
        """Reject picks: they are hidden and train as background."""
        yx = np.asarray(yx, dtype=float).reshape(-1, 2)
        if len(yx):
            self.false_positives = np.concatenate([self.false_positives, yx])

    def training_positives(self) -> np.ndarray:
        """What retraining takes as particles: the shown picks (automatic and manual)."""
        return self.points()[0]
