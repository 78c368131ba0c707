"""The live cache on memory:// (fakeredis) and on the real Redis: helpers, rate limiter,
idempotency keys, pub/sub, and the rate limiter shared by two OS processes."""

from __future__ import annotations

import asyncio
import sys
import textwrap
import uuid

import pytest

from engine.store import Cache, CacheState, RateLimit


async def test_ready_and_detail(cache: Cache) -> None:
    assert cache.state is CacheState.READY and cache.ready
    assert await cache.ping() is True
    detail = cache.detail()
    assert detail["ready"] is True and detail["state"] == "READY"


async def test_keys_are_prefixed(cache: Cache) -> None:
    await cache.set("greeting", "hello", ttl=60)
    assert await cache.get("greeting") == "hello"
    assert await cache.client.get(cache.prefix + "greeting") == "hello"
    assert cache.key("a", 1) == cache.prefix + "a:1"
    assert await cache.delete("greeting") == 1
    assert await cache.get("greeting") is None
    assert await cache.delete() == 0


async def test_setnx_with_ttl(cache: Cache) -> None:
    assert await cache.setnx_with_ttl("msg:42", "first", 30) is True
    assert await cache.setnx_with_ttl("msg:42", "second", 30) is False
    assert await cache.get("msg:42") == "first"
    ttl_ms = await cache.client.pttl(cache.key("msg:42"))
    assert 0 < ttl_ms <= 30_000
    results = await asyncio.gather(*(cache.setnx_with_ttl("msg:43", str(i), 30) for i in range(50)))
    assert results.count(True) == 1
    with pytest.raises(ValueError):
        await cache.setnx_with_ttl("x", "y", 0)


async def test_rate_limiter_is_exact_under_concurrency(cache: Cache) -> None:
    results = await asyncio.gather(*(cache.hit("key-a", 50, 60) for _ in range(200)))
    assert all(isinstance(r, RateLimit) for r in results)
    assert sum(1 for allowed, _ in results if allowed) == 50
    denied = [retry for allowed, retry in results if not allowed]
    assert len(denied) == 150
    assert all(0 < retry <= 60 for retry in denied)
    assert all(retry == 0.0 for allowed, retry in results if allowed)
    # another key has its own budget
    assert (await cache.hit("key-b", 1, 60)).allowed is True
    assert (await cache.hit("key-b", 1, 60)).allowed is False


async def test_rate_limiter_window_resets(cache: Cache) -> None:
    assert (await cache.hit("short", 1, 0.05)).allowed
    allowed, retry_after = await cache.hit("short", 1, 0.05)
    assert not allowed and 0 < retry_after <= 0.05
    await asyncio.sleep(retry_after + 0.05)
    assert (await cache.hit("short", 1, 0.05)).allowed


async def test_rate_limiter_rejects_bad_arguments(cache: Cache) -> None:
    with pytest.raises(ValueError):
        await cache.hit("k", 0, 60)
    with pytest.raises(ValueError):
        await cache.hit("k", 1, 0)


async def test_pubsub_fan_out(cache: Cache) -> None:
    first = await cache.subscribe("events", "other")
    second = await cache.subscribe("events")
    try:
        # one connection per cache: Redis counts the process once, whatever its subscriptions
        assert await cache.publish("events", "one") == 1
        await cache.publish("other", "two")
        await cache.publish("events", "three")
        got_first = [await first.get(5) for _ in range(3)]
        assert [(m.channel, m.data) for m in got_first] == [
            ("events", "one"),
            ("other", "two"),
            ("events", "three"),
        ]
        got_second = [await second.get(5) for _ in range(2)]
        assert [m.data for m in got_second] == ["one", "three"]
        assert await second.get(0.05) is None
    finally:
        await first.close()
        await second.close()
    assert await cache.publish("events", "nobody") == 0


