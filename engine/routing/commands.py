"""``nexus render NAME --config DIR [--param k=v ...] [--no-validate]``.

Prints the strategy ``scxml/NAME.scxml.j2`` rendered with the config to stdout (exit 0); when
the rendered document has problems they go to stderr, one per line (exit 1); an unknown
template, a bad parameter or a config that does not validate is one line on stderr (exit 2).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, TextIO

EXIT_OK = 0
EXIT_PROBLEMS = 1
EXIT_USAGE = 2


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "render",
        help="render an SCXML strategy with the config",
        description="Render scxml/NAME.scxml.j2 with the config and print the document; "
        "problems of the rendered document go to stderr (exit 1).",
    )
    parser.add_argument("name", metavar="NAME", help="strategy template (e.g. redirect_queue)")
    parser.add_argument(
        "--config", "-c", default=None, metavar="DIR",
        help="config folder or file (default: $NEXUS_CONFIG or ./config)",
    )
    parser.add_argument(
        "--param", "-p", action="append", default=[], metavar="K=V",
        help="a strategy parameter, as an orchestration server passes it (repeatable)",
    )
    parser.add_argument("--templates", default=None, metavar="DIR",
                        help="template folder (default: $NEXUS_SCXML_DIR or scxml/)")
    parser.add_argument("--no-validate", action="store_true",
                        help="print the document without checking it")
    parser.set_defaults(func=run_render)


def run_render(
    args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None,
) -> int:
    from engine.config.validate import validate_paths
    from engine.routing.strategies import (
        NAME_RE,
        ParamError,
        StrategyCatalog,
        StrategyError,
    )

    out = out or sys.stdout
    err = err or sys.stderr
    params: dict[str, str] = {}
    for item in args.param:
        key, sep, value = item.partition("=")
        if not sep or not key:
            print(f"nexus render: --param {item!r} is not k=v", file=err)
            return EXIT_USAGE
        params[key] = value
    catalog = StrategyCatalog(args.templates)
    name = args.name.removesuffix(".scxml")
    if not NAME_RE.match(name) or not catalog.exists(name):
        known = ", ".join(catalog.names()) or "none"
        print(f"nexus render: no strategy {args.name!r} in {catalog.template_dir} "
              f"(available: {known})", file=err)
        return EXIT_USAGE
    config = args.config or os.environ.get("NEXUS_CONFIG", "./config")
    result = validate_paths([config], mode="lint")
    if result.model is None:
        first = result.errors[0] if result.errors else None
        reason = str(first) if first is not None else "unusable input"
        print(f"nexus render: the config in {config} does not validate "
              f"({len(result.errors)} errors; first: {reason})", file=err)
        return EXIT_USAGE
    try:
        text = catalog.render(name, result.model, params)
    except ParamError as exc:
        print(f"nexus render: {exc}", file=err)
        return EXIT_USAGE
    except StrategyError as exc:
        for problem in exc.problems or ():
            print(f"scxml/{name}.scxml.j2:{problem}", file=err)
        if not exc.problems:
            print(f"nexus render: {exc}", file=err)
        return EXIT_PROBLEMS
    if args.no_validate:
        out.write(text)
        return EXIT_OK
    problems = catalog.validate_rendered(text)
    if problems:
        for problem in problems:
            print(f"{name}.scxml:{problem}", file=err)
        return EXIT_PROBLEMS
    out.write(text)
    return EXIT_OK
