"""Interaction webhooks end to end: outbox rows on SQLite and PostgreSQL, delivered to real
loopback HTTP receivers by one or several dispatchers."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from engine.config.model import Delivery
from engine.store.conversation_tables import interaction_events
from engine.store.db import Store
from engine.store.errors import Conflict, NotFound
from engine.store.webhook_tables import webhook_deliveries
from engine.webhooks.dispatcher import WebhookDispatcher
from engine.webhooks.outbox import (
    InteractionEvent,
    enqueue,
    get_delivery,
    list_deliveries,
    pull_interaction_events,
    replay,
)
from tests.integration.channels.fakeprovider import FakeProvider, Reply
from tests.integration.store.conftest import PEPPER
from tests.unit.channels.support import CCID, CCID2, ENV, TARGET_SECRET, make_model

T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


class Clock:
    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
async def receiver():
    async with FakeProvider() as server:
        yield server


def model_for(receiver: FakeProvider, names=("a", "b"), **delivery):
    policy = Delivery(**{"timeout_seconds": 2, "max_attempts": 3, "initial_delay_seconds": 1,
                         "backoff_multiplier": 2, "max_delay_seconds": 60, "jitter": 0.0,
                         **delivery})
    return make_model(receiver.url, targets={n: f"{receiver.url}/hook/{n}" for n in names},
                      delivery=policy)


def dispatcher(store: Store, model, clock: Clock, **kw) -> WebhookDispatcher:
    return WebhookDispatcher(store, model, env=ENV, clock=clock, rng=lambda: 0.0,
                             pull_events=False, **kw)


def started(iid: str = "ixn-1") -> InteractionEvent:
    return InteractionEvent(event="STARTED", interaction_id=iid, media_type="chat",
                            interaction_subtype="SMS")


async def rows(store: Store) -> list[dict]:
    t = webhook_deliveries
    return await store.fetch_all(sa.select(t).order_by(t.c.target, t.c.created))


async def test_fan_out_signed_and_delivered(store: Store, receiver: FakeProvider) -> None:
    model = model_for(receiver)
    tenant = model.tenant("t1001")
    ids = await enqueue(store, tenant, started(), nexus_url="http://nexus.test", now=T0)
    assert len(ids) == 2
    assert await enqueue(store, model.tenant("t2002"), started()) == []  # no targets
    clock = Clock()
    d = dispatcher(store, model, clock)
    results = await d.run_once()
    assert sorted(r.status for r in results) == ["delivered", "delivered"]
    assert sorted(r.path for r in receiver.requests) == ["/hook/a", "/hook/b"]
    payloads = set()
    for request in receiver.requests:
        body = request.body
        expected1 = "sha1=" + hmac.new(TARGET_SECRET.encode(), body, hashlib.sha1).hexdigest()
        expected256 = "sha256=" + hmac.new(TARGET_SECRET.encode(), body,
                                           hashlib.sha256).hexdigest()
        assert hmac.compare_digest(request.headers["x-hub-signature"], expected1)
        assert hmac.compare_digest(request.headers["x-hub-signature-256"], expected256)
        assert request.headers["content-type"] == "application/json"
        assert request.headers["x-nexus-delivery"] in ids
        assert request.headers["x-nexus-event"] == "STARTED"
        assert len(request.headers["x-b3-traceid"]) == 32
        payload = request.json()
        payloads.add(payload["operationId"])
        assert payload["data"] == {"entities": [{"event": "STARTED", "entity": {
            "id": "ixn-1", "mediaType": "chat", "interactionSubtype": "SMS",
            "selfUri": "http://nexus.test/nexus/v3/agent/interactions/ixn-1"}}]}
    assert len(payloads) == 1  # one operation, one delivery per target
    for row in await rows(store):
        assert row["status"] == "delivered" and row["attempts"] == 1
        assert row["last_status"] == 200 and row["claim_token"] is None
    assert await d.run_once() == []
    await d.stop()


async def test_enqueue_joins_the_callers_transaction(store: Store, receiver) -> None:
    tenant = model_for(receiver).tenant("t1001")

    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        async with store.transaction():
            await enqueue(store, tenant, started())
            raise Boom
    assert await rows(store) == []
    async with store.transaction():
        await enqueue(store, tenant, started())
    assert len(await rows(store)) == 2
    with pytest.raises(ValueError):
        await enqueue(store, tenant, InteractionEvent(event="PAUSED", interaction_id="x"))


async def test_retries_with_backoff_then_delivers(store: Store, receiver) -> None:
    model = model_for(receiver, names=("a",))
    receiver.script("/hook/a", Reply(status=500), Reply(status=503), Reply(status=200))
    [delivery_id] = await enqueue(store, model.tenant("t1001"), started(), now=T0)
    clock = Clock()
    d = dispatcher(store, model, clock)
    [first] = await d.run_once()
    assert (first.status, first.http_status, first.next_attempt_at) == (
        "pending", 500, T0 + timedelta(seconds=1))
    assert await d.run_once() == []  # not due yet
    clock.advance(1)
    [second] = await d.run_once()
    assert second.status == "pending" and second.next_attempt_at == clock.now + timedelta(
        seconds=2)
    clock.advance(1.5)
    assert await d.run_once() == []
    clock.advance(0.5)
    [third] = await d.run_once()
    assert third.status == "delivered"
    got = await get_delivery(store, CCID, delivery_id)
    assert got is not None and got.attempts == 3 and got.delivered_at == clock.now
    ids = {r.headers["x-nexus-delivery"] for r in receiver.requests}
    assert ids == {delivery_id}
    assert [r.headers["x-nexus-attempt"] for r in receiver.requests] == ["1", "2", "3"]
    await d.stop()


async def test_retry_after_and_timeouts(store: Store, receiver) -> None:
    model = model_for(receiver, names=("a",), timeout_seconds=0.2)
    hold = asyncio.Event()
    receiver.script("/hook/a", Reply(status=429, headers={"Retry-After": "30"}), Reply(hold=hold))
    await enqueue(store, model.tenant("t1001"), started(), now=T0)
    clock = Clock()
    d = dispatcher(store, model, clock)
    [limited] = await d.run_once()
    assert limited.next_attempt_at == T0 + timedelta(seconds=30)
    clock.advance(30)
    [slow] = await d.run_once()
    hold.set()
    assert slow.status == "pending" and slow.http_status is None
    assert "no answer" in slow.error
    await d.stop()


async def test_dead_letter_and_replay(store: Store, receiver) -> None:
    model = model_for(receiver, names=("a",))
    receiver.default("/hook/a", Reply(status=500))
    [delivery_id] = await enqueue(store, model.tenant("t1001"), started(), now=T0)
    clock = Clock()
    d = dispatcher(store, model, clock)
    statuses = []
    for _ in range(3):
        [result] = await d.run_once()
        statuses.append(result.status)
        clock.advance(3600)
    assert statuses == ["pending", "pending", "dead"]
    assert await d.run_once() == []
    dead = await get_delivery(store, CCID, delivery_id)
    assert dead.status == "dead" and dead.attempts == 3 and dead.last_status == 500
    assert dead.to_dict()["lastError"] == "HTTP 500"
    with pytest.raises(NotFound):
        await replay(store, CCID2, delivery_id)  # another tenant's id
    with pytest.raises(NotFound):
        await replay(store, CCID, "00000000-0000-4000-8000-000000000000")
    replayed = await replay(store, CCID, delivery_id, now=clock.now)
    assert (replayed.status, replayed.attempts, replayed.replays) == ("pending", 0, 1)
    with pytest.raises(Conflict):
        await replay(store, CCID, delivery_id)  # already pending
    receiver.default("/hook/a", Reply(status=204))
    [result] = await d.run_once()
    assert result.status == "delivered"
    again = await replay(store, CCID, delivery_id, now=clock.now)  # delivered: replayable
    assert again.replays == 2 and again.delivered_at is None
    [result] = await d.run_once()
    assert result.status == "delivered"
    assert {r.headers["x-nexus-delivery"] for r in receiver.requests} == {delivery_id}
    page, cursor = await list_deliveries(store, CCID)
    assert [p.id for p in page] == [delivery_id] and cursor is None
    assert await list_deliveries(store, CCID2) == ([], None)
    await d.stop()


async def test_removed_target_and_refused_signature(store: Store, receiver) -> None:
    model = model_for(receiver, names=("a", "b"))
    receiver.default("/hook/a", Reply(json={"status": "PAYLOAD_SIGNATURE_CHECK_FAILED"}))
    await enqueue(store, model.tenant("t1001"), started(), now=T0)
    d = dispatcher(store, model_for(receiver, names=("a",)), Clock())  # b was removed
    results = {r.delivery_id: r for r in await d.run_once()}
    by_target = {row["target"]: row for row in await rows(store)}
    a = results[by_target["WebhookTransportTarget-a"]["id"]]
    b = results[by_target["WebhookTransportTarget-b"]["id"]]
    assert a.status == "pending" and "PAYLOAD_SIGNATURE_CHECK_FAILED" in a.error
    assert b.status == "dead" and "no longer configured" in b.error
    await d.stop()


async def test_two_dispatchers_never_deliver_one_delivery_twice(
    store: Store, db_url: str, receiver
) -> None:
    model = model_for(receiver, names=("a", "b"))
    for i in range(20):
        await enqueue(store, model.tenant("t1001"), started(f"ixn-{i}"), now=T0)
    other = Store(db_url, pepper=PEPPER)  # a second engine process: its own pool
    await other.connect()
    clock = Clock()
    first = dispatcher(store, model, clock, batch_size=3, worker_id="one")
    second = dispatcher(other, model, clock, batch_size=3, worker_id="two")
    claimed: dict[str, list[str]] = {"one": [], "two": []}

    async def drain(d: WebhookDispatcher) -> None:
        while True:
            done = await d.run_once()
            if not done:
                return
            claimed[d.worker_id].extend(r.delivery_id for r in done)

    try:
        await asyncio.gather(drain(first), drain(second), drain(first), drain(second))
    finally:
        await first.stop()
        await second.stop()
        await other.disconnect()
    ids = [r.headers["x-nexus-delivery"] for r in receiver.requests]
    assert len(ids) == 40 and len(set(ids)) == 40
    assert len(claimed["one"]) + len(claimed["two"]) == 40
    assert {row["status"] for row in await rows(store)} == {"delivered"}


async def test_crashed_claim_is_taken_over_and_fenced(store: Store, receiver) -> None:
    model = model_for(receiver, names=("a",))
    [delivery_id] = await enqueue(store, model.tenant("t1001"), started(), now=T0)
    clock = Clock()
    crashed = dispatcher(store, model, clock, claim_seconds=60, worker_id="crashed")
    token, [mine] = await crashed.claim()  # ... and the process dies before sending
    survivor = dispatcher(store, model, clock, claim_seconds=60, worker_id="survivor")
    assert await survivor.run_once() == []  # claimed by someone else, not expired
    clock.advance(61)
    [result] = await survivor.run_once()
    assert result.status == "delivered" and result.attempt == 2
    # the crashed dispatcher's late result cannot overwrite the new state
    await crashed._finish(mine, token, "dead", 500, "late", None)
    assert (await get_delivery(store, CCID, delivery_id)).status == "delivered"
    await crashed.stop()
    await survivor.stop()


async def test_restart_delivers_pending_rows(store: Store, db_url: str, receiver) -> None:
    model = model_for(receiver, names=("a",))
    receiver.script("/hook/a", Reply(status=503))
    [delivery_id] = await enqueue(store, model.tenant("t1001"), started(), now=T0)
    clock = Clock()
    before = dispatcher(store, model, clock, poll_interval=0.05)
    before.start()
    await receiver.wait_for(1, "/hook/a")
    await before.stop()
    assert not before.running
    assert (await get_delivery(store, CCID, delivery_id)).status == "pending"
    # a new process: new store pool, new dispatcher, later
    again = Store(db_url, pepper=PEPPER)
    await again.connect()
    clock.advance(5)
    after = dispatcher(again, model, clock, poll_interval=0.05)
    after.start()
    try:
        await receiver.wait_for(2, "/hook/a")
        while (await get_delivery(again, CCID, delivery_id)).status != "delivered":
            after.wake()
            await asyncio.sleep(0.01)
    finally:
        await after.stop()
        await again.disconnect()
    assert len(receiver.on("/hook/a")) == 2


async def test_stop_releases_unfinished_claims(store: Store, receiver) -> None:
    model = model_for(receiver, names=("a",))
    hold = asyncio.Event()
    receiver.script("/hook/a", Reply(hold=hold))
    [delivery_id] = await enqueue(store, model.tenant("t1001"), started(), now=T0)
    d = dispatcher(store, model, Clock(), poll_interval=0.05)
    d.start()
    await receiver.wait_for(1, "/hook/a")
    await d.stop(timeout=0.05)  # the request is still in flight: cancelled, claim released
    hold.set()
    row = await get_delivery(store, CCID, delivery_id)
    assert row.status == "pending" and row.claim_token is None


async def test_pull_interaction_events(store: Store, receiver) -> None:
    model = model_for(receiver, names=("a", "b"))
    for event, tenant in (("STARTED", CCID), ("FINISHED", "t1001"), ("STARTED", "unknown"),
                          ("started", CCID2)):
        await store.execute(sa.insert(interaction_events).values(
            tenant=tenant, event=event, interaction_id="ixn-9", conversation_id="conv-9",
            media="email" if event == "FINISHED" else "sms", subtype="SMS", created=T0))
    assert await pull_interaction_events(store, model, now=T0) == 4
    assert await pull_interaction_events(store, model, now=T0) == 0
    found = await rows(store)
    assert len(found) == 4  # two events of t1001 x two targets; t2002 has none
    assert {r["event"] for r in found} == {"STARTED", "FINISHED"}
    assert all(r["source_event_id"] is not None for r in found)
    finished = [json.loads(r["payload"]) for r in found if r["event"] == "FINISHED"]
    assert finished[0]["data"]["entities"][0]["entity"]["mediaType"] == "email"
    pending = await store.fetch_val(
        sa.select(sa.func.count()).select_from(interaction_events)
        .where(interaction_events.c.delivered_at.is_(None)))
    assert pending == 0
    d = WebhookDispatcher(store, model, env=ENV, clock=Clock(), rng=lambda: 0.0,
                          poll_interval=0.05)
    d.start()
    try:
        await receiver.wait_for(4)
    finally:
        await d.stop()
