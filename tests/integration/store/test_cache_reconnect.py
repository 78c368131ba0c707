"""Reconnect state machine against a throwaway redis-server we start and kill, and the
nexus_redis_* metrics it drives."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import Iterator

import pytest
from prometheus_client import REGISTRY

from engine.store import Cache, CacheState, CacheUnavailable
from tests.ports import free_port as _free_port

REDIS_SERVER = shutil.which("redis-server")


def _metric(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


class RedisProcess:
    def __init__(self, port: int) -> None:
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        if REDIS_SERVER is None:
            pytest.fail("redis-server is not installed (the real Redis's binary is needed)")
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None


@pytest.fixture
def redis_process(redis_url: str) -> Iterator[RedisProcess]:
    """A redis-server on a free port, not started yet (needs the real Redis installed)."""
    server = RedisProcess(_free_port())
    try:
        yield server
    finally:
        server.stop()


async def _until(predicate, timeout: float = 15.0) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if await predicate():
            return True
        await asyncio.sleep(0.02)
    return False


def _fast_cache(url: str, **overrides) -> Cache:
    """A Cache that gives up and retries quickly (short timeouts and backoff)."""
    options = {"health_check_interval": None, "connect_timeout": 0.5, "command_timeout": 1.0,
               "backoff_initial": 0.02, "backoff_max": 0.2, **overrides}
    return Cache(url, **options)


async def test_connecting_to_a_closed_port_then_ready_then_reconnecting(
    redis_process: RedisProcess,
) -> None:
    errors0 = _metric("nexus_redis_errors_total")
    reconnecting0 = _metric("nexus_redis_connections_reconnecting")
    ready0 = _metric("nexus_redis_connections_ready")
    established0 = _metric("nexus_redis_connections_established")
    until_ready0 = _metric("nexus_redis_duration_until_ready_count")

    cache = _fast_cache(f"redis://127.0.0.1:{redis_process.port}/0", prefix="nexus-reconnect:")
    states: list[CacheState] = [cache.state]
    try:
        assert await cache.connect() is False  # nobody listens yet: never raises
        states.append(cache.state)
        assert cache.state is CacheState.RECONNECTING
        assert cache.detail()["ready"] is False and cache.detail()["lastError"]
        assert _metric("nexus_redis_connections_reconnecting") == reconnecting0 + 1
        assert _metric("nexus_redis_errors_total") > errors0
        assert await cache.ping() is False
        with pytest.raises(CacheUnavailable):
            await cache.get("x")

        redis_process.start()
        assert await cache.wait_ready(15)
        states.append(cache.state)
        assert await cache.ping() is True
        await cache.set("k", "v")
        assert await cache.get("k") == "v"
        assert _metric("nexus_redis_connections_ready") == ready0 + 1
        assert _metric("nexus_redis_connections_established") == established0 + 1
        assert _metric("nexus_redis_connections_reconnecting") == reconnecting0
        assert _metric("nexus_redis_duration_until_ready_count") == until_ready0 + 1

        errors_before_kill = _metric("nexus_redis_errors_total")
        redis_process.stop()
        assert await cache.ping() is False
        states.append(cache.state)
        assert cache.state is CacheState.RECONNECTING
        assert _metric("nexus_redis_connections_ready") == ready0
        assert _metric("nexus_redis_connections_established") == established0
        assert _metric("nexus_redis_connections_reconnecting") == reconnecting0 + 1
        assert _metric("nexus_redis_errors_total") > errors_before_kill
        with pytest.raises(CacheUnavailable):
            await cache.hit("k", 1, 60)

        redis_process.start()  # comes back on the same port: the background loop notices
        assert await cache.wait_ready(15)
        states.append(cache.state)
        assert (await cache.hit("after-restart", 1, 60)).allowed
        assert _metric("nexus_redis_duration_until_ready_count") == until_ready0 + 2
    finally:
        await cache.close()
    states.append(cache.state)
    assert states == [
        CacheState.CLOSED,
        CacheState.RECONNECTING,
        CacheState.READY,
        CacheState.RECONNECTING,
        CacheState.READY,
        CacheState.CLOSED,
    ]
    assert _metric("nexus_redis_connections_ready") == ready0
    assert _metric("nexus_redis_connections_reconnecting") == reconnecting0


async def test_health_check_notices_an_outage_without_traffic(
    redis_process: RedisProcess,
) -> None:
    redis_process.start()
    cache = _fast_cache(f"redis://127.0.0.1:{redis_process.port}/0", health_check_interval=0.05)
    try:
        assert await _until(cache.connect)
        redis_process.stop()

        async def reconnecting() -> bool:
            return cache.state is CacheState.RECONNECTING

        assert await _until(reconnecting)
    finally:
        await cache.close()


async def test_failover_to_the_next_node(redis_process: RedisProcess, redis_url: str) -> None:
    """Non-cluster node list: the first reachable node is used."""
    dead = _free_port()
    cache = Cache(
        f"redis://127.0.0.1:{dead}/0,{redis_url}",
        health_check_interval=None,
        connect_timeout=0.5,
    )
    try:
        assert await cache.connect() is True
        assert cache.node == redis_url
    finally:
        await cache.close()


async def test_subscription_survives_a_server_restart(redis_process: RedisProcess) -> None:
    redis_process.start()
    url = f"redis://127.0.0.1:{redis_process.port}/0"
    cache = _fast_cache(url)
    try:
        assert await _until(cache.connect)
        sub = await cache.subscribe("news")
        assert await cache.publish("news", "before") == 1
        assert (await sub.get(5)).data == "before"

        redis_process.stop()
        assert await sub.get(0.3) is None  # notices the loss, keeps trying
        redis_process.start()

        async def delivered() -> bool:
            try:
                receivers = await cache.publish("news", "after")
            except CacheUnavailable:
                receivers = 0
            if receivers == 0:
                await sub.get(0.05)  # let the subscription resubscribe
                return False
            message = await sub.get(5)
            return message is not None and message.data == "after"

        assert await _until(delivered)
        await sub.close()
    finally:
        await cache.close()


async def test_memory_outage_and_recovery() -> None:
    """The same state machine on memory://, with fakeredis's simulated outage."""
    from engine.store.cache import fake_server

    cache = Cache("memory://outage-test", health_check_interval=None, backoff_initial=0.01,
                  backoff_max=0.05)
    try:
        assert await cache.connect()
        server = fake_server("outage-test")
        server.connected = False
        assert await cache.ping() is False
        assert cache.state is CacheState.RECONNECTING
        server.connected = True
        assert await cache.wait_ready(10)
        assert await cache.setnx_with_ttl("k", "v", 10)
    finally:
        await cache.close()
        fake_server("outage-test").connected = True


