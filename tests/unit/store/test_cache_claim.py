"""``Cache.claim``: SET NX PX + GET, the claims of one event-loop turn coalesced into one
pipeline round trip. On memory:// (fakeredis) and, when configured, the real Redis (with a
unique key prefix, deleted afterwards)."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator

import pytest

from engine.store import Cache, CacheUnavailable
from tests.cache_support import throwaway_cache


@pytest.fixture(params=["memory", "redis"])
async def cache(request: pytest.FixtureRequest) -> AsyncIterator[Cache]:
    if request.param == "memory":
        url = f"memory://claim-{uuid.uuid4().hex}"
    else:
        url = request.getfixturevalue("redis_url")
    async with throwaway_cache(url, "nexus-test-claim") as c:
        yield c


class CallCounter:
    """Wraps ``cache.call``: counts the round trips (one per pipeline)."""

    def __init__(self, cache: Cache, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        self._original = cache.call
        monkeypatch.setattr(cache, "call", self)

    async def __call__(self, op):
        self.calls += 1
        return await self._original(op)


async def _pttl(cache: Cache, key: str) -> int:
    return int(await cache.client.pttl(cache.key(key)))


async def test_first_claim_sets_later_claims_get_the_value(cache: Cache) -> None:
    assert await cache.claim("idem:1", "pending", 60) is None
    assert await cache.get("idem:1") == "pending"
    assert await cache.claim("idem:1", "mine", 60) == "pending"
    assert await cache.get("idem:1") == "pending"  # not overwritten
    # the marker another delivery left is what the next claim answers
    await cache.set("idem:1", "done:m-1", ttl=60)
    assert await cache.claim("idem:1", "pending", 60) == "done:m-1"
    # an existing empty value is "taken", not "free"
    await cache.set("idem:empty", "")
    assert await cache.claim("idem:empty", "pending", 60) == ""
    # keys are prefixed like every other helper's
    assert await cache.client.get("idem:1") is None
    assert await cache.client.get(cache.key("idem:1")) == "done:m-1"


async def test_hundred_distinct_claims_in_one_round_trip(
    cache: Cache, monkeypatch: pytest.MonkeyPatch
) -> None:
    counter = CallCounter(cache, monkeypatch)
    keys = [f"many:{i}" for i in range(100)]
    first = await asyncio.gather(*(cache.claim(k, f"v{i}", 60) for i, k in enumerate(keys)))
    assert first == [None] * 100
    assert counter.calls == 1
    # each key got its own value
    values = await cache.client.mget([cache.key(k) for k in keys])
    assert values == [f"v{i}" for i in range(100)]
    # and the next turn's claims (one more round trip) all see them
    again = await asyncio.gather(*(cache.claim(k, "late", 60) for k in keys))
    assert again == [f"v{i}" for i in range(100)]
    assert counter.calls == 2


async def test_same_key_claimed_concurrently_has_exactly_one_winner(
    cache: Cache, monkeypatch: pytest.MonkeyPatch
) -> None:
    counter = CallCounter(cache, monkeypatch)
    results = await asyncio.gather(*(cache.claim("race", f"v{i}", 60) for i in range(20)))
    assert counter.calls == 1
    winners = [i for i, r in enumerate(results) if r is None]
    assert len(winners) == 1
    stored = await cache.get("race")
    assert stored == f"v{winners[0]}"
    assert all(r == stored for i, r in enumerate(results) if i != winners[0])
    # mixed with other keys in the same turn: one winner per key
    mixed = await asyncio.gather(
        *(cache.claim(f"mix:{i % 3}", f"w{i}", 60) for i in range(12))
    )
    assert sum(r is None for r in mixed) == 3
    for key in range(3):
        won = [i for i in range(key, 12, 3) if mixed[i] is None]
        assert len(won) == 1
        assert {mixed[i] for i in range(key, 12, 3) if i != won[0]} == {f"w{won[0]}"}


async def test_claims_in_different_tasks_of_one_turn_share_the_pipeline(
    cache: Cache, monkeypatch: pytest.MonkeyPatch
) -> None:
    counter = CallCounter(cache, monkeypatch)
    tasks = [asyncio.create_task(cache.claim(f"task:{i}", "x", 60)) for i in range(10)]
    assert await asyncio.gather(*tasks) == [None] * 10
    assert counter.calls == 1


async def test_claims_made_while_a_pipeline_is_in_flight_take_the_next_one(
    cache: Cache, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = cache.call
    entered = asyncio.Event()
    release = asyncio.Event()
    calls = 0

    async def slow_first(op):
        nonlocal calls
        calls += 1
        if calls == 1:
            entered.set()
            await release.wait()
        return await original(op)

    monkeypatch.setattr(cache, "call", slow_first)
    first = [asyncio.create_task(cache.claim(f"in:{i}", "first", 60)) for i in range(5)]
    await entered.wait()  # the first pipeline is on its way (held up before Redis)
    second = [asyncio.create_task(cache.claim(k, "second", 60)) for k in ("in:0", "in:9")]
    # the later claims do not wait for the pipeline in flight: they have one of their own
    # and are answered while the first is still held up
    assert await asyncio.wait_for(asyncio.gather(*second), 10) == [None, None]
    assert calls == 2 and not any(t.done() for t in first)
    release.set()
    assert await asyncio.gather(*first) == ["second", None, None, None, None]
    assert await cache.get("in:0") == "second"


async def test_ttl_is_applied_and_must_be_positive(
    cache: Cache, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert await cache.claim("ttl:a", "v", 1.5) is None
    assert 0 < await _pttl(cache, "ttl:a") <= 1500
    assert await cache.claim("ttl:b", "v", 3600) is None
    assert 1500 < await _pttl(cache, "ttl:b") <= 3_600_000
    # a losing claim does not change the existing key's expiry
    assert await cache.claim("ttl:b", "other", 1.0) == "v"
    assert await _pttl(cache, "ttl:b") > 1000
    # a sub-millisecond ttl still expires (never "no expiry")
    assert await cache.claim("ttl:tiny", "v", 0.0001) is None
    assert await _pttl(cache, "ttl:tiny") != -1
    counter = CallCounter(cache, monkeypatch)
    for bad in (0, -1, -0.5):
        with pytest.raises(ValueError, match="positive"):
            await cache.claim("ttl:bad", "v", bad)
    assert counter.calls == 0
    assert await cache.get("ttl:bad") is None


async def test_unavailable_cache_fails_every_waiter(
    cache: Cache, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = cache.call
    calls = 0

    async def down(op):
        nonlocal calls
        calls += 1
        raise CacheUnavailable("redis unavailable: ConnectionError: gone")

    monkeypatch.setattr(cache, "call", down)
    results = await asyncio.wait_for(  # (a waiter left hanging fails, not hangs, the test)
        asyncio.gather(
            *(cache.claim(f"down:{i % 4}", "v", 60) for i in range(12)),
            return_exceptions=True,
        ),
        10,
    )
    assert calls == 1
    assert all(isinstance(r, CacheUnavailable) for r in results)
    # nothing is left queued: once Redis answers again, claims work (and nothing was set)
    monkeypatch.setattr(cache, "call", original)
    assert await cache.claim("down:0", "v", 60) is None


async def test_closed_cache_fails_every_waiter() -> None:
    cache = Cache(f"memory://claim-{uuid.uuid4().hex}", health_check_interval=None)
    assert await cache.connect()
    assert await cache.claim("k", "v", 60) is None
    await cache.close()
    results = await asyncio.wait_for(
        asyncio.gather(*(cache.claim(f"k{i}", "v", 60) for i in range(5)), return_exceptions=True),
        10,
    )
    assert len(results) == 5 and all(isinstance(r, CacheUnavailable) for r in results)


async def test_a_cancelled_claimer_does_not_disturb_the_others(cache: Cache) -> None:
    tasks = [asyncio.create_task(cache.claim(f"cancel:{i}", "v", 60)) for i in range(6)]
    await asyncio.sleep(0)  # every task has queued its claim
    tasks[2].cancel()
    results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)
    assert isinstance(results[2], asyncio.CancelledError)
    assert [r for i, r in enumerate(results) if i != 2] == [None] * 5
    for i in (0, 1, 3, 4, 5):
        assert await cache.get(f"cancel:{i}") == "v"


async def test_cluster_claims_one_call_each_with_the_same_answers(
    cache: Cache, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a cluster the keys of one pipeline may live on different nodes: each claim is its
    own SET NX (+ GET when taken), with the same answers."""
    monkeypatch.setattr(cache, "settings", dataclasses.replace(cache.settings, kind="cluster"))
    counter = CallCounter(cache, monkeypatch)
    assert await cache.claim("cl:1", "pending", 60) is None
    assert counter.calls == 1
    assert await cache.claim("cl:1", "mine", 60) == "pending"
    assert counter.calls == 3  # SET NX, then GET
    results = await asyncio.gather(*(cache.claim("cl:2", f"v{i}", 60) for i in range(5)))
    assert sum(r is None for r in results) == 1
    assert 0 < await _pttl(cache, "cl:2") <= 60_000
    await cache.set("cl:empty", "")
    assert await cache.claim("cl:empty", "v", 60) == ""  # taken, not free
    with pytest.raises(ValueError):
        await cache.claim("cl:3", "v", 0)


