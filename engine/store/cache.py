"""The live cache: Redis (or Redis Cluster, or in-process fakeredis) via ``redis.asyncio``.

URLs (``NEXUS_REDIS_URL``):

* ``memory://`` (or ``memory://<name>``): fakeredis, one shared ``FakeServer`` per name per
  process. Single process only: workers of one pod do not share it.
* ``redis://[:password@]host:port[/db]``, ``rediss://...`` (TLS), or a comma-separated list of
  them. Without ``cluster`` the first reachable node is used (and the next one on failover);
  with ``cluster`` the nodes are the ``RedisCluster`` startup nodes.

:class:`Cache` keeps a state machine (``CONNECTING -> READY -> RECONNECTING -> READY``, and
``CLOSED``) that /health/detail shows. A command failing with a connection error moves it to
RECONNECTING and starts a background task that retries with capped exponential backoff and
jitter; commands keep being attempted meanwhile (and raise :class:`CacheUnavailable`).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NamedTuple, TypeVar
from urllib.parse import urlsplit

import fakeredis
import redis.asyncio as aioredis
import redis.exceptions as rexc
from redis.asyncio.cluster import ClusterNode, RedisCluster

from engine.store import metrics as m
from engine.store.errors import CacheError, CacheUnavailable, InvalidCacheURL
from engine.store.pubsub_hub import MAX_QUEUED, PubSubHub

log = logging.getLogger("nexus.cache")

T = TypeVar("T")

DEFAULT_CACHE_URL = "memory://"

#: Errors that mean "the connection is gone", as opposed to a bad command.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    rexc.ConnectionError,  # includes AuthenticationError, BusyLoadingError
    rexc.TimeoutError,
    rexc.ClusterDownError,
    rexc.TryAgainError,
    OSError,
    TimeoutError,
)


class CacheState(StrEnum):
    CONNECTING = "CONNECTING"
    READY = "READY"
    RECONNECTING = "RECONNECTING"
    CLOSED = "CLOSED"


class RateLimit(NamedTuple):
    """Result of :meth:`Cache.hit`: unpacks as ``allowed, retry_after``."""

    allowed: bool
    retry_after: float  # seconds until the window resets; 0.0 when allowed


@dataclass(frozen=True)
class PubSubMessage:
    channel: str  # without the cache's key prefix
    data: str


def lease_size(capacity: int) -> int:
    """How many rate-limit tokens one Redis round trip takes for a key of ``capacity``."""
    return 1 if capacity <= 1000 else capacity // 100


@dataclass
class _Lease:
    tokens: int  # leased and not spent yet
    until: float  # monotonic end of the window the tokens belong to
    denied: bool  # Redis had nothing left for this window


@dataclass(frozen=True)
class CacheSettings:
    kind: str  # "memory" | "redis" | "cluster"
    nodes: tuple[str, ...]  # redis(s):// URLs; for memory: ("memory://<name>",)
    password: str | None
    tls: bool

    @property
    def memory_name(self) -> str:
        return urlsplit(self.nodes[0]).netloc if self.kind == "memory" else ""

    def display_nodes(self) -> list[str]:
        out = []
        for node in self.nodes:
            parts = urlsplit(node)
            if parts.password is not None:
                host = f"{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname)
                user = parts.username or ""
                node = parts._replace(netloc=f"{user}:***@{host}").geturl()
            out.append(node)
        return out


def parse_cache_url(
    url: str | None,
    *,
    cluster: bool = False,
    tls: bool = False,
    password: str | None = None,
) -> CacheSettings:
    """Parse ``NEXUS_REDIS_URL`` (plus the cluster / TLS / password settings)."""
    url = (url or DEFAULT_CACHE_URL).strip()
    password = password or None
    if url.startswith("memory:"):
        if cluster:
            raise InvalidCacheURL("memory:// cannot be a Redis Cluster; use redis:// nodes")
        if "," in url:
            raise InvalidCacheURL(f"memory:// takes no node list, got {url!r}")
        return CacheSettings("memory", (url,), None, False)
    nodes: list[str] = []
    for raw in url.split(","):
        raw = raw.strip()
        if not raw:
            continue
        if "://" not in raw:
            raw = f"redis://{raw}"
        try:
            parts = urlsplit(raw)
            parts.port  # noqa: B018 - validates the port
        except ValueError as exc:
            raise InvalidCacheURL(f"malformed Redis node {raw!r}: {exc}") from exc
        scheme = parts.scheme.lower()
        if scheme not in ("redis", "rediss"):
            raise InvalidCacheURL(
                f"unsupported Redis URL scheme {parts.scheme!r} in {raw!r}: use redis://, "
                "rediss:// or memory://"
            )
        if not parts.hostname:
            raise InvalidCacheURL(f"Redis node {raw!r} names no host")
        if tls and scheme == "redis":
            raw = "rediss://" + raw[len("redis://"):]
        nodes.append(raw)
    if not nodes:
        raise InvalidCacheURL(f"no Redis node in {url!r}")
    uses_tls = tls or any(node.startswith("rediss://") for node in nodes)
    return CacheSettings("cluster" if cluster else "redis", tuple(nodes), password, uses_tls)


_FAKE_SERVERS: dict[str, fakeredis.FakeServer] = {}


def fake_server(name: str = "") -> fakeredis.FakeServer:
    """The process-wide FakeServer behind ``memory://<name>`` (created on first use)."""
    server = _FAKE_SERVERS.get(name)
    if server is None:
        server = _FAKE_SERVERS[name] = fakeredis.FakeServer()
    return server