async def test_pubsub_async_iteration_across_two_caches(cache: Cache, cache_url: str) -> None:
    """Two Cache objects (two engine nodes) on the same server share channels."""
    other = Cache(cache_url, prefix=cache.prefix, health_check_interval=None)
    assert await other.connect()
    try:
        async with await cache.subscribe("fanout") as sub:
            for i in range(3):
                await other.publish("fanout", f"m{i}")
            received = []
            async for message in sub:
                received.append(message.data)
                if len(received) == 3:
                    break
            assert received == ["m0", "m1", "m2"]
    finally:
        await other.close()


async def test_sharded_pubsub_on_a_single_node(cache: Cache, cache_url: str) -> None:
    sharded = Cache(
        cache_url, prefix=cache.prefix, health_check_interval=None, sharded_pubsub=True
    )
    assert await sharded.connect()
    try:
        sub = await sharded.subscribe("shard")
        assert await sharded.publish("shard", "s1") == 1
        message = await sub.get(5)
        assert (message.channel, message.data) == ("shard", "s1")
        await sub.close()
    finally:
        await sharded.close()


_HIT_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    from engine.store import Cache

    async def main(url, prefix, key, n, capacity):
        cache = Cache(url, prefix=prefix, health_check_interval=None)
        assert await cache.connect()
        try:
            print("ready", flush=True)
            sys.stdin.readline()  # start together
            results = await asyncio.gather(*(cache.hit(key, capacity, 60) for _ in range(n)))
            print(sum(1 for allowed, _ in results if allowed), flush=True)
        finally:
            await cache.close()

    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])))
    """
)


async def test_rate_limiter_across_two_processes(redis_url: str) -> None:
    prefix = f"nexus-test-{uuid.uuid4().hex}:"
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _HIT_SCRIPT,
            redis_url,
            prefix,
            "shared",
            "150",
            "100",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for _ in range(2)
    ]
    try:
        for proc in procs:
            line = await asyncio.wait_for(proc.stdout.readline(), 30)
            assert line.strip() == b"ready", (line, await proc.stderr.read())
        for proc in procs:
            proc.stdin.write(b"go\n")
            await proc.stdin.drain()
        outputs = [await asyncio.wait_for(proc.communicate(), 60) for proc in procs]
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert [proc.returncode for proc in procs] == [0, 0], outputs
    allowed = [int(out.strip()) for out, _ in outputs]
    assert sum(allowed) == 100, allowed
    checker = Cache(redis_url, prefix=prefix, health_check_interval=None)
    assert await checker.connect()
    try:
        assert int(await checker.client.get(checker.key("rl", "shared"))) == 300
        allowed_now, retry_after = await checker.hit("shared", 100, 60)
        assert not allowed_now and 0 < retry_after <= 60
        await checker.delete("rl:shared")
    finally:
        await checker.close()


async def test_large_capacities_lease_tokens_in_batches_and_never_over_admit(
    cache: Cache,
) -> None:
    """Two processes' caches (two Cache objects) share one key of capacity 5,000: never more
    than 5,000 are allowed, at most one unused batch per cache is stranded, and the server
    sees one INCRBY per batch instead of one per request."""
    from engine.store.cache import lease_size

    other = Cache(cache.settings.nodes[0] if cache.settings.kind != "memory" else
                  f"memory://{cache.settings.memory_name}", prefix=cache.prefix,
                  health_check_interval=None)
    await other.connect()
    try:
        calls = 0
        original = cache.call

        async def counting(op):  # noqa: ANN001
            nonlocal calls
            calls += 1
            return await original(op)

        cache.call = counting  # type: ignore[method-assign]
        results = await asyncio.gather(
            *(c.hit("key-lease", 5000, 60) for _ in range(3500) for c in (cache, other))
        )
        allowed = sum(r.allowed for r in results)
        assert 5000 - 2 * lease_size(5000) <= allowed <= 5000
        assert calls <= 3500 // lease_size(5000) + 5
        denied = [r for r in results if not r.allowed]
        assert denied and all(0 < r.retry_after <= 60 for r in denied)
    finally:
        await other.close()
