"""Model interactions: one feature's prediction constrains another's (after Ais).

Each feature (membrane, carbon, particle, ...) has a prediction volume of
probabilities in [0, 1].  Two kinds of rule relate them:

* **Competition** between models: a model in ``absorb`` loses every voxel
  where some model in ``emit`` (other than itself) predicts a strictly higher
  value.
* **Interactions** between a child and a parent: ``colocalize`` keeps the
  child only within ``radius_nm`` of the parent, ``avoid`` removes the child
  within that distance.

An interaction works in one of two modes:

* ``"plain"`` (every interaction stored before modes existed): the parent is
  its mask (prediction >= threshold) and the child is changed voxel by voxel.
* ``"robust"`` (the default of new interactions), made for imperfect
  predictions such as a membrane found in fragments with small false
  specks.  The parent's *surface* is its mask without the specks, pieces
  too small beside the parent's typical piece, where fragments joined by
  weaker prediction (above ``HYSTERESIS_LOW`` times the threshold) count
  as one piece (see :func:`parent_surface`).  The child is decided object by object, an
  object being a connected piece of the child above ``HYSTERESIS_LOW``
  times its threshold that holds a voxel at or above its threshold, and
  its share within reach the part of its summed prediction within the
  radius of the surface.  Colocalize keeps an object whole when its share
  is at least ``COLOCALIZE_FRACTION`` and removes it whole otherwise;
  avoid removes it whole when its share is at least ``AVOID_FRACTION`` and
  keeps it whole otherwise (an object touching the parent, such as a
  membrane-bound particle, always has some share within an avoid radius).
  So a particle is never cut into a fragment that is still picked.  Avoid
  first removes the child's voxels on the surface itself, so a false
  response of the child along the parent does not join the objects beside
  it.  Child voxels in no object, and objects longer than
  ``OBJECT_MAX_NM`` (a membrane or carbon as the child: no particle),
  follow the plain rule.

A threshold may be ``None`` (written ``auto``): the parent model's own
threshold, which training calibrates, from the ``thresholds`` mapping given to
:func:`apply_interactions` (0.5 for a model missing from it).  The child's
threshold, which defines its objects, comes from the same mapping.

:func:`apply_interactions` applies the rules in this order:

1. Competition first, as Ais does, computed on the *original* predictions,
   so the result does not depend on the order of the models.
2. Then the interactions, visiting features in topological order of the
   graph (parents before children).  A child's constraints use its parents'
   output *after* their own interactions, so a chain a -> b -> c is well
   defined: c sees b as already constrained by a.  Several interactions on
   one child are all applied, in the order they are listed.

:func:`apply_interactions_with_effects` also says, per interaction, how many
objects of the child it removed (:class:`InteractionEffect`): what the
widget shows as the picks each interaction removes.

Distances are Euclidean, from :func:`scipy.ndimage.distance_transform_edt`,
with the radius converted from nm to voxels by the pixel size (Å / voxel).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.ndimage import distance_transform_edt

from ..errors import CryoInputError

KINDS = ("colocalize", "avoid")
#: Interaction modes; see the module docstring.
MODES = ("robust", "plain")
#: The threshold of a stored or typed interaction that means "the parent model's own threshold".
AUTO = "auto"
#: Robust mode: the parent's pieces and the child's objects extend to voxels above this fraction of the threshold.
HYSTERESIS_LOW = 0.5
#: Robust mode: parent pieces whose extent is under this fraction of a typical large piece's, or whose
#: volume is under its cube times the typical volume (a piece that much smaller in every direction), are specks ...
SPECK_FRACTION = 0.3
#: ... but a piece at least this long (nm), or holding at least a cube of this side, never is.
SPECK_MAX_NM = 15.0
#: Robust mode: colocalize keeps an object when at least this fraction of it lies within reach.
COLOCALIZE_FRACTION = 0.5
#: Robust mode: avoid removes an object when at least this fraction of it lies within reach.
AVOID_FRACTION = 0.75
#: Robust mode: a child object longer than this (nm, its bounding box's longest side) is no particle and follows the plain rule.
OBJECT_MAX_NM = 60.0
#: The threshold of a model that ``thresholds`` does not name.
DEFAULT_THRESHOLD = 0.5

_VERBS = {
    "avoid": "avoid",
    "coloc": "colocalize",
    "avoids": "avoid",
    "colocalize": "colocalize",
    "colocalizes": "colocalize",
    "colocalise": "colocalize",
    "colocalises": "colocalize",
}
_KEYS = {"radius": "radius_nm", "radius_nm": "radius_nm", "threshold": "threshold", "mode": "mode"}
_SYNTAX = "expected 'CHILD avoids|colocalizes PARENT [radius=NM] [threshold=T|auto] [mode=robust|plain]'"
_FIELDS = ("child", "parent", "kind", "threshold", "radius_nm", "mode")
_FULL = np.ones((3, 3, 3), dtype=bool)  # 26-connectivity: thin oblique membranes stay one piece

# Voxels per slab of the distance transform: scipy's EDT holds about 50 bytes
# per voxel in temporaries, so this keeps one slab near 200 MB.
_SLAB_VOXELS = 4_000_000


def _number(value: Any, name: str) -> float:
    """``value`` as a finite float, or a CryoInputError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise CryoInputError(None, f"{name} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise CryoInputError(None, f"{name} must be finite, got {value}")
    return value


def _name(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise CryoInputError(None, f"{what} must be a non-empty model name, got {value!r}")
    return value


def parse_threshold(value: Any) -> float | None:
    """An interaction threshold from a number, a number's text, or ``auto`` / ``None`` (the parent model's own).

    Parameters
    ----------
    value : float, str or None
        For example ``0.4``, ``"0.4"``, ``"auto"`` or ``None``.

    Returns
    -------
    float or None
        The threshold in [0, 1], or ``None`` for the parent model's own.

    Raises
    ------
    CryoInputError
        If the value is neither ``auto`` nor a finite number in [0, 1].
    """
    if value is None or (isinstance(value, str) and value.strip().lower() == AUTO):
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise CryoInputError(None, f"interaction threshold must be a number or 'auto', got {value!r}") from None
    value = _number(value, "interaction threshold")
    if not 0.0 <= value <= 1.0:
        raise CryoInputError(None, f"interaction threshold must be between 0 and 1, got {value}")
    return value


def threshold_text(threshold: float | None) -> str:
    """How a threshold is shown and typed: ``auto`` or the number (``0.4``)."""
    return AUTO if threshold is None else f"{threshold:g}"


@dataclass
class Interaction:
    """One rule: ``child`` colocalizes with or avoids ``parent``.

    Parameters
    ----------
    child : str
        The model whose prediction is changed.
    parent : str
        The model whose prediction constrains it.
    kind : {"colocalize", "avoid"}
        Keep the child only near the parent, or only away from it.
    threshold : float or None
        Threshold on the parent's prediction, in [0, 1]; ``None`` (also
        given as ``"auto"``): the parent model's own threshold.
    radius_nm : float
        How far the parent reaches, in nm (0: the parent itself).
    mode : {"robust", "plain"}
        ``"robust"``: the parent's cleaned surface and whole child objects;
        ``"plain"``: the parent's mask and single voxels (see the module
        docstring).  Interactions read from files written before modes
        existed are plain.
    """

    child: str
    parent: str
    kind: str
    threshold: float | None = None
    radius_nm: float = 0.0
    mode: str = "robust"

    def __post_init__(self) -> None:
        self.child = _name(self.child, "interaction child")
        self.parent = _name(self.parent, "interaction parent")
        if self.kind not in KINDS:
            raise CryoInputError(None, f"interaction kind must be 'colocalize' or 'avoid', got {self.kind!r}")
        if isinstance(self.threshold, str) and self.threshold.strip().lower() != AUTO:
            # Text is read by parse_threshold / parse_interaction; here a number or "auto" is expected.
            raise CryoInputError(None, f"interaction threshold must be a number or 'auto', got {self.threshold!r}")
        self.threshold = parse_threshold(self.threshold)
        self.radius_nm = _number(self.radius_nm, "interaction radius")
        if self.radius_nm < 0:
            raise CryoInputError(None, f"interaction radius must not be negative, got {self.radius_nm} nm")
        if self.mode not in MODES:
            raise CryoInputError(None, f"interaction mode must be 'robust' or 'plain', got {self.mode!r}")

    def to_dict(self) -> dict[str, Any]:
        """The interaction as plain JSON-compatible values (an automatic threshold as ``"auto"``)."""
        return {
            "child": self.child,
            "parent": self.parent,
            "kind": self.kind,
            "threshold": AUTO if self.threshold is None else self.threshold,
            "radius_nm": self.radius_nm,
            "mode": self.mode,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Interaction:
        """Rebuild an interaction written by :meth:`to_dict`.

        A missing threshold is 0.5 and a missing mode ``"plain"``: what an
        interaction stored before these fields existed meant.

        Raises
        ------
        CryoInputError
            If a key is missing or unknown, the kind or mode is not known, or
            a number is not a finite number in range.
        """
        if not isinstance(d, Mapping):
            raise CryoInputError(None, f"an interaction must be a mapping, got {type(d).__name__}")
        unknown = set(d) - set(_FIELDS)
        if unknown:
            raise CryoInputError(None, f"unknown interaction field(s): {', '.join(sorted(map(str, unknown)))}")
        missing = [key for key in ("child", "parent", "kind") if key not in d]
        if missing:
            raise CryoInputError(None, f"interaction lacks field(s): {', '.join(missing)}")
        threshold = d.get("threshold", 0.5)
        if threshold != AUTO:  # only the exact word is stored; anything else must be a number
            threshold = _number(threshold, "interaction threshold")
        return cls(
            child=d["child"],
            parent=d["parent"],
            kind=d["kind"],
            threshold=threshold,
            radius_nm=_number(d.get("radius_nm", 0.0), "interaction radius"),
            mode=d.get("mode", "plain"),
        )

    def edited(self, kind: str, threshold: str | float | None, radius_nm: str | float, mode: str | None = None) -> Interaction:
        """This edge with a new kind, threshold, radius and (optionally) mode, from the table's texts; the ends stay.

        Parameters
        ----------
        kind : str
            A kind or verb (``"Avoids"``).
        threshold : str, float or None
            A number or ``auto`` (see :func:`parse_threshold`).
        radius_nm : str or float
            The radius in nm.
        mode : str, optional
            ``robust`` or ``plain`` in any case; None keeps the mode.

        Raises
        ------
        CryoInputError
            "interaction not changed: ..." for bad text.
        """
        try:
            radius = float(radius_nm)
        except (TypeError, ValueError):
            raise CryoInputError(None, f"interaction not changed: radius must be a number, got {radius_nm!r}") from None
        try:
            return Interaction(self.child, self.parent, interaction_kind(kind), parse_threshold(threshold), radius,
                               self.mode if mode is None else str(mode).strip().lower())
        except CryoInputError as exc:
            raise CryoInputError(None, f"interaction not changed: {exc.problem}") from None

    def to_text(self) -> str:
        """The command-line form, read back by :func:`parse_interaction`."""
        verb = "avoids" if self.kind == "avoid" else "colocalizes with"
        threshold = AUTO if self.threshold is None else repr(self.threshold)
        return f"{self.child} {verb} {self.parent} radius={self.radius_nm!r} threshold={threshold} mode={self.mode}"


def interaction_kind(text: str) -> str:
    """The kind ('colocalize' or 'avoid') a verb or kind names, in any case (``"avoids"`` -> ``"avoid"``).

    Raises
    ------
    CryoInputError
        If the text names neither kind.
    """
    word = str(text).strip().lower()
    if word not in _VERBS:
        raise CryoInputError(None, f"interaction kind must be 'colocalize' or 'avoid', got {text!r}")
    return _VERBS[word]


def parse_interaction(text: str) -> Interaction:
    """Read the command-line form of an interaction.

    The form is ``CHILD VERB PARENT [radius=NM] [threshold=T|auto]
    [mode=robust|plain]`` where VERB is ``avoids``, ``avoid``,
    ``colocalizes``, ``colocalize`` or ``colocalizes with`` (British
    ``colocalises`` also works), and the options come in any order.  Model
    names cannot contain spaces here.  Without options the radius is 0, the
    threshold ``auto`` (the parent model's own) and the mode ``robust``.

    Parameters
    ----------
    text : str
        For example ``"ribosome avoids membrane radius=5 threshold=0.6"``.

    Returns
    -------
    Interaction

    Raises
    ------
    CryoInputError
        If the text does not follow the form, with the expected form.
    """
    tokens = str(text).split()

    def fail(problem: str) -> CryoInputError:
        return CryoInputError(None, f"cannot read interaction {text!r}: {problem}; {_SYNTAX}")

    if len(tokens) < 3:
        raise fail("too few words")
    child, verb = tokens[0], tokens[1].lower()
    if verb not in _VERBS:
        raise fail(f"unknown verb {tokens[1]!r}")
    rest = tokens[2:]
    if _VERBS[verb] == "colocalize" and rest[0].lower() == "with":
        rest = rest[1:]
    if not rest or "=" in rest[0]:
        raise fail("no parent model")
    parent, options = rest[0], rest[1:]
    values: dict[str, Any] = {}
    for option in options:
        key, sep, value = option.partition("=")
        field_name = _KEYS.get(key.lower())
        if not sep or field_name is None:
            raise fail(f"unknown option {option!r}")
        if field_name in values:
            raise fail(f"{key} given twice")
        if field_name == "mode":
            if value.lower() not in MODES:
                raise fail(f"mode must be robust or plain, not {value!r}")
            values[field_name] = value.lower()
        elif field_name == "threshold" and value.lower() == AUTO:
            values[field_name] = None
        else:
            try:
                values[field_name] = float(value)
            except ValueError:
                raise fail(f"{key} is not a number: {value!r}") from None
    return Interaction(child=child, parent=parent, kind=_VERBS[verb], **values)


@dataclass
class InteractionGraph:
    """All interactions and the competition between models.

    Parameters
    ----------
    interactions : list of Interaction
        The child/parent rules.
    emit : set of str
        Models that compete: they take voxels from absorbers.
    absorb : set of str
        Models that lose voxels where an emitter predicts a higher value.
    """

    interactions: list[Interaction] = field(default_factory=list)
    emit: set[str] = field(default_factory=set)
    absorb: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.interactions = list(self.interactions)
        self.emit = set(self.emit)
        self.absorb = set(self.absorb)

    def validate(self, features: Iterable[str]) -> None:
        """Check the graph against the models that exist.

        Parameters
        ----------
        features : iterable of str
            The names of the available models.

        Raises
        ------
        CryoInputError
            If an interaction, ``emit`` or ``absorb`` names a model that does
            not exist, if a model interacts with itself, or if the
            interactions form a cycle (the message lists it with arrows from
            parent to child, e.g. ``a -> b -> a``).
        """
        features = list(features)
        known = set(features)
        available = ", ".join(features) or "none"
        for inter in self.interactions:
            for name in (inter.parent, inter.child):
                if name not in known:
                    raise CryoInputError(
                        None, f"interaction '{inter.to_text()}' names model {name!r}, which does not exist (models: {available})"
                    )
            if inter.child == inter.parent:
                raise CryoInputError(None, f"model {inter.child!r} cannot interact with itself")
        for role, names in (("emit", self.emit), ("absorb", self.absorb)):
            missing = sorted(names - known)
            if missing:
                raise CryoInputError(None, f"{role} names model {missing[0]!r}, which does not exist (models: {available})")
        cycle = self._find_cycle(features)
        if cycle:
            raise CryoInputError(None, "interactions form a cycle: " + " -> ".join(cycle))

    def order(self, features: Iterable[str] | None = None) -> list[str]:
        """Features in an order where every child comes after all its parents.

        The order is stable: among features free to go next, the earliest in
        ``features`` goes first, so features without interactions keep their
        input order.

        Parameters
        ----------
        features : iterable of str, optional
            All models; the graph is validated against them.  When omitted,
            the models named by the interactions, in order of first mention.

        Returns
        -------
        list of str

        Raises
        ------
        CryoInputError
            If the graph is not valid (see :meth:`validate`).
        """
        if features is None:
            names = list(dict.fromkeys(n for inter in self.interactions for n in (inter.parent, inter.child)))
            features = names + sorted((self.emit | self.absorb) - set(names))
        features = list(dict.fromkeys(features))
        self.validate(features)
        parents = {name: {i.parent for i in self.interactions if i.child == name} for name in features}
        done: list[str] = []
        placed: set[str] = set()
        while len(done) < len(features):
            # Acyclic (validated), so some feature is always free to go.
            name = next(n for n in features if n not in placed and parents[n] <= placed)
            done.append(name)
            placed.add(name)
        return done

    def _find_cycle(self, features: list[str]) -> list[str] | None:
        """A cycle as a list of names from parent to child, first name repeated at the end."""
        children: dict[str, list[str]] = {}
        for inter in self.interactions:
            children.setdefault(inter.parent, []).append(inter.child)
        state: dict[str, int] = {}  # 1: on the current path, 2: finished
        path: list[str] = []

        def visit(name: str) -> list[str] | None:
            state[name] = 1
            path.append(name)
            for child in children.get(name, []):
                if state.get(child) == 1:
                    return path[path.index(child):] + [child]
                if child not in state:
                    found = visit(child)
                    if found:
                        return found
            path.pop()
            state[name] = 2
            return None

        for name in features:
            if name not in state:
                found = visit(name)
                if found:
                    return found
        return None

    def to_dict(self) -> dict[str, Any]:
        """The graph as plain JSON-compatible values (sets as sorted lists)."""
        return {
            "interactions": [inter.to_dict() for inter in self.interactions],
            "emit": sorted(self.emit),
            "absorb": sorted(self.absorb),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> InteractionGraph:
        """Rebuild a graph written by :meth:`to_dict`.

        Raises
        ------
        CryoInputError
            If the content is not a graph (unknown keys, wrong types, bad
            interactions).
        """
        if not isinstance(d, Mapping):
            raise CryoInputError(None, f"an interaction graph must be a mapping, got {type(d).__name__}")
        unknown = set(d) - {"interactions", "emit", "absorb"}
        if unknown:
            raise CryoInputError(None, f"unknown interaction graph field(s): {', '.join(sorted(map(str, unknown)))}")
        interactions = d.get("interactions", [])
        if not isinstance(interactions, (list, tuple)):
            raise CryoInputError(None, "interactions must be a list")
        sets = {}
        for role in ("emit", "absorb"):
            names = d.get(role, [])
            if isinstance(names, str) or not isinstance(names, (list, tuple, set, frozenset)):
                raise CryoInputError(None, f"{role} must be a list of model names")
            sets[role] = {_name(n, role) for n in names}
        return cls([Interaction.from_dict(i) for i in interactions], sets["emit"], sets["absorb"])


@dataclass(frozen=True)
class InteractionEffect:
    """What one interaction did to its child: objects before it and how many it removed.

    An object is a connected piece of the child at or above the child's
    threshold (26-connected; in a 2D preview, a piece of the slice): roughly
    one pick.  It counts as removed when none of its voxels stays at or
    above the threshold.

    Attributes
    ----------
    interaction : Interaction
        The rule.
    before : int
        The child's objects just before this rule (after competition and the
        rules applied earlier).
    removed : int
        Of those, how many the rule removed.
    """

    interaction: Interaction
    before: int
    removed: int

    @property
    def kept(self) -> int:
        """Objects the rule left."""
        return self.before - self.removed

    def describe(self) -> str:
        """One line, e.g. ``particle avoids membrane: removes 3 of 20 particle objects``."""
        verb = "avoids" if self.interaction.kind == "avoid" else "colocalizes with"
        i = self.interaction
        return f"{i.child} {verb} {i.parent}: removes {self.removed} of {self.before} {i.child} objects"


@dataclass(frozen=True)
class InteractionEffects:
    """The effects of every interaction of a graph, in the graph's order (what :meth:`.group.ModelGroup.apply` yields)."""

    effects: tuple[InteractionEffect, ...] = ()

    def describe(self) -> list[str]:
        """One line per interaction (see :meth:`InteractionEffect.describe`)."""
        return [e.describe() for e in self.effects]


def interaction_mask(parent: np.ndarray, threshold: float, radius_nm: float, pixel_size: float) -> np.ndarray:
    """The parent's mask grown by a radius: where a plain interaction's parent reaches.

    Parameters
    ----------
    parent : numpy.ndarray
        The parent's prediction.
    threshold : float
        Voxels with ``parent >= threshold`` form the mask.
    radius_nm : float
        Growth radius in nm; a voxel is in the result when its Euclidean
        distance to the mask is at most this.  0 returns the mask itself.
    pixel_size : float
        Voxel size in Å.

    Returns
    -------
    numpy.ndarray
        Boolean array of ``parent``'s shape.
    """
    threshold = _number(threshold, "interaction threshold")
    return _reach(np.asarray(parent) >= threshold, radius_nm, pixel_size)


def parent_surface(parent: np.ndarray, threshold: float, pixel_size: float) -> np.ndarray:
    """The parent's mask without its specks: what robust interactions measure distances to.

    The mask is ``parent >= threshold``.  Its pieces are judged with the
    weaker prediction around them (hysteresis): a piece is a connected
    (26-connected) region at or above ``HYSTERESIS_LOW * threshold`` holding
    mask voxels, so fragments of one membrane joined by weaker prediction
    count as one piece.  A piece is a speck when its extent (bounding box
    diagonal) is under ``SPECK_FRACTION`` times that of a typical large
    piece (the median over the pieces, each weighted by its squared voxel
    count) and under ``SPECK_MAX_NM``, or when it holds fewer mask voxels
    than ``SPECK_FRACTION**3`` times a typical piece (the same median) and
    than a cube of ``SPECK_MAX_NM``.  The volume test catches the thin, long
    pieces a membrane model leaves around other dense objects, such as the
    rims of particles: their extent is that of a fragment of membrane, but
    they hold a hundredth of a vesicle's voxels.  The mask voxels of the other
    pieces are the surface.  The scale follows the parent's own pieces, so a
    parent of small particles keeps them, while a membrane's specks go
    however many there are.  The surface is never larger than the mask, so
    a robust interaction never reaches further than a plain one.

    Parameters
    ----------
    parent : numpy.ndarray
        The parent's prediction.
    threshold : float
        The parent's threshold.
    pixel_size : float
        Voxel size in Å.

    Returns
    -------
    numpy.ndarray
        Boolean array of ``parent``'s shape.
    """
    parent = np.asarray(parent)
    threshold = _number(threshold, "interaction threshold")
    pixel_size = _number(pixel_size, "pixel size")
    if pixel_size <= 0:
        raise CryoInputError(None, f"pixel size must be positive, got {pixel_size}")
    high = parent >= threshold
    if not high.any():
        return high
    labels, n = ndimage.label(parent >= HYSTERESIS_LOW * threshold, structure=_FULL)
    seeded = np.zeros(n + 1, dtype=bool)
    seeded[labels[high]] = True
    seeded[0] = False
    size = np.bincount(labels.ravel(), minlength=n + 1)
    diagonal = np.zeros(n + 1)
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is not None and seeded[index]:
            diagonal[index] = math.sqrt(sum((s.stop - s.start) ** 2 for s in box))
    volume = np.bincount(labels[high], minlength=n + 1).astype(float)
    pieces = np.flatnonzero(seeded)
    # Weighting by the squared size makes the large pieces typical even among many specks.
    weights = size[pieces].astype(float) ** 2
    typical = _weighted_median(diagonal[pieces], weights)
    typical_volume = _weighted_median(volume[pieces], weights)
    longest = SPECK_MAX_NM * 10.0 / pixel_size
    keep = seeded & (diagonal >= min(SPECK_FRACTION * typical, longest))
    keep &= volume >= min(SPECK_FRACTION**3 * typical_volume, longest**3)
    high &= keep[labels]
    return high


def _weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    """The value below and above which lie half of the total weight."""
    order = np.argsort(values, kind="stable")
    cumulative = np.cumsum(weights[order])
    return float(values[order][np.searchsorted(cumulative, cumulative[-1] / 2.0)])


def _reach(mask: np.ndarray, radius_nm: float, pixel_size: float) -> np.ndarray:
    """``mask`` grown by ``radius_nm`` (a new array; the mask itself, copied, for 0)."""
    pixel_size = _number(pixel_size, "pixel size")
    if pixel_size <= 0:
        raise CryoInputError(None, f"pixel size must be positive, got {pixel_size}")
    radius_nm = _number(radius_nm, "interaction radius")
    if radius_nm < 0:
        raise CryoInputError(None, f"interaction radius must not be negative, got {radius_nm} nm")
    radius = radius_nm * 10.0 / pixel_size
    if radius <= 0 or not mask.any():
        return mask.copy()
    return _grow(mask, radius)


def _grow(mask: np.ndarray, radius: float) -> np.ndarray:
    """Voxels within ``radius`` voxels (Euclidean) of ``mask``.

    Whether a voxel is within ``radius`` depends only on mask voxels within
    ``radius``, so the EDT is computed on the mask's bounding box plus a
    margin, in slabs along the first axis each padded by the margin: the
    result is exact while the EDT's large temporaries stay bounded.
    """
    margin = math.ceil(radius)
    box = []
    for axis in range(mask.ndim):
        others = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=others))
        box.append(slice(max(0, hits[0] - margin), min(mask.shape[axis], hits[-1] + margin + 1)))
    sub = mask[tuple(box)]
    grown = np.zeros_like(mask)
    target = grown[tuple(box)]
    plane = max(1, sub[0].size)
    depth = max(1, _SLAB_VOXELS // plane)
    for start in range(0, sub.shape[0], depth):
        stop = min(sub.shape[0], start + depth)
        lo, hi = max(0, start - margin), min(sub.shape[0], stop + margin)
        slab = sub[lo:hi]
        if slab.any():
            near = distance_transform_edt(~slab, return_distances=True) <= radius
            target[start:stop] = near[start - lo : stop - lo]
    return grown


def _objects(child: np.ndarray, threshold: float) -> np.ndarray:
    """Labels of the child's objects: pieces above ``HYSTERESIS_LOW * threshold`` holding a voxel at or above ``threshold``; 0 elsewhere."""
    labels, n = ndimage.label(child >= HYSTERESIS_LOW * threshold, structure=_FULL)
    seeded = np.zeros(n + 1, dtype=bool)
    seeded[labels[child >= threshold]] = True
    seeded[0] = False
    labels[~seeded[labels]] = 0
    return labels


def _apply_robust(child: np.ndarray, inter: Interaction, surface: np.ndarray, child_threshold: float, pixel_size: float) -> None:
    """Apply one robust interaction to ``child`` in place, given the parent's :func:`parent_surface`."""
    reach = _reach(surface, inter.radius_nm, pixel_size)
    avoid = inter.kind == "avoid"
    if avoid:
        child[surface] = 0
    labels = _objects(child, child_threshold)
    n = int(labels.max())
    total = np.bincount(labels.ravel(), weights=child.ravel(), minlength=n + 1)
    inside = np.bincount(labels[reach], weights=child[reach], minlength=n + 1)
    # An object touching the parent always has a part within an avoid radius, so avoid
    # asks for more of it than colocalize does (see AVOID_FRACTION).
    drop = inside >= AVOID_FRACTION * total if avoid else inside < COLOCALIZE_FRACTION * total
    # A membrane or a sheet of carbon as the child is not one thing near or far: voxel by voxel.
    large = np.zeros(n + 1, dtype=bool)
    longest = OBJECT_MAX_NM * 10.0 / pixel_size
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        large[index] = box is not None and max(s.stop - s.start for s in box) > longest
    large[0] = True  # voxels in no object (weak, unseeded) too
    drop[large] = False
    loose = large[labels]
    loose &= reach if avoid else ~reach
    loose |= drop[labels]
    child[loose] = 0


def _count_objects(child: np.ndarray, threshold: float) -> tuple[np.ndarray, int]:
    """The child's objects as :class:`InteractionEffect` counts them: labels and their number."""
    return ndimage.label(child >= threshold, structure=_FULL)


def apply_interactions(
    predictions: dict[str, np.ndarray],
    graph: InteractionGraph,
    pixel_size: float,
    thresholds: Mapping[str, float] | None = None,
) -> dict[str, np.ndarray]:
    """Apply competition, then interactions, to the models' predictions.

    See the module docstring for the order and the modes.  The inputs are
    not modified.

    Parameters
    ----------
    predictions : dict of str to numpy.ndarray
        Each model's prediction, all of one shape.
    graph : InteractionGraph
        The rules; validated against ``predictions``' names first.
    pixel_size : float
        Voxel size in Å, to convert interaction radii from nm.
    thresholds : mapping of str to float, optional
        Each model's own (calibrated) threshold: used by interactions whose
        threshold is ``None`` (auto) and for the child's objects in robust
        mode.  A model not named here has 0.5.

    Returns
    -------
    dict of str to numpy.ndarray
        New float32 arrays for every model, in the input's key order.

    Raises
    ------
    CryoInputError
        If the graph is not valid for these models, the pixel size is not
        positive or the predictions that interact differ in shape.
    """
    return _apply(predictions, graph, pixel_size, thresholds, count=False)[0]


def apply_interactions_with_effects(
    predictions: dict[str, np.ndarray],
    graph: InteractionGraph,
    pixel_size: float,
    thresholds: Mapping[str, float] | None = None,
) -> tuple[dict[str, np.ndarray], InteractionEffects]:
    """:func:`apply_interactions`, and how many child objects each interaction removed.

    Counting labels the child before and after each rule, so it costs about
    two connected-component passes per interaction.  On one slice (the live
    preview) the objects are the slice's pieces.

    Returns
    -------
    tuple
        The new predictions (as :func:`apply_interactions` returns them) and
        the effects, one per interaction in ``graph.interactions``' order.
    """
    return _apply(predictions, graph, pixel_size, thresholds, count=True)


def _apply(
    predictions: dict[str, np.ndarray],
    graph: InteractionGraph,
    pixel_size: float,
    thresholds: Mapping[str, float] | None,
    count: bool,
) -> tuple[dict[str, np.ndarray], InteractionEffects]:
    pixel_size = _number(pixel_size, "pixel size")
    if pixel_size <= 0:
        raise CryoInputError(None, f"pixel size must be positive, got {pixel_size}")
    graph.validate(predictions)
    own = {name: _number(t, f"threshold of {name!r}") for name, t in (thresholds or {}).items()}
    inputs = {name: np.asarray(p) for name, p in predictions.items()}
    involved = graph.emit | graph.absorb | {n for i in graph.interactions for n in (i.child, i.parent)}
    shapes = {inputs[name].shape for name in involved}
    if len(shapes) > 1:
        detail = ", ".join(f"{name} {inputs[name].shape}" for name in sorted(involved))
        raise CryoInputError(None, f"predictions that interact must have one shape, got {detail}")

    out = {name: np.array(p, dtype=np.float32) for name, p in inputs.items()}

    if graph.emit and graph.absorb:
        # "Some emitter other than the absorber is strictly higher" equals
        # "the maximum over all emitters is strictly higher": the absorber
        # itself can never be strictly higher than its own value.  So one
        # running maximum serves every absorber.
        emitters = sorted(graph.emit)
        top = np.array(inputs[emitters[0]], dtype=np.float32)
        for name in emitters[1:]:
            np.maximum(top, inputs[name], out=top)
        for name in sorted(graph.absorb):
            # Compare the float32 copies: mixing a float64 input with the
            # float32 maximum would let a model beat its own rounded value.
            absorber = out[name]
            absorber[absorber < top] = 0
        del top

    effects: dict[int, InteractionEffect] = {}
    # A parent is final before any of its children is visited, so its surface can be shared.
    surfaces: dict[tuple[str, float], np.ndarray] = {}
    for child in graph.order(predictions):
        child_threshold = own.get(child, DEFAULT_THRESHOLD)
        for index, inter in enumerate(graph.interactions):
            if inter.child != child:
                continue
            parent_threshold = own.get(inter.parent, DEFAULT_THRESHOLD) if inter.threshold is None else inter.threshold
            if count:
                labels, before = _count_objects(out[child], child_threshold)
            if inter.mode == "robust":
                key = (inter.parent, parent_threshold)
                if key not in surfaces:
                    surfaces[key] = parent_surface(out[inter.parent], parent_threshold, pixel_size)
                _apply_robust(out[child], inter, surfaces[key], child_threshold, pixel_size)
            else:
                near = interaction_mask(out[inter.parent], parent_threshold, inter.radius_nm, pixel_size)
                if inter.kind == "colocalize":
                    np.logical_not(near, out=near)
                out[child][near] = 0
                del near
            if count:
                left = np.unique(labels[out[child] >= child_threshold])
                effects[index] = InteractionEffect(inter, before, before - int(np.count_nonzero(left)))
                del labels
    return out, InteractionEffects(tuple(effects[i] for i in sorted(effects)))
