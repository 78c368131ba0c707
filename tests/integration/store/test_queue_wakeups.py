"""The outbound queue's wake-up pieces on SQLite and PostgreSQL, memory:// and Redis: when
the next row of a kind is due (the senders sleep until then), the feeder turn (one process
scans for new replies often), and a nudge crossing from one process's cache to another's."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from engine.messaging import queue as q
from engine.messaging.outbound import FeederTurn
from engine.messaging.wakeup import Wakeup
from engine.store.cache import Cache
from engine.store.db import Store
from engine.store.messaging_tables import outbound_messages

T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
DEADLINE = 10.0


async def add(store: Store, kind: str, status: str, due: datetime,
              lease_until: datetime | None = None) -> str:
    row_id = q.new_id()
    await store.execute(sa.insert(outbound_messages).values(
        id=row_id, tenant="t", kind=kind, media="sms", channel_id="c", provider="p",
        to_address="+1", status=status, next_attempt_at=due, claimed_until=lease_until,
        created=T0, updated=T0))
    return row_id


async def test_next_due_per_kind(store: Store) -> None:
    assert await q.next_due(store, q.REPLY) is None
    await add(store, q.REPLY, q.QUEUED, T0 + timedelta(minutes=10))
    await add(store, q.REPLY, q.RETRYING, T0 + timedelta(minutes=3))
    await add(store, q.REPLY, q.SENT, T0 - timedelta(hours=1))  # done: never due
    await add(store, q.CAMPAIGN, q.QUEUED, T0 + timedelta(minutes=1))
    assert await q.next_due(store, q.REPLY) == T0 + timedelta(minutes=3)
    assert await q.next_due(store, q.CAMPAIGN) == T0 + timedelta(minutes=1)
    # a row being sent is due again when its lease ends, whatever its next_attempt_at
    await add(store, q.REPLY, q.SENDING, T0 - timedelta(hours=2),
              lease_until=T0 + timedelta(minutes=2))
    assert await q.next_due(store, q.REPLY) == T0 + timedelta(minutes=2)


async def test_one_process_at_a_time_has_the_feeder_turn(cache: Cache) -> None:
    first, second = FeederTurn(cache, "one"), FeederTurn(cache, "two")
    assert await first.mine()
    assert not await second.mine()
    assert await first.mine()  # its turn goes on
    assert not await second.hand_over()  # not its turn to give
    assert await first.hand_over()
    assert await second.mine()
    assert not await first.mine()
    assert await FeederTurn(None, "alone").mine()  # no cache: every process scans


async def test_a_dead_holders_turn_passes_on_when_it_ends(cache: Cache) -> None:
    first, second = FeederTurn(cache, "one"), FeederTurn(cache, "two")
    assert await first.mine()
    await cache.delete("outbound:feeder")  # its TTL ran out (the holder died)
    assert await second.mine()


async def test_a_nudge_reaches_the_other_process(cache: Cache, cache_url: str) -> None:
    other_cache = Cache(cache_url, prefix=cache.prefix, health_check_interval=None)
    await other_cache.connect()
    here, there = Wakeup(cache, "campaigns"), Wakeup(other_cache, "campaigns")
    there.start()
    try:
        await asyncio.wait_for(there.subscribed.wait(), DEADLINE)
        there.clear()  # the nudge it gives itself once subscribed
        here.notify()  # no loop waits here: the other process is nudged
        assert await there.wait(DEADLINE)
    finally:
        await there.stop()
        await here.stop()
        await other_cache.close()
