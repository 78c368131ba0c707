"""The W3C SCXML 1.0 IRP (ECMAScript) tests kept in ../shared/scxml-irp."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from engine.routing.statechart import run_test_file
from tests.conftest import SHARED

# Optional IRP tests this interpreter passes; the suite must not regress below it.
OPTIONAL_PASSING = 17


def _rows(conformance: str) -> list[dict[str, str]]:
    with (SHARED / "scxml-irp" / "tests.csv").open(encoding="utf-8") as fh:
        return [r for r in csv.DictReader(fh) if r["conformance"] == conformance]


MANDATORY = _rows("mandatory")
OPTIONAL = _rows("optional")


def _path(shared_dir: Path, row: dict[str, str]) -> Path:
    return shared_dir / "scxml-irp" / "ecma" / row["ecma_files"]


def test_the_irp_set_is_there(shared_dir: Path) -> None:
    assert len(MANDATORY) >= 79
    for row in MANDATORY + OPTIONAL:
        for dep in row["dep_files"].split():
            # dep files are listed under their .txml names; the ECMAScript copies are .scxml
            name = dep.replace(".txml", ".scxml")
            assert (shared_dir / "scxml-irp" / "ecma" / name).exists(), name


@pytest.mark.parametrize("row", MANDATORY, ids=[f"test{r['id']}" for r in MANDATORY])
def test_mandatory(shared_dir: Path, row: dict[str, str]) -> None:
    outcome = run_test_file(_path(shared_dir, row))
    assert outcome.passed, f"test{row['id']}: {outcome.reason} ({row['assertion']})"


def test_optional_does_not_regress(shared_dir: Path) -> None:
    outcomes = {r["id"]: run_test_file(_path(shared_dir, r)) for r in OPTIONAL}
    passed = [i for i, o in outcomes.items() if o.passed]
    failed = {i: o.reason for i, o in outcomes.items() if not o.passed}
    assert len(passed) >= OPTIONAL_PASSING, failed
