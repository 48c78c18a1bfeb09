"""The feature table: which label value is which feature, and its colour.

A painted Labels layer holds one value per feature (1 = membrane, 2 =
carbon, ...).  The table travels with the layer in its ``metadata`` under
:data:`METADATA_KEY`, so that the widget, the writers and the command line
agree on names, and the layer's colours follow the features' colours.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from ..errors import CryoInputError
from ..layer_meta import FEATURES_TABLE

#: Key of the feature table in a Labels layer's ``metadata``.
METADATA_KEY = FEATURES_TABLE

#: Colours given to new features, in order (colour-blind friendly, from Okabe & Ito).
PALETTE = ("#e69f00", "#56b4e9", "#009e73", "#f0e442", "#0072b2", "#d55e00", "#cc79a7", "#999999")

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


@dataclass(frozen=True)
class Feature:
    """One annotated feature.

    Attributes
    ----------
    name : str
        Short name used in file names (``<tomogram>__<name>.mrc``) and on the
        command line: letters, digits, ``_ . + -``.
    value : int
        The label value painted for it (1-255).
    colour : str
        Display colour as ``#rrggbb``.
    """

    name: str
    value: int
    colour: str

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise CryoInputError(None, f"feature name '{self.name}' must be letters, digits, '_', '.', '+' or '-' (no spaces)")
        if not 1 <= int(self.value) <= 255:
            raise CryoInputError(None, f"feature '{self.name}': label value {self.value} is not between 1 and 255")
        if not re.match(r"^#[0-9a-fA-F]{6}$", self.colour):
            raise CryoInputError(None, f"feature '{self.name}': colour '{self.colour}' is not #rrggbb")


def make_features(names: Iterable[str]) -> list[Feature]:
    """Features numbered 1, 2, ... with the default palette."""
    return [Feature(n, i + 1, PALETTE[i % len(PALETTE)]) for i, n in enumerate(names)]


def check_unique(features: Iterable[Feature]) -> list[Feature]:
    """Return the features as a list, refusing repeated names or values."""
    features = list(features)
    for attr in ("name", "value"):
        seen: set[Any] = set()
        for f in features:
            key = getattr(f, attr)
            if key in seen:
                raise CryoInputError(None, f"two features have the {attr} {key!r}")
            seen.add(key)
    return features


def parse_feature(text: str, index: int = 0) -> Feature:
    """Parse a command-line ``NAME=VALUE`` (optionally ``NAME=VALUE:#rrggbb``)."""
    match = re.match(r"^\s*([^=\s]+)\s*=\s*(\d+)\s*(?::\s*(#[0-9a-fA-F]{6}))?\s*$", text)
    if not match:
        raise CryoInputError(None, f"--feature '{text}' is not NAME=VALUE (e.g. membrane=1)")
    name, value, colour = match.groups()
    return Feature(name, int(value), colour or PALETTE[index % len(PALETTE)])


def features_to_metadata(features: Iterable[Feature]) -> list[dict[str, Any]]:
    """The table as plain data for a layer's ``metadata``."""
    return [asdict(f) for f in features]


def features_from_metadata(metadata: Mapping[str, Any] | None) -> list[Feature]:
    """The table kept in a layer's ``metadata`` (empty if there is none)."""
    rows = (metadata or {}).get(METADATA_KEY) or []
    out = []
    for row in rows:
        try:
            out.append(Feature(str(row["name"]), int(row["value"]), str(row["colour"])))
        except (KeyError, TypeError, ValueError) as exc:
            raise CryoInputError(None, f"the layer's feature table has a bad row {row!r} ({exc})") from None
    return check_unique(out)


def label_colours(features: Iterable[Feature]) -> dict[int | None, str]:
    """A ``DirectLabelColormap`` colour dict: each feature's colour, others transparent."""
    colours: dict[int | None, str] = {None: "transparent", 0: "transparent"}
    colours.update({f.value: f.colour for f in features})
    return colours
