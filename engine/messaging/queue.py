"""The durable outbound queue (``outbound_messages``): rows, claims with leases, results.

Claims work like the webhook dispatcher's (:mod:`engine.webhooks.dispatcher`): one statement
moves due rows to ``sending`` with a fresh ``claim_token`` and ``claimed_until = now +
lease`` (``FOR UPDATE SKIP LOCKED`` on PostgreSQL; under SQLite's write lock the repeated
``<due>`` condition makes it a compare-and-set), and every result is written ``WHERE
claim_token = <mine>``, so a worker whose lease expired cannot overwrite its successor. A row
left ``sending`` by a crashed process is due again once its lease has passed.

:func:`next_due` tells the senders' loops (:mod:`.wakeup`) when the next row of a kind becomes
claimable, so that an idle loop sleeps until then instead of claiming blindly.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from engine.store.messaging_tables import outbound_messages
from engine.store.planning import by_key_only

if TYPE_CHECKING:
    from engine.store.db import Store

# statuses
QUEUED = "queued"
SENDING = "sending"
SENT = "sent"
DELIVERED = "delivered"
READ = "read"
FAILED = "failed"
REFUSED = "refused"
UNDELIVERED = "undelivered"  # a reply that failed for good; the strategy decides what next
RETRYING = "retrying"  # a reply waiting for the strategy's retry at next_attempt_at
PARKED = "parked"
TERMINATED = "terminated"

STATUSES = (QUEUED, SENDING, SENT, DELIVERED, READ, FAILED, REFUSED, UNDELIVERED, RETRYING,
            PARKED, TERMINATED)
#: receipt progress: a receipt never moves a message backwards (read > delivered > sent)
RANK = {SENT: 1, DELIVERED: 2, READ: 3}

REPLY = "reply"
CAMPAIGN = "campaign"
RETRY_REASON = "retry:"


def utcnow() -> datetime:
    return datetime.now(UTC)


def aware(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def iso(value: datetime | None) -> str | None:
    value = aware(value)
    return None if value is None else value.isoformat().replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class OutboundRow:
    id: str
    tenant: str
    kind: str
    media: str
    channel_id: str
    provider: str
    to_address: str
    conversation_id: str | None
    interaction_id: str | None
    external_id: str | None
    text: str | None
    subject: str | None
    html: str | None
    from_address: str | None
    from_name: str | None
    status: str
    reason: str | None
    attempts: int
    undelivered_attempts: int
    next_attempt_at: datetime | None
    provider_message_id: str | None
    last_error: str | None
    trace_id: str | None
    created: datetime | None
    updated: datetime | None
    sent_at: datetime | None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> OutboundRow:
        return cls(
            id=row["id"], tenant=row["tenant"], kind=row["kind"], media=row["media"],
            channel_id=row["channel_id"], provider=row["provider"],
            to_address=row["to_address"], conversation_id=row["conversation_id"],
            interaction_id=row["interaction_id"], external_id=row["external_id"],
            text=row["text"], subject=row["subject"], html=row["html"],
            from_address=row["from_address"], from_name=row["from_name"],
            status=row["status"], reason=row["reason"], attempts=int(row["attempts"] or 0),
            undelivered_attempts=int(row["undelivered_attempts"] or 0),
            next_attempt_at=aware(row["next_attempt_at"]),
            provider_message_id=row["provider_message_id"], last_error=row["last_error"],
            trace_id=row["trace_id"], created=aware(row["created"]),
            updated=aware(row["updated"]), sent_at=aware(row["sent_at"]),
        )

    @property
    def strategy_attempt(self) -> int | None:
        """The attempt number when this claim is a retry the undelivered strategy asked for."""
        if self.reason and self.reason.startswith(RETRY_REASON):
            try:
                return int(self.reason[len(RETRY_REASON):])
            except ValueError:
                return None
        return None

    def to_dict(self) -> dict[str, Any]:
        """The campaign API's view of a message."""
        out: dict[str, Any] = {
            "id": self.id,
            "status": self.status,
            "from": self.channel_id,
            "to": self.to_address,
            "provider": self.provider,
            "created": iso(self.created),
            "updated": iso(self.updated),
        }
        if self.external_id is not None:
            out["externalId"] = self.external_id
        if self.sent_at is not None:
            out["sentAt"] = iso(self.sent_at)
        if self.provider_message_id is not None:
            out["providerMessageId"] = self.provider_message_id
        if self.reason and not self.reason.startswith(RETRY_REASON):
            out["reason"] = self.reason
        if self.last_error and self.status in (FAILED, UNDELIVERED):
            out["error"] = self.last_error[:300]
        return out


