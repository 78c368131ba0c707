"""Cache behaviour that needs no server: state before connect, memory://, backoff."""

from __future__ import annotations

import pytest

from engine.store import Cache, CacheState, CacheUnavailable
from engine.store.cache import fake_server


async def test_before_connect_and_after_close() -> None:
    cache = Cache("memory://unit-a", health_check_interval=None)
    assert cache.state is CacheState.CLOSED
    with pytest.raises(CacheUnavailable):
        _ = cache.client
    assert await cache.ping() is False
    assert await cache.connect() is True
    assert await cache.connect() is True  # idempotent
    assert cache.state is CacheState.READY
    await cache.close()
    await cache.close()
    assert cache.state is CacheState.CLOSED
    with pytest.raises(CacheUnavailable):
        await cache.get("x")


async def test_memory_servers_are_shared_per_name() -> None:
    a = Cache("memory://unit-shared", prefix="p:", health_check_interval=None)
    b = Cache("memory://unit-shared", prefix="p:", health_check_interval=None)
    c = Cache("memory://unit-other", prefix="p:", health_check_interval=None)
    async with a, b, c:
        await a.set("k", "v")
        assert await b.get("k") == "v"
        assert await c.get("k") is None
    assert fake_server("unit-shared") is fake_server("unit-shared")


def test_backoff_is_capped_and_jittered() -> None:
    cache = Cache("memory://", backoff_initial=0.1, backoff_max=2.0)
    for attempt in range(40):
        delay = cache._backoff(attempt)
        ceiling = min(2.0, 0.1 * 2**attempt)
        assert ceiling / 2 <= delay <= ceiling
    assert len({cache._backoff(10) for _ in range(20)}) > 1


async def test_subscribe_needs_a_channel() -> None:
    async with Cache("memory://unit-b", health_check_interval=None) as cache:
        with pytest.raises(ValueError):
            await cache.subscribe()


async def test_closing_the_cache_ends_its_subscriptions() -> None:
    cache = Cache("memory://unit-c", health_check_interval=None)
    await cache.connect()
    sub = await cache.subscribe("ch")
    await cache.close()
    assert await sub.get(0.5) is None
    assert [m async for m in sub] == []
