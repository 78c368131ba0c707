"""v3: the interaction-webhook outbox (``webhook_deliveries``) and the opt-out list
(``opt_outs``).

Frozen: this module keeps its own copy of the table definitions as they were at version 3.
Later changes to ``engine/store/webhook_tables.py`` get a new ``vNNNN_*.py`` module.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.schema import CreateIndex, CreateTable, ExecutableDDLElement

VERSION = 3
NAME = "webhooks"

metadata = sa.MetaData()

_BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _ts(name: str, *, nullable: bool = False, default_now: bool = True) -> sa.Column:
    return sa.Column(
        name,
        sa.DateTime(timezone=True),
        nullable=nullable,
        server_default=sa.func.now() if default_now else None,
    )


webhook_deliveries = sa.Table(
    "webhook_deliveries",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("tenant", sa.String(64), nullable=False),
    sa.Column("target", sa.String(255), nullable=False),
    sa.Column("event", sa.String(16), nullable=False),
    sa.Column("interaction_id", sa.String(64), nullable=False),
    sa.Column("source_event_id", _BigId, nullable=True),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("status", sa.String(16), nullable=False, server_default="pending"),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("replays", sa.Integer, nullable=False, server_default="0"),
    _ts("next_attempt_at"),
    _ts("claimed_until", nullable=True, default_now=False),
    sa.Column("claim_token", sa.String(64), nullable=True),
    sa.Column("last_status", sa.Integer, nullable=True),
    sa.Column("last_error", sa.Text, nullable=True),
    _ts("created"),
    _ts("updated"),
    _ts("delivered_at", nullable=True, default_now=False),
    sa.Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
    sa.Index("ix_webhook_deliveries_tenant", "tenant", "created"),
    sa.Index("ix_webhook_deliveries_claim", "claim_token"),
)
sa.Index(
    "ux_webhook_deliveries_source",
    webhook_deliveries.c.source_event_id,
    webhook_deliveries.c.target,
    unique=True,
    sqlite_where=sa.text("source_event_id IS NOT NULL"),
    postgresql_where=sa.text("source_event_id IS NOT NULL"),
)

opt_outs = sa.Table(
    "opt_outs",
    metadata,
    sa.Column("tenant", sa.String(64), primary_key=True),
    sa.Column("channel_id", sa.String(255), primary_key=True),
    sa.Column("address", sa.String(320), primary_key=True),
    sa.Column("status", sa.String(8), nullable=False),
    sa.Column("keyword", sa.String(32), nullable=False),
    sa.Column("message_id", sa.String(255), nullable=True),
    _ts("updated"),
    sa.Index("ix_opt_outs_address", "tenant", "address"),
)


def statements(dialect: str) -> list[ExecutableDDLElement]:
    """The DDL of this version (same on every dialect)."""
    out: list[ExecutableDDLElement] = []
    for table in metadata.sorted_tables:
        out.append(CreateTable(table))
        out.extend(CreateIndex(index) for index in sorted(table.indexes, key=lambda i: i.name))
    return out
