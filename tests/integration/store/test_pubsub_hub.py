"""The pub/sub hub: every (non-sharded) subscription of a cache shares one Redis connection;
channels are subscribed once and unsubscribed when their last subscription closes."""

from __future__ import annotations

import asyncio

import pytest

from engine.store import Cache


async def _pubsub_connections(cache: Cache) -> int:
    """Redis connections in pub/sub mode (a real server only)."""
    listing = await cache.client.execute_command("CLIENT", "LIST", "TYPE", "pubsub")
    return len([line for line in str(listing).splitlines() if line.strip()])


async def test_many_subscriptions_share_one_connection(cache: Cache) -> None:
    real = cache.settings.kind != "memory"
    before = await _pubsub_connections(cache) if real else 0
    subs = [await cache.subscribe(f"room:{n}", "all") for n in range(100)]
    try:
        if real:
            assert await _pubsub_connections(cache) == before + 1
        # Redis sees one receiver per channel, every local subscription gets its messages
        assert await cache.publish("room:7", "to seven") == 1
        assert await cache.publish("all", "to all") == 1
        got = await subs[7].get(5)
        assert (got.channel, got.data) == ("room:7", "to seven")
        for sub in subs:
            message = await sub.get(5)
            assert (message.channel, message.data) == ("all", "to all")
        assert await subs[8].get(0.05) is None  # nothing else for room 8
    finally:
        for sub in subs:
            await sub.close()
    if real:
        assert await _pubsub_connections(cache) == before  # the last close gave it back


async def test_a_channel_stays_while_one_subscription_wants_it(cache: Cache) -> None:
    one = await cache.subscribe("shared")
    two = await cache.subscribe("shared", "mine")
    await two.close()
    assert await cache.publish("mine", "x") == 0  # unsubscribed with its last subscription
    assert await cache.publish("shared", "still") == 1
    assert (await one.get(5)).data == "still"
    await one.close()
    assert await cache.publish("shared", "nobody") == 0


async def test_subscribing_again_after_every_subscription_closed(cache: Cache) -> None:
    sub = await cache.subscribe("again")
    await sub.close()
    assert await sub.get(0.05) is None  # closed: no more messages, no wait
    sub = await cache.subscribe("again")
    try:
        assert await cache.publish("again", "back") == 1
        assert (await sub.get(5)).data == "back"
    finally:
        await sub.close()


async def test_close_wakes_a_waiting_get(cache: Cache) -> None:
    sub = await cache.subscribe("wake")
    waiter = asyncio.create_task(sub.get())
    await asyncio.sleep(0.05)
    await sub.close()
    assert await asyncio.wait_for(waiter, 5) is None


async def test_a_subscription_that_falls_behind_drops_the_newest(
    cache: Cache, monkeypatch: pytest.MonkeyPatch
) -> None:
    from engine.store import cache as cache_module

    monkeypatch.setattr(cache_module, "MAX_QUEUED", 3)
    slow = await cache.subscribe("burst")
    try:
        for n in range(5):
            await cache.publish("burst", f"m{n}")
        for _ in range(500):  # until the hub handed all five over (nobody reads meanwhile)
            if slow._queue.qsize() + slow._dropped == 5:
                break
            await asyncio.sleep(0.01)
        assert slow._dropped == 2
        assert [(await slow.get(5)).data for _ in range(3)] == ["m0", "m1", "m2"]
        assert await slow.get(0.05) is None
        await cache.publish("burst", "m5")  # room again
        assert (await slow.get(5)).data == "m5"
    finally:
        await slow.close()


async def test_concurrent_subscribes_are_all_confirmed(cache: Cache) -> None:
    """Subscriptions made at once (some to the same channels) all receive what is published
    once subscribe() returned."""
    subs = await asyncio.gather(*(cache.subscribe(f"c{n % 5}") for n in range(40)))
    try:
        for n in range(5):
            await cache.publish(f"c{n}", f"hello {n}")
        for i, sub in enumerate(subs):
            assert (await sub.get(5)).data == f"hello {i % 5}"
    finally:
        for sub in subs:
            await sub.close()


async def test_more_subscriptions_than_the_pool_has_connections(redis_url: str) -> None:
    """Each subscription used to hold a pooled connection for its lifetime: past
    ``max_connections`` (50 per worker) a new stream failed and commands waited. Now 40
    subscriptions on a pool of 4 all receive, and commands still run."""
    from tests.cache_support import throwaway_cache

    async with throwaway_cache(redis_url) as base:
        cache = Cache(redis_url, prefix=base.prefix, health_check_interval=None,
                      max_connections=4, command_timeout=2.0)
        assert await cache.connect()
        try:
            subs = [await cache.subscribe(f"s{n}") for n in range(40)]
            await cache.set("still", "works")
            assert await cache.get("still") == "works"
            for n in (0, 17, 39):
                assert await cache.publish(f"s{n}", f"m{n}") == 1
                assert (await subs[n].get(5)).data == f"m{n}"
            for sub in subs:
                await sub.close()
        finally:
            await cache.close()
