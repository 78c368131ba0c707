"""`nexus render`: output and exit codes."""

from __future__ import annotations

import argparse
import io
import shutil
from pathlib import Path

from lxml import etree

from engine.routing import commands

from .support import CONFIG, TEMPLATES


def _run(*argv: str) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="nexus")
    commands.register(parser.add_subparsers())
    args = parser.parse_args(["render", *argv])
    out, err = io.StringIO(), io.StringIO()
    code = args.func(args, out, err)
    return code, out.getvalue(), err.getvalue()


def test_render_prints_the_document():
    code, out, err = _run("redirect_queue", "--config", str(CONFIG))
    assert code == 0 and err == ""
    root = etree.fromstring(out.encode())
    assert root.get("name") == "redirect_queue"


def test_params_and_scxml_suffix():
    code, out, _ = _run("undelivered.scxml", "--config", str(CONFIG), "--param",
                        "onGiveUp=terminate", "-p", "reason=<gone>")
    assert code == 0
    assert "&lt;gone&gt;" in out and "<gone>" not in out


def test_unknown_template_exits_2():
    code, out, err = _run("nope", "--config", str(CONFIG))
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "no strategy 'nope'" in err


def test_bad_param_exits_2():
    code, _, err = _run("undelivered", "--config", str(CONFIG), "-p", "maxAttempts=lots")
    assert code == 2 and "maxAttempts" in err
    code, _, err = _run("undelivered", "--config", str(CONFIG), "-p", "nokeyvalue")
    assert code == 2


def test_bad_config_exits_2(tmp_path):
    (tmp_path / "broken.yaml").write_text("apiVersion: nexus/v1\nkind: Queue\n")
    code, out, err = _run("redirect_queue", "--config", str(tmp_path))
    assert code == 2 and out == "" and err.count("\n") == 1


def test_invalid_document_exits_1(tmp_path: Path):
    shutil.copy(TEMPLATES / "redirect_queue.scxml.j2", tmp_path)
    (tmp_path / "bad.scxml.j2").write_text(
        '<scxml xmlns="http://www.w3.org/2005/07/scxml" version="1.0" initial="x"/>')
    code, out, err = _run("bad", "--config", str(CONFIG), "--templates", str(tmp_path))
    assert code == 1 and out == "" and err.startswith("bad.scxml:1:1: scxml ")
    code, out, _ = _run("bad", "--config", str(CONFIG), "--templates", str(tmp_path),
                        "--no-validate")
    assert code == 0 and out.startswith("<scxml")


def test_template_error_exits_1(tmp_path: Path):
    (tmp_path / "bad.scxml.j2").write_text("{{ missing }}")
    code, out, err = _run("bad", "--config", str(CONFIG), "--templates", str(tmp_path))
    assert code == 1 and out == "" and "missing" in err
