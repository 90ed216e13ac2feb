"""The `cupid` command line: each subcommand lives in its own module under `cupid.commands`.

A command module exposes `NAME`, `HELP`, `add_arguments(parser)` and `run(args) -> int`.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__
from .errors import CupidError

# Order is the order shown in `cupid --help`.
COMMAND_MODULES: list[str] = [
    "reconstruct",
    "make_tiny_model",
    "download",
    "serve",
    "batch",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cupid", description="CUPID: one photo -> 3D objects and the camera that took it.")
    parser.add_argument("--version", action="version", version=f"cupid {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for modname in COMMAND_MODULES:
        mod = importlib.import_module(f"cupid.commands.{modname}")
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 1
    try:
        return int(args._run(args) or 0)
    except CupidError as exc:
        print(f"cupid {args.command}: error: {getattr(exc, 'message', None) or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cupid: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
