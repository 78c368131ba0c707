"""The `nexus` command line: one sub-command per module, registered here.

Each command module exports ``register(subparsers)``, which adds its parser and sets
``func`` (a callable taking the parsed args and returning the exit code). Modules are
imported here, not lazily, so a broken command fails loudly in tests.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from engine import __version__

# Modules providing sub-commands, in the order `nexus --help` lists them.
COMMAND_MODULES: tuple[str, ...] = (
    "engine.config.commands",
    "engine.routing.statechart.cli",
    "engine.routing.commands",
    "engine.store.commands",
    "engine.serve_command",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nexus",
        description="Nexus: a declarative Digital Channels engine (chat, SMS, campaign email).",
    )
    parser.add_argument("--version", action="version", version=f"nexus {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # True when run as the `nexus` process itself (not called from tests or other code).
    args.standalone = argv is None
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
