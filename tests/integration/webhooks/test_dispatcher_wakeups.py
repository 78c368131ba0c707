"""When the webhook dispatcher's loop runs (SQLite and PostgreSQL, memory:// and Redis): the
next due time it reads from the outbox, a retry taken when it falls due (no poll), and a busy
dispatcher's nudge reaching an idle one in another process. The dispatchers here have a
safety poll of an hour, so only the wake-ups under test can make them deliver."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import sqlalchemy as sa

from engine.store.cache import Cache
from engine.store.conversation_tables import interaction_events
from engine.store.db import Store
from engine.webhooks.dispatcher import WebhookDispatcher
from engine.webhooks.outbox import LONG_DUE, enqueue, get_delivery, next_due, utcnow
from tests.integration.channels.fakeprovider import FakeProvider, Reply
from tests.integration.webhooks.test_outbox import T0, model_for, started
from tests.unit.channels.support import CCID, ENV

HOUR = 3600.0
DEADLINE = 10.0  # how long a test waits for something before it fails


def idle_dispatcher(store: Store, model, cache: Cache, worker_id: str) -> WebhookDispatcher:
    return WebhookDispatcher(store, model, env=ENV, rng=lambda: 0.0, pull_events=False,
                             cache=cache, idle_interval=HOUR, claim_seconds=HOUR,
                             worker_id=worker_id)


async def eventually(predicate, what: str) -> None:
    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.01)

    try:
        await asyncio.wait_for(poll(), DEADLINE)
    except TimeoutError:
        raise AssertionError(f"never: {what}") from None


async def test_next_due_reads_events_retries_and_expired_claims(store: Store) -> None:
    assert await next_due(store) is None
    model = model_for(FakeProvider(), names=("a",))
    [first] = await enqueue(store, model.tenant("t1001"), started(), now=T0 + timedelta(hours=1))
    [second] = await enqueue(store, model.tenant("t1001"), started("ixn-2"), now=T0)
    assert await next_due(store) == T0
    # the earliest one is being delivered: due again when its claim ends
    from engine.store.webhook_tables import webhook_deliveries as t

    await store.execute(sa.update(t).where(t.c.id == second).values(
        status="delivering", claimed_until=T0 + timedelta(minutes=5)))
    assert await next_due(store) == T0 + timedelta(minutes=5)
    await store.execute(sa.update(t).where(t.c.id == first).values(status="delivered"))
    await store.execute(sa.update(t).where(t.c.id == second).values(status="dead"))
    assert await next_due(store) is None
    # an interaction event waits to be pulled: due now (unless events are not pulled)
    await store.execute(sa.insert(interaction_events).values(
        tenant=CCID, event="STARTED", interaction_id="ixn-9", conversation_id="conv-9",
        media="sms", subtype="SMS", created=T0))
    assert await next_due(store) == LONG_DUE
    assert await next_due(store, events=False) is None


async def test_a_retry_is_sent_when_it_falls_due(store: Store, cache: Cache) -> None:
    async with FakeProvider() as receiver:
        model = model_for(receiver, names=("a",))  # retries after 1 s
        receiver.script("/hook/a", Reply(status=503))
        [delivery_id] = await enqueue(store, model.tenant("t1001"), started())
        dispatcher = idle_dispatcher(store, model, cache, "one")
        dispatcher.start()
        try:
            await asyncio.wait_for(receiver.wait_for(2, "/hook/a"), DEADLINE)
        finally:
            await dispatcher.stop()
    assert (await get_delivery(store, CCID, delivery_id)).status == "delivered"


async def test_a_busy_dispatcher_nudges_an_idle_one(
    store: Store, cache: Cache, cache_url: str
) -> None:
    other_cache = Cache(cache_url, prefix=cache.prefix, health_check_interval=None)
    await other_cache.connect()
    hold = asyncio.Event()
    async with FakeProvider() as receiver:
        # the busy dispatcher's request outlives the test: only the idle one can deliver
        model = model_for(receiver, names=("a",), timeout_seconds=60)
        receiver.script("/hook/a", Reply(hold=hold))
        busy = idle_dispatcher(store, model, cache, "busy")
        idle = idle_dispatcher(store, model, other_cache, "idle")
        try:
            await enqueue(store, model.tenant("t1001"), started("ixn-held"))
            busy.start()
            await asyncio.wait_for(receiver.wait_for(1, "/hook/a"), DEADLINE)  # busy: held
            idle.start()
            await asyncio.wait_for(idle.wakeup.subscribed.wait(), DEADLINE)
            await eventually(lambda: idle.wakeup.asleep, "the idle dispatcher sleeps")
            [queued] = await enqueue(store, model.tenant("t1001"), started("ixn-new"),
                                     now=utcnow())
            busy.wake()  # its loop is in a round: the idle process is nudged
            await asyncio.wait_for(receiver.wait_for(2, "/hook/a"), DEADLINE)
            assert receiver.on("/hook/a")[1].headers["x-nexus-delivery"] == queued
        finally:
            hold.set()
            await idle.stop()
            await busy.stop()
            await other_cache.close()


async def test_pulled_events_are_written_in_chunks(store: Store, monkeypatch) -> None:
    from engine.webhooks import outbox
    from engine.webhooks.outbox import pull_interaction_events
    from tests.integration.webhooks.test_outbox import rows

    monkeypatch.setattr(outbox, "INSERT_CHUNK", 3)
    model = model_for(FakeProvider(), names=("a", "b"))
    for n in range(5):
        await store.execute(sa.insert(interaction_events).values(
            tenant=CCID, event="STARTED", interaction_id=f"ixn-{n}", conversation_id="conv",
            media="sms", subtype="SMS", created=T0))
    assert await pull_interaction_events(store, model, now=T0) == 5
    found = await rows(store)
    assert sorted((r["interaction_id"], r["target"]) for r in found) == sorted(
        (f"ixn-{n}", f"WebhookTransportTarget-{t}") for n in range(5) for t in ("a", "b"))
    assert len({r["source_event_id"] for r in found}) == 5
