"""Campaign sends (``/nexus/v3/cxc/sms`` and ``/nexus/v3/cxc/email``): validation, opt-out
refusal, durable queueing and the paced sender.

* :meth:`CampaignService.submit` validates each message, refuses opted-out recipients
  (status ``refused``, reason ``OPTED_OUT``) and stores every accepted one as a ``campaign``
  row of ``outbound_messages`` (status ``queued``) in one transaction; each message gets its
  id at once.
* :class:`CampaignSender` sends them, **per sender** (tenant + channel) in creation order, at
  most ``mps`` messages per second: the ``mps`` option of the sender's ``chat.*``/``cxc.*``
  section (default :data:`DEFAULT_MPS`). Across processes, a sender is worked by one process
  at a time (a Redis lock ``pace-lock:<tenant>:<sender>``), and every send takes a time slot
  ``pace:<tenant>:<sender>:<n>`` (``SET NX``; slot *n* is the interval ``[n/mps, (n+1)/mps)``),
  so the rate holds even if a lock expires. The recipient's opt-out is checked again right
  before the send. Transient failures are retried with the delivery policy; a permanent one
  makes the message ``failed``. Receipts then move it to ``delivered`` / ``read`` / ``failed``.
  The sender's loop (:class:`~engine.messaging.wakeup.QueueLoop`) runs when woken (a
  submission in this process; another process's nudge on ``bg:campaigns``, sent when that
  process's sender was busy), when the next message is due (an expired lease) and on a
  safety poll every ``idle_interval`` seconds. A sender locked by another process is looked
  at again after ``poll_interval`` seconds, less often while the lock stays taken (its holder
  keeps sending; the others only matter if it dies).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import sqlalchemy as sa

from engine.channels.base import OutboundMessage, ProviderNotConfigured, SendContext, SendError
from engine.channels.optout import OptOutList
from engine.channels.registry import AdapterRegistry, provider_of_channel
from engine.channels.retry import RetryPolicy, send_with_retry
from engine.config.model import Channel, Model, Tenant
from engine.messaging import queue as q
from engine.messaging.outbound import lease_seconds
from engine.messaging.wakeup import IDLE_INTERVAL, QueueLoop, Wakeup, seconds_until
from engine.store.errors import CacheError, StoreError
from engine.store.messaging_tables import outbound_messages

log = logging.getLogger("nexus.messaging.campaigns")

DEFAULT_MPS = 10.0
MAX_BULK = 1000
MAX_TEXT = 16 * 1024
OPTED_OUT = "OPTED_OUT"


class CampaignInvalid(ValueError):
    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True, slots=True)
class Accepted:
    index: int
    row: dict[str, Any]


def sender_mps(model: Model, channel: Channel | None) -> float:
    """The ``mps`` option of the channel's section (default :data:`DEFAULT_MPS`)."""
    if channel is None:
        return DEFAULT_MPS
    for transaction in model.transactions:
        if transaction.name != "NexusServices":
            continue
        if transaction.tenant not in (None, channel.scope):
            continue
        section = transaction.sections.get(channel.section)
        if isinstance(section, Mapping) and section.get("channelId") == channel.channel_id:
            value = section.get("mps")
            if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
                return float(value)
    return DEFAULT_MPS


def _text(value: Any, field: str, *, required: bool = False, limit: int = MAX_TEXT) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise CampaignInvalid(f"{field} is required", field)
        return None
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        raise CampaignInvalid(f"{field} must be a string", field)
    text = str(value)
    if len(text) > limit:
        raise CampaignInvalid(f"{field} is longer than {limit}", field)
    return text


