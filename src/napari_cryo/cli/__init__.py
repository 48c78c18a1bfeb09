"""The ``napari-cryo`` command line: one module per command.

Each command module defines ``HELP`` (one line), ``add_args(parser)`` and
``main(args) -> int``.  Capabilities add theirs to :data:`COMMANDS`.  Bad
input (a :class:`~napari_cryo.errors.CryoInputError`) is reported as one
line on stderr with exit status 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from ..errors import CryoCancelled, CryoInputError

#: Command name -> module implementing it.
COMMANDS: dict[str, str] = {
    "info": "napari_cryo.cli.info",
    "convert": "napari_cryo.cli.convert",
    "demo": "napari_cryo.cli.demo",
    "pick": "napari_cryo.picking._cli",
    "squares": "napari_cryo.squares._cli",
    "segment": "napari_cryo.segmentation._cli",
    "reconstruct": "napari_cryo.reconstruction._cli",
    "simulate": "napari_cryo.reconstruction._simulate_cli",
    "fsc": "napari_cryo.reconstruction._fsc_cli",
    "compare-poses": "napari_cryo.reconstruction._poses_cli",
}

EXIT_BAD_INPUT = 2


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every command's subparser."""
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="napari-cryo",
        description="Cryo-EM and cryo-ET from the command line: the same steps as the napari-cryo widgets.",
    )
    parser.add_argument("--version", action="version", version=f"napari-cryo {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=module.HELP, description=module.__doc__.strip().splitlines()[0] if module.__doc__ else None)
        module.add_args(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args._module.main(args) or 0)
    except CryoInputError as exc:
        print(f"napari-cryo {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except CryoCancelled as exc:
        print(f"napari-cryo {args.command}: stopped: {exc}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(f"napari-cryo {args.command}: interrupted", file=sys.stderr)
        return 130
    except (FileNotFoundError, PermissionError, IsADirectoryError) as exc:
        name = exc.filename or ""
        print(f"napari-cryo {args.command}: error: {name}: {exc.strerror}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as exc:  # noqa: BLE001 - a bug: say so in one line, traceback on request
        if os.environ.get("NAPARI_CRYO_DEBUG"):
            raise
        print(
            f"napari-cryo {args.command}: internal error: {type(exc).__name__}: {exc} "
            "(set NAPARI_CRYO_DEBUG=1 for the traceback, and please report it)",
            file=sys.stderr,
        )
        return 1


def add_device_arg(parser: argparse.ArgumentParser) -> None:
    """The shared ``--device`` option (see :mod:`napari_cryo.device`)."""
    parser.add_argument(
        "--device",
        default="auto",
        help="torch device: auto (CUDA if available, else CPU), cpu, cuda, cuda:N (default: auto)",
    )


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
