"""The interaction-webhook outbox: durable rows in ``webhook_deliveries``.

* :func:`enqueue` fans one interaction event out to one delivery per
  ``WebhookTransportTarget-*`` service of the tenant, inside the caller's transaction when
  one is open (so the event is stored exactly when the interaction change is);
* :func:`pull_interaction_events` turns the conversation engine's ``interaction_events``
  rows (its own outbox) into deliveries and marks them ``delivered_at``; several processes
  may run it at once (``FOR UPDATE SKIP LOCKED`` on PostgreSQL, SQLite's write lock);
* :func:`replay` puts a dead or delivered delivery back to pending with a new attempt counter;
* :func:`next_due` tells the dispatcher's loop when there is work next (an event to pull, a
  retry or an expired claim), so that an idle dispatcher sleeps until then;
* :func:`get_delivery` / :func:`list_deliveries` read them (tenant-scoped).

Payload (API.md, "Interaction webhooks")::

    {"operationId": "<uuid>", "data": {"entities": [{"event": "STARTED|FINISHED",
      "entity": {"id", "mediaType": "chat|email", "interactionSubtype", "selfUri"}}]}}
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from engine.config.model import Model, Tenant
from engine.store.errors import Conflict, NotFound
from engine.store.planning import by_key_only
from engine.store.webhook_tables import webhook_deliveries

if TYPE_CHECKING:
    from engine.store.db import Store

log = logging.getLogger("nexus.webhooks")

TARGET_PREFIX = "WebhookTransportTarget-"
EVENTS = ("STARTED", "FINISHED")
PENDING, DELIVERING, DELIVERED, DEAD = "pending", "delivering", "delivered", "dead"
STATUSES = (PENDING, DELIVERING, DELIVERED, DEAD)
REPLAYABLE = (DEAD, DELIVERED)
#: delivery rows per INSERT statement (well within the drivers' bound-parameter limits)
INSERT_CHUNK = 500


def utcnow() -> datetime:
    return datetime.now(UTC)


def aware(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class InteractionEvent:
    """One interaction lifecycle event to announce."""

    event: str  # STARTED | FINISHED
    interaction_id: str
    media_type: str = "chat"  # chat | email
    interaction_subtype: str | None = None
    self_uri: str | None = None
    source_event_id: int | None = None  # the interaction_events row it came from
    operation_id: str | None = None

    def payload(self, nexus_url: str = "") -> dict[str, Any]:
        self_uri = self.self_uri or (
            f"{nexus_url.rstrip('/')}/nexus/v3/agent/interactions/{self.interaction_id}"
        )
        return {
            "operationId": self.operation_id or str(uuid.uuid4()),
            "data": {
                "entities": [
                    {
                        "event": self.event,
                        "entity": {
                            "id": self.interaction_id,
                            "mediaType": self.media_type,
                            "interactionSubtype": self.interaction_subtype,
                            "selfUri": self_uri,
                        },
                    }
                ]
            },
        }


@dataclass(frozen=True, slots=True)
class WebhookDelivery:
    id: str
    tenant: str
    target: str
    event: str
    interaction_id: str
    payload: str
    status: str
    attempts: int
    replays: int
    next_attempt_at: datetime | None
    last_status: int | None
    last_error: str | None
    created: datetime | None
    updated: datetime | None
    delivered_at: datetime | None
    claimed_until: datetime | None = None
    claim_token: str | None = None
    source_event_id: int | None = None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> WebhookDelivery:
        return cls(
            id=row["id"],
            tenant=row["tenant"],
            target=row["target"],
            event=row["event"],
            interaction_id=row["interaction_id"],
            payload=row["payload"],
            status=row["status"],
            attempts=int(row["attempts"]),
            replays=int(row["replays"]),
            next_attempt_at=aware(row["next_attempt_at"]),
            last_status=row["last_status"],
            last_error=row["last_error"],
            created=aware(row["created"]),
            updated=aware(row["updated"]),
            delivered_at=aware(row["delivered_at"]),
            claimed_until=aware(row["claimed_until"]),
            claim_token=row["claim_token"],
            source_event_id=row["source_event_id"],
        )

    def to_dict(self) -> dict[str, Any]:
        """The API's view of a delivery (no claim internals)."""

        def ts(value: datetime | None) -> str | None:
            return value.isoformat().replace("+00:00", "Z") if value else None

        return {
            "id": self.id,
            "tenant": self.tenant,
            "target": self.target,
            "event": self.event,
            "interactionId": self.interaction_id,
            "status": self.status,
            "attempts": self.attempts,
            "replays": self.replays,
            "nextAttemptAt": ts(self.next_attempt_at) if self.status == PENDING else None,
            "lastStatus": self.last_status,
            "lastError": self.last_error,
            "created": ts(self.created),
            "deliveredAt": ts(self.delivered_at),
            "payload": json.loads(self.payload),
        }


