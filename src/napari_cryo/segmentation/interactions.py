"""Model interactions: one feature's prediction constrains another's (after Ais).

Each feature (membrane, carbon, particle, ...) has a prediction volume of
probabilities in [0, 1].  Two kinds of rule relate them:

* **Competition** between models: a model in ``absorb`` loses every voxel
  where some model in ``emit`` (other than itself) predicts a strictly higher
  value.
* **Interactions** between a child and a parent: ``colocalize`` keeps the
  child only within ``radius_nm`` of the parent's mask (parent >= threshold),
  ``avoid`` removes the child within that distance.

:func:`apply_interactions` applies them in this order:

1. Competition first, as Ais does, computed on the *original* predictions,
   so the result does not depend on the order of the models.
2. Then the interactions, visiting features in topological order of the
   graph (parents before children).  A child's constraints use its parents'
   output *after* their own interactions, so a chain a -> b -> c is well
   defined: c sees b as already constrained by a.  Several interactions on
   one child are all applied.

Distances are Euclidean, from :func:`scipy.ndimage.distance_transform_edt`,
with the radius converted from nm to voxels by the pixel size (Å / voxel).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.ndimage import distance_transform_edt

from ..errors import CryoInputError

KINDS = ("colocalize", "avoid")

_VERBS = {
    "avoid": "avoid",
    "coloc": "colocalize",
    "avoids": "avoid",
    "colocalize": "colocalize",
    "colocalizes": "colocalize",
    "colocalise": "colocalize",
    "colocalises": "colocalize",
}
_KEYS = {"radius": "radius_nm", "radius_nm": "radius_nm", "threshold": "threshold"}
_SYNTAX = "expected 'CHILD avoids|colocalizes PARENT [radius=NM] [threshold=T]'"

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


@dataclass
class Interaction:
    """One rule: ``child`` colocalizes with or avoids ``parent``.

    Parameters
    ----------
    child : str
        The model whose prediction is changed.
    parent : str
        The model whose mask (prediction >= ``threshold``) constrains it.
    kind : {"colocalize", "avoid"}
        Keep the child only near the parent, or only away from it.
    threshold : float
        Threshold on the parent's prediction, in [0, 1].
    radius_nm : float
        How far the parent's mask reaches, in nm (0: the mask itself).
    """

    child: str
    parent: str
    kind: str
    threshold: float = 0.5
    radius_nm: float = 0.0

    def __post_init__(self) -> None:
        self.child = _name(self.child, "interaction child")
        self.parent = _name(self.parent, "interaction parent")
        if self.kind not in KINDS:
            raise CryoInputError(None, f"interaction kind must be 'colocalize' or 'avoid', got {self.kind!r}")
        self.threshold = _number(self.threshold, "interaction threshold")
        if not 0.0 <= self.threshold <= 1.0:
            raise CryoInputError(None, f"interaction threshold must be between 0 and 1, got {self.threshold}")
        self.radius_nm = _number(self.radius_nm, "interaction radius")
        if self.radius_nm < 0:
            raise CryoInputError(None, f"interaction radius must not be negative, got {self.radius_nm} nm")

    def to_dict(self) -> dict[str, Any]:
        """The interaction as plain JSON-compatible values."""
        return {
            "child": self.child,
            "parent": self.parent,
            "kind": self.kind,
            "threshold": self.threshold,
            "radius_nm": self.radius_nm,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Interaction:
        """Rebuild an interaction written by :meth:`to_dict`.

        Raises
        ------
        CryoInputError
            If a key is missing or unknown, the kind is not known, or a
            number is not a finite number in range.
        """
        if not isinstance(d, Mapping):
            raise CryoInputError(None, f"an interaction must be a mapping, got {type(d).__name__}")
        unknown = set(d) - {"child", "parent", "kind", "threshold", "radius_nm"}
        if unknown:
            raise CryoInputError(None, f"unknown interaction field(s): {', '.join(sorted(map(str, unknown)))}")
        missing = [key for key in ("child", "parent", "kind") if key not in d]
        if missing:
            raise CryoInputError(None, f"interaction lacks field(s): {', '.join(missing)}")
        return cls(
            child=d["child"],
            parent=d["parent"],
            kind=d["kind"],
            threshold=_number(d.get("threshold", 0.5), "interaction threshold"),
            radius_nm=_number(d.get("radius_nm", 0.0), "interaction radius"),
        )

    def to_text(self) -> str:
        """The command-line form, read back by :func:`parse_interaction`."""
        verb = "avoids" if self.kind == "avoid" else "colocalizes with"
        return f"{self.child} {verb} {self.parent} radius={self.radius_nm!r} threshold={self.threshold!r}"


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

    The form is ``CHILD VERB PARENT [radius=NM] [threshold=T]`` where VERB is
    ``avoids``, ``avoid``, ``colocalizes``, ``colocalize`` or
    ``colocalizes with`` (British ``colocalises`` also works), and the
    options come in any order.  Model names cannot contain spaces here.

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
    values: dict[str, float] = {}
    for option in options:
        key, sep, value = option.partition("=")
        field_name = _KEYS.get(key.lower())
        if not sep or field_name is None:
            raise fail(f"unknown option {option!r}")
        if field_name in values:
            raise fail(f"{key} given twice")
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


def interaction_mask(parent: np.ndarray, threshold: float, radius_nm: float, pixel_size: float) -> np.ndarray:
    """The parent's mask grown by a radius: where the parent's reach is.

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
    pixel_size = _number(pixel_size, "pixel size")
    if pixel_size <= 0:
        raise CryoInputError(None, f"pixel size must be positive, got {pixel_size}")
    radius_nm = _number(radius_nm, "interaction radius")
    if radius_nm < 0:
        raise CryoInputError(None, f"interaction radius must not be negative, got {radius_nm} nm")
    threshold = _number(threshold, "interaction threshold")
    mask = np.asarray(parent) >= threshold
    radius = radius_nm * 10.0 / pixel_size
    if radius <= 0 or not mask.any():
        return mask
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


def apply_interactions(predictions: dict[str, np.ndarray], graph: InteractionGraph, pixel_size: float) -> dict[str, np.ndarray]:
    """Apply competition, then interactions, to the models' predictions.

    See the module docstring for the order.  The inputs are not modified.

    Parameters
    ----------
    predictions : dict of str to numpy.ndarray
        Each model's prediction, all of one shape.
    graph : InteractionGraph
        The rules; validated against ``predictions``' names first.
    pixel_size : float
        Voxel size in Å, to convert interaction radii from nm.

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
    pixel_size = _number(pixel_size, "pixel size")
    if pixel_size <= 0:
        raise CryoInputError(None, f"pixel size must be positive, got {pixel_size}")
    graph.validate(predictions)
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

    for child in graph.order(predictions):
        for inter in graph.interactions:
            if inter.child != child:
                continue
            near = interaction_mask(out[inter.parent], inter.threshold, inter.radius_nm, pixel_size)
            if inter.kind == "colocalize":
                np.logical_not(near, out=near)
            out[child][near] = 0
    return out
