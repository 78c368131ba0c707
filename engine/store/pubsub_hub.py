"""One pub/sub connection per :class:`~engine.store.cache.Cache` for all of its subscriptions.

Every agent feed, customer stream and background listener of a process subscribes through
its cache. With a Redis connection each, a worker would hold one connection and one reader
per open WebSocket (Redis's default ``maxclients`` is 10,000). The hub holds a single
connection instead. It subscribes each channel once, however many local subscriptions want
it (reference-counted), and one reader task hands every message to the subscriptions of its
channel.

After a connection loss the reader reconnects with the cache's backoff and subscribes every
channel again. Messages published meanwhile are lost, as they always are with pub/sub.
A subscriber that falls more than ``MAX_QUEUED`` messages behind loses the newest ones; Redis
itself drops a subscriber whose output buffer overflows. Sharded pub/sub (clusters) keeps a
connection per subscription: its channels live on different nodes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from engine.store.errors import CacheUnavailable

if TYPE_CHECKING:
    from engine.store.cache import Cache

log = logging.getLogger("nexus.cache")

#: messages a subscription may have waiting before new ones are dropped
MAX_QUEUED = 10_000


class Member(Protocol):
    def deliver(self, channel: str, data: str) -> None: ...


class PubSubHub:
    """See the module docstring. ``join`` / ``leave`` take full channel names (prefixed)."""

    def __init__(self, cache: Cache) -> None:
        self.cache = cache
        self._pubsub: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._members: dict[str, set[Member]] = {}
        self._waiting: dict[str, list[asyncio.Future[None]]] = {}
        self._lock = asyncio.Lock()
        self._closed = False

    @property
    def channels(self) -> list[str]:
        return list(self._members)

    async def join(self, member: Member, channels: Sequence[str]) -> None:
        """Subscribe ``member`` to ``channels``; returns once Redis confirmed each channel
        (so nothing published afterwards is missed while connected). Raises
        :class:`CacheUnavailable` when Redis cannot be reached."""
        from engine.store.cache import CONNECTION_ERRORS

        futures: list[asyncio.Future[None]] = []
        async with self._lock:
            if self._closed:
                raise CacheUnavailable("the cache is closed")
            new = [ch for ch in dict.fromkeys(channels) if ch not in self._members]
            if self._pubsub is None:
                # (re)open with every channel, this member's included, confirmed inline
                self._pubsub = await self._open([*self._members, *new])
                for ch in channels:
                    self._members.setdefault(ch, set()).add(member)
                self._start_reader()
                return
            for ch in channels:
                self._members.setdefault(ch, set()).add(member)
            if not new:
                return
            loop = asyncio.get_running_loop()
            for ch in new:
                future: asyncio.Future[None] = loop.create_future()
                self._waiting.setdefault(ch, []).append(future)
                futures.append(future)
            try:
                await self._pubsub.subscribe(*new)
            except BaseException as exc:
                self._drop(member, channels)
                if isinstance(exc, CONNECTION_ERRORS):
                    self.cache._failed(exc)
                    raise CacheUnavailable(f"cannot subscribe: {type(exc).__name__}") from exc
                raise
        # confirmations come through the reader, outside the lock
        timeout = self.cache.connect_timeout + self.cache.command_timeout
        try:
            async with asyncio.timeout(timeout):
                await asyncio.gather(*futures)
        except BaseException as exc:
            async with self._lock:
                self._drop(member, channels)
            if isinstance(exc, TimeoutError):
                raise CacheUnavailable("no subscription confirmation from redis") from exc
            raise

    async def leave(self, member: Member, channels: Sequence[str]) -> None:
        async with self._lock:
            gone = self._drop(member, channels)
            if self._pubsub is None:
                return
            if not self._members:  # nobody listens: give the connection back
                await self._shut()
                return
            if gone:
                try:
                    await self._pubsub.unsubscribe(*gone)
                except Exception:  # noqa: BLE001 - the reader notices a dead connection
                    log.debug("unsubscribe failed", exc_info=True)

    async def close(self) -> None:
        async with self._lock:
            self._closed = True
            await self._shut()

    # ---- internals ------------------------------------------------------------------------

    def _drop(self, member: Member, channels: Sequence[str]) -> list[str]:
        """Forget ``member`` on ``channels``; the channels nobody wants any more."""
        gone = []
        for ch in channels:
            members = self._members.get(ch)
            if members is None:
                continue
            members.discard(member)
            if not members:
                del self._members[ch]
                gone.append(ch)
        return gone

    async def _open(self, channels: list[str]) -> Any:
        """A pubsub connection subscribed to ``channels``, confirmations read inline."""
        from engine.store.cache import subscribed_pubsub

        return await subscribed_pubsub(
            self.cache, channels, sharded=False, on_message=self._dispatch
        )

    def _start_reader(self) -> None:
        if self._reader is None or self._reader.done():
            self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _shut(self) -> None:
        from engine.store.cache import _close_pubsub

        pubsub, self._pubsub = self._pubsub, None
        reader, self._reader = self._reader, None
        if reader is not None and reader is not asyncio.current_task():
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
        if pubsub is not None:
            with contextlib.suppress(Exception):  # a dead connection has nothing left
                await pubsub.unsubscribe()
            await _close_pubsub(pubsub)
        for futures in self._waiting.values():
            for future in futures:
                if not future.done():
                    future.set_exception(CacheUnavailable("the subscription connection closed"))
        self._waiting.clear()

    def _dispatch(self, msg: dict[str, Any]) -> None:
        channel = msg["channel"]
        for member in tuple(self._members.get(channel, ())):
            member.deliver(channel, msg["data"])

    async def _read(self) -> None:
        from engine.store.cache import CONNECTION_ERRORS

        failures = 0
        while not self._closed:
            pubsub = self._pubsub
            if pubsub is None:
                return
            try:
                msg = await pubsub.get_message(ignore_subscribe_messages=False, timeout=1.0)
            except CONNECTION_ERRORS as exc:
                if pubsub is not self._pubsub:
                    continue  # closed by leave() or close() meanwhile
                self.cache._failed(exc)
                log.warning("subscription connection lost: %s: %s", type(exc).__name__, exc)
                failures = await self._reconnect(pubsub, failures)
                continue
            if msg is None:
                continue
            failures = 0
            kind = msg["type"]
            if kind == "message":
                self._dispatch(msg)
            elif kind == "subscribe":
                for future in self._waiting.pop(msg["channel"], ()):
                    if not future.done():
                        future.set_result(None)

    async def _reconnect(self, dead: Any, failures: int) -> int:
        """Open a new connection with every channel; the cache's backoff between tries."""
        from engine.store.cache import _close_pubsub

        async with self._lock:
            if self._pubsub is not dead:
                return failures
            self._pubsub = None
            await _close_pubsub(dead)
            for futures in self._waiting.values():  # their SUBSCRIBE went down with it
                for future in futures:
                    if not future.done():
                        future.set_exception(CacheUnavailable("subscription connection lost"))
            self._waiting.clear()
        while not self._closed:
            async with self._lock:
                if self._pubsub is not None:  # a join() reopened it
                    return 0
                if not self._members:
                    return 0
                try:
                    self._pubsub = await self._open(list(self._members))
                    return 0
                except CacheUnavailable:
                    failures += 1
            await asyncio.sleep(self.cache._backoff(failures))
        return failures
