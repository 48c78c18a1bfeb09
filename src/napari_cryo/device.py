"""Choice of the torch device, in one place.

``auto`` takes CUDA when it is present and usable, else the CPU; an explicit
name (``cpu``, ``cuda``, ``cuda:1``, ``mps``) overrides it and is checked, so
that a typo or a missing GPU gives a clear message instead of a failure deep
inside a model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import CryoInputError

if TYPE_CHECKING:  # pragma: no cover
    import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


def resolve_device(name: str | None = "auto") -> "torch.device":
    """Return the torch device to run on.

    Parameters
    ----------
    name : str or None
        ``"auto"`` (or ``None``) for CUDA when available, else CPU; or an
        explicit torch device string such as ``"cpu"`` or ``"cuda:0"``.

    Returns
    -------
    torch.device
        The device.

    Raises
    ------
    CryoInputError
        If the name is not a device, or names a device that is not present.
    """
    import torch

    if name is None or str(name).strip().lower() in ("", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(str(name).strip().lower())
    except (RuntimeError, ValueError) as exc:
        raise CryoInputError(None, f"--device {name!r} is not a torch device ({exc})") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise CryoInputError(None, f"--device {name}: CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise CryoInputError(
                None,
                f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) present",
            )
    elif device.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise CryoInputError(None, f"--device {name}: MPS is not available on this machine")
    elif device.type != "cpu":
        raise CryoInputError(None, f"--device {name}: unsupported device type {device.type!r}")
    return device


def describe_device(device: "torch.device") -> str:
    """Return a one-line human description of a device (for logs and notes)."""
    import torch

    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    if device.type == "cpu":
        return f"cpu ({torch.get_num_threads()} threads)"
    return str(device)