Client = aioredis.Redis | RedisCluster


class Cache:
    """The live cache. ``await cache.connect()``; helpers; ``await cache.close()``.

    ``prefix`` is put in front of every key and channel the helpers touch (``cache.key()``
    builds keys for direct ``cache.client`` use). ``health_check_interval`` (seconds; None
    disables) pings in the background so the state is right even without traffic.
    ``sharded_pubsub`` (default: on for cluster) uses SPUBLISH/SSUBSCRIBE.
    ``max_connections`` bounds each node's pool; callers beyond it wait (up to
    ``command_timeout``) rather than fail.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        cluster: bool = False,
        tls: bool = False,
        password: str | None = None,
        prefix: str = "nexus:",
        connect_timeout: float = 2.0,
        command_timeout: float = 5.0,
        backoff_initial: float = 0.1,
        backoff_max: float = 10.0,
        health_check_interval: float | None = 10.0,
        sharded_pubsub: bool | None = None,
        ssl_ca_certs: str | None = None,
        max_connections: int = 50,
    ) -> None:
        self.settings = parse_cache_url(url, cluster=cluster, tls=tls, password=password)
        self.prefix = prefix
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.health_check_interval = health_check_interval
        self.sharded_pubsub = (
            self.settings.kind == "cluster" if sharded_pubsub is None else sharded_pubsub
        )
        self._ssl_ca_certs = ssl_ca_certs
        self.max_connections = max_connections
        self._state = CacheState.CLOSED
        self._client: Client | None = None
        self._clients: dict[str, Client] = {}  # node -> client, reused across reconnects
        self._node: str | None = None
        self._reconnect_task: asyncio.Task[None] | None = None
        self._monitor_task: asyncio.Task[None] | None = None
        self._down_since: float | None = None
        self._ready_event = asyncio.Event()
        self._subscriptions: set[Subscription] = set()
        #: the one pub/sub connection of this cache's (non-sharded) subscriptions
        self._hub = PubSubHub(self)
        # Rate-limit tokens leased from Redis in batches (see hit()).
        self._leases: dict[str, _Lease] = {}
        self._lease_locks: dict[str, asyncio.Lock] = {}
        #: claims waiting for the next pipeline (see :meth:`claim`)
        self._claims: list[tuple[str, str, int, asyncio.Future[str | None]]] = []
        self._claim_tasks: set[asyncio.Task[None]] = set()
        self._set_get = True  # SET NX GET (Redis >= 7.0); False after the server refused it
        self.last_error: str | None = None

    def __repr__(self) -> str:
        return f"Cache({self.settings.display_nodes()!r}, state={self._state})"

    # -- state ---------------------------------------------------------------------------

    @property
    def state(self) -> CacheState:
        return self._state

    @property
    def ready(self) -> bool:
        return self._state is CacheState.READY

    @property
    def node(self) -> str | None:
        """The node in use (non-cluster), password hidden."""
        if self._node is None:
            return None
        index = self.settings.nodes.index(self._node)
        return self.settings.display_nodes()[index]

    def detail(self) -> dict[str, Any]:
        """What /health/detail shows about the cache (no I/O)."""
        return {
            "ready": self.ready,
            "state": str(self._state),
            "kind": self.settings.kind,
            "nodes": self.settings.display_nodes(),
            "node": self.node,
            "lastError": self.last_error,
        }

    def _set_state(self, new: CacheState) -> None:
        old = self._state
        if old is new:
            return
        self._state = new
        now = time.monotonic()
        if old is CacheState.READY:
            m.REDIS_READY.dec()
            m.REDIS_ESTABLISHED.dec()
            self._ready_event.clear()
        elif old is CacheState.RECONNECTING:
            m.REDIS_RECONNECTING.dec()
        if new is CacheState.READY:
            m.REDIS_READY.inc()
            m.REDIS_ESTABLISHED.inc()
            if self._down_since is not None:
                m.REDIS_DURATION_UNTIL_READY.observe(now - self._down_since)
            self._down_since = None
            self._ready_event.set()
        elif new is CacheState.RECONNECTING:
            m.REDIS_RECONNECTING.inc()
            if self._down_since is None:
                self._down_since = now
        elif new is CacheState.CONNECTING:
            self._down_since = now
        log.info("redis cache %s -> %s", old, new)

    # -- lifecycle -----------------------------------------------------------------------

    async def connect(self) -> bool:
        """Start connecting. True if ready now; otherwise it goes on in the background
        (state RECONNECTING) and :meth:`wait_ready` tells when it is. Never raises for an
        unreachable server."""
        if self._state is not CacheState.CLOSED:
            return self.ready
        self._set_state(CacheState.CONNECTING)
        if await self._attempt():
            self._start_monitor()
            return True
        if self._state is CacheState.CLOSED:  # closed while connecting
            return False
        self._set_state(CacheState.RECONNECTING)
        self._start_reconnect()
        self._start_monitor()
        return False

    async def wait_ready(self, timeout: float | None = None) -> bool:
        """Wait until READY (at most ``timeout`` seconds); True if it is."""
        if self.ready:
            return True
        try:
            await asyncio.wait_for(self._ready_event.wait(), timeout)
        except TimeoutError:
            return self.ready
        return self.ready

    async def close(self) -> None:
        if self._state is CacheState.CLOSED and not self._clients:
            return
        self._set_state(CacheState.CLOSED)
        for task in (self._reconnect_task, self._monitor_task):
            if task is not None and not task.done():
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
        self._reconnect_task = self._monitor_task = None
        for sub in list(self._subscriptions):
            await sub.close()
        await self._hub.close()
        self._hub = PubSubHub(self)  # a reconnected cache subscribes afresh
        clients = list(self._clients.values())
        self._clients.clear()
        self._client = None
        self._node = None
        for client in clients:
            try:
                await client.aclose()
            except Exception:  # noqa: BLE001 - closing a dead connection may fail
                log.debug("closing a redis client failed", exc_info=True)

    async def __aenter__(self) -> Cache:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _make_client(self, node: str) -> Client:
        common: dict[str, Any] = {
            "decode_responses": True,
            "socket_connect_timeout": self.connect_timeout,
            # no per-reply read timeout: call() sets one deadline per call instead (redis-py
            # arms a timeout context around every reply it reads, a pipeline's included:
            # about a tenth of a busy worker's CPU)
            "socket_timeout": None,
        }
        if self.settings.kind == "memory":
            return fakeredis.FakeAsyncRedis(
                server=fake_server(self.settings.memory_name),
                decode_responses=True,
                connection_pool_class=aioredis.BlockingConnectionPool,
                max_connections=self.max_connections,
            )
        if self.settings.password:
            common["password"] = self.settings.password
        if self._ssl_ca_certs and self.settings.tls:
            common["ssl_ca_certs"] = self._ssl_ca_certs
        if self.settings.kind == "cluster":
            startup = []
            for raw in self.settings.nodes:
                parts = urlsplit(raw)
                startup.append(ClusterNode(parts.hostname or "localhost", parts.port or 6379))
                if parts.password and "password" not in common:
                    common["password"] = parts.password
            return RedisCluster(
                startup_nodes=startup,
                ssl=self.settings.tls,
                max_connections=self.max_connections,
                **common,
            )
        # A blocking pool: a burst beyond max_connections waits for a free connection
        # instead of failing with "Too many connections".
        pool = aioredis.BlockingConnectionPool.from_url(
            node,
            max_connections=self.max_connections,
            timeout=self.command_timeout,
            **common,
        )
        return aioredis.Redis.from_pool(pool)

    async def _probe(self, client: Client) -> None:
        if isinstance(client, RedisCluster):
            await asyncio.wait_for(client.initialize(), self.connect_timeout * 2)
        await asyncio.wait_for(client.ping(), self.connect_timeout + self.command_timeout)

    async def _attempt(self) -> bool:
        """One connection attempt over the nodes; READY on success."""
        if self.settings.kind == "cluster":
            candidates = [self.settings.nodes[0]]  # one client for the whole cluster
        else:
            candidates = list(self.settings.nodes)
        for node in candidates:
            if self._state is CacheState.CLOSED:
                return False
            client = self._clients.get(node)
            fresh = client is None
            if client is None:
                client = self._make_client(node)
            try:
                await self._probe(client)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure means "not this node, now"
                m.REDIS_ERRORS.inc()
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.debug("redis node %s not ready: %s", node, self.last_error)
                if fresh and isinstance(client, RedisCluster):
                    try:
                        await client.aclose()
                    except Exception:  # noqa: BLE001
                        log.debug("closing a failed cluster client failed", exc_info=True)
                elif fresh:
                    self._clients[node] = client
                continue
            if self._state is CacheState.CLOSED:
                self._clients.setdefault(node, client)
                return False
            self._clients[node] = client
            self._client = client
            self._node = None if self.settings.kind == "cluster" else node
            self.last_error = None
            self._set_state(CacheState.READY)
            return True
        return False

    def _backoff(self, attempt: int) -> float:
        ceiling = min(self.backoff_max, self.backoff_initial * (2**min(attempt, 30)))
        return random.uniform(ceiling / 2, ceiling)

    def _start_reconnect(self) -> None:
        if self._reconnect_task is None or self._reconnect_task.done():
            self._reconnect_task = asyncio.create_task(
                self._reconnect_loop(), name="nexus-cache-reconnect"
            )

    async def _reconnect_loop(self) -> None:
        attempt = 0
        while self._state in (CacheState.CONNECTING, CacheState.RECONNECTING):
            await asyncio.sleep(self._backoff(attempt))
            attempt += 1
            if self._state is CacheState.READY:  # a command found it working meanwhile
                return
            if self._state is CacheState.CLOSED:
                return
            if await self._attempt():
                return

    def _start_monitor(self) -> None:
        if self.health_check_interval and (
            self._monitor_task is None or self._monitor_task.done()
        ):
            self._monitor_task = asyncio.create_task(
                self._monitor_loop(self.health_check_interval), name="nexus-cache-monitor"
            )

    async def _monitor_loop(self, interval: float) -> None:
        while self._state is not CacheState.CLOSED:
            await asyncio.sleep(interval)
            if self._state is CacheState.READY:
                await self.ping()

    def _failed(self, exc: BaseException) -> None:
        """A command hit a connection error: count it, go RECONNECTING, retry in background."""
        m.REDIS_ERRORS.inc()
        self.last_error = f"{type(exc).__name__}: {exc}"
        if self._state is CacheState.CLOSED:
            return
        if self._state is CacheState.READY:
            log.warning("redis connection lost: %s", self.last_error)
            self._set_state(CacheState.RECONNECTING)
        self._start_reconnect()

    # -- commands ------------------------------------------------------------------------

    @property
    def client(self) -> Client:
        """The underlying client (keys via :meth:`key`). Raises if there is none yet."""
        if self._client is None or self._state is CacheState.CLOSED:
            raise CacheUnavailable(f"the cache is {self._state.lower()}")
        return self._client

    async def call(self, op: Callable[[Client], Awaitable[T]]) -> T:
        """Run ``op(client)`` within ``command_timeout``; a connection error or the timeout
        becomes :class:`CacheUnavailable` and starts reconnecting (a connection cut by the
        timeout mid-reply is closed, never reused)."""
        client = self.client
        try:
            async with asyncio.timeout(self.command_timeout):
                result = await op(client)
        except CONNECTION_ERRORS as exc:
            self._failed(exc)
            raise CacheUnavailable(f"redis unavailable: {type(exc).__name__}: {exc}") from exc
        if self._state is CacheState.RECONNECTING and client is self._client:
            self._set_state(CacheState.READY)
        return result

    def key(self, *parts: object) -> str:
        """``prefix`` + parts joined by ``:``."""
        return self.prefix + ":".join(str(part) for part in parts)

    async def ping(self) -> bool:
        """Health probe (never raises)."""
        try:
            return bool(await self.call(lambda c: c.ping()))
        except (CacheUnavailable, *CONNECTION_ERRORS):
            return False

    async def get(self, key: str) -> str | None:
        return await self.call(lambda c: c.get(self.key(key)))

    async def set(self, key: str, value: str | int | float, ttl: float | None = None) -> None:
        px = None if ttl is None else max(1, int(ttl * 1000))
        await self.call(lambda c: c.set(self.key(key), value, px=px))

    async def delete(self, *keys: str) -> int:
        if not keys:
            return 0
        full = [self.key(k) for k in keys]
        if self.settings.kind == "cluster":
            return sum([await self.call(lambda c, k=k: c.delete(k)) for k in full])
        return int(await self.call(lambda c: c.delete(*full)))

    async def setnx_with_ttl(self, key: str, value: str, ttl_seconds: float) -> bool:
        """Set ``key`` only if absent, expiring after ``ttl_seconds``. True if this call set
        it (e.g. first delivery of an idempotency key), False if it already existed."""
        if ttl_seconds <= 0:
            raise ValueError("ttl_seconds must be positive")
        px = max(1, int(ttl_seconds * 1000))
        result = await self.call(lambda c: c.set(self.key(key), value, px=px, nx=True))
        return bool(result)

    async def commands(self, commands: Sequence[Sequence[str | int]]) -> list[Any]:
        """Run raw commands (keys already prefixed) as one pipeline and return their replies
        in order; an error reply is returned as its :class:`redis.exceptions.ResponseError`,
        not raised. Not for a cluster (keys of other slots).

        For hot paths that send many small commands: on a Redis server they are written in
        one piece and their replies read straight from the parser, without redis-py's
        per-command pipeline objects (command stack, option parsing, response callbacks),
        which cost more CPU than the commands themselves. memory:// runs them through a
        pipeline."""
        if self.settings.kind == "cluster":
            raise CacheError("commands() needs a single Redis node")
        if self.settings.kind == "memory":
            return await self.call(lambda c: _pipelined(c, commands))
        payload = _pack(commands)

        async def exchange(conn: Any, replies: list[Any]) -> list[Any]:
            await conn.send_packed_command(payload)
            for _ in commands:
                try:
                    replies.append(await conn.read_response())
                except rexc.ResponseError as exc:  # the reply was read: still in step
                    replies.append(exc)
            return replies

        async def op(client: Client) -> list[Any]:
            pool = client.connection_pool
            conn = await pool.get_connection()
            try:
                replies: list[Any] = []
                try:
                    return await exchange(conn, replies)
                except (rexc.ConnectionError, OSError):
                    if replies:  # some ran: running them again could repeat them
                        raise
                    # a pooled connection found dead (a server restart): once more on a new
                    # one, as redis-py retries its own commands and pipelines
                    await conn.disconnect(nowait=True)
                    return await exchange(conn, replies)
            except BaseException:
                # cut mid-way (timeout, cancellation, lost connection): replies may be
                # pending on it, so it is closed rather than reused
                await conn.disconnect(nowait=True)
                raise
            finally:
                await pool.release(conn)

        return await self.call(op)

    async def claim(self, key: str, value: str, ttl_seconds: float) -> str | None:
        """Set ``key`` to ``value`` only if absent, expiring after ``ttl_seconds``: None when
        this call set it, else the value the key already holds (an idempotency key: first
        delivery, or the marker another delivery left).

        Claims made by concurrent tasks of this process share one pipeline round trip
        (``SET NX PX GET`` per key; ``SET NX PX`` + ``GET`` on a Redis older than 7.0): a busy
        webhook pays one Redis call per event-loop turn, not one per request. On a cluster
        each claim is its own call."""
        if ttl_seconds <= 0:
            raise ValueError("ttl_seconds must be positive")
        px = max(1, int(ttl_seconds * 1000))
        if self.settings.kind == "cluster":
            if await self.setnx_with_ttl(key, value, ttl_seconds):
                return None
            return await self.get(key) or ""
        future: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._claims.append((self.key(key), value, px, future))
        if len(self._claims) == 1:
            # runs after every callback already ready: the claims of this turn join it
            task = asyncio.get_running_loop().create_task(self._send_claims())
            self._claim_tasks.add(task)
            task.add_done_callback(self._claim_tasks.discard)
        return await future

    async def _send_claims(self) -> None:
        claims, self._claims = self._claims, []

        def commands() -> list[list[str | int]]:
            if self._set_get:  # one command: the old value, or None when set now
                return [["SET", full, value, "PX", px, "NX", "GET"]
                        for full, value, px, _ in claims]
            out: list[list[str | int]] = []
            for full, value, px, _ in claims:
                out += [["SET", full, value, "PX", px, "NX"], ["GET", full]]
            return out

        try:
            try:
                replies = await self.commands(commands())
                refused = self._set_get and any(
                    isinstance(r, rexc.ResponseError) for r in replies
                )
            except rexc.ResponseError:
                if not self._set_get:
                    raise
                refused = True
            if refused:
                # Redis < 7.0 has no SET NX GET: SET NX and GET from now on
                log.info("redis has no SET NX GET; claims use SET NX + GET")
                self._set_get = False
                replies = await self.commands(commands())
            error = next((r for r in replies if isinstance(r, rexc.ResponseError)), None)
            if error is not None:
                raise error
        except Exception as exc:  # noqa: BLE001 - every waiter gets the error
            for *_, future in claims:
                if not future.done():
                    future.set_exception(exc)
            return
        for i, (*_, future) in enumerate(claims):
            if future.done():  # the caller was cancelled
                continue
            if self._set_get:
                old = replies[i]
                future.set_result(old)
            else:
                was_set, current = replies[2 * i], replies[2 * i + 1]
                future.set_result(None if was_set else (current if current is not None else ""))

    async def hit(self, key: str, capacity: int, window_seconds: float) -> RateLimit:
        """Count one request against ``key``: at most ``capacity`` per fixed window of
        ``window_seconds`` (the window starts at its first hit).

        Atomic across tasks, processes and pods: ``SET key 0 PX window NX; INCRBY; PTTL`` run
        as one MULTI/EXEC on the key's node, so at most ``capacity`` hits of a window are
        allowed however many race. ``retry_after`` is the time until the window resets.

        Large capacities lease tokens in batches (:func:`lease_size`: 1 up to 1,000, then 1%
        of the capacity) and spend them locally, so a busy key costs one Redis round trip per
        batch instead of one per request. Never more than ``capacity`` are allowed; a process
        may strand at most one unused batch per window (under-admission, never over).
        """
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        if window_seconds <= 0:
            raise ValueError("window_seconds must be positive")
        batch = lease_size(capacity)
        if batch == 1:
            return await self._hit_remote(key, capacity, window_seconds, 1)
        spent = self._spend_lease(key)
        if spent is not None:
            return spent
        # One lease request per key in flight per process: concurrent misses wait for it
        # and then spend its tokens instead of each leasing (and stranding) a batch.
        lock = self._lease_locks.get(key)
        if lock is None:
            lock = self._lease_locks[key] = asyncio.Lock()
        async with lock:
            spent = self._spend_lease(key)
            if spent is not None:
                return spent
            return await self._hit_remote(key, capacity, window_seconds, batch)

    def _spend_lease(self, key: str) -> RateLimit | None:
        lease = self._leases.get(key)
        if lease is None:
            return None
        now = time.monotonic()
        if lease.until <= now:
            return None
        if lease.tokens > 0:
            lease.tokens -= 1
            return RateLimit(True, 0.0)
        if lease.denied:
            return RateLimit(False, lease.until - now)
        return None

    async def _hit_remote(
        self, key: str, capacity: int, window_seconds: float, batch: int
    ) -> RateLimit:
        full = self.key("rl", key)
        window_ms = max(1, int(window_seconds * 1000))

        async def op(client: Client) -> tuple[int, int]:
            async with client.pipeline(transaction=True) as pipe:
                pipe.set(full, 0, px=window_ms, nx=True)
                pipe.incrby(full, batch)
                pipe.pttl(full)
                _, count, ttl = await pipe.execute()
            return int(count), int(ttl)

        count, ttl_ms = await self.call(op)
        if ttl_ms < 0:  # no expiry (the key was written by someone else): repair it
            await self.call(lambda c: c.pexpire(full, window_ms))
            ttl_ms = window_ms
        granted = max(0, min(batch, capacity - (count - batch)))
        if batch > 1:
            now = time.monotonic()
            if len(self._leases) > 10_000:
                self._leases = {k: v for k, v in self._leases.items() if v.until > now}
                self._lease_locks = {
                    k: v for k, v in self._lease_locks.items() if k in self._leases
                }
            self._leases[key] = _Lease(max(0, granted - 1), now + ttl_ms / 1000.0, granted == 0)
        if granted > 0:
            return RateLimit(True, 0.0)
        return RateLimit(False, ttl_ms / 1000.0)

    # -- pub/sub -------------------------------------------------------------------------

    async def publish(self, channel: str, message: str) -> int:
        """Publish to ``channel`` (prefixed); returns the number of receiving connections:
        one per cache (process) that subscribes to it, however many subscriptions it has."""
        full = self.key(channel)
        if self.sharded_pubsub:
            return int(await self.call(lambda c: c.spublish(full, message)))
        return int(await self.call(lambda c: c.publish(full, message)))

    async def subscribe(self, *channels: str) -> Subscription:
        """Subscribe and return once the server confirmed, so nothing published after this
        returns is missed (while connected). Iterate it with ``async for``; close it."""
        if not channels:
            raise ValueError("subscribe needs at least one channel")
        sub = Subscription(self, tuple(channels))
        await sub.start()
        return sub


class Subscription:
    """A reconnecting subscription. Non-sharded ones share their cache's one pub/sub
    connection (:mod:`engine.store.pubsub_hub`); sharded ones (clusters) hold their own.
    After a connection loss they resubscribe with backoff (messages published meanwhile are
    lost: pub/sub is fire-and-forget fan-out)."""

    def __init__(self, cache: Cache, channels: tuple[str, ...]) -> None:
        self.cache = cache
        self.channels = channels
        self._full = {cache.key(ch): ch for ch in channels}
        self._pubsub: Any = None
        self._closed = False
        self._failures = 0
        self._hub: PubSubHub | None = None if cache.sharded_pubsub else cache._hub
        self._queue: asyncio.Queue[PubSubMessage | None] = asyncio.Queue()
        self._dropped = 0

    async def start(self) -> Subscription:
        self.cache._subscriptions.add(self)
        try:
            if self._hub is not None:
                await self._hub.join(self, list(self._full))
            else:
                await self._open()
        except BaseException:
            self.cache._subscriptions.discard(self)
            raise
        return self

    def deliver(self, channel: str, data: str) -> None:
        """A message of one of its channels (called by the hub)."""
        if self._queue.qsize() >= MAX_QUEUED:
            self._dropped += 1
            if self._dropped == 1 or self._dropped % 1000 == 0:
                log.warning("subscription %s fell behind: %d messages dropped",
                            ",".join(self.channels), self._dropped)
            return
        self._queue.put_nowait(PubSubMessage(self._full.get(channel, channel), data))

    async def _open(self) -> None:
        self._pubsub = await subscribed_pubsub(self.cache, list(self._full), sharded=True)
        self._failures = 0

    async def get(self, timeout: float | None = None) -> PubSubMessage | None:
        """The next message, or None after ``timeout`` seconds (None: wait forever) or when
        closed."""
        if self._hub is not None:
            return await self._next(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._closed:
            remaining = 1.0 if deadline is None else deadline - time.monotonic()
            if remaining <= 0:
                return None
            if self._pubsub is None:
                try:
                    await self._open()
                except CacheUnavailable:
                    self._failures += 1
                    await asyncio.sleep(min(self.cache._backoff(self._failures), remaining))
                    continue
            try:
                msg = await read_pubsub(self._pubsub, ignore=True, timeout=min(remaining, 1.0))
            except CONNECTION_ERRORS as exc:
                self.cache._failed(exc)
                await _close_pubsub(self._pubsub)
                self._pubsub = None
                continue
            if msg and msg["type"] in ("message", "smessage"):
                channel = msg["channel"]
                return PubSubMessage(self._full.get(channel, channel), msg["data"])
        return None

    async def _next(self, timeout: float | None) -> PubSubMessage | None:
        if self._closed:
            return None
        if not self._queue.empty():
            return self._queue.get_nowait()
        try:
            async with asyncio.timeout(timeout):
                return await self._queue.get()  # None: closed meanwhile
        except TimeoutError:
            return None

    def __aiter__(self) -> AsyncIterator[PubSubMessage]:
        return self

    async def __anext__(self) -> PubSubMessage:
        msg = await self.get()
        if msg is None:
            raise StopAsyncIteration
        return msg

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.cache._subscriptions.discard(self)
        self._queue.put_nowait(None)  # wakes a get() under way
        if self._hub is not None:
            await self._hub.leave(self, list(self._full))
            return
        if self._pubsub is not None:
            pubsub, self._pubsub = self._pubsub, None
            try:
                await pubsub.sunsubscribe()
            except Exception:  # noqa: BLE001 - a dead connection has no subscriptions left
                log.debug("unsubscribe failed", exc_info=True)
            await _close_pubsub(pubsub)

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def subscribed_pubsub(
    cache: Cache,
    channels: Sequence[str],
    *,
    sharded: bool,
    on_message: Callable[[dict[str, Any]], None] | None = None,
) -> Any:
    """A pub/sub connection subscribed (SSUBSCRIBE when ``sharded``) to ``channels``, each
    confirmed by the server within connect + command timeout; messages that arrive meanwhile
    go to ``on_message``. A connection error is :class:`CacheUnavailable`."""
    pubsub = cache.client.pubsub()
    try:
        await (pubsub.ssubscribe if sharded else pubsub.subscribe)(*channels)
        pending = set(channels)
        deadline = time.monotonic() + cache.connect_timeout + cache.command_timeout
        while pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise rexc.TimeoutError("no subscription confirmation from redis")
            msg = await read_pubsub(pubsub, ignore=False, timeout=min(remaining, 1.0))
            if not msg:
                continue
            if msg["type"] in ("subscribe", "ssubscribe"):
                pending.discard(msg["channel"])
            elif on_message is not None and msg["type"] in ("message", "smessage"):
                on_message(msg)
    except BaseException as exc:
        await _close_pubsub(pubsub)
        if isinstance(exc, CONNECTION_ERRORS):
            cache._failed(exc)
            raise CacheUnavailable(f"cannot subscribe: {type(exc).__name__}: {exc}") from exc
        raise
    return pubsub


async def read_pubsub(pubsub: Any, *, ignore: bool, timeout: float) -> dict[str, Any] | None:
    """The next message of ``pubsub`` (sharded on a cluster), or None after ``timeout``."""
    if isinstance(pubsub, aioredis.cluster.ClusterPubSub):
        return await pubsub.get_sharded_message(ignore_subscribe_messages=ignore, timeout=timeout)
    return await pubsub.get_message(ignore_subscribe_messages=ignore, timeout=timeout)


async def _close_pubsub(pubsub: Any) -> None:
    try:
        await pubsub.aclose()
    except Exception:  # noqa: BLE001 - the connection may already be dead
        log.debug("closing a pubsub failed", exc_info=True)


def _pack(commands: Sequence[Sequence[str | int]]) -> bytes:
    """The RESP encoding of ``commands`` (arrays of bulk strings), in one buffer."""
    out: list[bytes] = []
    for command in commands:
        out.append(b"*%d\r\n" % len(command))
        for arg in command:
            data = arg.encode() if isinstance(arg, str) else str(arg).encode()
            out.append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(out)


async def _pipelined(client: Any, commands: Sequence[Sequence[str | int]]) -> list[Any]:
    """:meth:`Cache.commands` through a redis-py pipeline: raw replies, like the lean path
    (no response callbacks: SET NX GET answers the old value, not a bool)."""
    async with client.pipeline(transaction=False) as pipe:
        pipe.response_callbacks = {}
        for command in commands:
            pipe.execute_command(*command)
        return await pipe.execute(raise_on_error=False)
