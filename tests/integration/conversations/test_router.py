"""The embedded router on SQLite + memory:// and PostgreSQL + Redis: offers, accept,
reject, timeout, capacity, last-agent preference, distributions, transfer, async hold, Done,
outbox rows, stats, and two routers sharing one Redis."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter

import pytest
import sqlalchemy as sa

from engine.routing.conversation_models import (
    InvalidQueue,
    InvalidState,
    MessageType,
    NotAnAgent,
    SegmentState,
)
from engine.routing.decider import Redirect, Retry, Terminate
from engine.store.conversation_tables import interaction_events

from .conftest import CCID, Engine


async def _open_segment(engine: Engine, conv_id: str):
    segment = await engine.service.open_segment(CCID, conv_id)
    assert segment is not None
    return segment


async def _offered(engine: Engine, agent: str) -> list[str]:
    return [
        s.id
        for s in await engine.router.agent_interactions(CCID, agent)
        if s.state is SegmentState.OFFERED
    ]


async def _events(engine: Engine, iid: str) -> list[str]:
    rows = await engine.store.fetch_all(
        sa.select(interaction_events.c.event)
        .where(interaction_events.c.interaction_id == iid)
        .order_by(interaction_events.c.id)
    )
    return [r["event"] for r in rows]


async def test_offer_accept_done_lifecycle_and_outbox(engine: Engine) -> None:
    seen = []
    engine.service.on_event(seen.append)
    await engine.make_ready("alice")
    conv = await engine.session()
    seg = await _open_segment(engine, conv.id)
    assert seg.state is SegmentState.QUEUED and seg.queue == "support"
    assert await engine.router.dispatch(CCID) == 1
    assert await _offered(engine, "alice") == [seg.id]
    with pytest.raises(InvalidState):
        await engine.router.accept(CCID, "bob", seg.id)
    assigned = await engine.router.accept(CCID, "Alice", seg.id)
    assert assigned.state is SegmentState.ASSIGNED and assigned.agent == "alice"
    reply = await engine.service.post_agent_message(CCID, seg.id, "alice", "hello")
    assert reply.from_type.value == "Agent" and reply.from_nickname == "Alice"
    with pytest.raises(InvalidState):
        await engine.service.post_agent_message(CCID, seg.id, "bob", "not mine")
    done = await engine.router.done(CCID, "alice", seg.id)
    assert done.state is SegmentState.DONE and done.end_reason == "done"
    assert not (await engine.service.get_conversation(CCID, conv.id)).is_open
    assert await _events(engine, seg.id) == ["STARTED", "FINISHED"]
    assert [(e.event.value, e.interaction_id) for e in seen] == [
        ("STARTED", seg.id),
        ("FINISHED", seg.id),
    ]
    types = [m.type for m in await engine.service.read_messages(CCID, conv.id)]
    assert types == [
        MessageType.PARTICIPANT_JOINED,
        MessageType.PARTICIPANT_JOINED,
        MessageType.TEXT,
        MessageType.SEGMENT_ENDED,
    ]
    with pytest.raises(InvalidState):
        await engine.router.done(CCID, "alice", seg.id)


async def test_reject_and_timeout_go_to_the_next_agent(engine: Engine) -> None:
    await engine.make_ready("alice")
    engine.clock.advance(1)
    await engine.make_ready("bob")  # alice has been idle longer
    conv = await engine.session()
    seg = await _open_segment(engine, conv.id)
    await engine.router.dispatch(CCID)
    assert await _offered(engine, "alice") == [seg.id]
    await engine.router.reject(CCID, "alice", seg.id)
    await engine.router.dispatch(CCID)
    assert await _offered(engine, "bob") == [seg.id]
    assert await _offered(engine, "alice") == []
    # bob lets it time out: back to the queue, and (alice's rejection is old by then) to alice
    engine.clock.advance(29)
    await engine.router.dispatch(CCID)
    assert await _offered(engine, "bob") == [seg.id]  # not yet
    engine.clock.advance(2)
    await engine.router.dispatch(CCID)
    assert await _offered(engine, "bob") == []
    assert await _offered(engine, "alice") == [seg.id]
    with pytest.raises(InvalidState):
        await engine.router.reject(CCID, "bob", seg.id)


async def test_timeout_without_other_agent_waits(engine: Engine) -> None:
    await engine.make_ready("alice")
    conv = await engine.session()
    seg = await _open_segment(engine, conv.id)
    await engine.router.dispatch(CCID)
    engine.clock.advance(31)
    await engine.router.dispatch(CCID)  # expired; alice declined just now: not offered again
    assert (await _open_segment(engine, conv.id)).state is SegmentState.QUEUED
    engine.clock.advance(31)
    await engine.router.dispatch(CCID)
    assert await _offered(engine, "alice") == [seg.id]


async def test_capacity_per_media(engine: Engine) -> None:
    await engine.make_ready("alice")
    first = await engine.session()
    engine.clock.advance(1)  # first come, first served
    second = await engine.session()
    await engine.router.dispatch(CCID)
    seg1 = await _open_segment(engine, first.id)
    seg2 = await _open_segment(engine, second.id)
    assert await _offered(engine, "alice") == [seg1.id]  # chat capacity 1
    await engine.router.accept(CCID, "alice", seg1.id)
    await engine.router.dispatch(CCID)
    assert (await _open_segment(engine, second.id)).state is SegmentState.QUEUED
    await engine.router.done(CCID, "alice", seg1.id)
    await engine.router.dispatch(CCID)
    assert await _offered(engine, "alice") == [seg2.id]


async def test_longest_idle_and_round_robin(engine: Engine) -> None:
    await engine.make_ready("bob")
    engine.clock.advance(1)
    await engine.make_ready("alice")
    conv = await engine.session()
    await engine.router.dispatch(CCID)
    assert await _offered(engine, "bob") == [(await _open_segment(engine, conv.id)).id]
    # round-robin over alice, bob, carol (sorted): each gets one in turn
    await engine.make_ready("carol")
    for agent in ("alice", "bob", "carol"):
        await engine.router.set_presence(CCID, agent, "ready")
    order = []
    for _ in range(2):
        c = await engine.session("RR")
        await engine.router.dispatch(CCID)
        seg = await _open_segment(engine, c.id)
        order.append(seg.offered_to)
    assert order[0] != order[1]
    assert "bob" not in order  # bob's chat capacity is taken by the first offer


async def test_least_busy(engine: Engine) -> None:
    for agent in ("alice", "bob", "carol"):
        await engine.make_ready(agent)
    sms_capable = await engine.session("LB")
    await engine.router.dispatch(CCID)
    first = (await _open_segment(engine, sms_capable.id)).offered_to
    second_conv = await engine.session("LB")
    await engine.router.dispatch(CCID)
    second = (await _open_segment(engine, second_conv.id)).offered_to
    assert first != second


async def test_last_agent_preference_after_async_hold(engine: Engine) -> None:
    engine.decider.answers["redirect_queue"] = [Redirect("support")]
    await engine.make_ready("bob")
    conv = await engine.session()
    seg = await _open_segment(engine, conv.id)
    await engine.router.dispatch(CCID)
    await engine.router.accept(CCID, "bob", seg.id)
    held = await engine.router.hold(CCID, "bob", seg.id)
    assert held.state is SegmentState.HELD and held.queue == "asynchold" and held.agent is None
    assert await engine.router.agent_interactions(CCID, "bob") == []
    engine.clock.advance(5)
    await engine.make_ready("alice")  # alice is now the longest idle... but bob was last
    engine.clock.advance(5)
    await engine.router.set_presence(CCID, "bob", "ready")
    await engine.service.post_customer_message(CCID, conv.id, "any news?")
    name, info = engine.decider.calls[-1]
    assert name == "redirect_queue" and info.id == seg.id and info.queue == "asynchold"
    assert info.udata["endpoint"] == "chat.Main" and info.last_agent == "bob"
    woken = await _open_segment(engine, conv.id)
    assert woken.id == seg.id and woken.state is SegmentState.QUEUED and woken.queue == "support"
    await engine.router.dispatch(CCID)
    assert await _offered(engine, "bob") == [seg.id]
    assert await _events(engine, seg.id) == ["STARTED"]  # the same interaction


async def test_async_hold_terminate_and_new_segment(engine: Engine) -> None:
    engine.decider.answers["redirect_queue"] = [Terminate("closed-by-strategy")]
    await engine.make_ready("alice")
    conv = await engine.session()
    seg = await _open_segment(engine, conv.id)
    await engine.router.dispatch(CCID)
    await engine.router.accept(CCID, "alice", seg.id)
    await engine.router.hold(CCID, "alice", seg.id)
    await engine.service.post_customer_message(CCID, conv.id, "hello?")
    ended = await engine.service.get_interaction(CCID, seg.id)
    assert ended.state is SegmentState.ABANDONED and ended.end_reason == "closed-by-strategy"
    assert await _events(engine, seg.id) == ["STARTED", "FINISHED"]
    assert (await engine.service.get_conversation(CCID, conv.id)).is_open
    # the next customer message starts a new interaction, preferring the last agent
    await engine.make_ready("bob")
    await engine.service.post_customer_message(CCID, conv.id, "still there?")
    fresh = await _open_segment(engine, conv.id)
    assert fresh.id != seg.id and await _events(engine, fresh.id) == ["STARTED"]
    await engine.router.dispatch(CCID)
    assert await _offered(engine, "alice") == [fresh.id]


async def test_agent_follow_up_wakes_and_retry_is_scheduled(engine: Engine) -> None:
    engine.decider.answers["redirect_queue"] = [Retry(at=engine.clock() + 60, attempt=1)]
    await engine.make_ready("alice")
    conv = await engine.session()
    seg = await _open_segment(engine, conv.id)
    await engine.router.dispatch(CCID)
    await engine.router.accept(CCID, "alice", seg.id)
    await engine.router.hold(CCID, "alice", seg.id)
    await engine.service.post_agent_message(CCID, seg.id, "alice", "I found it")
    held = await engine.service.get_interaction(CCID, seg.id)
    assert held.state is SegmentState.HELD and held.attempt == 1 and held.wake_at is not None
    engine.decider.answers["redirect_queue"] = [Redirect("support")]
    engine.clock.advance(61)
    await engine.router.dispatch(CCID)
    assert await _offered(engine, "alice") == [seg.id]


async def test_endpoint_strategy_routes_new_segments(engine: Engine) -> None:
    engine.decider.answers["custom"] = [Redirect("other")]
    conv = await engine.session("Strat")
    seg = await _open_segment(engine, conv.id)
    assert seg.queue == "other"
    assert engine.decider.calls[-1][0] == "custom"


async def test_transfer(engine: Engine) -> None:
    await engine.make_ready("alice", "carol")
    conv = await engine.session()
    seg = await _open_segment(engine, conv.id)
    await engine.router.dispatch(CCID)
    await engine.router.accept(CCID, "alice", seg.id)
    with pytest.raises(InvalidQueue):
        await engine.router.transfer(CCID, "alice", seg.id, "nope")
    moved = await engine.router.transfer(CCID, "alice", seg.id, "other")
    assert moved.state is SegmentState.QUEUED and moved.queue == "other"
    await engine.router.dispatch(CCID)
    assert await _offered(engine, "carol") == [seg.id]  # not back to alice right away
    await engine.router.accept(CCID, "carol", seg.id)
    assert (await engine.service.get_conversation(CCID, conv.id)).last_agent == "carol"


async def test_presence_and_stats(engine: Engine) -> None:
    with pytest.raises(NotAnAgent):
        await engine.router.set_presence(CCID, "sam", "ready")  # a supervisor
    assert await engine.router.get_presence(CCID, "alice") == "not-ready"
    await engine.make_ready("alice")
    assert await engine.router.heartbeat(CCID, "alice") == "ready"
    await engine.session()
    await engine.session()
    await engine.router.dispatch(CCID)
    stats = {s.queue: s for s in await engine.router.stats(CCID)}
    assert (stats["support"].waiting, stats["support"].offered) == (1, 1)
    assert stats["support"].agents_ready == 1
    await engine.router.set_presence(CCID, "alice", "not-ready")
    assert (await engine.router.stats(CCID))[0].as_dict()["agentsReady"] >= 0
    stats = {s.queue: s for s in await engine.router.stats(CCID)}
    assert stats["support"].agents_ready == 0


async def test_queue_capacity(engine: Engine) -> None:
    await engine.make_ready("alice", "bob")
    a = await engine.session("Small")
    b = await engine.session("Small")
    await engine.router.dispatch(CCID)
    states = sorted(
        [
            (await _open_segment(engine, a.id)).state.value,
            (await _open_segment(engine, b.id)).state.value,
        ]
    )
    assert states == ["offered", "queued"]


async def test_agent_feed(engine: Engine) -> None:
    await engine.make_ready("alice")
    feed = engine.router.agent_feed(CCID, "alice")
    snapshot = await asyncio.wait_for(feed.__anext__(), 5)
    assert snapshot == {"kind": "snapshot", "interactions": []}
    conv = await engine.session()
    await engine.router.dispatch(CCID)
    offer = await asyncio.wait_for(feed.__anext__(), 5)
    assert offer["kind"] == "offer" and offer["interaction"]["conversationId"] == conv.id
    await engine.router.accept(CCID, "alice", offer["interaction"]["id"])
    kinds = [(await asyncio.wait_for(feed.__anext__(), 5))["kind"] for _ in range(2)]
    assert kinds == ["assigned", "message"]
    await engine.service.post_customer_message(CCID, conv.id, "to alice")
    event = await asyncio.wait_for(feed.__anext__(), 5)
    assert event["kind"] == "message" and event["message"]["text"] == "to alice"
    await feed.aclose()


async def test_two_routers_never_double_offer(engine: Engine) -> None:
    other = engine.second_router()
    await engine.make_ready("alice", "bob", "carol")
    convs = [await engine.session("RR") for _ in range(12)]
    for _ in range(4):
        await asyncio.gather(*(r.dispatch(CCID) for r in (engine.router, other) for _ in range(3)))
    offered = Counter()
    for agent in ("alice", "bob", "carol"):
        for iid in await _offered(engine, agent):
            offered[iid] += 1
        assert len(await _offered(engine, agent)) <= 1  # chat capacity 1 each
    assert sum(offered.values()) == 3 and set(offered.values()) == {1}
    keys = engine.router.keys(CCID)
    loads = {
        a: await engine.cache.call(lambda c, a=a: c.smembers(keys.load(a, "chat")))
        for a in ("alice", "bob", "carol")
    }
    assert all(len(v) == 1 for v in loads.values())
    del convs


async def test_background_dispatchers_in_two_routers(engine: Engine) -> None:
    other = engine.second_router()
    engine.router.tick = other.tick = 0.02
    await engine.router.start()
    await other.start()
    try:
        await engine.make_ready("alice", "bob")
        convs = [await engine.session() for _ in range(4)]
        for _ in range(200):
            segs = [await _open_segment(engine, c.id) for c in convs]
            if sum(s.state is SegmentState.OFFERED for s in segs) == 2:
                break
            await asyncio.sleep(0.02)
        segs = [await _open_segment(engine, c.id) for c in convs]
        assert sorted(s.offered_to for s in segs if s.offered_to) == ["alice", "bob"]
    finally:
        await other.stop()
        await engine.router.stop()


async def test_sweep_restores_lost_redis_state(engine: Engine) -> None:
    await engine.make_ready("alice")
    conv = await engine.session()
    seg = await _open_segment(engine, conv.id)
    keys = engine.router.keys(CCID)
    await engine.cache.call(lambda c: c.delete(keys.waiting("support"), keys.queues))
    assert await engine.router.dispatch(CCID) == 0
    await engine.router.sweep(CCID)
    assert await engine.router.dispatch(CCID) == 1
    assert await _offered(engine, "alice") == [seg.id]
    # a stale load entry is dropped after two sweeps
    await engine.cache.call(lambda c: c.sadd(keys.load("alice", "sms"), "ghost"))
    await engine.router.sweep(CCID)
    assert "ghost" in await engine.cache.call(lambda c: c.smembers(keys.load("alice", "sms")))
    await engine.router.sweep(CCID)
    assert "ghost" not in await engine.cache.call(lambda c: c.smembers(keys.load("alice", "sms")))


async def test_dispatch_does_not_read_the_line_without_a_ready_agent(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    convs = []
    for _ in range(5):
        convs.append(await engine.session())
        engine.clock.advance(1)  # first come, first served
    reads: list[int] = []
    original = engine.router.repo.segments_by_ids

    async def spy(tenant, ids):
        reads.append(len(ids))
        return await original(tenant, ids)

    monkeypatch.setattr(engine.router.repo, "segments_by_ids", spy)
    assert await engine.router.dispatch(CCID) == 0
    assert reads == []  # nobody ready: the waiting line was not even read
    await engine.make_ready("alice")
    assert await engine.router.dispatch(CCID) == 1
    assert reads  # now it was
    first = await _open_segment(engine, convs[0].id)
    assert first.state is SegmentState.OFFERED and first.offered_to == "alice"


async def test_dispatch_walks_the_line_in_chunks_in_fifo_order(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    from engine.routing import router as router_module

    monkeypatch.setattr(router_module, "LINE_CHUNK", 2)
    convs = []
    for _ in range(7):
        convs.append(await engine.session())
        engine.clock.advance(1)
    segs = [await _open_segment(engine, c.id) for c in convs]
    # the first three were declined by alice just now: she gets later ones, in order
    for seg in segs[:3]:
        await engine.store.execute(
            "UPDATE segments SET declined = :d WHERE id = :i",
            {"d": json.dumps({"alice": engine.clock()}), "i": seg.id},
        )
    reads: list[int] = []
    original = engine.router.repo.segments_by_ids

    async def spy(tenant, ids):
        reads.append(len(ids))
        return await original(tenant, ids)

    monkeypatch.setattr(engine.router.repo, "segments_by_ids", spy)
    await engine.make_ready("alice")
    assert await engine.router.dispatch(CCID) == 1
    assert max(reads) <= 2
    assert await _offered(engine, "alice") == [segs[3].id]
    await engine.make_ready("bob")  # bob takes the head of the line
    assert await engine.router.dispatch(CCID) == 1
    assert await _offered(engine, "bob") == [segs[0].id]


async def test_background_dispatcher_coalesces_kicks(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    from engine.routing.live import KICK_CHANNEL

    passes: list[str] = []
    original = engine.router.dispatch

    async def counting(tenant: str) -> int:
        passes.append(tenant)
        return await original(tenant)

    monkeypatch.setattr(engine.router, "dispatch", counting)
    engine.router.tick = 5.0  # no idle passes during the test
    engine.router.sweep_interval = 3600.0
    engine.router._last_sweep = time.monotonic()
    await engine.router.start()
    try:
        await asyncio.sleep(0.05)  # subscribed
        text = json.dumps({"tenant": CCID})

        async def burst(client):
            async with client.pipeline(transaction=False) as pipe:
                for _ in range(50):
                    pipe.publish(engine.cache.key(KICK_CHANNEL), text)
                await pipe.execute()

        await engine.cache.call(burst)
        for _ in range(200):
            if passes:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
        assert 1 <= len(passes) < 50
        assert set(passes) == {CCID}
    finally:
        await engine.router.stop()


async def test_one_router_sweeps_a_tenant_per_interval(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every process's dispatcher finds the sweep due; the one that takes the tenant's
    sweeper key sweeps, the others skip until the key expires."""
    other = engine.second_router()
    routers = (engine.router, other)
    swept: list[object] = []
    passes: Counter[int] = Counter()
    for n, router in enumerate(routers):
        sweep, dispatch = router.sweep, router.dispatch

        async def counting_sweep(tenant: str, router=router, sweep=sweep) -> None:
            swept.append(router)
            await sweep(tenant)

        async def counting_dispatch(tenant: str, n=n, dispatch=dispatch) -> int:
            passes[n] += 1
            return await dispatch(tenant)

        monkeypatch.setattr(router, "sweep", counting_sweep)
        monkeypatch.setattr(router, "dispatch", counting_dispatch)
        router.tick = 0.02
        router.sweep_interval = 60.0  # the key lives 54 s: no expiry during the test
        router._last_sweep = 0.0  # due at once, as at start
    keys = engine.router.keys(CCID)
    await engine.cache.call(lambda c: c.sadd(engine.router._tenants_key, CCID))

    async def both_passed(after: Counter[int]) -> None:
        # two passes each: a pass under way when `after` was taken may predate the change
        for _ in range(500):
            if all(passes[n] > after[n] + 1 for n in range(2)):
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"dispatch passes: {passes}")

    await engine.router.start()
    await other.start()
    try:
        await both_passed(Counter())
        assert len(swept) == 1  # both found it due, one swept
        assert await engine.cache.call(lambda c: c.pttl(keys.sweeper)) > 50_000
        # the key expires; the next due sweep runs again, once
        await engine.cache.call(lambda c: c.delete(keys.sweeper))
        for router in routers:
            router._last_sweep = 0.0
        await both_passed(Counter(passes))
        assert len(swept) == 2
    finally:
        await other.stop()
        await engine.router.stop()


async def test_sweep_restores_more_segments_than_one_pipeline(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Segments are restored in chunks of SWEEP_CHUNK pipelines; none is left out."""
    from engine.routing import router as router_module

    monkeypatch.setattr(router_module, "SWEEP_CHUNK", 2)
    convs = [await engine.session() for _ in range(5)]
    segs = [await _open_segment(engine, c.id) for c in convs]
    keys = engine.router.keys(CCID)
    await engine.cache.call(lambda c: c.delete(keys.waiting("support"), keys.queues))
    await engine.router.sweep(CCID)
    waiting = await engine.cache.call(lambda c: c.zrange(keys.waiting("support"), 0, -1))
    assert sorted(waiting) == sorted(s.id for s in segs)