def _dumps(payload: Mapping[str, Any]) -> str:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False)


def _delivery_rows(
    tenant: Tenant, event: InteractionEvent, nexus_url: str, when: datetime
) -> list[dict[str, Any]]:
    """One pending delivery row per webhook target of ``tenant``."""
    if event.event not in EVENTS:
        raise ValueError(f"event must be one of {EVENTS}, not {event.event!r}")
    targets = sorted(s.name for s in tenant.webhook_targets)
    if not targets:
        return []
    body = _dumps(event.payload(nexus_url))
    return [
        {
            "id": str(uuid.uuid4()),
            "tenant": tenant.ccid,
            "target": target,
            "event": event.event,
            "interaction_id": event.interaction_id,
            "source_event_id": event.source_event_id,
            "payload": body,
            "status": PENDING,
            "attempts": 0,
            "replays": 0,
            "next_attempt_at": when,
            "created": when,
            "updated": when,
        }
        for target in targets
    ]


async def enqueue(
    store: Store,
    tenant: Tenant,
    event: InteractionEvent,
    *,
    nexus_url: str = "",
    now: datetime | None = None,
) -> list[str]:
    """Store one delivery per webhook target of ``tenant``; returns their ids (none when the
    tenant has no target). Runs in the caller's transaction when one is open (a savepoint),
    else in its own."""
    rows = _delivery_rows(tenant, event, nexus_url, (now or utcnow()).astimezone(UTC))
    if not rows:
        return []
    async with store.transaction():
        await store.execute(sa.insert(webhook_deliveries).values(rows))
    return [row["id"] for row in rows]


#: "due long ago": an interaction event waits to be pulled
LONG_DUE = datetime.min.replace(tzinfo=UTC)
_NEXT_DUE: dict[bool, sa.Select] = {}


def _next_due_statement(events: bool) -> sa.Select:
    from engine.store.conversation_tables import interaction_events as ie

    t = webhook_deliveries
    due = (
        sa.select(sa.func.min(sa.case((t.c.status == DELIVERING, t.c.claimed_until),
                                      else_=t.c.next_attempt_at)))
        .where(t.c.status.in_([PENDING, DELIVERING]))
        .scalar_subquery()
        .label("due")
    )
    if not events:
        return sa.select(due)
    waiting = sa.exists().where(ie.c.delivered_at.is_(None)).label("events")
    return sa.select(due, waiting)


async def next_due(store: Store, *, events: bool = True) -> datetime | None:
    """When the dispatcher has work next: :data:`LONG_DUE` when an interaction event waits to
    be pulled (``events``), else the earliest pending retry or expired claim, else None.
    One statement, built once (the idle dispatcher runs it on every safety poll)."""
    statement = _NEXT_DUE.get(events)
    if statement is None:
        statement = _NEXT_DUE[events] = _next_due_statement(events)
    row = await store.fetch_one(statement)
    if row is None:
        return None
    if events and row["events"]:
        return LONG_DUE
    return aware(row["due"])


def _tenant_of(model: Model, value: str) -> Tenant | None:
    return model.tenant_by_ccid(value) or model.tenant(value)


