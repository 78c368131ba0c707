"""The router's dispatcher when little happens (SQLite + memory://, PostgreSQL + Redis): a
wake-up without a kick dispatches only the tenants with something to do, the loop waits
longer when none has (but not past the next offer deadline), and a sweep restores every
index: waiting lines, offers, wake-ups and agent loads."""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa

from engine.routing.conversation_models import SegmentState
from engine.routing.router import IDLE_TICKS
from engine.store.conversation_tables import segments

from .conftest import CCID, Engine


async def _segment(engine: Engine, conversation_id: str):
    segment = await engine.service.open_segment(CCID, conversation_id)
    assert segment is not None
    return segment


async def test_an_idle_pass_dispatches_only_tenants_with_something_to_do(engine: Engine) -> None:
    router = engine.router
    router.tick = 10.0  # idle wait: 40 s, longer than the 30 s offer timeout of `support`
    await engine.cache.call(lambda c: c.sadd(router._tenants_key, CCID, "unknown-ccid"))
    assert await router._tenants_with_work() == (set(), router.tick * IDLE_TICKS)
    await engine.session()  # queued: the kick marked the tenant dirty
    assert await router._tenants_with_work() == ({CCID}, router.tick)
    assert await router.dispatch(CCID) == 0  # nobody is ready
    assert (await router._tenants_with_work())[0] == set()  # waiting, nobody to take it
    await engine.make_ready("alice")  # a kick
    assert (await router._tenants_with_work())[0] == {CCID}
    assert await router.dispatch(CCID) == 1
    # nothing waits; the next thing due is the offer's deadline
    assert await router._tenants_with_work() == (set(), 30.0)
    engine.clock.advance(31)
    assert (await router._tenants_with_work())[0] == {CCID}  # the offer expired


async def test_waiting_interactions_with_a_ready_agent_are_looked_at_every_tick(
    engine: Engine,
) -> None:
    """Capacity freed by a done or a hold does not kick: while an agent of the queue is
    ready and interactions wait, every idle pass dispatches (as every tick used to)."""
    router = engine.router
    await engine.make_ready("alice")
    await engine.session()
    assert await router.dispatch(CCID) == 1  # alice is full now (one chat)
    await engine.session()
    assert await router.dispatch(CCID) == 0
    assert await router._tenants_with_work() == ({CCID}, router.tick)


async def test_a_due_wake_up_makes_the_tenant_busy(engine: Engine) -> None:
    router = engine.router
    router.tick = 10.0
    keys = router.keys(CCID)
    await engine.cache.call(lambda c: c.sadd(router._tenants_key, CCID))
    await engine.cache.call(lambda c: c.zadd(keys.wakeups, {"ixn-later": engine.clock() + 5}))
    assert await router._tenants_with_work() == (set(), 5.0)
    engine.clock.advance(5)
    assert (await router._tenants_with_work())[0] == {CCID}


async def test_sweep_restores_offers_wake_ups_and_loads(engine: Engine) -> None:
    router = engine.router
    keys = router.keys(CCID)
    await engine.make_ready("alice")
    offered = await _segment(engine, (await engine.session()).id)
    assert await router.dispatch(CCID) == 1
    offered = await _segment(engine, offered.conversation_id)
    assert offered.state is SegmentState.OFFERED and offered.offer_deadline is not None
    queued = await _segment(engine, (await engine.session()).id)
    held = await _segment(engine, (await engine.session()).id)
    wake_at = held.queued_at + timedelta(hours=1)
    await engine.store.execute(
        sa.update(segments).where(segments.c.id == held.id).values(state="held", wake_at=wake_at)
    )
    lost = (keys.waiting("support"), keys.queues, keys.offers, keys.wakeups,
            keys.load("alice", "chat"))
    await engine.cache.call(lambda c: c.delete(*lost))
    await router.sweep(CCID)
    waiting = await engine.cache.call(
        lambda c: c.zrange(keys.waiting("support"), 0, -1, withscores=True))
    assert waiting == [(queued.id, queued.queued_at.timestamp())]
    assert await engine.cache.call(lambda c: c.smembers(keys.queues)) == {"support"}
    offers = await engine.cache.call(lambda c: c.zrange(keys.offers, 0, -1, withscores=True))
    assert offers == [(offered.id, offered.offer_deadline.timestamp())]
    wakeups = await engine.cache.call(lambda c: c.zrange(keys.wakeups, 0, -1, withscores=True))
    assert wakeups == [(held.id, wake_at.timestamp())]
    load = await engine.cache.call(lambda c: c.smembers(keys.load("alice", "chat")))
    assert load == {offered.id}
