"""Migrations: idempotent, the same schema on SQLite and PostgreSQL, applied once under
concurrent starts (tasks and OS processes)."""

from __future__ import annotations

import argparse
import asyncio
import sys
import textwrap

import sqlalchemy as sa

from engine.store import Store
from engine.store.commands import register
from engine.store.migrations import applied_versions, discover
from engine.store.tables import metadata, schema_migrations

LATEST = max(m.version for m in discover())


def _expected_schema() -> dict[str, dict[str, bool]]:
    return {
        table.name: {col.name: bool(col.nullable) and not col.primary_key for col in table.columns}
        for table in metadata.sorted_tables
    }


def _expected_indexes() -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for table in metadata.sorted_tables:
        names = {ix.name for ix in table.indexes}
        names |= {
            c.name for c in table.constraints if isinstance(c, sa.UniqueConstraint) and c.name
        }
        if names:
            out[table.name] = names
    return out


async def test_migrate_is_idempotent_and_matches_tables(db_url: str) -> None:
    store = Store(db_url)
    try:
        assert await store.connect() == list(range(1, LATEST + 1))
        first = await store.schema()
        assert await store.migrate() == []
        assert await store.connect() == []  # already connected: only migrates (nothing)
        assert await store.schema() == first
        assert first == _expected_schema()
        assert await store.indexes() == _expected_indexes()
        rows = await store.fetch_all(sa.select(schema_migrations))
        assert [r["version"] for r in rows] == list(range(1, LATEST + 1))
        assert all(r["applied_at"] is not None for r in rows)
    finally:
        await store.disconnect()
    # a second engine start on the same database applies nothing
    again = Store(db_url)
    try:
        assert await again.connect() == []
    finally:
        await again.disconnect()


async def test_sqlite_and_postgresql_get_the_same_schema(tmp_path, pg_database: str) -> None:
    schemas = []
    for url in (f"sqlite:///{tmp_path}/a.db", pg_database):
        store = Store(url)
        await store.connect()
        try:
            schemas.append((await store.schema(), await store.indexes()))
        finally:
            await store.disconnect()
    assert schemas[0] == schemas[1]
    # The tables of v0001 plus every table a later migration declares on the metadata.
    assert set(schemas[0][0]) >= {
        "schema_migrations",
        "tenants",
        "services",
        "apikeys",
        "nex_gapis",
        "users",
        "audit_log",
    }
    assert set(schemas[0][0]) == {t.name for t in metadata.sorted_tables}


async def test_concurrent_migrate_from_tasks_applies_once(db_url: str) -> None:
    stores = [Store(db_url) for _ in range(4)]
    for store in stores:
        await store.connect(migrate=False)
    try:
        results = await asyncio.gather(*(store.migrate() for store in stores))
        applied = [v for result in results for v in result]
        assert sorted(applied) == list(range(1, LATEST + 1))  # each version exactly once
        assert await applied_versions(stores[0]) == set(range(1, LATEST + 1))
    finally:
        for store in stores:
            await store.disconnect()


_MIGRATE_SCRIPT = textwrap.dedent(
    """
    import argparse, sys
    from engine.store.commands import register
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["migrate", "--db-url", sys.argv[1]])
    sys.exit(args.func(args))
    """
)


async def test_concurrent_migrate_from_processes_applies_once(db_url: str) -> None:
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _MIGRATE_SCRIPT,
            db_url,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for _ in range(3)
    ]
    outputs = [await proc.communicate() for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0, 0], outputs
    text = "".join(out.decode() for out, _ in outputs)
    assert text.count("applied migration 0001") == 1, text
    assert text.count("schema is up to date") == 2, text


def test_migrate_command_on_postgresql(pg_database: str, capsys) -> None:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["migrate", "--db-url", pg_database])
    assert args.func(args) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"applied migration {v:04d}" for v in range(1, LATEST + 1)
    ]
    assert args.func(args) == 0
    assert capsys.readouterr().out.strip() == f"schema is up to date (version {LATEST:04d})"


async def test_unknown_newer_version_is_tolerated(db_url: str, caplog) -> None:
    store = Store(db_url)
    await store.connect()
    try:
        await store.execute(sa.insert(schema_migrations).values(version=9999, name="future"))
        assert await store.migrate() == []
        assert "does not know" in caplog.text
    finally:
        await store.disconnect()