async def test_a_silent_server_times_out_the_call_not_the_event_loop(
    redis_process: RedisProcess,
) -> None:
    """A server that stops answering (SIGSTOP: connections stay open, nothing comes back):
    each call ends after command_timeout with CacheUnavailable (one deadline per call, the
    client has no per-reply timeout); the cache reconnects once the server answers again."""
    import os
    import signal
    import time

    redis_process.start()
    cache = _fast_cache(f"redis://127.0.0.1:{redis_process.port}/0", command_timeout=0.5)
    try:
        assert await _until(cache.connect)
        await cache.set("k", "v")
        assert redis_process.proc is not None
        os.kill(redis_process.proc.pid, signal.SIGSTOP)
        try:
            began = time.monotonic()
            with pytest.raises(CacheUnavailable, match="TimeoutError"):
                await asyncio.wait_for(cache.get("k"), 10)  # fails here, not hangs
            assert 0.4 <= time.monotonic() - began < 3.0
            assert cache.state is CacheState.RECONNECTING
            # a pipeline of many commands shares the one deadline
            began = time.monotonic()
            with pytest.raises(CacheUnavailable):
                await asyncio.wait_for(cache.call(lambda c: _pipeline_of_gets(c, 200)), 10)
            assert time.monotonic() - began < 3.0
        finally:
            os.kill(redis_process.proc.pid, signal.SIGCONT)

        async def answers() -> bool:
            try:
                return await cache.get("k") == "v"
            except CacheUnavailable:
                return False

        assert await _until(answers)
        assert cache.state is CacheState.READY
    finally:
        await cache.close()


async def _pipeline_of_gets(client, count: int) -> list:
    async with client.pipeline(transaction=False) as pipe:
        for n in range(count):
            pipe.get(f"k{n}")
        return await pipe.execute()


async def test_pipelines_survive_a_server_restart(redis_process: RedisProcess) -> None:
    """After a restart the pooled connections are dead: claims and raw commands reconnect
    and run (one retry on a fresh connection, as redis-py's own commands do) instead of
    failing the first call."""
    redis_process.start()
    cache = _fast_cache(f"redis://127.0.0.1:{redis_process.port}/0")
    try:
        assert await _until(cache.connect)
        assert await cache.claim("restart:a", "pending", 30) is None
        # several pooled connections, all dead after the restart
        await asyncio.gather(*(cache.commands([["SET", cache.key(f"restart:{n}"), "1"]])
                               for n in range(4)))
        redis_process.stop()
        redis_process.start()

        async def listening() -> bool:  # the port answers; nothing of the cache was used
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", redis_process.port)
            except OSError:
                return False
            writer.close()
            return True

        assert await _until(listening)
        assert await cache.claim("restart:c", "pending", 30) is None
        assert await cache.commands([["GET", cache.key("restart:c")]]) == ["pending"]
        assert cache.state is CacheState.READY
    finally:
        await cache.close()


async def test_every_channel_of_the_hub_comes_back_after_a_restart(
    redis_process: RedisProcess,
) -> None:
    """The subscriptions share one connection: after a restart it is opened again with
    every channel, and each subscription receives its own messages again."""
    redis_process.start()
    cache = _fast_cache(f"redis://127.0.0.1:{redis_process.port}/0")
    try:
        assert await _until(cache.connect)
        subs = {name: await cache.subscribe(name) for name in ("a", "b", "c")}
        redis_process.stop()
        redis_process.start()

        async def all_back() -> bool:
            try:
                receivers = [await cache.publish(name, f"to {name}") for name in subs]
            except CacheUnavailable:
                return False
            return receivers == [1, 1, 1]

        assert await _until(all_back)
        for name, sub in subs.items():
            message = await sub.get(5)
            assert (message.channel, message.data) == (name, f"to {name}")
        for sub in subs.values():
            await sub.close()
    finally:
        await cache.close()
