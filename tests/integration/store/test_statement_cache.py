"""The compiled-statement cache (engine.store.statement_cache) on SQLite and PostgreSQL: a
statement shape is compiled once, later executions with other values reuse it and get their
own values (also IN lists of varying length, NULLs, RETURNING, JSON/datetime result
processing), and uncacheable statements still run."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from engine.store.db import Store
from engine.store.statement_cache import StatementCache
from engine.store.tables import tenants


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path) -> AsyncIterator[Store]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/sc/nexus.db"
    else:
        url = request.getfixturevalue("pg_database")
    s = Store(url)
    await s.connect()
    try:
        yield s
    finally:
        await s.disconnect()


@pytest.fixture
def pg_database(pg_url: str):
    from tests.integration.conversations.conftest import _admin, _in_thread

    name = f"nexus_test_{uuid.uuid4().hex[:16]}"
    _in_thread(_admin, pg_url, f'CREATE DATABASE "{name}"')
    try:
        from urllib.parse import urlsplit

        yield urlsplit(pg_url)._replace(path=f"/{name}").geturl()
    finally:
        _in_thread(_admin, pg_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def test_same_shape_compiles_once_and_binds_each_call_values(store: Store) -> None:
    cache = store.statements
    assert isinstance(cache, StatementCache)
    for i in range(5):
        await store.tenants.create(f"cc{i}", f"name{i}")
    cache.hits = cache.misses = 0
    for i in range(5):
        row = await store.fetch_one(sa.select(tenants).where(tenants.c.ccid == f"cc{i}"))
        assert row is not None and row["name"] == f"name{i}"
    assert cache.misses <= 1 and cache.hits >= 4  # (create() may have compiled it already)
    assert len(cache) >= 1
    assert await store.fetch_one(sa.select(tenants).where(tenants.c.ccid == "nope")) is None


async def test_in_lists_of_any_length_and_empty(store: Store) -> None:
    for i in range(4):
        await store.tenants.create(f"in{i}", f"n{i}")
    cache = store.statements
    cache.hits = cache.misses = 0
    for ids in (["in0"], ["in1", "in2"], ["in0", "in1", "in3"], [], ["in2"]):
        rows = await store.fetch_all(
            sa.select(tenants.c.ccid).where(tenants.c.ccid.in_(ids)).order_by(tenants.c.ccid)
        )
        assert [r["ccid"] for r in rows] == sorted(ids)
    assert cache.misses == 1 and cache.hits == 4


async def test_update_returning_and_nulls_and_datetimes(store: Store) -> None:
    await store.tenants.create("u1", "before")
    for name in ("a", "b"):
        row = await store.fetch_one(
            sa.update(tenants).where(tenants.c.ccid == "u1").values(name=name)
            .returning(tenants.c.ccid, tenants.c.name)
        )
        assert row == {"ccid": "u1", "name": name}
    found = await store.tenants.get("u1")
    assert found is not None and found.name == "b"
    assert isinstance(found.created, datetime)
    assert found.created.tzinfo is not None or store.dialect == "sqlite"
    assert found.created <= datetime.now(UTC).replace(tzinfo=found.created.tzinfo)


async def test_text_and_uncacheable_statements_still_run(store: Store) -> None:
    assert await store.fetch_val("SELECT 1") == 1
    assert await store.fetch_val("SELECT :x", {"x": "v"}) == "v"
    assert await store.fetch_val("SELECT :x", {"x": "w"}) == "w"
    # a literal_execute parameter makes the SQL depend on the value: compiled each time
    before = store.statements.uncached
    q = sa.select(sa.literal(3, literal_execute=True).label("n"))
    assert await store.fetch_val(q) == 3
    assert store.statements.uncached > before


async def test_cache_is_bounded() -> None:
    cache = StatementCache(max_entries=3)
    store = Store("sqlite://")
    store.statements.max_entries = 3
    await store.connect(migrate=False)
    try:
        for i in range(10):
            assert await store.fetch_val(sa.select(sa.literal_column(str(i)))) == i
        assert len(store.statements) <= 3
    finally:
        await store.disconnect()
    assert len(cache) == 0
