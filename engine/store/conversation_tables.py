"""Tables of the conversation engine (issue #5): contacts, conversations, segments, messages,
files and the interaction-event outbox. Defined on :data:`engine.store.tables.metadata`, so the
store's schema checks cover them; migration ``v0002_conversations`` creates them (it keeps its
own frozen copy, like ``v0001``).

Partial unique indexes carry the concurrency guarantees (same on SQLite and PostgreSQL):

* ``ux_conversations_open_address``: one *open* conversation per (tenant, channel, customer
  address), so concurrent first messages of one SMS sender end in one conversation;
* ``ux_segments_open_conversation``: at most one open segment (interaction) per conversation;
* ``ux_messages_provider_id``: a provider message id is stored once per tenant (idempotent
  ingest); ``(conversation_id, idx)`` is the primary key of messages, ``idx`` allocated from
  ``conversations.last_index`` under the conversation's row lock (gapless, monotonic);
* ``ux_contacts_tenant_email`` / ``ux_contacts_tenant_phone``: one live (not merged) contact
  per tenant and email / phone.
"""

from __future__ import annotations

import sqlalchemy as sa

from engine.store.tables import metadata

_BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

OPEN_SEGMENT_STATES = ("queued", "offered", "assigned", "held")


def _ts(name: str, *, nullable: bool = False, default_now: bool = True) -> sa.Column:
    return sa.Column(
        name,
        sa.DateTime(timezone=True),
        nullable=nullable,
        server_default=sa.func.now() if default_now else None,
    )


def _partial(condition: str) -> dict[str, sa.TextClause]:
    clause = sa.text(condition)
    return {"sqlite_where": clause, "postgresql_where": clause}


contacts = sa.Table(
    "contacts",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("tenant", sa.String(64), nullable=False),
    sa.Column("first_name", sa.String(255), nullable=True),
    sa.Column("last_name", sa.String(255), nullable=True),
    sa.Column("nickname", sa.String(255), nullable=True),
    sa.Column("email", sa.String(320), nullable=True),
    sa.Column("phone", sa.String(32), nullable=True),
    _ts("created"),
    _ts("updated"),
    sa.Column("merged_into", sa.String(36), nullable=True),
)
sa.Index(
    "ux_contacts_tenant_email",
    contacts.c.tenant,
    contacts.c.email,
    unique=True,
    **_partial("merged_into IS NULL AND email IS NOT NULL"),
)
sa.Index(
    "ux_contacts_tenant_phone",
    contacts.c.tenant,
    contacts.c.phone,
    unique=True,
    **_partial("merged_into IS NULL AND phone IS NOT NULL"),
)

conversations = sa.Table(
    "conversations",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("tenant", sa.String(64), nullable=False),
    sa.Column("media", sa.String(16), nullable=False),
    sa.Column("channel_id", sa.String(255), nullable=True),
    sa.Column("endpoint", sa.String(255), nullable=False),
    sa.Column("contact_id", sa.String(64), nullable=True),
    sa.Column("customer_id", sa.String(36), nullable=False),
    sa.Column("customer_nickname", sa.String(255), nullable=False),
    sa.Column("customer_address", sa.String(320), nullable=True),
    sa.Column("customer", sa.Text, nullable=False, server_default="{}"),
    sa.Column("subject", sa.Text, nullable=True),
    sa.Column("user_data", sa.Text, nullable=False, server_default="{}"),
    sa.Column("state", sa.String(16), nullable=False, server_default="open"),
    sa.Column("last_agent", sa.String(255), nullable=True),
    sa.Column("last_index", sa.Integer, nullable=False, server_default="0"),
    _ts("customer_left_at", nullable=True, default_now=False),
    _ts("created"),
    _ts("updated"),
    _ts("closed_at", nullable=True, default_now=False),
    # until when a live stream (a customer's or a bot's WebSocket) reads the conversation:
    # the group commit publishes a message on the conversation's channel only before then
    _ts("streamed_until", nullable=True, default_now=False),
    # contact first, and no (tenant, state) index: an index that begins with the tenant lures
    # the planner away from ux_conversations_open_address (migration v0007)
    sa.Index("ix_conversations_contact", "contact_id", "tenant"),
)
sa.Index(
    "ux_conversations_open_address",
    conversations.c.tenant,
    conversations.c.channel_id,
    conversations.c.customer_address,
    unique=True,
    **_partial("state = 'open' AND customer_address IS NOT NULL"),
)

