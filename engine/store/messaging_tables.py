"""Tables of the messaging runtime (issue #6): the durable outbound queue, campaign replies,
uploaded media. Defined on :data:`engine.store.tables.metadata`; migration
``v0004_messaging`` creates them with its own frozen copy.

``outbound_messages``: one row per message Nexus sends through a provider: an agent's reply in
an SMS/email conversation (``kind='reply'``, ``id`` = the conversation message's id) or a
campaign send (``kind='campaign'``). ``status``: queued -> sending (claimed by one worker until
``claimed_until``, fenced by ``claim_token``) -> sent -> delivered | read (receipts), or
failed / refused (campaigns), undelivered (a reply waiting for the ``undelivered`` strategy's
next retry at ``next_attempt_at``), parked | terminated (the strategy gave up).

``inbound_replies``: messages received on ``cxcOnly`` channels (they go to campaigns, not to
agents); one row per (tenant, provider message id).

``inbound_media``: files uploaded by a gateway (``POST /nexus/v3/channels/{id}/media``) and
inline MMS attachments, referenced as ``genesys://nexus/<id>``.

``ix_messages_outbound_unsent`` (on the conversation engine's ``messages``): the agent messages
not yet taken by the outbound queue, so the feeder's scan stays an index range scan.
"""

from __future__ import annotations

import sqlalchemy as sa

from engine.store.conversation_tables import messages
from engine.store.tables import metadata


def _ts(name: str, *, nullable: bool = False, default_now: bool = True) -> sa.Column:
    return sa.Column(
        name,
        sa.DateTime(timezone=True),
        nullable=nullable,
        server_default=sa.func.now() if default_now else None,
    )


def _partial(clause: str) -> dict[str, object]:
    return {"sqlite_where": sa.text(clause), "postgresql_where": sa.text(clause)}


outbound_messages = sa.Table(
    "outbound_messages",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("tenant", sa.String(64), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("media", sa.String(8), nullable=False),
    sa.Column("channel_id", sa.String(255), nullable=False),
    sa.Column("provider", sa.String(32), nullable=False),
    sa.Column("to_address", sa.String(320), nullable=False),
    sa.Column("conversation_id", sa.String(36), nullable=True),
    sa.Column("interaction_id", sa.String(36), nullable=True),
    sa.Column("external_id", sa.String(255), nullable=True),
    sa.Column("text", sa.Text, nullable=True),
    sa.Column("subject", sa.Text, nullable=True),
    sa.Column("html", sa.Text, nullable=True),
    sa.Column("from_address", sa.String(320), nullable=True),
    sa.Column("from_name", sa.String(255), nullable=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("reason", sa.String(64), nullable=True),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("undelivered_attempts", sa.Integer, nullable=False, server_default="0"),
    _ts("next_attempt_at"),
    _ts("claimed_until", nullable=True, default_now=False),
    sa.Column("claim_token", sa.String(64), nullable=True),
    sa.Column("provider_message_id", sa.String(255), nullable=True),
    sa.Column("last_error", sa.Text, nullable=True),
    sa.Column("trace_id", sa.String(64), nullable=True),
    _ts("created"),
    _ts("updated"),
    _ts("sent_at", nullable=True, default_now=False),
    sa.Index("ix_outbound_due", "kind", "status", "next_attempt_at"),
    sa.Index("ix_outbound_provider_id", "tenant", "provider_message_id"),
    sa.Index("ix_outbound_interaction", "tenant", "interaction_id"),
    sa.Index("ix_outbound_sender", "tenant", "channel_id", "status", "created"),
    sa.Index("ix_outbound_claim", "claim_token"),
)

inbound_replies = sa.Table(
    "inbound_replies",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("tenant", sa.String(64), nullable=False),
    sa.Column("channel_id", sa.String(255), nullable=False),
    sa.Column("address", sa.String(320), nullable=False),
    sa.Column("provider", sa.String(32), nullable=False),
    sa.Column("provider_message_id", sa.String(255), nullable=False),
    sa.Column("text", sa.Text, nullable=True),
    sa.Column("keyword", sa.String(32), nullable=True),
    _ts("created"),
    sa.UniqueConstraint("tenant", "provider_message_id", name="uq_inbound_replies_provider_id"),
    sa.Index("ix_inbound_replies_sender", "tenant", "channel_id", "address"),
)

inbound_media = sa.Table(
    "inbound_media",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("tenant", sa.String(64), nullable=False),
    sa.Column("channel_id", sa.String(255), nullable=False),
    sa.Column("filename", sa.String(255), nullable=False),
    sa.Column("mime", sa.String(255), nullable=False),
    sa.Column("length", sa.Integer, nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("bytes", sa.LargeBinary, nullable=False),
    _ts("created"),
    sa.Index("ix_inbound_media_tenant", "tenant", "created"),
)

#: Agent messages the outbound feeder has not taken yet (status is set when it takes them).
OUTBOUND_UNSENT = "status IS NULL AND from_type = 'Agent'"
sa.Index("ix_messages_outbound_unsent", messages.c.timestamp, **_partial(OUTBOUND_UNSENT))