def new_id() -> str:
    return str(uuid.uuid4())


async def claim(
    store: Store,
    *,
    kinds: Iterable[str],
    limit: int,
    lease: float,
    worker: str,
    now: datetime | None = None,
    where: Iterable[Any] = (),
) -> tuple[str, list[OutboundRow]]:
    """Claim up to ``limit`` due rows of ``kinds`` (oldest first); (token, rows)."""
    t = outbound_messages
    at = (now or utcnow()).astimezone(UTC)
    token = f"{worker}:{uuid.uuid4().hex}"
    due = sa.and_(
        t.c.kind.in_(list(kinds)),
        sa.or_(
            sa.and_(t.c.status.in_([QUEUED, RETRYING]), t.c.next_attempt_at <= at),
            sa.and_(t.c.status == SENDING, t.c.claimed_until < at),
        ),
        *where,
    )
    candidates = (
        sa.select(t.c.id)
        .where(due)
        .order_by(t.c.next_attempt_at, t.c.created, t.c.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    async with store.transaction():
        await store.execute(
            sa.update(t)
            .where(t.c.id.in_(candidates.scalar_subquery()), due)
            .values(
                status=SENDING,
                claim_token=token,
                claimed_until=at + timedelta(seconds=lease),
                attempts=t.c.attempts + 1,
                updated=at,
            )
        )
        rows = await store.fetch_all(
            sa.select(t).where(t.c.claim_token == token).order_by(t.c.created, t.c.id)
        )
    return token, [OutboundRow.from_row(r) for r in rows]


def _next_due_statement(kind: str) -> sa.Select:
    t = outbound_messages
    return sa.select(
        sa.func.min(sa.case((t.c.status == SENDING, t.c.claimed_until),
                            else_=t.c.next_attempt_at))
    ).where(t.c.kind == kind, t.c.status.in_([QUEUED, RETRYING, SENDING]))


#: built once: the idle loops run them often, and a prebuilt statement costs no SQLAlchemy work
_NEXT_DUE = {kind: _next_due_statement(kind) for kind in (REPLY, CAMPAIGN)}


async def next_due(store: Store, kind: str) -> datetime | None:
    """When the next row of ``kind`` becomes claimable (in the past: due now), or None when
    none waits. Rows ``sending`` count from the end of their lease."""
    return aware(await store.fetch_val(_NEXT_DUE[kind]))


async def finish(store: Store, row_id: str, token: str, **values: Any) -> bool:
    """Write a claimed row's result (fenced by its claim token); False if the claim was lost."""
    t = outbound_messages
    values.setdefault("updated", utcnow())
    values.setdefault("claim_token", None)
    values.setdefault("claimed_until", None)
    found = await store.fetch_one(
        sa.update(t)
        .where(t.c.id == row_id, t.c.claim_token == token)
        .values(**values)
        .returning(t.c.id)
    )
    return found is not None


async def release(store: Store, token: str) -> None:
    """Give back rows of a claim that got no result (stopping, or not ours to send now)."""
    t = outbound_messages
    await store.execute(
        sa.update(t)
        .where(t.c.claim_token == token, t.c.status == SENDING)
        .values(status=QUEUED, claim_token=None, claimed_until=None,
                attempts=sa.case((t.c.attempts > 0, t.c.attempts - 1), else_=0))
    )


async def get(store: Store, tenant: str, row_id: str) -> OutboundRow | None:
    t = outbound_messages
    row = await store.fetch_one(
        sa.select(t).where(t.c.id == row_id, by_key_only(t.c.tenant == tenant))
    )
    return None if row is None else OutboundRow.from_row(row)


async def by_provider_ref(store: Store, tenant: str, ref: str) -> OutboundRow | None:
    """The message a receipt refers to: by the provider's id, else by our own id."""
    t = outbound_messages
    row = await store.fetch_one(
        sa.select(t).where(t.c.tenant == tenant, t.c.provider_message_id == ref).limit(1)
    )
    if row is None:
        row = await store.fetch_one(
            sa.select(t).where(t.c.id == ref, by_key_only(t.c.tenant == tenant))
        )
    return None if row is None else OutboundRow.from_row(row)


async def latest_for_interaction(
    store: Store, tenant: str | None, interaction_id: str, statuses: Iterable[str]
) -> OutboundRow | None:
    t = outbound_messages
    query = sa.select(t).where(t.c.interaction_id == interaction_id,
                               t.c.status.in_(list(statuses)))
    if tenant is not None:
        query = query.where(t.c.tenant == tenant)
    row = await store.fetch_one(query.order_by(t.c.created.desc()).limit(1))
    return None if row is None else OutboundRow.from_row(row)