segments = sa.Table(
    "segments",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column(
        "conversation_id",
        sa.String(36),
        sa.ForeignKey("conversations.id", ondelete="CASCADE", name="fk_segments_conversation"),
        nullable=False,
    ),
    sa.Column("tenant", sa.String(64), nullable=False),
    sa.Column("media", sa.String(16), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("queue", sa.String(255), nullable=False),
    sa.Column("agent", sa.String(255), nullable=True),
    sa.Column("offered_to", sa.String(255), nullable=True),
    _ts("offer_deadline", nullable=True, default_now=False),
    _ts("queued_at"),
    _ts("wake_at", nullable=True, default_now=False),
    sa.Column("attempt", sa.Integer, nullable=False, server_default="0"),
    sa.Column("declined", sa.Text, nullable=False, server_default="{}"),
    _ts("created"),
    _ts("assigned_at", nullable=True, default_now=False),
    _ts("ended_at", nullable=True, default_now=False),
    sa.Column("end_reason", sa.String(64), nullable=True),
    sa.Index("ix_segments_conversation", "conversation_id", "created"),
    sa.Index("ix_segments_tenant_state", "tenant", "state", "queue"),
    sa.Index("ix_segments_tenant_agent", "tenant", "agent"),
)
sa.Index(
    "ux_segments_open_conversation",
    segments.c.conversation_id,
    unique=True,
    **_partial("state IN ('queued', 'offered', 'assigned', 'held')"),
)

messages = sa.Table(
    "messages",
    metadata,
    sa.Column(
        "conversation_id",
        sa.String(36),
        sa.ForeignKey("conversations.id", ondelete="CASCADE", name="fk_messages_conversation"),
        primary_key=True,
    ),
    sa.Column("idx", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("id", sa.String(36), nullable=False),
    sa.Column("tenant", sa.String(64), nullable=False),
    sa.Column("type", sa.String(32), nullable=False),
    sa.Column("text", sa.Text, nullable=True),
    sa.Column("from_participant_id", sa.String(255), nullable=False),
    sa.Column("from_nickname", sa.String(255), nullable=True),
    sa.Column("from_type", sa.String(16), nullable=False),
    sa.Column("segment_id", sa.String(36), nullable=True),
    sa.Column("file_id", sa.String(36), nullable=True),
    sa.Column("provider_message_id", sa.String(255), nullable=True),
    sa.Column("status", sa.String(16), nullable=True),
    _ts("timestamp"),
    sa.UniqueConstraint("id", name="uq_messages_id"),
)
sa.Index(
    "ux_messages_provider_id",
    messages.c.tenant,
    messages.c.provider_message_id,
    unique=True,
    **_partial("provider_message_id IS NOT NULL"),
)

files = sa.Table(
    "files",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column(
        "conversation_id",
        sa.String(36),
        sa.ForeignKey("conversations.id", ondelete="CASCADE", name="fk_files_conversation"),
        nullable=False,
    ),
    sa.Column("tenant", sa.String(64), nullable=False),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("mime", sa.String(255), nullable=False),
    sa.Column("size", sa.Integer, nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("bytes", sa.LargeBinary, nullable=False),
    sa.Column("uploaded_by", sa.String(255), nullable=False),
    _ts("created"),
    sa.Index("ix_files_conversation", "conversation_id"),
)

interaction_events = sa.Table(
    "interaction_events",
    metadata,
    sa.Column("id", _BigId, primary_key=True, autoincrement=True),
    sa.Column("tenant", sa.String(64), nullable=False),
    sa.Column("event", sa.String(16), nullable=False),
    sa.Column("interaction_id", sa.String(36), nullable=False),
    sa.Column("conversation_id", sa.String(36), nullable=False),
    sa.Column("media", sa.String(16), nullable=False),
    sa.Column("subtype", sa.String(64), nullable=True),
    _ts("created"),
    _ts("delivered_at", nullable=True, default_now=False),
    sa.Index("ix_interaction_events_pending", "delivered_at", "id"),
    sa.Index("ix_interaction_events_interaction", "interaction_id"),
)
