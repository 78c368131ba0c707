"""Store.iterate: a large result read from a cursor in chunks, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from engine.store.db import Store
from engine.store.errors import StoreError
from engine.store.tables import tenants


async def _tenants(store: Store, count: int, prefix: str = "t") -> list[str]:
    now = datetime.now(UTC)
    names = [f"{prefix}{i:03d}" for i in range(count)]
    await store.execute(sa.insert(tenants).values([
        {"ccid": str(uuid.uuid4()), "name": name, "created": now, "updated": now}
        for name in names
    ]))
    return names


def _by_name() -> sa.Select:
    return sa.select(tenants.c.name, tenants.c.created).order_by(tenants.c.name)


async def test_rows_come_in_chunks_in_query_order(store: Store) -> None:
    names = await _tenants(store, 7)
    chunks = [rows async for rows in store.iterate(_by_name(), chunk=3)]
    assert [len(rows) for rows in chunks] == [3, 3, 1]
    assert [row["name"] for rows in chunks for row in rows] == names
    assert all(isinstance(row["created"], datetime) for rows in chunks for row in rows)
    assert [rows async for rows in store.iterate(_by_name().where(tenants.c.name == "x"))] == []


async def test_other_tasks_run_while_the_next_chunk_is_read(store: Store) -> None:
    """Each chunk is read when the caller asks for it: a task of the same loop runs while
    the next one is read. (Read all at once, as fetch_all does, the later chunks would come
    without a single await between them.)"""
    await _tenants(store, 150)
    seen: list[int] = []
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    try:
        async for _ in store.iterate(_by_name(), chunk=70):
            seen.append(ticks)  # no await of the caller's own between chunks
    finally:
        task.cancel()
    assert len(seen) == 3
    assert seen[0] < seen[1] < seen[2]


async def test_leaving_early_ends_the_cursor_and_the_store_goes_on(store: Store) -> None:
    await _tenants(store, 5)
    async with contextlib.aclosing(store.iterate(_by_name(), chunk=2)) as chunks:
        async for rows in chunks:
            assert len(rows) == 2
            break
    assert len(await store.fetch_all(_by_name())) == 5
    await _tenants(store, 1, "u")  # writes go on (no transaction was left open)


async def test_inside_a_transaction_it_sees_the_transactions_rows(store: Store) -> None:
    async with store.transaction():
        await _tenants(store, 3)
        rows = [row async for chunk in store.iterate(_by_name(), chunk=2) for row in chunk]
        assert len(rows) == 3


async def test_errors_are_store_errors(store: Store) -> None:
    with pytest.raises(StoreError):
        async for _ in store.iterate("SELECT nope FROM no_such_table"):
            pass
    with pytest.raises(ValueError):
        async for _ in store.iterate(_by_name(), chunk=0):
            pass
