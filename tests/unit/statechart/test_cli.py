"""`nexus scxml test` and `nexus scxml validate`."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from engine import cli as nexus_cli
from engine.routing.statechart import cli

GOOD = """<scxml xmlns="http://www.w3.org/2005/07/scxml" version="1.0" datamodel="ecmascript">
  <state id="s"><transition target="pass"/></state>
  <final id="pass"/>
</scxml>
"""
FAILING = GOOD.replace('target="pass"', 'target="fail"').replace(
    '<final id="pass"/>', '<final id="fail"/>')
STUCK = """<scxml xmlns="http://www.w3.org/2005/07/scxml" version="1.0" datamodel="ecmascript">
  <state id="s"><onentry><send event="tick" delay="1s"/></onentry>
    <transition event="tick" target="s"/></state>
  <final id="pass"/>
</scxml>
"""
BAD = """<scxml xmlns="http://www.w3.org/2005/07/scxml"
       xmlns:ixn="http://www.genesyslab.com/modules/interaction" version="1.0" initial="nope">
  <state id="a">
    <onentry><ixn:redirect interactionid="x"/></onentry>
    <transition event="e" target="zz"/>
  </state>
  <state id="a"/>
</scxml>
"""


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="nexus")
    cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_test_command_prints_one_line_per_file_and_summary(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    good = write(tmp_path, "good.scxml", GOOD)
    bad = write(tmp_path, "bad.scxml", FAILING)
    stuck = write(tmp_path, "stuck.scxml", STUCK)
    assert run(["scxml", "test", good, bad, stuck]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out == [f"PASS {good}", f"FAIL {bad}", f"FAIL {stuck}", "1 passed, 2 failed"]


def test_test_command_exit_zero_when_all_pass(tmp_path: Path, capsys, shared_dir: Path) -> None:  # noqa: ANN001
    irp = shared_dir / "scxml-irp" / "ecma"
    files = [str(irp / "test144.scxml"), str(irp / "test216.scxml")]
    assert run(["scxml", "test", *files]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "2 passed, 0 failed"


def test_validate_reports_problems_with_positions(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    bad = write(tmp_path, "bad.scxml", BAD)
    good = write(tmp_path, "good.scxml", GOOD)
    assert run(["scxml", "validate", good, bad]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out == [
        f"{bad}:1:1: error: unknown-target initial state 'nope' does not exist",
        f"{bad}:4:14: error: missing-attribute <ixn:redirect> requires queue= or queueexpr=",
        f"{bad}:5:5: error: unknown-target transition target 'zz' does not exist",
        f"{bad}:7:3: error: duplicate-id duplicate state id 'a'",
    ]


def test_validate_clean_and_malformed(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    good = write(tmp_path, "good.scxml", GOOD)
    assert run(["scxml", "validate", good]) == 0
    assert capsys.readouterr().out == ""
    broken = write(tmp_path, "broken.scxml", "<scxml><state id='a'></scxml>")
    assert run(["scxml", "validate", broken]) == 1
    [line] = capsys.readouterr().out.splitlines()
    assert line.startswith(f"{broken}:1:") and ": error: xml-syntax " in line


def test_validate_unreadable_file_exits_2(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    assert run(["scxml", "validate", str(tmp_path / "missing.scxml")]) == 2
    assert "error: unreadable" in capsys.readouterr().err


def test_through_the_nexus_entry_point(tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch,  # noqa: ANN001
                                       ) -> None:
    modules = tuple(nexus_cli.COMMAND_MODULES)
    if "engine.routing.statechart.cli" not in modules:
        monkeypatch.setattr(nexus_cli, "COMMAND_MODULES",
                            (*modules, "engine.routing.statechart.cli"))
    good = write(tmp_path, "good.scxml", GOOD)
    assert nexus_cli.main(["scxml", "test", good]) == 0
    assert capsys.readouterr().out.splitlines() == [f"PASS {good}", "1 passed, 0 failed"]


def test_whole_irp_folder_glob_passes_and_helper_documents_are_not_counted(
    capsys, shared_dir: Path  # noqa: ANN001
) -> None:
    files = sorted(str(p) for p in (shared_dir / "scxml-irp" / "ecma").glob("*.scxml"))
    helpers = [f for f in files if "sub" in Path(f).name]
    assert helpers, "the IRP folder holds child documents for invoke tests"
    assert run(["scxml", "test", *files]) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines()[-1] == f"{len(files) - len(helpers)} passed, 0 failed"
    for helper in helpers:
        assert f"{helper} has no 'pass' or 'fail' state" in captured.err


def test_malformed_file_is_a_failure_not_a_helper(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    broken = write(tmp_path, "broken.scxml", "<scxml")
    assert run(["scxml", "test", broken]) == 1
    assert capsys.readouterr().out.splitlines() == [f"FAIL {broken}", "0 passed, 1 failed"]