async def pull_interaction_events(
    store: Store, model: Model, *, limit: int = 100, now: datetime | None = None
) -> int:
    """Move up to ``limit`` undelivered ``interaction_events`` rows (the conversation
    engine's outbox, table from migration v0002) into webhook deliveries, atomically with
    marking them ``delivered_at``. Returns the number of events taken. Their deliveries are
    written with one multi-row INSERT (no savepoint per event)."""
    from engine.store.conversation_tables import interaction_events as ie

    when = (now or utcnow()).astimezone(UTC)
    async with store.transaction():
        rows = await store.fetch_all(
            sa.select(ie)
            .where(ie.c.delivered_at.is_(None))
            .order_by(ie.c.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        deliveries: list[dict[str, Any]] = []
        for row in rows:
            tenant = _tenant_of(model, row["tenant"])
            name = str(row["event"]).upper()
            if tenant is None or name not in EVENTS:
                log.warning(
                    "interaction event %s not announced (tenant %s, event %s)",
                    row["id"], row["tenant"], row["event"],
                )
                continue
            media = "email" if str(row["media"]).lower() == "email" else "chat"
            deliveries += _delivery_rows(
                tenant,
                InteractionEvent(
                    event=name,
                    interaction_id=row["interaction_id"],
                    media_type=media,
                    interaction_subtype=row["subtype"],
                    source_event_id=int(row["id"]),
                ),
                model.environment.nexus_url,
                when,
            )
        for start in range(0, len(deliveries), INSERT_CHUNK):
            chunk = deliveries[start : start + INSERT_CHUNK]
            await store.execute(sa.insert(webhook_deliveries).values(chunk))
        if rows:
            await store.execute(
                sa.update(ie)
                .where(ie.c.id.in_([r["id"] for r in rows]))
                .values(delivered_at=when)
            )
    return len(rows)


async def get_delivery(store: Store, tenant: str, delivery_id: str) -> WebhookDelivery | None:
    """A delivery of ``tenant`` (ccid), or None (also when it belongs to another tenant)."""
    row = await store.fetch_one(
        sa.select(webhook_deliveries).where(
            webhook_deliveries.c.id == delivery_id,
            by_key_only(webhook_deliveries.c.tenant == tenant),
        )
    )
    return None if row is None else WebhookDelivery.from_row(row)


async def list_deliveries(
    store: Store,
    tenant: str,
    *,
    status: str | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> tuple[list[WebhookDelivery], str | None]:
    """A page of a tenant's deliveries, newest first; returns (items, next cursor)."""
    t = webhook_deliveries
    query = sa.select(t).where(t.c.tenant == tenant)
    if status is not None:
        query = query.where(t.c.status == status)
    if cursor:
        stamp, _, last_id = cursor.partition("|")
        try:
            at = datetime.fromisoformat(stamp)
        except ValueError as exc:
            raise ValueError("invalid cursor") from exc
        query = query.where(
            sa.or_(t.c.created < at, sa.and_(t.c.created == at, t.c.id < last_id))
        )
    limit = max(1, min(limit, 500))
    rows = await store.fetch_all(
        query.order_by(t.c.created.desc(), t.c.id.desc()).limit(limit + 1)
    )
    items = [WebhookDelivery.from_row(r) for r in rows[:limit]]
    following = None
    if len(rows) > limit and items:
        last = items[-1]
        assert last.created is not None
        following = f"{last.created.isoformat()}|{last.id}"
    return items, following


async def replay(
    store: Store, tenant: str, delivery_id: str, *, now: datetime | None = None
) -> WebhookDelivery:
    """Put a dead or delivered delivery back to pending, due now, with a new attempt
    counter (``replays`` counts the replays). Raises :class:`NotFound` (unknown id or another
    tenant's) or :class:`Conflict` (it is pending or being delivered)."""
    t = webhook_deliveries
    when = (now or utcnow()).astimezone(UTC)
    async with store.transaction():
        current = await store.fetch_one(
            sa.select(t.c.status)
            .where(t.c.id == delivery_id, by_key_only(t.c.tenant == tenant))
            .with_for_update()
        )
        if current is None:
            raise NotFound(f"no webhook delivery {delivery_id}")
        if current["status"] not in REPLAYABLE:
            raise Conflict(
                f"webhook delivery {delivery_id} is {current['status']}; only dead or "
                "delivered deliveries can be replayed"
            )
        await store.execute(
            sa.update(t)
            .where(
                t.c.id == delivery_id,
                by_key_only(t.c.tenant == tenant, t.c.status.in_(REPLAYABLE)),
            )
            .values(
                status=PENDING,
                attempts=0,
                replays=t.c.replays + 1,
                next_attempt_at=when,
                claimed_until=None,
                claim_token=None,
                last_status=None,
                last_error=None,
                delivered_at=None,
                updated=when,
            )
        )
        row = await store.fetch_one(sa.select(t).where(t.c.id == delivery_id))
    assert row is not None
    return WebhookDelivery.from_row(row)
