"""`nexus lint`: exit codes, every output format, sorting, streams, defaults."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from engine.cli import main

ROOT = Path(__file__).resolve().parents[3]
SAMPLE = ROOT / "config"


@pytest.fixture()
def broken(tmp_path: Path) -> Path:
    """The sample config plus one file with two loader-level errors, out of order."""
    target = tmp_path / "config"
    shutil.copytree(SAMPLE, target)
    (target / "zz-broken.yaml").write_text(
        "apiVersion: nexus/v1\nkind: Queue\nname: extra\nspec:\n  enabled: true\n"
        "  enabled: false\n  view: !custom x\n"
    )
    return target


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["lint", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_sample_config_is_clean(capsys):
    code, out, err = run(capsys, str(SAMPLE))
    assert code == 0, out
    assert "error" not in out
    assert err.startswith("nexus lint: 0 errors")


def test_findings_exit_1_sorted_text(capsys, broken: Path):
    code, out, err = run(capsys, str(broken))
    assert code == 1
    lines = out.splitlines()
    assert lines == sorted(lines, key=lambda line: (line.split(":")[0], int(line.split(":")[1])))
    broken_file = str(broken / "zz-broken.yaml")
    assert f"{broken_file}:6:3: error: NX004 " in out
    assert f"{broken_file}:7:9: error: NX010 " in out
    assert "2 errors" in err or "errors" in err


def test_json_format(capsys, broken: Path):
    code, out, _ = run(capsys, "--format", "json", str(broken))
    assert code == 1
    findings = json.loads(out)
    assert {"file", "line", "column", "severity", "code", "message"} <= set(findings[0])
    dup = [f for f in findings if f["code"] == "NX004"]
    assert dup and dup[0]["line"] == 6 and dup[0]["column"] == 3
    assert dup[0]["severity"] == "error"


def test_github_format(capsys, broken: Path):
    code, out, _ = run(capsys, "-f", "github", str(broken))
    assert code == 1
    line = next(x for x in out.splitlines() if "NX004" in x)
    assert line.startswith("::error file=") and ",line=6,col=3,title=NX004::" in line


def test_sarif_format(capsys, broken: Path):
    code, out, _ = run(capsys, "--format", "sarif", str(broken))
    assert code == 1
    report = json.loads(out)
    assert report["version"] == "2.1.0"
    run_ = report["runs"][0]
    assert run_["tool"]["driver"]["name"] == "nexus-lint"
    rule_ids = [r["id"] for r in run_["tool"]["driver"]["rules"]]
    result = next(r for r in run_["results"] if r["ruleId"] == "NX004")
    assert rule_ids[result["ruleIndex"]] == "NX004"
    region = result["locations"][0]["physicalLocation"]["region"]
    assert region == {"startLine": 6, "startColumn": 3}


def test_unusable_input_exits_2(capsys, tmp_path: Path):
    (tmp_path / "bad.yaml").write_text("a: b: c\n")
    code, out, _ = run(capsys, str(tmp_path))
    assert code == 2
    assert "bad.yaml:1:5: error: NX003 YAML syntax error" in out
    code, out, _ = run(capsys, str(tmp_path / "missing.yaml"))
    assert code == 2 and "NX001" in out


def test_binary_file_exits_2_without_traceback(capsys, tmp_path: Path):
    (tmp_path / "blob.yaml").write_bytes(bytes(range(256)) * 4)
    code, out, err = run(capsys, str(tmp_path))
    assert code == 2 and "NX002" in out and "Traceback" not in err


def test_strict_turns_warnings_into_findings(capsys, tmp_path: Path):
    shutil.copytree(SAMPLE, tmp_path / "config")
    (tmp_path / "config" / "empty.yaml").write_text("# nothing here yet\n")
    code, out, _ = run(capsys, str(tmp_path / "config"))
    assert code == 0 and "warning: NX008" in out
    code, _, _ = run(capsys, "--strict", str(tmp_path / "config"))
    assert code == 1


def test_default_path_from_env(capsys, monkeypatch):
    monkeypatch.setenv("NEXUS_CONFIG", str(SAMPLE))
    code, _, err = run(capsys)
    assert code == 0 and "0 errors" in err


def test_console_script_runs_as_a_process():
    proc = subprocess.run(
        [sys.executable, "-m", "engine.cli", "lint", "--format", "json", str(SAMPLE)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(proc.stdout) == [] or all(
        f["severity"] == "warning" for f in json.loads(proc.stdout)
    )


def test_no_command_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    assert "lint" in capsys.readouterr().err
