"""``nexus scxml test FILE...`` and ``nexus scxml validate FILE...``."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .irp import is_helper_document, run_test_file
from .validate import validate_file


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "scxml", help="run or validate SCXML documents",
        description="Run W3C IRP-style SCXML tests or validate SCXML documents.",
    )
    sub = parser.add_subparsers(dest="scxml_command", metavar="ACTION")
    parser.set_defaults(func=lambda _args: _usage(parser))

    test = sub.add_parser(
        "test", help="run IRP-style tests (pass = top-level <final id='pass'> reached)",
    )
    test.add_argument("files", nargs="+", metavar="FILE")
    test.add_argument("-v", "--verbose", action="store_true",
                      help="say why a test failed (final state or 'stuck')")
    test.set_defaults(func=run_tests)

    validate = sub.add_parser("validate", help="check documents; exit 1 when problems found")
    validate.add_argument("files", nargs="+", metavar="FILE")
    validate.set_defaults(func=run_validate)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def run_tests(args: argparse.Namespace) -> int:
    passed = failed = 0
    for path in args.files:
        if is_helper_document(path):
            # e.g. testNNNsub1.scxml: a child document that tests invoke, not a test itself.
            print(f"nexus scxml: {path} has no 'pass' or 'fail' state: a helper document, "
                  "not a test; not counted", file=sys.stderr)
            continue
        outcome = run_test_file(path)
        if outcome.passed:
            passed += 1
            print(f"PASS {path}")
        else:
            failed += 1
            suffix = f"  ({outcome.reason})" if args.verbose else ""
            print(f"FAIL {path}{suffix}")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


def run_validate(args: argparse.Namespace) -> int:
    status = 0
    for path in args.files:
        report = validate_file(path)
        if not report.readable:
            d = report.diagnostics[0]
            print(f"{path}:0:0: error: {d.code} {d.message}", file=sys.stderr)
            status = 2
            continue
        for line in report.lines():
            print(line)
        if report.diagnostics and status == 0:
            status = 1
    return status
