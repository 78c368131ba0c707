"""`nexus lint`: validate config trees and print findings for people and for CI.

Exit codes: 0 clean (warnings allowed unless --strict), 1 findings, 2 unusable input
(a file that cannot be read, is not text or is not YAML). Findings go to stdout, the
summary to stderr, so `--format json > out.json` stays machine-readable.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
from collections.abc import Sequence
from typing import TextIO

from engine import __version__
from engine.config.diagnostics import Finding, Severity

EXIT_CLEAN = 0
EXIT_FINDINGS = 1
EXIT_UNUSABLE = 2

FORMATS = ("text", "json", "github", "sarif")
SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
DOCS_URL = "docs/config.md"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "lint",
        help="validate config files and folders",
        description="Validate Nexus config (schema, references, semantics) and print one "
        "line per finding: path:line:col: severity: CODE message.",
    )
    parser.add_argument(
        "paths",
        nargs="*",
        metavar="PATH",
        help="config files or folders (default: $NEXUS_CONFIG or ./config)",
    )
    parser.add_argument("--format", "-f", choices=FORMATS, default="text", help="output format")
    parser.add_argument(
        "--strict", action="store_true", help="treat warnings as findings (exit 1)"
    )
    parser.set_defaults(func=run_lint)


def run_lint(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    from engine.config.validate import validate_paths

    if getattr(args, "standalone", False):
        # A short-lived process over large acyclic data: the cyclic GC only costs time.
        gc.disable()
    out = out or sys.stdout
    err = err or sys.stderr
    paths: Sequence[str] = args.paths or [os.environ.get("NEXUS_CONFIG", "./config")]
    result = validate_paths(paths, mode="lint")
    findings = sorted(set(result.findings), key=lambda f: f.sort_key)
    emit(findings, args.format, out)

    errors = sum(1 for f in findings if f.severity is Severity.ERROR)
    warnings = len(findings) - errors
    files = len(getattr(result, "files", []) or [])
    summary = f"{_plural(errors, 'error')}, {_plural(warnings, 'warning')}"
    if files:
        summary += f" in {_plural(files, 'file')}"
    print(f"nexus lint: {summary}", file=err)

    if result.unusable:
        return EXIT_UNUSABLE
    if errors or (args.strict and warnings):
        return EXIT_FINDINGS
    return EXIT_CLEAN


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def emit(findings: list[Finding], fmt: str, out: TextIO) -> None:
    if fmt == "text":
        for finding in findings:
            out.write(f"{finding}\n")
    elif fmt == "json":
        json.dump([f.to_dict() for f in findings], out, indent=2)
        out.write("\n")
    elif fmt == "github":
        for finding in findings:
            out.write(github_annotation(finding) + "\n")
    elif fmt == "sarif":
        json.dump(sarif_report(findings), out, indent=2)
        out.write("\n")
    else:  # argparse restricts choices; keep a clear error for programmatic callers
        raise ValueError(f"unknown format {fmt!r}: must be one of {', '.join(FORMATS)}")


def _gh_escape(text: str, *, prop: bool = False) -> str:
    # GitHub workflow command escaping (data vs property values).
    text = text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    if prop:
        text = text.replace(":", "%3A").replace(",", "%2C")
    return text


def github_annotation(finding: Finding) -> str:
    level = "error" if finding.severity is Severity.ERROR else "warning"
    return (
        f"::{level} file={_gh_escape(finding.file, prop=True)},line={finding.line},"
        f"col={finding.column},title={_gh_escape(finding.code, prop=True)}::"
        f"{_gh_escape(finding.message)}"
    )


def sarif_report(findings: list[Finding]) -> dict[str, object]:
    codes = sorted({f.code for f in findings})
    rules = [
        {"id": code, "helpUri": DOCS_URL, "shortDescription": {"text": code}} for code in codes
    ]
    results = [
        {
            "ruleId": f.code,
            "ruleIndex": codes.index(f.code),
            "level": "error" if f.severity is Severity.ERROR else "warning",
            "message": {"text": f.message},
            "locations": [
                {
                    "physicalLocation": {
                        "artifactLocation": {"uri": f.file},
                        "region": {"startLine": f.line, "startColumn": f.column},
                    }
                }
            ],
        }
        for f in findings
    ]
    return {
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": "nexus-lint",
                        "version": __version__,
                        "informationUri": DOCS_URL,
                        "rules": rules,
                    }
                },
                "results": results,
            }
        ],
    }