class CampaignService:
    def __init__(self, store: Any, model: Callable[[], Model], optouts: OptOutList) -> None:
        self.store = store
        self._model = model
        self.optouts = optouts

    @property
    def model(self) -> Model:
        return self._model()

    def _channel(self, tenant: Tenant, media: str, sender: str) -> tuple[Channel, str | None]:
        """The sending channel of ``from`` (a channel id; for email also an address at a
        campaign domain) and the full sender address (email)."""
        address = None
        key = sender
        if media == "email" and "@" in sender:
            address = sender
            key = sender.rsplit("@", 1)[1].lower()
        channel = self.model.channel(key)
        wanted = "email" if media == "email" else "sms"
        if channel is None or channel.channel_type != wanted or channel.tenant not in (
            None, tenant.name
        ):
            raise CampaignInvalid(f"{sender!r} is not a {wanted} sender of this tenant", "from")
        return channel, address

    def _validate(self, tenant: Tenant, media: str, item: Any) -> dict[str, Any]:
        if not isinstance(item, Mapping):
            raise CampaignInvalid("a message must be an object", "data")
        sender = _text(item.get("from"), "from", required=True, limit=320)
        to = _text(item.get("to"), "to", required=True, limit=320)
        assert sender is not None and to is not None
        channel, address = self._channel(tenant, media, sender)
        if media == "email" and "@" not in to:
            raise CampaignInvalid("to must be an email address", "to")
        try:
            provider = provider_of_channel(self.model, channel)
        except ProviderNotConfigured as exc:
            raise CampaignInvalid(str(exc), "from") from exc
        text = _text(item.get("text"), "text")
        subject = html = None
        if media == "email":
            subject = _text(item.get("subject"), "subject", required=True, limit=998)
            html = _text(item.get("html"), "html", limit=1024 * 1024)
            if text is None and html is None:
                raise CampaignInvalid("an email needs text or html", "text")
        elif text is None:
            raise CampaignInvalid("text is required", "text")
        external = _text(item.get("externalId", item.get("external_id")), "externalId",
                         limit=255)
        return {
            "tenant": tenant.ccid, "kind": q.CAMPAIGN, "media": media,
            "channel_id": channel.channel_id, "provider": provider, "to_address": to.strip(),
            "external_id": external, "text": text, "subject": subject, "html": html,
            "from_address": address,
            "from_name": _text(item.get("fromName"), "fromName", limit=255),
        }

    async def submit(
        self, tenant: Tenant, media: str, items: Sequence[Any], trace_id: str | None = None
    ) -> list[dict[str, Any]]:
        """Validate, check opt-outs and queue ``items``; one result per item, in order:
        ``{"id", "status": queued|refused|invalid, "externalId"?, "reason"?, "field"?}``."""
        results: list[dict[str, Any]] = []
        rows: list[dict[str, Any]] = []
        now = q.utcnow()
        for index, item in enumerate(items):
            message_id = q.new_id()
            try:
                row = self._validate(tenant, media, item)
            except CampaignInvalid as exc:
                field = exc.field if len(items) == 1 else f"messages[{index}].{exc.field}"
                results.append(
                    {"id": message_id, "status": "invalid", "reason": str(exc), "field": field}
                )
                continue
            status = q.QUEUED
            reason = None
            if await self.optouts.is_opted_out(tenant.ccid, row["channel_id"], row["to_address"]):
                status, reason = q.REFUSED, OPTED_OUT
            row.update(id=message_id, status=status, reason=reason, next_attempt_at=now,
                       created=now, updated=now, trace_id=trace_id or uuid.uuid4().hex)
            rows.append(row)
            result = {"id": message_id, "status": status}
            if row["external_id"] is not None:
                result["externalId"] = row["external_id"]
            if reason:
                result["reason"] = reason
            results.append(result)
        if rows:
            # created timestamps must keep the submission order (the sender's order)
            for offset, row in enumerate(rows):
                row["created"] = now + _micro(offset)
            async with self.store.transaction():
                await self.store.execute(sa.insert(outbound_messages).values(rows))
        return results

    async def get(self, tenant: str, media: str, message_id: str) -> q.OutboundRow | None:
        row = await q.get(self.store, tenant, message_id)
        if row is None or row.kind != q.CAMPAIGN or row.media != media:
            return None
        return row


def _micro(n: int) -> timedelta:
    return timedelta(microseconds=n)


class Pacer:
    """Cross-process send slots per sender (see the module docstring)."""

    def __init__(self, cache: Any, clock: Callable[[], float] = time.time) -> None:
        self.cache = cache
        self.clock = clock
        self._last: dict[str, int] = {}

    async def slot(self, tenant: str, sender: str, mps: float) -> float:
        """Reserve the next free slot of the sender; returns when to send (epoch seconds)."""
        key = f"{tenant}:{sender}"
        index = max(math.ceil(self.clock() * mps), self._last.get(key, -1) + 1)
        ttl = max(5.0, 4.0 / mps)
        for _ in range(10_000):
            try:
                won = await self.cache.setnx_with_ttl(f"pace:{key}:{index}", "1", ttl)
            except CacheError:
                won = True  # no Redis: pace within this process only
            if won:
                self._last[key] = index
                return index / mps
            index += 1
        raise RuntimeError("no free send slot")


