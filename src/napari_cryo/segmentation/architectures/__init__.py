"""Registry of segmentation network architectures, looked up by name.

Each feature (membrane, carbon, ...) gets its own 2D network that maps a
(B, 1, H, W) normalised image to (B, 1, H, W) logits; the caller applies the
sigmoid. Networks are fully convolutional: trained on boxes of
``box`` px, they are applied to tiles of any size.

Models store the *name* of their architecture, never a position in a list,
so adding or reordering architectures cannot change what a saved model means.

Builtins: ``vgg`` (the default), ``unet``, ``resnet``, ``inception`` and
``pix2pix``. Other packages add architectures through the entry-point group
``napari_cryo.segmentation_architectures``; each entry point loads to an
:class:`Architecture`::

    [project.entry-points."napari_cryo.segmentation_architectures"]
    mynet = "my_package.mynet:ARCHITECTURE"

or at run time with :func:`register`.
"""

from __future__ import annotations

import functools
import importlib
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata

import torch

from ...errors import CryoInputError

__all__ = ["Architecture", "DEFAULT", "ENTRY_POINT_GROUP", "available", "get", "register", "unregister"]

DEFAULT = "vgg"
ENTRY_POINT_GROUP = "napari_cryo.segmentation_architectures"

# Display order in menus: the default first.
_BUILTIN_MODULES = ("vgg", "unet", "resnet", "inception", "pix2pix")

_registered: dict[str, "Architecture"] = {}


@dataclass(frozen=True)
class Architecture:
    """A named way to build a segmentation network.

    Attributes
    ----------
    name : str
        Registry key: lower case, no spaces (e.g. ``"vgg"``). Stored in model
        files, so it must never change once released.
    title : str
        Human-readable name (e.g. ``"VGGNet encoder-decoder"``).
    description : str
        One sentence for tooltips and documentation.
    build : callable
        ``build(box)`` returns a new, randomly initialised
        :class:`torch.nn.Module` in training mode for training boxes of
        ``box`` px, mapping (B, 1, H, W) images to (B, 1, H, W) logits for
        any H and W. Raises :class:`~napari_cryo.errors.CryoInputError` for a
        box size it cannot use.
    discriminator : callable or None
        Only for adversarial architectures: ``discriminator(box)`` returns a
        conditional PatchGAN-style network taking
        ``torch.cat([image, probability], dim=1)`` (2 channels) and
        returning (B, 1, h, w) patch logits.
    dims : int
        Spatial dimensions the network works in (2: slice by slice).
    """

    name: str
    title: str
    description: str
    build: Callable[[int], torch.nn.Module]
    discriminator: Callable[[int], torch.nn.Module] | None = None
    dims: int = 2

    def __post_init__(self) -> None:
        # Fail when a plugin is defined, not when a model file names it later.
        if not isinstance(self.name, str) or not self.name or self.name != self.name.strip().lower() or any(c.isspace() for c in self.name):
            raise ValueError(f"architecture name must be a non-empty lower-case word, not {self.name!r}")
        if not callable(self.build):
            raise ValueError(f"architecture '{self.name}': build must be callable")
        if self.discriminator is not None and not callable(self.discriminator):
            raise ValueError(f"architecture '{self.name}': discriminator must be callable or None")
        if self.dims not in (2, 3):
            raise ValueError(f"architecture '{self.name}': dims must be 2 or 3, not {self.dims!r}")

    @property
    def adversarial(self) -> bool:
        """Whether training needs the :attr:`discriminator`."""
        return self.discriminator is not None


@functools.cache
def _builtins() -> dict[str, Architecture]:
    # Imported lazily: the modules import Architecture from this package.
    out: dict[str, Architecture] = {}
    for module_name in _BUILTIN_MODULES:
        arch = importlib.import_module(f"{__name__}.{module_name}").ARCHITECTURE
        out[arch.name] = arch
    return out


def _plugins() -> dict[str, Architecture]:
    """Architectures from installed entry points, skipping broken ones with a warning."""
    out: dict[str, Architecture] = {}
    try:
        entry_points = list(metadata.entry_points(group=ENTRY_POINT_GROUP))
    except Exception as exc:  # noqa: BLE001 - broken distribution metadata must not stop segmentation
        warnings.warn(f"could not list segmentation architecture plugins: {exc!r}", stacklevel=3)
        return out
    builtins = _builtins()
    for ep in entry_points:
        label = f"'{getattr(ep, 'name', '?')}' ({getattr(ep, 'value', '?')})"
        try:
            arch = ep.load()
        except Exception as exc:  # noqa: BLE001 - a plugin may fail in any way on import
            warnings.warn(f"segmentation architecture plugin {label} could not be loaded and is skipped: {exc!r}", stacklevel=3)
            continue
        if not isinstance(arch, Architecture):
            warnings.warn(f"segmentation architecture plugin {label} is not an Architecture ({type(arch).__name__}) and is skipped", stacklevel=3)
            continue
        if arch.name in builtins:
            # A plugin must not change what existing model files that name a builtin mean.
            warnings.warn(f"segmentation architecture plugin {label} reuses the builtin name '{arch.name}' and is skipped", stacklevel=3)
            continue
        out[arch.name] = arch
    return out


def available() -> dict[str, Architecture]:
    """All architectures by name: builtins, then plugins, then runtime registrations.

    Entry points are read on every call, so a plugin installed while napari
    runs shows up; one that fails to load is skipped with a warning.

    Returns
    -------
    dict of str to Architecture
        A new dict; the default architecture comes first.
    """
    out = dict(_builtins())
    out.update(sorted(_plugins().items()))
    out.update(_registered)
    return out


def get(name: str) -> Architecture:
    """The architecture registered under ``name`` (case-insensitive).

    Parameters
    ----------
    name : str
        Registry name, e.g. ``"vgg"`` or ``"UNet"``.

    Returns
    -------
    Architecture

    Raises
    ------
    CryoInputError
        If no architecture has that name; the message lists those available.
    """
    key = str(name).strip().lower()
    # Builtins and registrations first: no need to scan installed distributions for them.
    for table in (_builtins(), _registered):
        if key in table:
            return table[key]
    known = available()
    if key in known:
        return known[key]
    raise CryoInputError(None, f"unknown architecture '{name}'; available: {', '.join(known)}")


def register(arch: Architecture) -> None:
    """Add an architecture at run time (replacing an earlier registration of its name).

    Parameters
    ----------
    arch : Architecture
        The architecture; it takes precedence over a plugin of the same name.

    Raises
    ------
    TypeError
        If ``arch`` is not an :class:`Architecture`.
    CryoInputError
        If its name is that of a builtin architecture.
    """
    if not isinstance(arch, Architecture):
        raise TypeError(f"register() needs an Architecture, not {type(arch).__name__}")
    if arch.name in _builtins():
        raise CryoInputError(None, f"architecture name '{arch.name}' is taken by a builtin architecture")
    _registered[arch.name] = arch


def unregister(name: str) -> None:
    """Remove a runtime registration (a no-op for unknown names); for tests and plugins."""
    _registered.pop(str(name).strip().lower(), None)