async def test_claims_without_set_nx_get_use_set_nx_and_get(
    cache: Cache, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Redis older than 7.0 refuses ``SET ... NX GET``: the first pipeline fails with a
    ResponseError, the claims are sent again as SET NX + GET, and later claims use that form
    (the answers are the same either way)."""
    import redis.exceptions as rexc

    original = cache.call
    refused: list[int] = []

    async def old_redis(op):
        if cache._set_get:
            refused.append(1)
            raise rexc.ResponseError("ERR syntax error")
        return await original(op)

    monkeypatch.setattr(cache, "call", old_redis)
    await cache.client.set(cache.key("old:taken"), "done:7")
    first = await asyncio.gather(
        cache.claim("old:free", "pending", 30), cache.claim("old:taken", "pending", 30)
    )
    assert first == [None, "done:7"]
    assert refused == [1] and cache._set_get is False
    assert await cache.claim("old:free", "again", 30) == "pending"
    assert refused == [1]  # not tried again
    assert 0 < await _pttl(cache, "old:free") <= 30_000


async def test_set_nx_get_is_one_command_per_claim(
    cache: Cache, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With SET NX GET (Redis >= 7.0, fakeredis) a claim is one command in the pipeline."""
    sent: list[list] = []
    original = cache.commands

    async def spy(commands):
        sent.append([list(c) for c in commands])
        return await original(commands)

    monkeypatch.setattr(cache, "commands", spy)
    assert await asyncio.gather(*(cache.claim(f"one:{i}", "p", 30) for i in range(3))) == [
        None, None, None
    ]
    assert sent == [[["SET", cache.key(f"one:{i}"), "p", "PX", 30_000, "NX", "GET"]
                     for i in range(3)]]


async def test_an_error_reply_of_old_redis_switches_to_set_nx_and_get(
    cache: Cache, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real Redis < 7.0 answers each ``SET ... NX GET`` with an error reply (a value in the
    replies of :meth:`Cache.commands`, not an exception): same switch, same answers."""
    import redis.exceptions as rexc

    original = cache.commands

    async def old_redis(commands):
        if any(c[0] == "SET" and c[-1] == "GET" for c in commands):
            return [rexc.ResponseError("ERR syntax error") for _ in commands]
        return await original(commands)

    monkeypatch.setattr(cache, "commands", old_redis)
    await cache.client.set(cache.key("old2:taken"), "done:8")
    assert await asyncio.gather(
        cache.claim("old2:free", "pending", 30), cache.claim("old2:taken", "pending", 30)
    ) == [None, "done:8"]
    assert cache._set_get is False


async def test_commands_return_error_replies_in_place(cache: Cache) -> None:
    """:meth:`Cache.commands`: replies in order, raw (no response callbacks), an error reply
    as a ResponseError value; the connection stays usable."""
    import redis.exceptions as rexc

    key = cache.key("cmd:list")
    replies = await cache.commands([
        ["SET", cache.key("cmd:a"), "1", "PX", 10_000, "NX", "GET"],
        ["RPUSH", key, "x"],
        ["INCR", key],  # WRONGTYPE
        ["GET", cache.key("cmd:a")],
        ["PUBLISH", cache.key("cmd:ch"), "hello"],
    ])
    assert replies[0] is None and replies[1] == 1
    assert isinstance(replies[2], rexc.ResponseError) and "WRONGTYPE" in str(replies[2])
    assert replies[3] == "1" and replies[4] == 0
    for _ in range(3):  # still in step after the error reply
        assert await cache.commands([["GET", cache.key("cmd:a")]]) == ["1"]
