"""``Store.raw_connection``: a pooled asyncpg connection for prebuilt SQL (the group commit's
path), taken straight from asyncpg's pool: errors translated, the connection returned to the
pool whatever happens, counted in the ``nexus_db_*`` metrics like a transaction."""

from __future__ import annotations

import uuid

import pytest
from prometheus_client import REGISTRY

from engine.store.db import Store
from engine.store.errors import Conflict, StoreError, StoreUnavailable


def _value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_pooled_connection_errors_translated_and_counted(pg_database: str) -> None:
    db = f"raw-{uuid.uuid4().hex[:8]}"
    store = Store(pg_database, name=db)
    await store.connect()
    connects = _value("nexus_db_connect_total", db=db)
    disconnects = _value("nexus_db_disconnect_total", db=db)
    try:
        async with store.raw_connection() as conn:
            await conn.execute("CREATE TABLE raw_t (id int PRIMARY KEY)")
            assert await conn.fetchval("INSERT INTO raw_t VALUES ($1) RETURNING id", 1) == 1
        with pytest.raises(Conflict):
            async with store.raw_connection() as conn:
                await conn.execute("INSERT INTO raw_t VALUES ($1)", 1)
        # a transaction on it, rolled back by an error, leaves nothing behind
        with pytest.raises(RuntimeError):
            async with store.raw_connection() as conn, conn.transaction():
                await conn.execute("INSERT INTO raw_t VALUES ($1)", 2)
                raise RuntimeError("the caller fails")
        # every connection went back: the pool's whole size can still be taken at once
        size = store._db._backend._pool.get_max_size()
        held = [store.raw_connection() for _ in range(size)]
        conns = [await c.__aenter__() for c in held]
        assert len({id(c) for c in conns}) == size
        for c in held:
            await c.__aexit__(None, None, None)
        async with store.raw_connection() as conn:
            assert await conn.fetchval("SELECT count(*) FROM raw_t") == 1
        assert _value("nexus_db_connect_total", db=db) - connects == size + 4
        assert _value("nexus_db_disconnect_total", db=db) - disconnects == size + 4
        assert _value("nexus_db_errors_total", db=db, code="23505") == 1
    finally:
        await store.disconnect()
    with pytest.raises(StoreUnavailable):
        async with store.raw_connection():
            pass


async def test_sqlite_has_no_raw_connection(tmp_path) -> None:
    store = Store(f"sqlite:///{tmp_path}/raw.db")
    await store.connect()
    try:
        with pytest.raises(StoreError, match="PostgreSQL"):
            async with store.raw_connection():
                pass
    finally:
        await store.disconnect()
