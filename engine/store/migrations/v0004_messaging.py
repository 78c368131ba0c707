"""v4: the messaging runtime: ``outbound_messages`` (durable outbound queue of agent replies
and campaign sends), ``inbound_replies`` (cxcOnly channels), ``inbound_media`` (gateway
uploads) and the partial index ``ix_messages_outbound_unsent`` on ``messages``.

Frozen: this module keeps its own copy of the definitions as they were at version 4.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.schema import CreateIndex, CreateTable, ExecutableDDLElement

VERSION = 4
NAME = "messaging"

metadata = sa.MetaData()


def _ts(name: str, *, nullable: bool = False, default_now: bool = True) -> sa.Column:
    return sa.Column(
        name,
        sa.DateTime(timezone=True),
        nullable=nullable,
        server_default=sa.func.now() if default_now else None,
    )


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

_UNSENT = "status IS NULL AND from_type = 'Agent'"


def statements(dialect: str) -> list[ExecutableDDLElement | str]:
    """The DDL of this version (same on every dialect)."""
    out: list[ExecutableDDLElement | str] = []
    for table in metadata.sorted_tables:
        out.append(CreateTable(table))
        out.extend(CreateIndex(index) for index in sorted(table.indexes, key=lambda i: i.name))
    out.append(
        f'CREATE INDEX ix_messages_outbound_unsent ON messages ("timestamp") WHERE {_UNSENT}'
    )
    return out
