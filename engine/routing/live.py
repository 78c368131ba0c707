"""The live side of conversations: Redis key and channel names, and the fan-out bus.

Every name goes through :meth:`engine.store.cache.Cache.key` (the cache's prefix, ``nexus:``
by default). Pub/sub payloads are JSON objects with a ``kind``:

* ``conv:{conversationId}``: ``{"kind": "message", "message": {...}}`` for every stored
  message (after commit) and live-only typing events (``message.index`` null);
* ``agent:{tenant}:{agent}``: the agent feed: ``offer``, ``offer-revoked``, ``assigned``,
  ``released`` (held / transferred / done), and ``message`` of their interactions;
* ``events:{tenant}``: ``interaction`` (STARTED / FINISHED, as also written to the outbox)
  and ``queue`` (a queue's content changed: supervisors refresh their stats);
* ``rt:kick``: ``{tenant}``: a dispatcher should look at the tenant's queues now.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from engine.store.cache import Cache
from engine.store.errors import CacheError

log = logging.getLogger("nexus.routing.live")


def conversation_channel(conversation_id: str) -> str:
    return f"conv:{conversation_id}"


def agent_channel(tenant: str, agent: str) -> str:
    return f"agent:{tenant}:{agent.lower()}"


def events_channel(tenant: str) -> str:
    return f"events:{tenant}"


KICK_CHANNEL = "rt:kick"


class RouterKeys:
    """Redis keys of the router's shared state for one tenant (see docs/conversations.md)."""

    def __init__(self, cache: Cache, tenant: str) -> None:
        self._cache = cache
        self.tenant = tenant

    def _k(self, *parts: object) -> str:
        return self._cache.key("rt", self.tenant, *parts)

    def waiting(self, queue: str) -> str:
        """ZSET interaction id -> enqueue time (epoch seconds): the queue's waiting line."""
        return self._k("q", queue, "waiting")

    def queue_active(self, queue: str) -> str:
        """SET of interaction ids offered or assigned from the queue (queue capacity)."""
        return self._k("q", queue, "active")

    def round_robin(self, queue: str) -> str:
        """Counter: the queue's round-robin pointer."""
        return self._k("q", queue, "rr")

    @property
    def queues(self) -> str:
        """SET of queue names that ever had waiting interactions (what dispatchers scan)."""
        return self._k("queues")

    @property
    def offers(self) -> str:
        """ZSET interaction id -> offer deadline (epoch seconds)."""
        return self._k("offers")

    @property
    def wakeups(self) -> str:
        """ZSET interaction id -> due time of a scheduled strategy retry (held interactions)."""
        return self._k("wakeups")

    def load(self, agent: str, media: str) -> str:
        """SET of interaction ids offered to or assigned to an agent for one media."""
        return self._k("agent", agent.lower(), "load", media)

    def presence(self, agent: str) -> str:
        """STRING ready|not-ready with a TTL refreshed by heartbeats."""
        return self._k("agent", agent.lower(), "presence")

    @property
    def idle(self) -> str:
        """HASH agent -> epoch seconds since which the agent has been idle (longest-idle)."""
        return self._k("idle")

    @property
    def lock(self) -> str:
        """STRING token: the tenant's dispatch lock (SET NX PX)."""
        return self._k("lock")

    @property
    def sweeper(self) -> str:
        """STRING: held (SET NX PX, most of a sweep interval) by the process that sweeps the
        tenant this interval; the others skip the sweep."""
        return self._k("sweeper")

    @property
    def dirty(self) -> str:
        """STRING: set when something was enqueued; a dispatcher clears it before scanning."""
        return self._k("dirty")


class LiveBus:
    """Publishes engine events on Redis pub/sub. Publishing never raises: what is published
    is already durable (or live-only), and subscribers recover missed messages from the
    store (see :meth:`ConversationService.subscribe`)."""

    def __init__(self, cache: Cache) -> None:
        self.cache = cache

    async def publish(self, channel: str, payload: Mapping[str, Any]) -> bool:
        text = json.dumps(payload, separators=(",", ":"), default=str)
        try:
            await self.cache.publish(channel, text)
        except (CacheError, OSError) as exc:
            log.warning("publish to %s failed: %s", channel, exc)
            return False
        return True

    async def publish_many(
        self,
        items: list[tuple[str, Mapping[str, Any]]],
        *,
        sets: Sequence[tuple[str, str, float]] = (),
    ) -> None:
        """Publish several payloads in one pipeline round trip (in order), together with
        ``sets`` (``(key, value, ttl seconds)``, keys unprefixed). Never raises."""
        if not items and not sets:
            return
        if self.cache.sharded_pubsub or self.cache.settings.kind == "cluster":
            for channel, payload in items:
                await self.publish(channel, payload)
            for key, value, ttl in sets:
                try:
                    await self.cache.set(key, value, ttl=ttl)
                except (CacheError, OSError) as exc:
                    log.warning("setting %s failed: %s", key, exc)
            return
        key = self.cache.key
        commands: list[list[str | int]] = [
            ["PUBLISH", key(ch), json.dumps(p, separators=(",", ":"), default=str)]
            for ch, p in items
        ]
        commands += [["SET", key(k), value, "PX", max(1, int(ttl * 1000))]
                     for k, value, ttl in sets]
        try:
            replies = await self.cache.commands(commands)
        except (CacheError, OSError) as exc:
            log.warning("publishing %d events failed: %s", len(items), exc)
            return
        errors = [r for r in replies if isinstance(r, Exception)]
        if errors:
            log.warning("publishing %d events: %d commands failed: %s",
                        len(items), len(errors), errors[0])
