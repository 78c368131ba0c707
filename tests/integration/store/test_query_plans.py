"""Lookups read a handful of rows, whatever plan their connection cached.

PL/pgSQL caches a generic plan per connection after a few calls. With autovacuum off (or
before its first ANALYZE) the planner has no statistics, and a plan cached while the table
was small stays for the life of the connection. Migration v0007 dropped the
(tenant, state) index that such a plan used for the lookup by address: it read every open
conversation of the tenant per message. This test builds exactly that situation (plans
cached on a near-empty table, then many open conversations) and counts, inside the call's
own transaction, the conversation rows PostgreSQL fetched. The same for the general path's
lookups by address and conditional segment updates (engine/store/planning.py).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import asyncpg

from engine.routing.append_batcher import _APPEND_MESSAGES
from engine.routing.conversation_models import SegmentState
from engine.routing.conversation_repo import ConversationRepo
from engine.store.db import Store

TENANT = "578ec98e-f07c-46ad-9675-f36c22f3ba9f"
CHANNEL = "16504661149"
OPEN = 400
BATCH = 20
TABLES = ("conversations", "segments")

_FETCHED = (
    "SELECT coalesce(sum(idx_tup_fetch), 0) + coalesce(sum(seq_tup_read), 0) "
    "FROM pg_stat_xact_user_tables WHERE relname = $1"
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
            before = await conn.fetchval(_FETCHED, "conversations")
            assert await _append(conn, addresses, "large") == BATCH
            fetched = await conn.fetchval(_FETCHED, "conversations") - before
    finally:
        await conn.close()
    # per message: the lookup by address, the lock, the update and the foreign key check
    # (and a few heap versions); a scan of the tenant's open conversations is ~OPEN each
    assert fetched <= 8 * BATCH, f"{fetched} conversation rows read for {BATCH} messages"


async def test_general_path_lookups_read_one_row(pg_database: str) -> None:
    # one pooled connection: every call below runs on it, so its prepared statements keep
    # the generic plans made while the tables held two rows
    store = Store(pg_database, min_size=1, max_size=1)
    await store.connect()
    repo = ConversationRepo(store, lambda: 1_900_000_000.0)
    try:
        async with store.raw_connection() as conn:
            await _open_conversations(conn, 0, 2)
            segment_ids = await conn.fetch("SELECT id FROM segments")

        async def calls(address: str, segment_id: str) -> None:
            await repo.inbound_lookup(TENANT, CHANNEL, address, f"pm-{address}")
            await repo.open_conversation_by_address(TENANT, CHANNEL, address)
            # queued -> queued: a conditional update that leaves the row as it was
            await repo.transition(TENANT, segment_id, expect_states=[SegmentState.QUEUED],
                                  values={"attempt": 0})
            segment = await repo.get_segment(TENANT, segment_id)
            assert segment is not None
            assert set(await repo.segments_by_ids(TENANT, [segment_id])) == {segment_id}
            assert await repo.get_conversation(TENANT, segment.conversation_id) is not None

        for call in range(8):
            await calls(f"+1650{call % 2:07d}", segment_ids[call % 2]["id"])
        async with store.raw_connection() as conn:
            await _open_conversations(conn, 2, OPEN)
            last = await conn.fetchval(
                "SELECT s.id FROM segments s JOIN conversations c ON c.id = s.conversation_id "
                "WHERE c.customer_address = $1", f"+1650{OPEN:07d}")
        fetched = _FETCHED.replace("$1", ":table")
        async with store.transaction():  # the repo's calls and the counters on one connection
            before = {t: await store.fetch_val(fetched, {"table": t}) for t in TABLES}
            await calls(f"+1650{OPEN:07d}", last)
            after = {t: await store.fetch_val(fetched, {"table": t}) for t in TABLES}
    finally:
        await store.disconnect()
    read = {t: after[t] - before[t] for t in before}
    # a scan of the tenant's open rows would read about OPEN of each
    assert read["conversations"] <= 4 and read["segments"] <= 4, read
