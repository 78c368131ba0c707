"""`nexus migrate`, registered on a fresh parser."""

from __future__ import annotations

import argparse

import pytest

from engine.store.commands import register
from engine.store.migrations import discover


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="nexus")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_migrate_sqlite_then_up_to_date(tmp_path, capsys) -> None:
    url = f"sqlite:///{tmp_path}/new/nexus.db"
    versions = [m.version for m in discover()]
    assert _run(["migrate", "--db-url", url]) == 0
    assert capsys.readouterr().out == "".join(f"applied migration {v:04d}\n" for v in versions)
    assert _run(["migrate", "--db-url", url]) == 0
    assert capsys.readouterr().out == f"schema is up to date (version {versions[-1]:04d})\n"


def test_migrate_default_url_from_env(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("NEXUS_DB_URL", f"sqlite:///{tmp_path}/env.db")
    assert _run(["migrate"]) == 0
    assert (tmp_path / "env.db").exists()
    assert "applied migration 0001" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("mysql://h/db", "unsupported database URL scheme 'mysql'"),
        ("postgresql://h:99999/db", "malformed database URL"),
        ("postgresql://nobody@127.0.0.1:1/nexus", "cannot connect to postgresql://"),
    ],
)
def test_migrate_bad_url_exits_2_with_one_line(url: str, fragment: str, capsys) -> None:
    assert _run(["migrate", "--db-url", url]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("nexus migrate: error: ")
    assert fragment in lines[0]
    assert "Traceback" not in captured.err


def test_migrate_unusable_sqlite_path(tmp_path, capsys) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert _run(["migrate", "--db-url", f"sqlite:///{blocker}/sub/nexus.db"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nexus migrate: error: cannot create the folder of")
    assert len(err.splitlines()) == 1
