"""The webhook dispatcher: a background worker that delivers the outbox.

Safe with any number of engine processes on one database:

* **claim**: one statement moves due rows to ``delivering`` with a fresh ``claim_token`` and
  ``claimed_until = now + claim_seconds`` (and counts the attempt)::

      UPDATE webhook_deliveries SET status='delivering', claim_token=:t, claimed_until=:u,
             attempts=attempts+1
      WHERE id IN (SELECT id FROM webhook_deliveries WHERE <due> ORDER BY next_attempt_at
                   LIMIT :n FOR UPDATE SKIP LOCKED) AND <due>

  where ``<due>`` is ``status='pending' AND next_attempt_at <= :now`` or ``status='delivering'
  AND claimed_until < :now`` (a claim whose dispatcher died). PostgreSQL skips rows another
  dispatcher has locked; on SQLite the statement runs under the database's write lock
  (``BEGIN IMMEDIATE``) and the repeated ``<due>`` makes it a compare-and-set. The claimed
  rows are then read back by their token.
* **fencing**: the result of an attempt is written ``WHERE id=:id AND claim_token=:t``; a
  dispatcher whose claim expired and was taken over cannot overwrite the new owner's state.
  ``claim_seconds`` (default: three request timeouts + 30 s) exceeds the HTTP timeout, so a
  delivery is never sent by two dispatchers at once.
* **retries**: a failed attempt (non-2xx, timeout, connection error) is retried at
  ``now + delay`` (:func:`engine.channels.retry.compute_delay`, the Environment's delivery
  policy, ``Retry-After`` honoured); after ``max_attempts`` it is ``dead``. An answer 2xx
  with ``{"status": "PAYLOAD_SIGNATURE_CHECK_FAILED"}`` (the AI Connector's way of refusing
  a signature) is a failed attempt too.
* **restart**: nothing lives only in memory. Pending rows wait in the table; a stopped
  dispatcher finishes its in-flight requests, and rows it had claimed but could not finish
  are released to pending; a crashed one's rows are taken over when their claim expires.
* **when it runs** (:class:`~engine.messaging.wakeup.QueueLoop`): when woken (an interaction
  event of this process, a replay, another process's nudge on ``bg:webhooks`` sent when that
  process's dispatcher was busy), when the next retry or expired claim is due
  (:func:`~engine.webhooks.outbox.next_due`), and on a safety poll every ``idle_interval``
  seconds, which also finds events another process wrote but could not announce.

Request: ``POST <target url>`` with the stored payload bytes and ``Content-Type:
application/json``, ``X-Hub-Signature: sha1=<HMAC-SHA1(body, target secret)>``,
``X-Hub-Signature-256: sha256=...``, ``X-Nexus-Delivery: <delivery id>`` (stable across
retries and replays: receivers dedupe on it), ``X-Nexus-Event: STARTED|FINISHED``,
``X-Nexus-Attempt: <n>`` and ``X-B3-TraceId`` (the delivery id's hex).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import httpx
import sqlalchemy as sa

from engine.channels.base import parse_retry_after
from engine.channels.retry import RetryPolicy, compute_delay
from engine.channels.signing import signature_headers
from engine.config.model import Model, Secret
from engine.messaging.wakeup import IDLE_INTERVAL, QueueLoop, Wakeup, seconds_until
from engine.store.errors import StoreError
from engine.store.webhook_tables import webhook_deliveries
from engine.webhooks.outbox import (
    DEAD,
    DELIVERED,
    DELIVERING,
    PENDING,
    WebhookDelivery,
    next_due,
    pull_interaction_events,
    utcnow,
)

if TYPE_CHECKING:
    from engine.store.db import Store

log = logging.getLogger("nexus.webhooks")

SIGNATURE_REFUSED = "PAYLOAD_SIGNATURE_CHECK_FAILED"


@dataclass(frozen=True, slots=True)
class AttemptResult:
    delivery_id: str
    attempt: int
    status: str  # the delivery's new status: delivered | pending | dead
    http_status: int | None
    error: str | None
    next_attempt_at: datetime | None


class WebhookDispatcher:
    """Delivers ``webhook_deliveries``. ``start()`` / ``stop()`` run it in the background;
    ``run_once()`` does one claim-and-deliver round (tests drive it with ``clock``)."""

    def __init__(
        self,
        store: Store,
        model: Model | Callable[[], Model],
        *,
        client: httpx.AsyncClient | None = None,
        env: Mapping[str, str] | None = None,
        clock: Callable[[], datetime] = utcnow,
        rng: Callable[[], float] = random.random,
        policy: RetryPolicy | None = None,
        batch_size: int = 20,
        poll_interval: float = 0.25,
        idle_interval: float = IDLE_INTERVAL,
        claim_seconds: float | None = None,
        pull_events: bool = True,
        worker_id: str | None = None,
        cache: Any = None,
    ) -> None:
        self.store = store
        self._model = model
        self._own_client = client is None
        self.client = client or httpx.AsyncClient(follow_redirects=False)
        self.env = env
        self.clock = clock
        self.rng = rng
        self._policy = policy
        self.batch_size = batch_size
        self._claim_seconds = claim_seconds
        self.pull_events = pull_events
        self.worker_id = worker_id or uuid.uuid4().hex[:12]
        self._task: asyncio.Task[None] | None = None
        self.wakeup = Wakeup(cache, "webhooks")
        self.loop = QueueLoop(
            "webhook dispatcher", self.wakeup, self._round, self.due_in,
            poll_interval=poll_interval, idle_interval=idle_interval, logger=log,
        )

    # -- configuration -------------------------------------------------------------------

    @property
    def model(self) -> Model:
        return self._model() if callable(self._model) else self._model

    @property
    def policy(self) -> RetryPolicy:
        return self._policy or RetryPolicy.from_delivery(self.model.environment.delivery)

    @property
    def claim_seconds(self) -> float:
        if self._claim_seconds is not None:
            return self._claim_seconds
        return self.policy.timeout * 3 + 30.0

    # -- lifecycle -----------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        if self.running:
            return
        self.loop.stopping.clear()
        self.wakeup.start()
        self._task = asyncio.create_task(self.loop.run(),
                                         name=f"webhook-dispatcher-{self.worker_id}")

    def wake(self) -> None:
        """Deliveries or events were queued (e.g. right after :func:`enqueue`): look now,
        here or (when this dispatcher is busy) in an idle process."""
        self.wakeup.notify()

    async def stop(self, *, timeout: float | None = None) -> None:
        """Stop claiming; let in-flight deliveries finish (cancelled after ``timeout``
        seconds, their claims released to pending, the other processes nudged to take
        them); close the HTTP client if it is ours."""
        self.loop.stop()
        task, self._task = self._task, None
        if task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(task), timeout)
            except TimeoutError:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await self.wakeup.publish()
        await self.wakeup.stop()
        if self._own_client:
            await self.client.aclose()

    async def _round(self) -> int:
        """One round of the loop: pull interaction events, then deliver due rows; returns
        how many of both it took."""
        taken = 0
        if self.pull_events:
            taken += await pull_interaction_events(self.store, self.model, now=self.clock())
        return taken + len(await self.run_once())

    async def due_in(self) -> float | None:
        """Seconds until the dispatcher has work (None: none waits)."""
        due = await next_due(self.store, events=self.pull_events)
        return seconds_until(due, self.clock().astimezone(UTC))

    # -- one round -----------------------------------------------------------------------

    async def claim(self, limit: int | None = None) -> tuple[str, list[WebhookDelivery]]:
        """Claim up to ``limit`` due deliveries; returns (claim token, deliveries)."""
        t = webhook_deliveries
        now = self.clock().astimezone(UTC)
        token = f"{self.worker_id}:{uuid.uuid4().hex}"
        due = sa.or_(
            sa.and_(t.c.status == PENDING, t.c.next_attempt_at <= now),
            sa.and_(t.c.status == DELIVERING, t.c.claimed_until < now),
        )
        candidates = (
            sa.select(t.c.id)
            .where(due)
            .order_by(t.c.next_attempt_at)
            .limit(limit or self.batch_size)
            .with_for_update(skip_locked=True)
        )
        async with self.store.transaction():
            await self.store.execute(
                sa.update(t)
                .where(t.c.id.in_(candidates.scalar_subquery()), due)
                .values(
                    status=DELIVERING,
                    claim_token=token,
                    claimed_until=now + timedelta(seconds=self.claim_seconds),
                    attempts=t.c.attempts + 1,
                    updated=now,
                )
            )
            rows = await self.store.fetch_all(sa.select(t).where(t.c.claim_token == token))
        return token, [WebhookDelivery.from_row(r) for r in rows]

    async def run_once(self) -> list[AttemptResult]:
        """Claim due deliveries and attempt each once (concurrently)."""
        token, claimed = await self.claim()
        if not claimed:
            return []
        try:
            return list(await asyncio.gather(*(self._attempt(d, token) for d in claimed)))
        finally:
            await self._release(token)

    async def _release(self, token: str) -> None:
        """Give back rows of this claim that got no result (cancelled mid-flight)."""
        t = webhook_deliveries
        try:
            await asyncio.shield(
                self.store.execute(
                    sa.update(t)
                    .where(t.c.claim_token == token, t.c.status == DELIVERING)
                    .values(status=PENDING, claim_token=None, claimed_until=None)
                )
            )
        except StoreError as exc:
            log.warning("could not release webhook claims (they expire): %s", exc)

    # -- one attempt ---------------------------------------------------------------------

    def _target(self, delivery: WebhookDelivery) -> tuple[str, str | None]:
        """(url, secret) of the delivery's target in the current config."""
        model = self.model
        tenant = model.tenant_by_ccid(delivery.tenant) or model.tenant(delivery.tenant)
        if tenant is None:
            raise LookupError(f"tenant {delivery.tenant} is no longer configured")
        service = tenant.service(delivery.target)
        if service is None or not service.url:
            raise LookupError(f"{delivery.target} is no longer configured")
        secret = service.secret.get("secret")
        if isinstance(secret, Secret):
            return service.url, secret.resolve(self.env)
        return service.url, secret if isinstance(secret, str) and secret else None

    async def _attempt(self, delivery: WebhookDelivery, token: str) -> AttemptResult:
        policy = self.policy
        attempt = delivery.attempts
        http_status: int | None = None
        retry_after: float | None = None
        if attempt > policy.max_attempts:
            # a claim that expired during the last attempt: do not exceed max_attempts
            return await self._finish(
                delivery, token, DEAD, None, "claim expired during the last attempt", None
            )
        try:
            url, secret = self._target(delivery)
        except LookupError as exc:
            return await self._finish(delivery, token, DEAD, None, str(exc), None)
        except Exception as exc:  # noqa: BLE001 - an unset secret: retry after a reload
            error: str | None = f"target secret unavailable: {exc}"
        else:
            body = delivery.payload.encode("utf-8")
            headers = {
                "Content-Type": "application/json",
                "X-Nexus-Delivery": delivery.id,
                "X-Nexus-Event": delivery.event,
                "X-Nexus-Attempt": str(attempt),
                "X-B3-TraceId": uuid.UUID(delivery.id).hex,
                "User-Agent": "Nexus-Webhooks/1",
            }
            if secret:
                headers.update(signature_headers(secret, body))
            error = None
            try:
                response = await self.client.post(
                    url, content=body, headers=headers, timeout=policy.timeout
                )
            except httpx.TimeoutException:
                error = f"no answer in {policy.timeout:g} s"
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}"
            else:
                http_status = response.status_code
                if 200 <= http_status < 300 and not _refused(response):
                    return await self._finish(delivery, token, DELIVERED, http_status, None, None)
                error = f"HTTP {http_status}"
                if _refused(response):
                    error = f"HTTP {http_status} {SIGNATURE_REFUSED}"
                retry_after = parse_retry_after(response.headers.get("retry-after"))
        if attempt >= policy.max_attempts:
            return await self._finish(delivery, token, DEAD, http_status, error, None)
        delay = compute_delay(policy, attempt, self.rng(), retry_after=retry_after)
        due = self.clock().astimezone(UTC) + timedelta(seconds=delay)
        return await self._finish(delivery, token, PENDING, http_status, error, due)

    async def _finish(
        self,
        delivery: WebhookDelivery,
        token: str,
        status: str,
        http_status: int | None,
        error: str | None,
        next_attempt_at: datetime | None,
    ) -> AttemptResult:
        t = webhook_deliveries
        now = self.clock().astimezone(UTC)
        values: dict[str, Any] = {
            "status": status,
            "claim_token": None,
            "claimed_until": None,
            "last_status": http_status,
            "last_error": error,
            "updated": now,
        }
        if status == DELIVERED:
            values["delivered_at"] = now
        if next_attempt_at is not None:
            values["next_attempt_at"] = next_attempt_at
        await self.store.execute(
            sa.update(t).where(t.c.id == delivery.id, t.c.claim_token == token).values(**values)
        )
        if status == DEAD:
            log.warning(
                "webhook delivery %s to %s dead after %d attempts: %s",
                delivery.id, delivery.target, delivery.attempts, error,
            )
        return AttemptResult(
            delivery.id, delivery.attempts, status, http_status, error, next_attempt_at
        )


def _refused(response: httpx.Response) -> bool:
    if not response.content or b"PAYLOAD_SIGNATURE" not in response.content:
        return False
    try:
        body = json.loads(response.content)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    return isinstance(body, dict) and body.get("status") == SIGNATURE_REFUSED
