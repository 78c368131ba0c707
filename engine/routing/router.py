"""The embedded router: queues, agents, presence, offers, async hold, Done.

Shared state, so any number of engine processes route together (key names in
:class:`engine.routing.live.RouterKeys`, all under the cache prefix):

* the **database** is the truth about every interaction (``segments.state``: queued,
  offered, assigned, held, done, abandoned; ``offered_to``, ``agent``, ``offer_deadline``,
  ``wake_at``); every transition is a conditional ``UPDATE ... WHERE state = ... RETURNING``,
  so of two processes racing for one change exactly one wins;
* **Redis** holds the scheduling indexes: a waiting line per queue (ZSET by enqueue time),
  offer deadlines and strategy wake-ups (ZSETs by due time), agent load (a SET of interaction
  ids per agent and media: SADD+SCARD in one MULTI reserves capacity atomically, SREM
  releases idempotently), presence (a key with a TTL that heartbeats refresh) and idle-since
  times (HASH) for longest-idle;
* a **dispatcher** per process (:meth:`Router.run`) wakes on ``rt:kick`` or every ``tick``
  seconds. Per tenant it first expires due offers and runs due wake-ups (each claimed by a
  ZREM that only one process wins), then, holding the tenant's dispatch lock (SET NX PX; an
  optimisation that keeps dispatch ordered: correctness comes from the atomic claims), offers
  waiting interactions. An offer is made only when the agent's capacity was reserved *and* the
  segment's ``queued -> offered`` update won, so an interaction is offered to exactly one agent
  however many dispatchers run. A wake-up without a kick first asks Redis which tenants have
  anything to do (at most three pipelined round trips for all tenants: a due offer or
  wake-up, the dirty mark of a kick, waiting interactions while an agent of their queue is
  ready) and dispatches only those; when none has, the next such wake-up comes
  ``IDLE_TICKS`` ticks later, or sooner when an offer or wake-up falls due;
* :meth:`Router.sweep` (at start and every ``sweep_interval``) rebuilds the Redis indexes from
  the database after a crash (queued segments missing from their line, offers without a
  deadline entry, stale load entries). One process per interval sweeps a tenant (the one
  that takes its ``sweeper`` key), in pipelines of ``SWEEP_CHUNK`` segments: it reads only
  the columns it needs and restores each index of a chunk with one variadic command.

Tenants are ccids; agents are config Users with the agent role (username, case-insensitive).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from engine.config.model import Model, User
from engine.config.model import Queue as QueueConfig
from engine.routing.append_batcher import OpenSegment
from engine.routing.conversation_models import (
    ConversationNotFound,
    InteractionEvent,
    InteractionEventType,
    InteractionNotFound,
    InvalidContactCenter,
    InvalidQueue,
    InvalidState,
    Message,
    MessageType,
    NotAnAgent,
    ParticipantType,
    QueueStats,
    Segment,
    SegmentState,
    from_epoch,
    utc,
)
from engine.routing.conversation_repo import ConversationRepo, Draft, dumps
from engine.routing.decider import (
    InteractionInfo,
    Redirect,
    Retry,
    StrategyDecider,
    Submit,
    Terminate,
    coerce_action,
)
from engine.routing.live import (
    KICK_CHANNEL,
    LiveBus,
    RouterKeys,
    agent_channel,
    conversation_channel,
    events_channel,
)
from engine.store.cache import Cache
from engine.store.conversation_tables import segments as segments_table
from engine.store.db import Store
from engine.store.errors import CacheError, StoreError

log = logging.getLogger("nexus.routing.router")

ASYNC_HOLD_QUEUE = "asynchold"
UNDELIVERED_QUEUE = "undelivered"
DEFAULT_WAKE_STRATEGY = "redirect_queue"
READY = "ready"
NOT_READY = "not-ready"
PRESENCE_STATES = (READY, NOT_READY)
DISTRIBUTIONS = ("longest-idle", "round-robin", "least-busy")
#: how many waiting interactions a dispatch pass reads from Redis and the store at a time
LINE_CHUNK = 100
#: a dispatcher woken by a kick first takes the kicks already waiting (for at most
#: KICK_DRAIN_SECONDS, each waited for at most KICK_DRAIN_WAIT) and serves them all with one
#: pass per tenant
KICK_DRAIN_SECONDS = 0.01
KICK_DRAIN_WAIT = 0.0005
#: segments restored per Redis pipeline by a sweep
SWEEP_CHUNK = 500
#: the sweeper key lives this share of the sweep interval
SWEEP_LEASE = 0.9
#: with nothing to do in any tenant, the dispatcher's next idle look comes this many ticks
#: later (kicks still wake it at once)
IDLE_TICKS = 4
MEDIA = ("chat", "sms", "email")

EventCallback = Callable[[InteractionEvent], Awaitable[None] | None]


class Router:
    """See the module docstring. ``model`` is a Model or a callable returning the current
    one; ``clock`` returns epoch seconds (tests pass a fake one)."""

    def __init__(
        self,
        store: Store,
        cache: Cache,
        model: Model | Callable[[], Model],
        *,
        decider: StrategyDecider,
        clock: Callable[[], float] | None = None,
        presence_ttl: float = 60.0,
        lock_ttl: float = 5.0,
        tick: float = 0.5,
        sweep_interval: float = 30.0,
        default_offer_timeout: float = 30.0,
        contacts: Any = None,
    ) -> None:
        self.store = store
        self.cache = cache
        self._model = model
        self.decider = decider
        self.clock = clock or time.time
        self.presence_ttl = presence_ttl
        self.lock_ttl = lock_ttl
        self.tick = tick
        self.sweep_interval = sweep_interval
        self.default_offer_timeout = default_offer_timeout
        self.contacts = contacts
        self.repo = ConversationRepo(store, self.clock)
        self.bus = LiveBus(cache)
        self._callbacks: list[EventCallback] = []
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._suspects: set[tuple[str, str, str, str]] = set()
        self._last_sweep = 0.0

    # ---- config ---------------------------------------------------------------------

    @property
    def model(self) -> Model:
        return self._model() if callable(self._model) else self._model

    def keys(self, tenant: str) -> RouterKeys:
        return RouterKeys(self.cache, tenant)

    @property
    def _tenants_key(self) -> str:
        return self.cache.key("rt", "tenants")

    def tenant_name(self, tenant: str) -> str:
        config = self.model.tenant_by_ccid(tenant)
        if config is None:
            raise InvalidContactCenter(f"unknown contact center {tenant!r}", field="x-ccid")
        return config.name

    def queue_config(self, tenant: str, queue: str) -> QueueConfig | None:
        return self.model.queue(queue, self.tenant_name(tenant))

    def agent(self, tenant: str, username: str) -> User:
        """The config User for an agent username (case-insensitive); :class:`NotAnAgent`
        unless it is an enabled user of the tenant with the agent role."""
        user = self.model.user(username, self.tenant_name(tenant))
        if user is None or not user.enabled or not user.has_role("agent") or not user.agent:
            raise NotAnAgent(f"{username!r} is not an agent of this contact center")
        return user

    def agents_of(self, tenant: str, queue: str) -> list[User]:
        name = self.tenant_name(tenant)
        return sorted(
            (
                u
                for u in self.model.agents_of(queue, name)
                if u.enabled and u.has_role("agent") and u.tenant == name
            ),
            key=lambda u: u.username.lower(),
        )

    def offer_timeout(self, tenant: str, queue: str) -> float:
        config = self.queue_config(tenant, queue)
        if config is None:
            return self.default_offer_timeout
        return float(config.offer_timeout_seconds or self.default_offer_timeout)

    def interaction_subtype(self, channel_id: str | None) -> str | None:
        if channel_id is None:
            return None
        channel = self.model.channel(channel_id)
        return None if channel is None else channel.interaction_subtype

    # ---- events -----------------------------------------------------------------------

    def on_event(self, callback: EventCallback) -> None:
        """Call ``callback(event)`` (sync or async) in this process for every STARTED and
        FINISHED this process writes (all processes: subscribe to ``events:{tenant}``)."""
        self._callbacks.append(callback)

    async def emit(self, events: Sequence[InteractionEvent]) -> None:
        for event in events:
            await self.bus.publish(
                events_channel(event.tenant), {"kind": "interaction", **event.as_dict()}
            )
            for callback in list(self._callbacks):
                try:
                    result = callback(event)
                    if inspect.isawaitable(result):
                        await result
                except Exception:  # noqa: BLE001 - a listener must not break routing
                    log.exception("interaction event listener failed")

    async def publish_messages(
        self,
        segment: Segment | None,
        messages: Sequence[Message],
        *,
        sets: Sequence[tuple[str, str, float]] = (),
    ) -> None:
        """Fan out stored (or live-only) messages: the conversation channel, and the feed of
        the agent the interaction is assigned to. ``sets``: ``(key, value, ttl seconds)``
        cache entries written in the same round trip (best effort, like the publish)."""
        await self.publish_pairs([(segment, message) for message in messages], sets)

    async def publish_pairs(
        self,
        pairs: Sequence[tuple[Segment | OpenSegment | None, Message]],
        sets: Sequence[tuple[str, str, float]] = (),
        unheard: Collection[str] = (),
    ) -> None:
        """:meth:`publish_messages` for messages of several conversations (each with its
        segment) in one pipeline round trip: what a group commit stored. ``unheard``:
        conversations no live stream reads (their channel is skipped; an assigned agent's
        feed still gets the message)."""
        items: list[tuple[str, dict[str, Any]]] = []
        for segment, message in pairs:
            to_agent = bool(
                segment is not None and segment.agent and segment.state is SegmentState.ASSIGNED
            )
            heard = message.conversation_id not in unheard
            if not (heard or to_agent):
                continue
            payload = {"kind": "message", "message": message.as_dict()}
            if heard:
                items.append((conversation_channel(message.conversation_id), payload))
            if to_agent:
                items.append((agent_channel(segment.tenant, segment.agent), payload))
        if sets:
            await self.bus.publish_many(items, sets=sets)
        else:
            await self.bus.publish_many(items)

    async def _agent_event(self, tenant: str, agent: str, kind: str, segment: Segment) -> None:
        await self.bus.publish(
            agent_channel(tenant, agent), {"kind": kind, "interaction": segment.as_dict()}
        )

    async def _queue_changed(self, tenant: str, queue: str) -> None:
        await self.bus.publish(events_channel(tenant), {"kind": "queue", "queue": queue})

    # ---- presence ---------------------------------------------------------------------

    async def set_presence(self, tenant: str, agent: str, state: str) -> str:
        if state not in PRESENCE_STATES:
            raise InvalidState(f"presence must be one of {PRESENCE_STATES}", field="state")
        user = self.agent(tenant, agent)
        keys = self.keys(tenant)
        name = user.username.lower()
        ttl_ms = max(1, int(self.presence_ttl * 1000))

        async def op(client: Any) -> None:
            async with client.pipeline(transaction=True) as pipe:
                pipe.set(keys.presence(name), state, px=ttl_ms)
                if state == READY:
                    pipe.hset(keys.idle, name, repr(self.clock()))
                pipe.sadd(self._tenants_key, tenant)
                await pipe.execute()

        await self.cache.call(op)
        if state == READY:
            await self.kick(tenant)
        return state

    async def heartbeat(self, tenant: str, agent: str) -> str:
        """Keep the agent's presence alive (the agent WebSocket calls this periodically);
        returns the current state (not-ready once the TTL has lapsed)."""
        keys = self.keys(tenant)
        name = agent.lower()
        ttl_ms = max(1, int(self.presence_ttl * 1000))
        state = await self.cache.call(lambda c: c.get(keys.presence(name)))
        if state is None:
            return NOT_READY
        await self.cache.call(lambda c: c.pexpire(keys.presence(name), ttl_ms))
        return str(state)

    async def get_presence(self, tenant: str, agent: str) -> str:
        keys = self.keys(tenant)
        state = await self.cache.call(lambda c: c.get(keys.presence(agent.lower())))
        return str(state) if state in PRESENCE_STATES else NOT_READY

    # ---- entering the queues --------------------------------------------------------------

    async def kick(self, tenant: str) -> None:
        keys = self.keys(tenant)
        try:
            await self.cache.call(lambda c: c.set(keys.dirty, "1"))
        except CacheError as exc:
            log.warning("cannot mark %s dirty: %s", tenant, exc)
        await self.bus.publish(KICK_CHANNEL, {"tenant": tenant})

    async def enqueue(self, segment: Segment) -> None:
        """Put a queued segment on its queue's waiting line and nudge the dispatchers: one
        pipelined round trip (waiting line, queue and tenant sets, the dirty mark, the
        ``queue`` event and the kick)."""
        keys = self.keys(segment.tenant)
        score = segment.queued_at.timestamp()
        sharded = self.cache.sharded_pubsub
        queue_event = json.dumps({"kind": "queue", "queue": segment.queue}, separators=(",", ":"))
        kick = json.dumps({"tenant": segment.tenant}, separators=(",", ":"))

        async def op(client: Any) -> None:
            async with client.pipeline(transaction=False) as pipe:
                pipe.zadd(keys.waiting(segment.queue), {segment.id: score})
                pipe.sadd(keys.queues, segment.queue)
                pipe.sadd(self._tenants_key, segment.tenant)
                pipe.set(keys.dirty, "1")
                if not sharded:
                    pipe.publish(self.cache.key(events_channel(segment.tenant)), queue_event)
                    pipe.publish(self.cache.key(KICK_CHANNEL), kick)
                await pipe.execute()

        await self.cache.call(op)
        if sharded:
            await self._queue_changed(segment.tenant, segment.queue)
            await self.bus.publish(KICK_CHANNEL, {"tenant": segment.tenant})

    async def start_segment(
        self, segment: Segment, *, conversation: Any = None
    ) -> Segment | None:
        """Route a new segment: through its endpoint's strategy when the endpoint names one,
        else straight onto its queue. Returns the segment as it ends up (None if gone).
        ``conversation``: the segment's conversation when the caller has it (saves a read)."""
        if conversation is None or conversation.id != segment.conversation_id:
            conversation = await self.repo.get_conversation(
                segment.tenant, segment.conversation_id
            )
        if conversation is None:
            raise ConversationNotFound(f"no conversation {segment.conversation_id!r}")
        endpoint = self.model.endpoint(conversation.endpoint, self.tenant_name(segment.tenant))
        if endpoint is not None and endpoint.strategy:
            return await self._decide(
                segment, endpoint.strategy, SegmentState.QUEUED, conversation=conversation
            )
        await self.enqueue(segment)
        return segment

    def _info(self, segment: Segment, conversation: Any) -> InteractionInfo:
        udata = dict(conversation.user_data)
        udata.setdefault("endpoint", conversation.endpoint)
        udata.setdefault("tenant", self.tenant_name(segment.tenant))
        return InteractionInfo(
            id=segment.id,
            queue=segment.queue,
            udata=udata,
            endpoint=conversation.endpoint,
            tenant=self.tenant_name(segment.tenant),
            media=str(segment.media),
            conversation_id=conversation.id,
            last_agent=conversation.last_agent,
            attempt=segment.attempt,
        )

    async def wake(self, tenant: str, interaction_id: str) -> Segment | None:
        """A held (async hold) interaction wakes up (customer message, agent follow-up, due
        retry): ask its strategy and apply the answer. No-op unless it is held."""
        segment = await self.repo.get_segment(tenant, interaction_id)
        if segment is None or segment.state is not SegmentState.HELD:
            return segment
        conversation = await self.repo.get_conversation(tenant, segment.conversation_id)
        if conversation is None:
            return segment
        endpoint = self.model.endpoint(conversation.endpoint, self.tenant_name(tenant))
        strategy = (endpoint.strategy if endpoint else None) or DEFAULT_WAKE_STRATEGY
        return await self._decide(segment, strategy, SegmentState.HELD, conversation=conversation)

    async def _decide(
        self,
        segment: Segment,
        strategy: str,
        from_state: SegmentState,
        *,
        conversation: Any = None,
    ) -> Segment | None:
        if conversation is None:
            conversation = await self.repo.get_conversation(
                segment.tenant, segment.conversation_id
            )
        assert conversation is not None
        try:
            raw = await self.decider.decide(strategy, self._info(segment, conversation))
        except Exception:  # noqa: BLE001 - a failing strategy must not strand the customer
            log.exception("strategy %s failed for %s", strategy, segment.id)
            raw = []
        actions = [a for a in (coerce_action(x) for x in raw) if a is not None]
        for action in actions:
            if isinstance(action, Redirect | Submit):
                if self.queue_config(segment.tenant, action.queue) is None:
                    log.warning("strategy %s named unknown queue %r", strategy, action.queue)
                    continue
                return await self._requeue(segment, action.queue, from_state)
            if isinstance(action, Terminate):
                return await self.end(segment.tenant, segment.id, reason=action.reason)
            if isinstance(action, Retry):
                return await self._schedule_retry(segment, action, from_state)
        # no usable answer: back to the endpoint's queue, so the customer is not stranded
        endpoint = self.model.endpoint(conversation.endpoint, self.tenant_name(segment.tenant))
        fallback = (
            endpoint.queue
            if endpoint
            else self.model.environment.routing.redirect_queue.fallback_queue
        )
        if fallback and self.queue_config(segment.tenant, fallback) is not None:
            log.warning("strategy %s gave no usable action for %s", strategy, segment.id)
            return await self._requeue(segment, fallback, from_state)
        log.error("no queue for %s: ending it", segment.id)
        return await self.end(segment.tenant, segment.id, reason="no-route")

    async def _requeue(
        self, segment: Segment, queue: str, from_state: SegmentState
    ) -> Segment | None:
        now = from_epoch(self.clock())
        moved = await self.repo.transition(
            segment.tenant,
            segment.id,
            expect_states=[from_state],
            values={"state": "queued", "queue": queue, "queued_at": now, "wake_at": None},
        )
        if moved is None:
            return await self.repo.get_segment(segment.tenant, segment.id)
        if from_state is SegmentState.HELD:
            await self._queue_changed(segment.tenant, segment.queue)
        await self.enqueue(moved)
        return moved

    async def _schedule_retry(
        self, segment: Segment, action: Retry, from_state: SegmentState
    ) -> Segment | None:
        at = action.at.timestamp() if isinstance(action.at, datetime) else float(action.at)
        moved = await self.repo.transition(
            segment.tenant,
            segment.id,
            expect_states=[from_state],
            values={
                "state": "held",
                "wake_at": from_epoch(at),
                "attempt": action.attempt,
            },
        )
        if moved is None:
            return await self.repo.get_segment(segment.tenant, segment.id)
        keys = self.keys(segment.tenant)
        await self.cache.call(lambda c: c.zadd(keys.wakeups, {segment.id: at}))
        await self.cache.call(lambda c: c.sadd(self._tenants_key, segment.tenant))
        return moved

    # ---- dispatching ------------------------------------------------------------------

    async def dispatch(self, tenant: str) -> int:
        """One dispatch pass for a tenant: expire due offers, run due wake-ups, then offer
        waiting interactions to agents. Returns the number of offers made."""
        await self.expire_offers(tenant)
        await self.run_wakeups(tenant)
        keys = self.keys(tenant)
        token = uuid.uuid4().hex
        ttl_ms = max(1, int(self.lock_ttl * 1000))
        acquired = await self.cache.call(lambda c: c.set(keys.lock, token, nx=True, px=ttl_ms))
        if not acquired:
            return 0
        made = 0
        try:
            for _ in range(100):
                await self.cache.call(lambda c: c.delete(keys.dirty))
                made += await self._offer_waiting(tenant)
                if not await self.cache.call(lambda c: c.exists(keys.dirty)):
                    break
        finally:
            await self._release_lock(keys.lock, token)
        return made

    async def _release_lock(self, key: str, token: str) -> None:
        async def op(client: Any) -> None:
            async with client.pipeline(transaction=True) as pipe:
                await pipe.watch(key)
                if await pipe.get(key) == token:
                    pipe.multi()
                    pipe.delete(key)
                    await pipe.execute()
                else:
                    await pipe.unwatch()

        try:
            await self.cache.call(op)
        except Exception as exc:  # noqa: BLE001 - the lock expires on its own
            log.debug("releasing the dispatch lock failed: %s", exc)

    async def _offer_waiting(self, tenant: str) -> int:
        keys = self.keys(tenant)
        queues = sorted(await self.cache.call(lambda c: c.smembers(keys.queues)))
        made = 0
        for queue in queues:
            made += await self._offer_queue(tenant, queue)
        return made

    async def _offer_queue(self, tenant: str, queue: str) -> int:
        """Offer the queue's waiting interactions (FIFO) to eligible agents.

        Cheap when nobody can take anything: the agents' presence and load are read first
        (one pipelined round trip) and the waiting line is not even read unless some agent of
        the queue is ready with spare capacity. The line is then walked in chunks of
        :data:`LINE_CHUNK` and the walk stops as soon as no agent has room left, so a pass
        costs O(offers made + skipped), not O(waiting)."""
        keys = self.keys(tenant)
        config = self.queue_config(tenant, queue)
        if config is None or not config.enabled or queue in (ASYNC_HOLD_QUEUE, UNDELIVERED_QUEUE):
            return 0
        agents = self.agents_of(tenant, queue)
        if not agents:
            return 0
        names = [a.username.lower() for a in agents]
        capacity = {a.username.lower(): dict(a.agent.capacity) for a in agents if a.agent}

        async def snapshot(client: Any) -> list[Any]:
            async with client.pipeline(transaction=False) as pipe:
                pipe.mget([keys.presence(n) for n in names])
                pipe.hgetall(keys.idle)
                pipe.scard(keys.queue_active(queue))
                for name in names:
                    for media in ("chat", "sms", "email"):
                        pipe.scard(keys.load(name, media))
                return await pipe.execute()

        result = await self.cache.call(snapshot)
        presence = dict(zip(names, result[0], strict=True))
        idle = {k: float(v) for k, v in result[1].items()}
        active = int(result[2])
        load: dict[str, dict[str, int]] = {}
        position = 3
        for name in names:
            load[name] = {}
            for media in ("chat", "sms", "email"):
                load[name][media] = int(result[position])
                position += 1

        def room() -> bool:
            """Some agent is ready with spare capacity for some media (and the queue has
            capacity left)."""
            if config.capacity is not None and active >= config.capacity:
                return False
            return any(
                presence.get(n) == READY
                and any(
                    load[n].get(m, 0) < int(capacity.get(n, {}).get(m, 0))
                    for m in ("chat", "sms", "email")
                )
                for n in names
            )

        if not room():
            return 0
        now = self.clock()
        timeout = float(config.offer_timeout_seconds or self.default_offer_timeout)
        made = 0
        start = 0
        while room():
            waiting = await self.cache.call(
                lambda c, a=start: c.zrange(keys.waiting(queue), a, a + LINE_CHUNK - 1)
            )
            if not waiting:
                break
            segments = await self.repo.segments_by_ids(tenant, waiting)
            stale = [
                iid
                for iid in waiting
                if iid not in segments
                or segments[iid].state is not SegmentState.QUEUED
                or segments[iid].queue != queue
            ]
            if stale:
                await self.cache.call(lambda c, st=stale: c.zrem(keys.waiting(queue), *st))
            line = [segments[iid] for iid in waiting if iid not in stale]
            conversations = (
                await self.repo.conversations_by_ids(
                    tenant, list({s.conversation_id for s in line})
                )
                if line
                else {}
            )
            chunk_made = 0
            for segment in line:
                if config.capacity is not None and active >= config.capacity:
                    break
                media = str(segment.media)
                conversation = conversations.get(segment.conversation_id)
                preferred = (
                    conversation.last_agent.lower()
                    if conversation and conversation.last_agent
                    else None
                )
                eligible = [
                    n
                    for n in names
                    if presence.get(n) == READY
                    and load[n].get(media, 0) < int(capacity.get(n, {}).get(media, 0))
                    and now - float(segment.declined.get(n, float("-inf"))) >= timeout
                ]
                agent = await self._choose(
                    keys, queue, config.distribution, eligible, names, preferred, idle, load
                )
                while agent is not None:
                    if await self._reserve(keys, agent, media, segment.id, capacity[agent][media]):
                        break
                    load[agent][media] = int(capacity[agent][media])  # full after all
                    eligible.remove(agent)
                    agent = await self._choose(
                        keys, queue, config.distribution, eligible, names, None, idle, load
                    )
                if agent is None:
                    continue
                offered = await self.repo.transition(
                    tenant,
                    segment.id,
                    expect_states=[SegmentState.QUEUED],
                    values={
                        "state": "offered",
                        "offered_to": agent,
                        "offer_deadline": from_epoch(now + timeout),
                    },
                    queue=queue,
                )
                if offered is None:  # another dispatcher (or a transition) got there first
                    await self.cache.call(
                        lambda c, k=keys.load(agent, media), i=segment.id: c.srem(k, i)
                    )
                    continue

                async def commit_offer(
                    client: Any, iid: str = segment.id, at: float = now, who: str = agent
                ) -> None:
                    async with client.pipeline(transaction=False) as pipe:
                        pipe.zrem(keys.waiting(queue), iid)
                        pipe.zadd(keys.offers, {iid: at + timeout})
                        pipe.sadd(keys.queue_active(queue), iid)
                        pipe.hset(keys.idle, who, repr(at))
                        await pipe.execute()

                await self.cache.call(commit_offer)
                load[agent][media] += 1
                idle[agent] = now
                active += 1
                made += 1
                chunk_made += 1
                await self._agent_event(tenant, agent, "offer", offered)
            if len(waiting) < LINE_CHUNK:
                break
            # offered and stale entries left the line: the next chunk starts after the rest
            start += len(waiting) - len(stale) - chunk_made
        if made:
            await self._queue_changed(tenant, queue)
        return made

    async def _choose(
        self,
        keys: RouterKeys,
        queue: str,
        distribution: str,
        eligible: list[str],
        members: list[str],
        preferred: str | None,
        idle: dict[str, float],
        load: dict[str, dict[str, int]],
    ) -> str | None:
        if not eligible:
            return None
        if preferred is not None and preferred in eligible:
            return preferred
        if distribution == "round-robin":
            pointer = int(await self.cache.call(lambda c: c.incr(keys.round_robin(queue))))
            start = (pointer - 1) % len(members)
            for step in range(len(members)):
                name = members[(start + step) % len(members)]
                if name in eligible:
                    return name
            return None
        if distribution == "least-busy":
            return min(eligible, key=lambda n: (sum(load[n].values()), idle.get(n, 0.0), n))
        return min(eligible, key=lambda n: (idle.get(n, 0.0), n))  # longest-idle

    async def _reserve(
        self, keys: RouterKeys, agent: str, media: str, iid: str, capacity: int
    ) -> bool:
        """Atomically take one unit of the agent's capacity for ``media`` (SADD+SCARD in one
        MULTI); undone when it went over."""
        key = keys.load(agent, media)

        async def op(client: Any) -> int:
            async with client.pipeline(transaction=True) as pipe:
                pipe.sadd(key, iid)
                pipe.scard(key)
                _, count = await pipe.execute()
            return int(count)

        count = await self.cache.call(op)
        if count <= capacity:
            return True
        await self.cache.call(lambda c: c.srem(key, iid))
        return False

    async def _release(self, segment: Segment, agent: str | None) -> None:
        keys = self.keys(segment.tenant)
        now = self.clock()

        async def op(client: Any) -> None:
            async with client.pipeline(transaction=False) as pipe:
                if agent:
                    pipe.srem(keys.load(agent.lower(), str(segment.media)), segment.id)
                    pipe.hset(keys.idle, agent.lower(), repr(now))
                pipe.zrem(keys.offers, segment.id)
                pipe.srem(keys.queue_active(segment.queue), segment.id)
                await pipe.execute()

        await self.cache.call(op)

    async def expire_offers(self, tenant: str) -> int:
        """Offers past their deadline go back to their queue (not to the same agent right
        away). Each is claimed by a ZREM, so one process handles it."""
        keys = self.keys(tenant)
        due = await self.cache.call(lambda c: c.zrangebyscore(keys.offers, "-inf", self.clock()))
        count = 0
        for iid in due:
            if not await self.cache.call(lambda c, i=iid: c.zrem(keys.offers, i)):
                continue
            segment = await self.repo.get_segment(tenant, iid)
            if segment is None or segment.state is not SegmentState.OFFERED:
                continue
            if await self._decline(segment, segment.offered_to or "", reason="timeout"):
                count += 1
        return count

    async def _decline(self, segment: Segment, agent: str, *, reason: str) -> Segment | None:
        declined = dict(segment.declined)
        declined[agent.lower()] = self.clock()
        moved = await self.repo.transition(
            segment.tenant,
            segment.id,
            expect_states=[SegmentState.OFFERED],
            values={
                "state": "queued",
                "offered_to": None,
                "offer_deadline": None,
                "declined": dumps(declined),
            },
            offered_to=segment.offered_to,
        )
        if moved is None:
            return None
        await self._release(segment, agent)
        await self._agent_event(segment.tenant, agent, "offer-revoked", moved)
        log.info("offer of %s to %s ended: %s", segment.id, agent, reason)
        await self.enqueue(moved)
        return moved

    async def run_wakeups(self, tenant: str) -> int:
        keys = self.keys(tenant)
        due = await self.cache.call(lambda c: c.zrangebyscore(keys.wakeups, "-inf", self.clock()))
        count = 0
        for iid in due:
            if not await self.cache.call(lambda c, i=iid: c.zrem(keys.wakeups, i)):
                continue
            await self.wake(tenant, iid)
            count += 1
        return count

    # ---- agent actions -----------------------------------------------------------------

    async def _segment_for(self, tenant: str, interaction_id: str) -> Segment:
        segment = await self.repo.get_segment(tenant, interaction_id)
        if segment is None:
            raise InteractionNotFound(f"no interaction {interaction_id!r}", field="iid")
        return segment

    async def accept(self, tenant: str, agent: str, interaction_id: str) -> Segment:
        name = self.agent(tenant, agent).username.lower()
        segment = await self._segment_for(tenant, interaction_id)
        async with self.store.transaction():
            conversation = await self.repo.lock_conversation(
                tenant, segment.conversation_id, reserve=1
            )
            assert conversation is not None
            moved = await self.repo.transition(
                tenant,
                interaction_id,
                expect_states=[SegmentState.OFFERED],
                values={
                    "state": "assigned",
                    "agent": name,
                    "assigned_at": from_epoch(self.clock()),
                    "offered_to": None,
                    "offer_deadline": None,
                },
                offered_to=name,
            )
            if moved is None:
                raise InvalidState(f"interaction {interaction_id} is not offered to {agent}")
            await self.repo.update_conversation(tenant, conversation.id, last_agent=name)
            messages = await self.repo.append(
                conversation,
                [
                    Draft(
                        MessageType.PARTICIPANT_JOINED,
                        name,
                        ParticipantType.AGENT,
                        from_nickname=self._nickname(tenant, name),
                        segment_id=interaction_id,
                    )
                ],
            )
        await self.cache.call(lambda c: c.zrem(self.keys(tenant).offers, interaction_id))
        await self._agent_event(tenant, name, "assigned", moved)
        await self.publish_messages(moved, messages)
        await self._queue_changed(tenant, moved.queue)
        return moved

    def _nickname(self, tenant: str, agent: str) -> str:
        user = self.model.user(agent, self.tenant_name(tenant))
        return (user.first_name or user.username) if user else agent

    async def reject(self, tenant: str, agent: str, interaction_id: str) -> Segment:
        name = self.agent(tenant, agent).username.lower()
        segment = await self._segment_for(tenant, interaction_id)
        if segment.state is not SegmentState.OFFERED or segment.offered_to != name:
            raise InvalidState(f"interaction {interaction_id} is not offered to {agent}")
        moved = await self._decline(segment, name, reason="rejected")
        if moved is None:
            raise InvalidState(f"interaction {interaction_id} is not offered to {agent}")
        return moved

    async def _leave(
        self,
        tenant: str,
        agent: str,
        interaction_id: str,
        *,
        values: dict[str, Any],
        kind: str,
    ) -> Segment:
        name = self.agent(tenant, agent).username.lower()
        segment = await self._segment_for(tenant, interaction_id)
        async with self.store.transaction():
            conversation = await self.repo.lock_conversation(
                tenant, segment.conversation_id, reserve=1
            )
            assert conversation is not None
            moved = await self.repo.transition(
                tenant,
                interaction_id,
                expect_states=[SegmentState.ASSIGNED],
                values={"agent": None, **values},
                agent=name,
            )
            if moved is None:
                raise InvalidState(f"interaction {interaction_id} is not assigned to {agent}")
            messages = await self.repo.append(
                conversation,
                [
                    Draft(
                        MessageType.PARTICIPANT_LEFT,
                        name,
                        ParticipantType.AGENT,
                        from_nickname=self._nickname(tenant, name),
                        segment_id=interaction_id,
                    )
                ],
            )
        await self._release(segment, name)
        await self._agent_event(tenant, name, kind, moved)
        await self.publish_messages(None, messages)
        await self._queue_changed(tenant, segment.queue)
        return moved

    async def transfer(self, tenant: str, agent: str, interaction_id: str, queue: str) -> Segment:
        """Move an assigned interaction to another queue (the transferring agent is not
        offered it again right away)."""
        config = self.queue_config(tenant, queue)
        if config is None or not config.enabled or queue in (ASYNC_HOLD_QUEUE, UNDELIVERED_QUEUE):
            raise InvalidQueue(f"no queue {queue!r} to transfer to", field="queue")
        segment = await self._segment_for(tenant, interaction_id)
        declined = dict(segment.declined)
        declined[agent.lower()] = self.clock()
        moved = await self._leave(
            tenant,
            agent,
            interaction_id,
            values={
                "state": "queued",
                "queue": queue,
                "queued_at": from_epoch(self.clock()),
                "declined": dumps(declined),
            },
            kind="released",
        )
        await self.enqueue(moved)
        return moved

    async def hold(self, tenant: str, agent: str, interaction_id: str) -> Segment:
        """Async hold: the interaction parks in ``asynchold`` (agent freed) until the
        customer's next message (or the agent's follow-up) wakes it."""
        moved = await self._leave(
            tenant,
            agent,
            interaction_id,
            values={
                "state": "held",
                "queue": ASYNC_HOLD_QUEUE,
                "queued_at": from_epoch(self.clock()),
            },
            kind="released",
        )
        await self._queue_changed(tenant, ASYNC_HOLD_QUEUE)
        return moved

    async def done(self, tenant: str, agent: str, interaction_id: str) -> Segment:
        """Mark Done: ends the segment (FINISHED) and closes the conversation. Allowed for
        the assigned agent, and for the last agent of a held interaction."""
        name = self.agent(tenant, agent).username.lower()
        segment = await self._segment_for(tenant, interaction_id)
        conversation = await self.repo.get_conversation(tenant, segment.conversation_id)
        allowed = (segment.state is SegmentState.ASSIGNED and segment.agent == name) or (
            segment.state is SegmentState.HELD
            and conversation is not None
            and (conversation.last_agent or "").lower() == name
        )
        if not allowed:
            raise InvalidState(f"interaction {interaction_id} is not {agent}'s to mark done")
        ended = await self.end(
            tenant,
            interaction_id,
            reason="done",
            by_agent=name,
            close=True,
            expect_states=(segment.state,),
            expect_agent=segment.agent,
        )
        if ended is None or ended.state is not SegmentState.DONE:
            raise InvalidState(f"interaction {interaction_id} changed meanwhile")
        return ended

    async def end(
        self,
        tenant: str,
        interaction_id: str,
        *,
        reason: str,
        by_agent: str | None = None,
        close: bool = False,
        expect_states: Sequence[SegmentState] = (
            SegmentState.QUEUED,
            SegmentState.OFFERED,
            SegmentState.ASSIGNED,
            SegmentState.HELD,
        ),
        expect_agent: str | None | bool = False,
    ) -> Segment | None:
        """End a segment: ``done`` (by an agent; ``close`` closes the conversation) or
        ``abandoned`` with ``reason`` (strategy Terminate, ...). Writes FINISHED and a
        SegmentEnded message in the same transaction. None if it was already over."""
        segment = await self._segment_for(tenant, interaction_id)
        if not segment.state.is_open:
            return segment
        state = "done" if by_agent else "abandoned"
        extra: dict[str, Any] = {} if expect_agent is False else {"agent": expect_agent}
        async with self.store.transaction():
            conversation = await self.repo.lock_conversation(
                tenant, segment.conversation_id, reserve=1
            )
            assert conversation is not None
            moved = await self.repo.transition(
                tenant,
                interaction_id,
                expect_states=list(expect_states),
                values={
                    "state": state,
                    "ended_at": from_epoch(self.clock()),
                    "end_reason": reason,
                    "offered_to": None,
                    "offer_deadline": None,
                    "wake_at": None,
                },
                **extra,
            )
            if moved is None:
                return await self.repo.get_segment(tenant, interaction_id)
            event = await self.repo.insert_event(
                InteractionEventType.FINISHED,
                conversation,
                interaction_id,
                self.interaction_subtype(conversation.channel_id),
            )
            messages = await self.repo.append(
                conversation,
                [
                    Draft(
                        MessageType.SEGMENT_ENDED,
                        by_agent or "system",
                        ParticipantType.AGENT if by_agent else ParticipantType.SYSTEM,
                        from_nickname=self._nickname(tenant, by_agent) if by_agent else None,
                        text=reason,
                        segment_id=interaction_id,
                    )
                ],
            )
            if close:
                await self.repo.close_conversation(tenant, conversation.id)
        await self._release(segment, segment.agent or segment.offered_to)
        keys = self.keys(tenant)
        await self.cache.call(lambda c: c.zrem(keys.waiting(segment.queue), interaction_id))
        await self.cache.call(lambda c: c.zrem(keys.wakeups, interaction_id))
        for agent in {a for a in (segment.agent, segment.offered_to) if a}:
            await self._agent_event(tenant, agent, "released", moved)
        await self.publish_messages(None, messages)
        await self.emit([event])
        await self._queue_changed(tenant, segment.queue)
        if self.contacts is not None:
            await self._record(conversation.id, tenant, moved)
        return moved

    async def _record(self, conversation_id: str, tenant: str, segment: Segment) -> None:
        try:
            conversation = await self.repo.get_conversation(tenant, conversation_id)
            if conversation is None:
                return
            messages = await self.repo.read_messages(conversation_id)
            await self.contacts.record_interaction(conversation, segment, messages)
        except Exception as exc:  # noqa: BLE001 - UCS being down must not fail Done
            log.warning("recording %s in UCS failed: %s", segment.id, exc)

    # ---- reading ----------------------------------------------------------------------

    async def agent_interactions(self, tenant: str, agent: str) -> list[Segment]:
        """The agent's offered and assigned interactions."""
        t = segments_table
        name = self.agent(tenant, agent).username.lower()
        return await self.repo.segments_where(
            tenant,
            ((t.c.state == "offered") & (t.c.offered_to == name))
            | ((t.c.state == "assigned") & (t.c.agent == name)),
        )

    async def stats(self, tenant: str) -> list[QueueStats]:
        """Per queue: waiting, offered, assigned, held (from the store), agents ready."""
        name = self.tenant_name(tenant)
        counts = await self.repo.count_states(tenant)
        queues = {q.name for q in self.model.queues if q.tenant in (name, None)}
        queues |= {queue for queue, _ in counts}
        keys = self.keys(tenant)
        out = []
        for queue in sorted(queues):
            agents = [a.username.lower() for a in self.agents_of(tenant, queue)]
            ready = 0
            if agents:
                states = await self.cache.call(
                    lambda c, a=agents: c.mget([keys.presence(n) for n in a])
                )
                ready = sum(1 for s in states if s == READY)
            out.append(
                QueueStats(
                    queue=queue,
                    waiting=counts.get((queue, "queued"), 0),
                    offered=counts.get((queue, "offered"), 0),
                    assigned=counts.get((queue, "assigned"), 0),
                    held=counts.get((queue, "held"), 0),
                    agents_ready=ready,
                )
            )
        return out

    async def agent_feed(
        self, tenant: str, agent: str, *, snapshot: bool = True
    ) -> AsyncIterator[dict[str, Any]]:
        """The agent's live feed (offers, assignment changes, messages of their
        interactions). Subscribes first, then (``snapshot``) yields ``{"kind": "snapshot",
        "interactions": [...]}``, so nothing between the two is missed."""
        name = self.agent(tenant, agent).username.lower()
        sub = await self.cache.subscribe(agent_channel(tenant, name))
        try:
            if snapshot:
                current = await self.agent_interactions(tenant, name)
                yield {"kind": "snapshot", "interactions": [s.as_dict() for s in current]}
            async for message in sub:
                yield json.loads(message.data)
        finally:
            await sub.close()

    # ---- reconciliation and the background loop ------------------------------------------

    async def sweep(self, tenant: str) -> None:
        """Rebuild the Redis indexes from the store (after a crash or a Redis restart)."""
        keys = self.keys(tenant)
        expected: dict[tuple[str, str], set[str]] = {}
        # in chunks, read from a cursor as they are restored: requests served by this
        # process run between them (one pipeline of 20,000 async sessions held the event
        # loop for seconds; reading them all at once, 130-190 ms)
        reading = self.store.iterate(_open_segments(tenant), chunk=SWEEP_CHUNK)
        async with contextlib.aclosing(reading) as chunks:
            async for rows in chunks:
                plan = _Restore.of(rows)
                for owner_media, ids in plan.loads.items():
                    expected.setdefault(owner_media, set()).update(ids)
                await self.cache.call(lambda c, plan=plan: plan.write(c, keys))
        await self._drop_stale_loads(tenant, expected)
        await self.kick(tenant)

    async def _drop_stale_loads(
        self, tenant: str, expected: dict[tuple[str, str], set[str]]
    ) -> None:
        """Load entries no open segment explains are removed when seen stale by two sweeps
        in a row (an in-flight claim is stale for a few milliseconds only)."""
        keys = self.keys(tenant)
        users = sorted({u.username.lower() for u in self.model.users_of(self.tenant_name(tenant))})
        pairs = [(user, media) for user in users for media in MEDIA]

        async def read(client: Any) -> list[Any]:
            async with client.pipeline(transaction=False) as pipe:
                for user, media in pairs:
                    pipe.smembers(keys.load(user, media))
                return await pipe.execute()

        members = await self.cache.call(read) if pairs else []
        suspects = {
            (tenant, user, media, iid)
            for (user, media), found in zip(pairs, members, strict=True)
            for iid in set(found) - expected.get((user, media), set())
        }
        confirmed = suspects & self._suspects
        self._suspects = (self._suspects - {s for s in self._suspects if s[0] == tenant}) | (
            suspects - confirmed
        )
        for _, user, media, iid in confirmed:
            await self.cache.call(lambda c, u=user, m=media, i=iid: c.srem(keys.load(u, m), i))

    async def _take_sweep(self, tenant: str) -> bool:
        """Whether this process sweeps ``tenant`` this interval: one process does (they would
        all restore the same indexes); it holds the tenant's sweeper key for most of the
        interval, so that some process sweeps again in the next one."""
        key = self.keys(tenant).sweeper
        ttl_ms = max(1, int(self.sweep_interval * 1000 * SWEEP_LEASE))
        return bool(await self.cache.call(lambda c: c.set(key, "1", nx=True, px=ttl_ms)))

    async def run(self) -> None:
        """The dispatcher loop (one per process; safe to run in many). Ends after the
        current pass once :meth:`stop` is called (never cancelled mid-transaction)."""
        sub = await self.cache.subscribe(KICK_CHANNEL)
        try:
            timeout = self.tick
            while not self._stopping.is_set():
                message = await sub.get(timeout=timeout)
                if self._stopping.is_set():
                    break
                try:
                    timeout = await self._pass(sub, message)
                except (CacheError, StoreError, InvalidContactCenter) as exc:
                    log.warning("dispatch failed: %s", exc)
                    timeout = self.tick
                    await asyncio.sleep(self.tick)
        finally:
            await sub.close()

    async def _pass(self, sub: Any, message: Any) -> float:
        """One pass of the dispatcher loop: the kicked tenants, or (no kick) the tenants
        with something to do; then, when a sweep is due, every tenant (swept by the process
        that takes its sweeper key, then dispatched). Returns how long to wait for a kick
        before the next idle pass."""
        if message is not None:
            tenants, timeout = await self._kicked(sub, message), self.tick
        else:
            tenants, timeout = await self._tenants_with_work()
        for tenant in sorted(tenants):
            await self.dispatch(tenant)
        if time.monotonic() - self._last_sweep >= self.sweep_interval:
            self._last_sweep = time.monotonic()
            for tenant in sorted(await self.cache.call(lambda c: c.smembers(self._tenants_key))):
                if await self._take_sweep(tenant):
                    await self.sweep(tenant)
                await self.dispatch(tenant)
        until_sweep = self._last_sweep + self.sweep_interval - time.monotonic()
        return max(0.0, min(timeout, until_sweep))

    @staticmethod
    async def _kicked(sub: Any, message: Any) -> set[str]:
        """The tenant of ``message`` and of every kick already waiting: one pass serves
        them all (coalescing)."""
        tenants = {json.loads(message.data)["tenant"]}
        drain_until = time.monotonic() + KICK_DRAIN_SECONDS
        while time.monotonic() < drain_until:
            more = await sub.get(timeout=KICK_DRAIN_WAIT)
            if more is None:
                break
            tenants.add(json.loads(more.data)["tenant"])
        return tenants

    async def _tenants_with_work(self) -> tuple[set[str], float]:
        """The tenants an idle pass must dispatch (dispatching the others would change
        nothing), and how long to wait for a kick after the pass: a tick when some tenant
        had work, else ``IDLE_TICKS`` ticks or until the next offer or wake-up falls due."""
        tenants = sorted(await self.cache.call(lambda c: c.smembers(self._tenants_key)))
        idle = self.tick * IDLE_TICKS
        if not tenants:
            return set(), idle
        now = self.clock()
        marks = await self.cache.call(lambda c: _read_marks(c, [self.keys(t) for t in tenants]))
        busy: set[str] = set()
        lines: list[tuple[str, str, list[str]]] = []
        next_due = float("inf")
        for tenant, (dirty, due, queues) in zip(tenants, marks, strict=True):
            if dirty or due <= now:
                busy.add(tenant)
                continue
            next_due = min(next_due, due)
            lines += self._dispatchable_lines(tenant, queues)
        busy |= await self._lines_with_ready_agents(lines)
        if busy:
            return busy, self.tick
        return busy, max(0.0, min(idle, next_due - now))

    def _dispatchable_lines(self, tenant: str, queues: Sequence[str]) -> list[
        tuple[str, str, list[str]]
    ]:
        """(tenant, queue, agent names) of the queues a dispatch pass would offer from."""
        out = []
        for queue in sorted(queues):
            try:
                config = self.queue_config(tenant, queue)
                agents = self.agents_of(tenant, queue)
            except InvalidContactCenter:
                return []  # not configured (any more): nothing to offer
            if config is None or not config.enabled or not agents:
                continue
            if queue in (ASYNC_HOLD_QUEUE, UNDELIVERED_QUEUE):
                continue
            out.append((tenant, queue, [a.username.lower() for a in agents]))
        return out

    async def _lines_with_ready_agents(self, lines: list[tuple[str, str, list[str]]]) -> set[str]:
        """The tenants of ``lines`` where interactions wait and one of the queue's agents is
        ready (the dispatch pass then decides whether one has room: capacity freed by a
        done or hold does not kick). The presence of an agent is read once, and only for
        lines that are not empty."""
        if not lines:
            return set()

        async def sizes(client: Any) -> list[Any]:
            async with client.pipeline(transaction=False) as pipe:
                for tenant, queue, _agents in lines:
                    pipe.zcard(self.keys(tenant).waiting(queue))
                return await pipe.execute()

        waiting = [line for line, size in zip(lines, await self.cache.call(sizes), strict=True)
                   if int(size)]
        agents = sorted({(tenant, name) for tenant, _queue, names in waiting for name in names})
        if not agents:
            return set()

        async def presence(client: Any) -> list[Any]:
            async with client.pipeline(transaction=False) as pipe:
                for tenant, name in agents:
                    pipe.get(self.keys(tenant).presence(name))
                return await pipe.execute()

        ready = {agent for agent, state in zip(agents, await self.cache.call(presence),
                                               strict=True) if state == READY}
        return {tenant for tenant, _queue, names in waiting
                if any((tenant, name) in ready for name in names)}

    async def start(self) -> None:
        if self._task is None or self._task.done():
            self._stopping.clear()
            self._task = asyncio.create_task(self.run(), name="nexus-router-dispatcher")

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop the dispatcher: it finishes its current pass first (cancelled only if that
        takes longer than ``timeout`` seconds)."""
        if self._task is None:
            return
        task, self._task = self._task, None
        self._stopping.set()
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _open_segments(tenant: str) -> Any:
    """What a sweep needs of the tenant's open segments: the owner (the agent offered to or
    assigned) and the due time of its index entry (queued: enqueue time; offered: offer
    deadline; held: wake-up)."""
    t = segments_table
    owner = sa.case((t.c.state == "offered", t.c.offered_to), else_=t.c.agent)
    at = sa.case(
        (t.c.state == "queued", t.c.queued_at),
        (t.c.state == "offered", t.c.offer_deadline),
        else_=t.c.wake_at,
    )
    return sa.select(
        t.c.id, t.c.state, t.c.queue, t.c.media, owner.label("owner"), at.label("at")
    ).where(t.c.tenant == tenant, t.c.state.in_(["queued", "offered", "assigned", "held"]))


class _Restore:
    """The index entries of a chunk of open segments, grouped per Redis key."""

    def __init__(self) -> None:
        self.waiting: dict[str, dict[str, float]] = {}  # queue -> {id: enqueue time}
        self.offers: dict[str, float] = {}
        self.wakeups: dict[str, float] = {}
        self.loads: dict[tuple[str, str], set[str]] = {}  # (agent, media) -> ids

    @classmethod
    def of(cls, rows: Sequence[Any]) -> _Restore:
        plan = cls()
        for row in rows:
            state, iid, at = row["state"], row["id"], utc(row["at"])
            if state == "queued" and at is not None:
                plan.waiting.setdefault(row["queue"], {})[iid] = at.timestamp()
            elif state == "offered" and at is not None:
                plan.offers[iid] = at.timestamp()
            elif state == "held" and at is not None:
                plan.wakeups[iid] = at.timestamp()
            if row["owner"] and state in ("offered", "assigned"):
                key = (str(row["owner"]).lower(), str(row["media"]))
                plan.loads.setdefault(key, set()).add(iid)
        return plan

    async def write(self, client: Any, keys: RouterKeys) -> None:
        """Add what is missing (NX: entries already there keep their scores)."""
        async with client.pipeline(transaction=False) as pipe:
            for queue, members in self.waiting.items():
                pipe.zadd(keys.waiting(queue), members, nx=True)
            if self.waiting:
                pipe.sadd(keys.queues, *self.waiting)
            if self.offers:
                pipe.zadd(keys.offers, self.offers, nx=True)
            if self.wakeups:
                pipe.zadd(keys.wakeups, self.wakeups, nx=True)
            for (agent, media), ids in self.loads.items():
                pipe.sadd(keys.load(agent, media), *ids)
            await pipe.execute()


async def _read_marks(client: Any, tenants: Sequence[RouterKeys]) -> list[
    tuple[bool, float, list[str]]
]:
    """Per tenant: (dirty mark set, earliest offer deadline or wake-up, queue names)."""
    async with client.pipeline(transaction=False) as pipe:
        for keys in tenants:
            pipe.exists(keys.dirty)
            pipe.zrange(keys.offers, 0, 0, withscores=True)
            pipe.zrange(keys.wakeups, 0, 0, withscores=True)
            pipe.smembers(keys.queues)
        result = await pipe.execute()
    out = []
    for i in range(len(tenants)):
        dirty, offers, wakeups, queues = result[4 * i : 4 * i + 4]
        due = min((float(score) for _, score in (*offers, *wakeups)), default=float("inf"))
        out.append((bool(dirty), due, list(queues)))
    return out