class CampaignSender:
    """Sends queued campaign messages, paced per sender (see the module docstring)."""

    def __init__(
        self,
        store: Any,
        cache: Any,
        model: Callable[[], Model],
        registry: AdapterRegistry,
        optouts: OptOutList,
        *,
        env: Any = None,
        poll_interval: float = 0.25,
        idle_interval: float = IDLE_INTERVAL,
        rng: Callable[[], float] = random.random,
        worker_id: str | None = None,
        on_sent: Callable[[q.OutboundRow], Any] | None = None,
    ) -> None:
        self.store = store
        self.cache = cache
        self._model = model
        self.registry = registry
        self.optouts = optouts
        self.env = env
        self.rng = rng
        self.worker_id = worker_id or uuid.uuid4().hex[:12]
        self.pacer = Pacer(cache)
        self.on_sent = on_sent
        self._task: asyncio.Task[None] | None = None
        self.wakeup = Wakeup(cache, "campaigns")
        self.loop = QueueLoop(
            "campaign sender", self.wakeup, self.run_once, self.due_in,
            poll_interval=poll_interval, idle_interval=idle_interval, logger=log,
        )

    @property
    def model(self) -> Model:
        return self._model()

    def start(self) -> None:
        if self._task is None or self._task.done():
            self.loop.stopping.clear()
            self.wakeup.start()
            self._task = asyncio.create_task(self.loop.run(), name=f"campaigns-{self.worker_id}")

    def wake(self) -> None:
        """Messages were queued: send them now (here, or in an idle process)."""
        self.wakeup.notify()

    async def stop(self, timeout: float = 15.0) -> None:
        self.loop.stop()
        task, self._task = self._task, None
        if task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(task), timeout)
            except TimeoutError:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await self.wakeup.publish()  # claims it gave back: the others take them now
        await self.wakeup.stop()

    async def due_in(self) -> float | None:
        """Seconds until the next campaign message is due (None: none waits)."""
        return seconds_until(await q.next_due(self.store, q.CAMPAIGN), q.utcnow())

    async def due_senders(self, limit: int = 50) -> list[tuple[str, str]]:
        t = outbound_messages
        now = q.utcnow()
        rows = await self.store.fetch_all(
            sa.select(t.c.tenant, t.c.channel_id)
            .where(t.c.kind == q.CAMPAIGN, sa.or_(
                sa.and_(t.c.status == q.QUEUED, t.c.next_attempt_at <= now),
                sa.and_(t.c.status == q.SENDING, t.c.claimed_until < now)))
            .group_by(t.c.tenant, t.c.channel_id)
            .limit(limit)
        )
        return [(r["tenant"], r["channel_id"]) for r in rows]

    async def run_once(self) -> int:
        senders = await self.due_senders()
        if not senders:
            return 0
        counts = await asyncio.gather(*(self._sender(t, s) for t, s in senders))
        return sum(counts)

    async def _lock(self, tenant: str, sender: str, ttl: float) -> str | None:
        token = uuid.uuid4().hex
        try:
            won = await self.cache.setnx_with_ttl(f"pace-lock:{tenant}:{sender}", token, ttl)
        except CacheError:
            return token  # no Redis: the database claims still keep each message single
        return token if won else None

    async def _unlock(self, tenant: str, sender: str, token: str) -> None:
        key = f"pace-lock:{tenant}:{sender}"
        with contextlib.suppress(CacheError):
            if await self.cache.get(key) == token:
                await self.cache.delete(key)

    async def _sender(self, tenant: str, sender: str) -> int:
        model = self.model
        mps = sender_mps(model, model.channel(sender))
        batch = max(1, min(50, int(mps * 2)))
        policy = RetryPolicy.from_delivery(model.environment.delivery)
        lease = lease_seconds(policy) + batch / mps
        lock = await self._lock(tenant, sender, lease)
        if lock is None:
            return 0
        try:
            t = outbound_messages
            token, rows = await q.claim(
                self.store, kinds=[q.CAMPAIGN], limit=batch, lease=lease,
                worker=self.worker_id, where=[t.c.tenant == tenant, t.c.channel_id == sender],
            )
            try:
                for row in rows:  # in creation order
                    if self.loop.stopping.is_set():
                        break
                    await self._send(row, token, mps, policy)
            finally:
                with contextlib.suppress(StoreError):
                    await asyncio.shield(q.release(self.store, token))
            return len(rows)
        finally:
            await self._unlock(tenant, sender, lock)

    async def _send(self, row: q.OutboundRow, token: str, mps: float,
                    policy: RetryPolicy) -> None:
        if await self.optouts.is_opted_out(row.tenant, row.channel_id, row.to_address):
            await q.finish(self.store, row.id, token, status=q.REFUSED, reason=OPTED_OUT)
            return
        at = await self.pacer.slot(row.tenant, row.channel_id, mps)
        wait = at - time.time()
        if wait > 0:
            await asyncio.sleep(wait)
        tenant = self.model.tenant_by_ccid(row.tenant)
        message = OutboundMessage(
            message_id=row.id, tenant=tenant.name if tenant else row.tenant,
            channel_id=row.channel_id, to=row.to_address, text=row.text, subject=row.subject,
            html=row.html, from_address=row.from_address, from_name=row.from_name,
            timestamp=row.created, trace_id=row.trace_id,
        )
        ctx = SendContext(self.model, env=self.env, trace_id=row.trace_id,
                          timeout=policy.timeout)
        try:
            adapter = self.registry.get(row.provider)
            result = await send_with_retry(lambda _n: adapter.send(message, ctx), policy,
                                           rng=self.rng)
        except SendError as exc:
            log.warning("campaign message %s to %s failed: %s", row.id, row.to_address, exc)
            await q.finish(self.store, row.id, token, status=q.FAILED,
                           last_error=str(exc)[:2000])
            return
        await q.finish(self.store, row.id, token, status=q.SENT, sent_at=q.utcnow(),
                       provider_message_id=result.provider_message_id or row.id)
