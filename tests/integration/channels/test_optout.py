"""Opt-out list: durable per tenant and sender, cached, on SQLite/PostgreSQL and
memory/real Redis."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from engine.channels.optout import Keyword, OptAction, OptOutList, classify
from engine.store.cache import Cache
from engine.store.db import Store

T1, T2 = "ccid-1", "ccid-2"
N1, N2 = "18885550100", "18885550101"


async def test_stop_and_start_per_tenant_and_channel(store: Store, cache: Cache) -> None:
    optouts = OptOutList(store, cache)
    assert not await optouts.is_opted_out(T1, N1, "+1 650 555 0000")
    assert await optouts.handle_inbound(T1, N1, "+1 650 555 0000", "Stop.", message_id="m1")
    assert await optouts.is_opted_out(T1, N1, "16505550000")  # same number, other spelling
    assert await optouts.is_opted_out(T1, N1, "+1 (650) 555-0000")  # cached answer
    assert not await optouts.is_opted_out(T1, N2, "16505550000")  # another of our numbers
    assert not await optouts.is_opted_out(T2, N1, "16505550000")  # another tenant
    assert await optouts.handle_inbound(T1, N1, "16505550000", "stop please") is None
    assert (await optouts.handle_inbound(T1, N1, "16505550000", "START")).action == OptAction.IN
    assert not await optouts.is_opted_out(T1, N1, "16505550000")
    # a fresh list (another process, empty cache) reads the database
    other = OptOutList(store, None)
    assert not await other.is_opted_out(T1, N1, "16505550000")
    await optouts.handle_inbound(T1, N1, "16505550000", "unsubscribe")
    assert await other.is_opted_out(T1, N1, "16505550000")


async def test_stopall_covers_every_channel_until_start(store: Store, cache: Cache) -> None:
    optouts = OptOutList(store, cache)
    t0 = datetime(2024, 1, 1, tzinfo=UTC)
    addr = "ada@example.com"
    assert not await optouts.is_opted_out(T1, N2, addr)  # cache a "no"
    await optouts.record(T1, N1, "Ada@Example.com", classify("STOPALL"), at=t0)
    assert await optouts.is_opted_out(T1, N1, addr)
    assert await optouts.is_opted_out(T1, N2, addr)  # the cached "no" was dropped
    await optouts.record(T1, N2, addr, classify("unstop"), at=t0 + timedelta(seconds=1))
    assert not await optouts.is_opted_out(T1, N2, addr)
    assert await optouts.is_opted_out(T1, N1, addr)
    await optouts.record(T1, N2, addr, classify("STOPALL"), at=t0 + timedelta(seconds=2))
    assert await optouts.is_opted_out(T1, N2, addr)  # the latest keyword wins


async def test_tie_is_an_opt_out(store: Store) -> None:
    optouts = OptOutList(store)
    at = datetime(2024, 1, 1, tzinfo=UTC)
    await optouts.record(T1, N1, "1", Keyword("START", OptAction.IN, False), at=at)
    await optouts.record(T1, N1, "1", Keyword("STOPALL", OptAction.OUT, True), at=at)
    assert await optouts.is_opted_out(T1, N1, "1")


async def test_works_when_the_cache_is_down(store: Store) -> None:
    cache = Cache("redis://127.0.0.1:1", connect_timeout=0.2, command_timeout=0.2,
                  health_check_interval=None)
    await cache.connect()
    try:
        optouts = OptOutList(store, cache)
        await optouts.handle_inbound(T1, N1, "5", "QUIT")
        assert await optouts.is_opted_out(T1, N1, "5")
    finally:
        await cache.close()
