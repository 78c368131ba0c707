"""The group commit's function reads a handful of conversation rows per message, whatever
plan its connection cached.

PL/pgSQL caches a generic plan per connection after a few calls. With autovacuum off (or
before its first ANALYZE) the planner has no statistics, and a plan cached while the table
was small stays for the life of the connection. Migration v0007 dropped the
(tenant, state) index that such a plan used for the lookup by address: it read every open
conversation of the tenant per message. This test builds exactly that situation (plans
cached on a near-empty table, then many open conversations) and counts, inside the call's
own transaction, the conversation rows PostgreSQL fetched.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import asyncpg

from engine.routing.append_batcher import _APPEND_MESSAGES
from engine.store.db import Store

TENANT = "578ec98e-f07c-46ad-9675-f36c22f3ba9f"
CHANNEL = "16504661149"
OPEN = 400
BATCH = 20

_FETCHED = (
    "SELECT coalesce(sum(idx_tup_fetch), 0) + coalesce(sum(seq_tup_read), 0) "
    "FROM pg_stat_xact_user_tables WHERE relname = 'conversations'"
)


async def _open_conversations(conn: asyncpg.Connection, first: int, count: int) -> None:
    rows = [(str(uuid.uuid4()), str(uuid.uuid4()), f"+1650{i:07d}")
            for i in range(first, first + count)]
    await conn.executemany(
        "INSERT INTO conversations (id, tenant, media, channel_id, endpoint, customer_id, "
        "customer_nickname, customer_address) VALUES ($1, $4, 'chat', $5, 'SMS', $2, 'C', $3)",
        [(c, p, a, TENANT, CHANNEL) for c, p, a in rows],
    )
    await conn.executemany(
        "INSERT INTO segments (id, conversation_id, tenant, media, state, queue) "
        "VALUES ($1, $2, $3, 'chat', 'queued', 'q')",
        [(str(uuid.uuid4()), c, TENANT) for c, _, _ in rows],
    )


async def _append(conn: asyncpg.Connection, addresses: list[str], tag: str) -> int:
    n = len(addresses)
    rows = await conn.fetch(
        _APPEND_MESSAGES, [TENANT] * n, [None] * n, [CHANNEL] * n, addresses,
        [str(uuid.uuid4()) for _ in range(n)], ["Text"] * n, ["hi"] * n,
        [f"{tag}-{k}" for k in range(n)], "Customer", datetime.now(UTC),
    )
    return len(rows)


async def test_lookup_by_address_reads_one_conversation_per_message(pg_database: str) -> None:
    store = Store(pg_database)
    await store.connect()
    await store.disconnect()
    conn = await asyncpg.connect(pg_database)
    try:
        # one plan per connection (v0007): small batches would otherwise be planned each call
        config = await conn.fetchval(
            "SELECT proconfig FROM pg_proc WHERE proname = 'nexus_append_messages'")
        assert set(config) == {"enable_seqscan=off", "plan_cache_mode=force_generic_plan"}
        await _open_conversations(conn, 0, 2)
        # more calls than the plan cache's five custom plans: the generic plan is cached now
        for call in range(8):
            assert await _append(conn, ["+16500000000", "+16500000001"], f"small-{call}") == 2
        await _open_conversations(conn, 2, OPEN)
        addresses = [f"+1650{i:07d}" for i in range(2, 2 + OPEN, OPEN // BATCH)]
        async with conn.transaction():
            before = await conn.fetchval(_FETCHED)
            assert await _append(conn, addresses, "large") == BATCH
            fetched = await conn.fetchval(_FETCHED) - before
    finally:
        await conn.close()
    # per message: the lookup by address, the lock, the update and the foreign key check
    # (and a few heap versions); a scan of the tenant's open conversations is ~OPEN each
    assert fetched <= 8 * BATCH, f"{fetched} conversation rows read for {BATCH} messages"
