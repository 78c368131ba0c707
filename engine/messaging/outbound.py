"""Agent replies in SMS/email conversations leave through the channel's provider, durably.

**Feeder.** Every agent ``Text`` message of an ``sms``/``email`` conversation is stored by the
conversation engine with ``status`` NULL. :meth:`OutboundService.feed` copies such messages
into ``outbound_messages`` (``INSERT ... ON CONFLICT DO NOTHING`` on the message id) and marks
them ``pending`` in the same transaction; the partial index ``ix_messages_outbound_unsent``
keeps the scan small, and the scan's statement is rebuilt once a minute only (its window
starts at a whole minute), so an empty scan costs one small query. Every process scans
everything once at start; then the process holding the **feeder turn** (:class:`FeederTurn`,
a Redis key with a TTL) scans every ``feed_interval`` seconds and the others only try to take
the turn every ``idle_interval`` seconds (at once when its holder stops and hands it over on
``bg:outbound-feeder``; within ``FEEDER_TURN + idle_interval`` seconds when it dies). Without
Redis every process scans (the scan is idempotent). A crash between the agent's message and
the send loses nothing: the message stays NULL until a feeder took it, and a taken row stays
in the queue until sent. The feeder wakes the sender of its process (:mod:`.wakeup`; and the
other processes' senders when this one is busy).

**Sender.** The sender's loop (:class:`~engine.messaging.wakeup.QueueLoop`) runs when woken
(by the feeder, by another process's nudge on ``bg:outbound``), when the next row is due (a
strategy retry's ``next_attempt_at``, an expired lease) and on a safety poll every
``idle_interval`` seconds; never on a blind fast poll. Due rows are claimed with a lease
(:mod:`.queue`) and sent with
:func:`~engine.channels.retry.send_with_retry` (the Environment's ``delivery`` policy: 10 s
timeout, exponential backoff with jitter, ``Retry-After`` honoured). Success -> ``sent``
(conversation message ``sent``); a permanent failure (4xx, misconfiguration, or every attempt
transient) -> ``undelivered`` (conversation message ``failed``) and:

**Undelivered.** The interaction moves to the ``undelivered`` queue (an assigned one is put on
hold first, which frees the agent) and the ``undelivered`` strategy runs through the
:class:`~engine.routing.runner.StrategyRunner` with ``udata.undeliveredAttempts``:

* ``Retry(at, attempt)`` -> the row waits (``retrying``) until ``next_attempt_at = at``; then
  one resend. Success -> ``sent`` and the interaction goes back to ``asynchold`` (the
  customer's next message wakes it as usual); failure -> ``undelivered_attempts = attempt``
  and the strategy runs again;
* ``Redirect(parkQueue)`` (give-up, park) -> the interaction is requeued there (``parked``);
* ``Terminate(reason)`` -> the segment ends with that reason (``terminated``).

An external orchestration server may drive the same strategy instead: its ``session:fetch``
reaches ``POST /nexus/v3/routing/undelivered/retry`` (:meth:`OutboundService.resend_now`).

**Receipts** (:meth:`apply_receipt`) move a message forward (sent -> delivered -> read, never
back) and update the conversation message's status; a ``Failed`` receipt of a reply is a
permanent failure (undelivered path).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from engine.channels.base import (
    OutboundMessage,
    ReceiptStatus,
    SendContext,
    SendError,
    SendResult,
    TransientSendError,
)
from engine.channels.registry import AdapterRegistry, provider_of_channel
from engine.channels.retry import RetryPolicy, send_with_retry
from engine.config.model import Model
from engine.messaging import queue as q
from engine.messaging.wakeup import IDLE_INTERVAL, QueueLoop, Wakeup, seconds_until
from engine.routing.conversation_models import SegmentState
from engine.routing.router import ASYNC_HOLD_QUEUE, UNDELIVERED_QUEUE
from engine.routing.runner import (
    Action,
    ActionResult,
    InteractionInfo,
    Redirect,
    Retry,
    StrategyRunner,
    Terminate,
)
from engine.routing.strategies import StrategyCatalog
from engine.store.conversation_tables import conversations, messages
from engine.store.errors import CacheError, StoreError
from engine.store.messaging_tables import OUTBOUND_UNSENT, outbound_messages
from engine.store.planning import by_key_only

log = logging.getLogger("nexus.messaging.outbound")

UNDELIVERED_STRATEGY = "undelivered"
FEED_WINDOW = timedelta(hours=1)
FEED_BATCH = 500
#: the cache key of the feeder turn, and how long one turn lasts (seconds)
FEEDER_KEY = "outbound:feeder"
FEEDER_TURN = 3.0
_RECEIPT_STATUS = {
    ReceiptStatus.DELIVERED: q.DELIVERED,
    ReceiptStatus.READ: q.READ,
    ReceiptStatus.FAILED: q.FAILED,
}


def feed_window_start(now: datetime) -> datetime:
    """Where the feeder's regular scan starts: :data:`FEED_WINDOW` back, on a whole minute
    (so the scan's statement changes once a minute)."""
    return (now - FEED_WINDOW).replace(second=0, microsecond=0)


def _feed_statement() -> sa.Select:
    m, c = messages, conversations
    return (
        sa.select(
            m.c.id, m.c.tenant, m.c.text, m.c.segment_id, m.c.conversation_id,
            c.c.channel_id, c.c.customer_address, c.c.media, c.c.subject,
        )
        .select_from(m.join(c, c.c.id == m.c.conversation_id))
        .where(sa.text(OUTBOUND_UNSENT.replace("status", "messages.status")
                       .replace("from_type", "messages.from_type")),
               m.c.type == "Text", c.c.media.in_(["sms", "email"]))
        .order_by(m.c.timestamp)
        .limit(FEED_BATCH)
    )


#: the feeder's full scan (at start); the regular scans add a window on ``timestamp``
_FEED_ALL = _feed_statement()


class FeederTurn:
    """Whether this process is the one that scans for new replies often (see the module
    docstring). A turn is taken with SET NX and lasts :data:`FEEDER_TURN` seconds; its
    holder takes it again when it ends (another process may have taken it first: then that
    one scans). Without a cache, or while Redis fails, every process has the turn."""

    def __init__(self, cache: Any, owner: str,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.cache = cache
        self.owner = owner
        self.clock = clock
        self._until = 0.0  # our turn lasts until then (this process's monotonic clock)

    async def mine(self) -> bool:
        now = self.clock()
        if self.cache is None or now < self._until:
            return True
        try:
            holder = await self.cache.claim(FEEDER_KEY, self.owner, FEEDER_TURN)
        except CacheError:
            return True  # no Redis: scan (idempotent) rather than leave replies waiting
        if holder is None:
            self._until = now + FEEDER_TURN
            return True
        # still ours in Redis (its TTL started after our clock did): ask again next scan
        return holder == self.owner

    async def hand_over(self) -> bool:
        """Give the turn up (stopping); True when it was ours."""
        if self.cache is None or self._until == 0.0:
            return False
        self._until = 0.0
        try:
            if await self.cache.get(FEEDER_KEY) != self.owner:
                return False
            await self.cache.delete(FEEDER_KEY)
        except CacheError:
            return False
        return True


class RetryNotPossible(LookupError):
    """No undelivered message of that interaction to resend."""


def lease_seconds(policy: RetryPolicy) -> float:
    """A claim outlives a whole send_with_retry: every timeout, every backoff, plus margin."""
    waits = sum(policy.base_delay(n) for n in range(1, max(1, policy.max_attempts)))
    return policy.max_attempts * policy.timeout + waits + 30.0


class _Stopping(Exception):
    """The service stops while a send waits to retry: the reply goes back to the queue."""


class _Executor:
    """Carries out the undelivered strategy's actions for one message."""

    def __init__(self, service: OutboundService, row: q.OutboundRow) -> None:
        self.service = service
        self.row = row
        self.applied: str | None = None

    async def execute(self, action: Action, interaction: InteractionInfo) -> ActionResult:
        if isinstance(action, Retry):
            return ActionResult.defer()
        if isinstance(action, Redirect):
            ok = await self.service.park(self.row, action.queue)
            if not ok:
                return ActionResult.failed("park", f"cannot park in {action.queue}")
            self.applied = q.PARKED
            return ActionResult.done({"queue": action.queue})
        if isinstance(action, Terminate):
            await self.service.terminate(self.row, action.reason or "undelivered")
            self.applied = q.TERMINATED
            return ActionResult.done()
        return ActionResult.done()


class OutboundService:
    """See the module docstring. ``conversations``/``router`` are callables returning the
    process's ConversationService / Router (read lazily: the chat wiring may create them
    after this service)."""

    def __init__(
        self,
        store: Any,
        model: Callable[[], Model],
        registry: AdapterRegistry,
        *,
        conversations: Callable[[], Any],
        router: Callable[[], Any],
        env: Any = None,
        cache: Any = None,
        feed_interval: float = 0.25,
        poll_interval: float = 0.25,
        idle_interval: float = IDLE_INTERVAL,
        batch_size: int = 20,
        rng: Callable[[], float] = random.random,
        worker_id: str | None = None,
    ) -> None:
        self.store = store
        self._model = model
        self.registry = registry
        self._conversations = conversations
        self._router = router
        self.env = env
        self.feed_interval = feed_interval
        self.idle_interval = idle_interval
        self.batch_size = batch_size
        self.rng = rng
        self.worker_id = worker_id or uuid.uuid4().hex[:12]
        self.runner: StrategyRunner | None = None
        self._runner_model: Model | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        self.wakeup = Wakeup(cache, "outbound")
        self.feeder_turn = FeederTurn(cache, self.worker_id)
        self.feeder_wakeup = Wakeup(cache, "outbound-feeder")  # a turn was handed over
        self.loop = QueueLoop(
            "outbound sender", self.wakeup, self.run_once, self.due_in,
            poll_interval=poll_interval, idle_interval=idle_interval, logger=log,
        )
        self._feed_query: tuple[datetime | None, sa.Select] | None = None
        self._executors: dict[str, _Executor] = {}

    # -- config ----------------------------------------------------------------------------

    @property
    def model(self) -> Model:
        return self._model()

    @property
    def policy(self) -> RetryPolicy:
        return RetryPolicy.from_delivery(self.model.environment.delivery)

    def strategy_runner(self) -> StrategyRunner:
        model = self.model
        if self.runner is None:
            self.runner = StrategyRunner(StrategyCatalog(), model)
        elif self._runner_model is not model:
            self.runner.set_model(model)
        self._runner_model = model
        return self.runner

    def context(self, row: q.OutboundRow, timeout: float | None = None) -> SendContext:
        return SendContext(self.model, env=self.env, trace_id=row.trace_id or uuid.uuid4().hex,
                           timeout=timeout)

    def outbound(self, row: q.OutboundRow) -> OutboundMessage:
        tenant = self.model.tenant_by_ccid(row.tenant)
        return OutboundMessage(
            message_id=row.id,
            tenant=tenant.name if tenant is not None else row.tenant,
            channel_id=row.channel_id,
            to=row.to_address,
            text=row.text,
            subject=row.subject,
            html=row.html,
            from_address=row.from_address,
            from_name=row.from_name,
            timestamp=row.created,
            trace_id=row.trace_id,
        )

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        if self._tasks:
            return
        self._stopping.clear()
        self.loop.stopping.clear()
        self.wakeup.start()
        self.feeder_wakeup.start()
        self._tasks = [
            asyncio.create_task(self._feed_loop(), name=f"outbound-feeder-{self.worker_id}"),
            asyncio.create_task(self.loop.run(), name=f"outbound-sender-{self.worker_id}"),
        ]

    def wake(self) -> None:
        """Replies were queued: send them now (here, or in an idle process)."""
        self.wakeup.notify()

    async def stop(self, timeout: float = 15.0) -> None:
        """Stop claiming; in-flight sends finish (their claims are released after
        ``timeout``, and the other processes are nudged to pick them up)."""
        self._stopping.set()
        self.feeder_wakeup.set()
        self.loop.stop()
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            try:
                await asyncio.wait_for(asyncio.shield(task), timeout)
            except TimeoutError:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if tasks:
            await self.wakeup.publish()
            if await self.feeder_turn.hand_over():
                await self.feeder_wakeup.publish()
        await self.wakeup.stop()
        await self.feeder_wakeup.stop()

    async def _feed_loop(self) -> None:
        full_scan = True  # the first scan takes everything (crash recovery)
        while not self._stopping.is_set():
            scanning = True
            try:
                scanning = full_scan or await self.feeder_turn.mine()
                if scanning:
                    taken = await self.feed(None if full_scan else feed_window_start(q.utcnow()))
                    full_scan = False
                    if taken:
                        self.wakeup.notify()
                        continue
            except StoreError as exc:
                log.warning("outbound feeder: store error: %s", exc)
            except Exception:  # noqa: BLE001 - the feeder must survive any one round
                log.exception("outbound feeder round failed")
            self.feeder_wakeup.clear()
            if not self._stopping.is_set():  # (stop() sets it before it nudges)
                await self.feeder_wakeup.wait(
                    self.feed_interval if scanning else self.idle_interval
                )

    # -- the feeder ------------------------------------------------------------------------

    def feed_query(self, since: datetime | None) -> sa.Select:
        """The feeder's scan from ``since`` (None: all), kept while ``since`` stays the same:
        a statement built once costs no SQLAlchemy work per scan (its cache key is
        memoised)."""
        if self._feed_query is None or self._feed_query[0] != since:
            query = _FEED_ALL if since is None else _FEED_ALL.where(
                messages.c.timestamp >= since
            )
            self._feed_query = (since, query)
        return self._feed_query[1]

    async def feed(self, since: datetime | None = None) -> int:
        """Queue agent messages of sms/email conversations not queued yet; returns how many."""
        rows = await self.store.fetch_all(self.feed_query(since))
        if not rows:
            return 0
        model = self.model
        now = q.utcnow()
        values = []
        for row in rows:
            channel = model.channel(row["channel_id"] or "")
            try:
                provider = provider_of_channel(model, channel) if channel else "unknown"
            except SendError:
                provider = "unknown"
            values.append({
                "id": row["id"], "tenant": row["tenant"], "kind": q.REPLY,
                "media": row["media"], "channel_id": row["channel_id"] or "",
                "provider": provider, "to_address": row["customer_address"] or "",
                "conversation_id": row["conversation_id"],
                "interaction_id": row["segment_id"], "text": row["text"],
                "subject": row["subject"], "status": q.QUEUED, "next_attempt_at": now,
                "trace_id": uuid.uuid4().hex, "created": now, "updated": now,
            })
        insert = (postgresql.insert if self.store.dialect == "postgresql" else sqlite.insert)(
            outbound_messages
        ).values(values).on_conflict_do_nothing(index_elements=["id"])
        async with self.store.transaction():
            await self.store.execute(insert)
            await self.store.execute(
                sa.update(messages)
                .where(messages.c.id.in_([v["id"] for v in values]), messages.c.status.is_(None))
                .values(status="pending")
            )
        return len(values)

    # -- the sender ------------------------------------------------------------------------

    async def due_in(self) -> float | None:
        """Seconds until the next reply is due (None: none waits); the loop sleeps that long."""
        return seconds_until(await q.next_due(self.store, q.REPLY), q.utcnow())

    async def run_once(self) -> int:
        """Claim due replies and send each (concurrently); returns how many were claimed."""
        policy = self.policy
        token, rows = await q.claim(self.store, kinds=[q.REPLY], limit=self.batch_size,
                                    lease=lease_seconds(policy), worker=self.worker_id)
        if not rows:
            return 0
        try:
            await asyncio.gather(*(self._process(row, token, policy) for row in rows))
        finally:
            with contextlib.suppress(StoreError):
                await asyncio.shield(q.release(self.store, token))
        return len(rows)

    async def _process(self, row: q.OutboundRow, token: str, policy: RetryPolicy) -> None:
        attempt = row.strategy_attempt
        try:
            if attempt is not None:
                await self._strategy_retry(row, token, attempt)
            else:
                await self._send_reply(row, token, policy)
        except StoreError:
            raise
        except Exception:  # noqa: BLE001 - one bad message must not stop the others
            log.exception("sending %s failed unexpectedly", row.id)

    async def send_once(self, row: q.OutboundRow) -> SendResult:
        adapter = self.registry.get(row.provider)
        policy = self.policy
        return await adapter.send(self.outbound(row), self.context(row, policy.timeout))

    async def _send_reply(self, row: q.OutboundRow, token: str, policy: RetryPolicy) -> None:
        adapter = self.registry.get(row.provider) if row.provider in self.registry.providers \
            else None
        try:
            if adapter is None:
                raise SendError(f"channel {row.channel_id!r} has no usable provider")
            message = self.outbound(row)
            ctx = self.context(row, policy.timeout)

            def on_retry(attempt: int, error: TransientSendError, delay: float) -> None:
                log.info("send of %s: attempt %d failed (%s); retrying in %.2f s",
                         row.id, attempt, error, delay)

            result = await send_with_retry(lambda _n: adapter.send(message, ctx), policy,
                                           sleep=self._backoff, rng=self.rng,
                                           on_retry=on_retry)
        except _Stopping:
            # run_once releases the claim: queued again, for another process or the next start
            log.info("send of %s: stopping before its next attempt; back in the queue", row.id)
            return
        except SendError as exc:
            log.warning("reply %s to %s undeliverable: %s", row.id, row.to_address, exc)
            if await q.finish(self.store, row.id, token, status=q.UNDELIVERED,
                              last_error=str(exc)[:2000]):
                await self._message_status(row, "failed")
                await self.undeliverable(row.id, row.tenant)
            return
        await self._sent(row, token, result)

    async def _backoff(self, delay: float) -> None:
        """The wait before a retry. A stop ends it (:class:`_Stopping`): a worker that stops
        does not sit out backoffs of up to a minute (it used to, until Sanic's graceful
        shutdown timeout destroyed the task); the attempt in flight, if any, still ends
        first."""
        if not self._stopping.is_set():
            try:
                await asyncio.wait_for(self._stopping.wait(), delay)
            except TimeoutError:
                return
        raise _Stopping

    async def _sent(self, row: q.OutboundRow, token: str, result: SendResult) -> bool:
        now = q.utcnow()
        ok = await q.finish(self.store, row.id, token, status=q.SENT, sent_at=now,
                            provider_message_id=result.provider_message_id or row.id,
                            last_error=None)
        if ok:
            await self._message_status(row, "sent")
        return ok

    async def _message_status(self, row: q.OutboundRow, status: str) -> None:
        if row.kind != q.REPLY:
            return
        service = self._conversations()
        if service is None:
            return
        try:
            await service.set_message_status(row.tenant, row.id, status)
        except Exception as exc:  # noqa: BLE001 - the queue row is the truth; log only
            log.warning("cannot set the status of message %s: %s", row.id, exc)

    # -- undelivered -----------------------------------------------------------------------

    async def undeliverable(self, row_id: str, tenant: str) -> None:
        """A reply failed for good: move its interaction to ``undelivered`` and ask the
        strategy what next (retry later, park or terminate)."""
        row = await q.get(self.store, tenant, row_id)
        if row is None:
            return
        await self._to_undelivered_queue(row)
        await self.run_strategy(row)

    async def _segment(self, row: q.OutboundRow) -> Any:
        router = self._router()
        if router is None or row.interaction_id is None:
            return None
        return await router.repo.get_segment(row.tenant, row.interaction_id)

    async def _to_undelivered_queue(self, row: q.OutboundRow) -> None:
        router = self._router()
        segment = await self._segment(row)
        if router is None or segment is None:
            return
        if segment.state is SegmentState.ASSIGNED and segment.agent:
            try:
                segment = await router.hold(row.tenant, segment.agent, segment.id)
            except Exception as exc:  # noqa: BLE001 - it changed meanwhile: use what it is
                log.info("cannot hold %s: %s", segment.id, exc)
                segment = await self._segment(row)
        if segment is not None and segment.state is SegmentState.HELD:
            await router.repo.transition(
                row.tenant, segment.id, expect_states=[SegmentState.HELD],
                values={"queue": UNDELIVERED_QUEUE, "wake_at": None},
            )

    async def run_strategy(self, row: q.OutboundRow) -> str:
        """Run ``undelivered`` for the row's interaction and apply its decision; returns the
        row's new status."""
        udata: dict[str, Any] = {}
        endpoint = None
        conversation = None
        service = self._conversations()
        if service is not None and row.conversation_id:
            with contextlib.suppress(Exception):
                conversation = await service.get_conversation(row.tenant, row.conversation_id)
        if conversation is not None:
            udata.update(dict(conversation.user_data))
            endpoint = conversation.endpoint
        tenant = self.model.tenant_by_ccid(row.tenant)
        udata["undeliveredAttempts"] = row.undelivered_attempts
        info = InteractionInfo(
            id=row.interaction_id or row.id, queue=UNDELIVERED_QUEUE, udata=udata,
            endpoint=endpoint, tenant=tenant.name if tenant else None, media=row.media,
        )
        executor = _Executor(self, row)
        runner = self.strategy_runner()
        runner.executor = self
        self._executors[info.id] = executor
        try:
            outcome = await runner.run(UNDELIVERED_STRATEGY, info, event="interaction.added")
        finally:
            self._executors.pop(info.id, None)
        deferred = outcome.deferred
        if isinstance(deferred, Retry):
            at = datetime.fromtimestamp(float(deferred.at), UTC)
            await self._update(row, status=q.RETRYING, next_attempt_at=at,
                               reason=f"{q.RETRY_REASON}{deferred.attempt}")
            log.info("undelivered %s: retry %d at %s", row.id, deferred.attempt, at.isoformat())
            self.wakeup.set()  # the loop learns the new due time
            return q.RETRYING
        status = executor.applied or (q.FAILED if outcome.error else q.TERMINATED)
        if status == q.FAILED:
            log.error("undelivered strategy for %s failed: %s", row.id, outcome.error)
        await self._update(row, status=status, reason=(outcome.final_state or "error")[:64])
        return status

    async def execute(self, action: Action, interaction: InteractionInfo) -> ActionResult:
        """The runner's executor: the actions of each run go to that run's message."""
        executor = self._executors.get(interaction.id)
        if executor is None:
            return ActionResult.failed("unknown", "no undelivered message for this run")
        return await executor.execute(action, interaction)

    async def _update(self, row: q.OutboundRow, **values: Any) -> None:
        t = outbound_messages
        values.setdefault("updated", q.utcnow())
        await self.store.execute(
            sa.update(t)
            .where(t.c.id == row.id, by_key_only(t.c.tenant == row.tenant))
            .values(**values)
        )

    async def park(self, row: q.OutboundRow, queue: str) -> bool:
        router = self._router()
        segment = await self._segment(row)
        if router is None or segment is None or not segment.state.is_open:
            return False
        if router.queue_config(row.tenant, queue) is None:
            return False
        moved = await router.repo.transition(
            row.tenant, segment.id, expect_states=[SegmentState.HELD, SegmentState.QUEUED],
            values={"state": "queued", "queue": queue, "queued_at": q.utcnow(), "wake_at": None},
        )
        if moved is None:
            return False
        await router.enqueue(moved)
        return True

    async def terminate(self, row: q.OutboundRow, reason: str) -> None:
        router = self._router()
        segment = await self._segment(row)
        if router is None or segment is None or not segment.state.is_open:
            return
        await router.end(row.tenant, segment.id, reason=reason[:64])

    async def _back_to_hold(self, row: q.OutboundRow) -> None:
        """A retry delivered the message: the interaction waits in ``asynchold`` again."""
        router = self._router()
        segment = await self._segment(row)
        if router is None or segment is None:
            return
        if segment.state is SegmentState.HELD and segment.queue == UNDELIVERED_QUEUE:
            await router.repo.transition(
                row.tenant, segment.id, expect_states=[SegmentState.HELD],
                values={"queue": ASYNC_HOLD_QUEUE}, queue=UNDELIVERED_QUEUE,
            )

    async def _strategy_retry(self, row: q.OutboundRow, token: str, attempt: int) -> None:
        try:
            result = await self.send_once(row)
        except SendError as exc:
            log.warning("undelivered %s: retry %d failed: %s", row.id, attempt, exc)
            if await q.finish(self.store, row.id, token, status=q.UNDELIVERED,
                              undelivered_attempts=attempt, reason=None,
                              last_error=str(exc)[:2000]):
                fresh = await q.get(self.store, row.tenant, row.id)
                if fresh is not None:
                    await self.run_strategy(fresh)
            return
        if await self._sent(row, token, result):
            await self._update(row, undelivered_attempts=attempt, reason="delivered")
            await self._back_to_hold(row)

    async def resend_now(self, tenant: str | None, interaction_id: str, attempt: int) -> bool:
        """The strategy's retry contract: resend the interaction's undelivered message once.
        True when it went out; False when it failed again (``undelivered_attempts`` =
        ``attempt``). :class:`RetryNotPossible` when there is nothing to resend."""
        row = await q.latest_for_interaction(
            self.store, tenant, interaction_id, [q.UNDELIVERED, q.RETRYING, q.FAILED]
        )
        if row is None:
            raise RetryNotPossible(f"no undelivered message for interaction {interaction_id}")
        t = outbound_messages
        token = f"{self.worker_id}:{uuid.uuid4().hex}"
        now = q.utcnow()
        claimed = await self.store.fetch_one(
            sa.update(t)
            .where(t.c.id == row.id, t.c.status == row.status)
            .values(status=q.SENDING, claim_token=token, updated=now,
                    claimed_until=now + timedelta(seconds=lease_seconds(self.policy)),
                    attempts=t.c.attempts + 1)
            .returning(t.c.id)
        )
        if claimed is None:
            raise RetryNotPossible(f"the message of {interaction_id} is being sent")
        try:
            result = await self.send_once(row)
        except SendError as exc:
            await q.finish(self.store, row.id, token, status=q.UNDELIVERED,
                           undelivered_attempts=max(attempt, row.undelivered_attempts),
                           reason=None, last_error=str(exc)[:2000])
            return False
        await self._sent(row, token, result)
        await self._update(row, undelivered_attempts=attempt, reason="delivered")
        await self._back_to_hold(row)
        return True

    # -- receipts --------------------------------------------------------------------------

    async def apply_receipt(self, tenant: str, ref_id: str, status: ReceiptStatus,
                            error: str | None = None) -> q.OutboundRow | None:
        """A provider's delivery receipt for the message ``ref_id`` (its provider id or ours).
        Returns the row as it was (None: unknown message, acknowledged and ignored)."""
        row = await q.by_provider_ref(self.store, tenant, ref_id)
        if row is None:
            log.info("receipt for unknown message %s of %s ignored", ref_id, tenant)
            return None
        new = _RECEIPT_STATUS[status]
        t = outbound_messages
        if new == q.FAILED:
            if row.status not in (q.SENT, q.DELIVERED, q.QUEUED, q.SENDING):
                return row
            target = q.UNDELIVERED if row.kind == q.REPLY else q.FAILED
            changed = await self.store.fetch_one(
                sa.update(t).where(t.c.id == row.id, t.c.status == row.status)
                .values(status=target, last_error=json.dumps({"receipt": error or "Failed"}),
                        updated=q.utcnow()).returning(t.c.id)
            )
            if changed is not None:
                await self._message_status(row, "failed")
                if row.kind == q.REPLY:
                    await self.undeliverable(row.id, tenant)
            return row
        if q.RANK.get(new, 0) <= q.RANK.get(row.status, -1) or row.status not in q.RANK:
            return row
        await self.store.execute(
            sa.update(t).where(t.c.id == row.id, t.c.status.in_(
                [s for s, r in q.RANK.items() if r < q.RANK[new]]))
            .values(status=new, updated=q.utcnow())
        )
        await self._message_status(row, new)
        return row
