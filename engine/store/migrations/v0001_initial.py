"""v1: the initial schema (tenants, services, apikeys, nex_gapis, users, audit_log).

Frozen: this module keeps its own copy of the table definitions as they were at version 1.
Later changes to ``engine/store/tables.py`` get a new ``vNNNN_*.py`` module; never edit this one.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.schema import CreateIndex, CreateTable, ExecutableDDLElement

VERSION = 1
NAME = "initial schema"

metadata = sa.MetaData()

_BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _ts(name: str, *, nullable: bool = False, default_now: bool = True) -> sa.Column:
    return sa.Column(
        name,
        sa.DateTime(timezone=True),
        nullable=nullable,
        server_default=sa.func.now() if default_now else None,
    )


schema_migrations = sa.Table(
    "schema_migrations",
    metadata,
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("name", sa.String(128), nullable=False),
    _ts("applied_at"),
)

tenants = sa.Table(
    "tenants",
    metadata,
    sa.Column("ccid", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("type", sa.String(64), nullable=False, server_default="PureEngage"),
    sa.Column("backendurl", sa.Text, nullable=True),
    sa.Column("username", sa.String(255), nullable=True),
    sa.Column("token", sa.Text, nullable=True),
    sa.Column("genesystenantid", sa.String(64), nullable=True),
    sa.Column("config_managed", sa.Boolean, nullable=False, server_default=sa.false()),
    _ts("created"),
    _ts("updated"),
    sa.UniqueConstraint("name", name="uq_tenants_name"),
)

services = sa.Table(
    "services",
    metadata,
    sa.Column(
        "tenant",
        sa.String(64),
        sa.ForeignKey("tenants.ccid", ondelete="CASCADE", name="fk_services_tenant"),
        primary_key=True,
    ),
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("url", sa.Text, nullable=True),
    sa.Column("data", sa.Text, nullable=False, server_default="{}"),
    sa.Column("secret", sa.Text, nullable=False, server_default="{}"),
    sa.Column("config_managed", sa.Boolean, nullable=False, server_default=sa.false()),
    _ts("created"),
    _ts("updated"),
)

apikeys = sa.Table(
    "apikeys",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("tenant", sa.String(64), nullable=False),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("permissions", sa.Text, nullable=False, server_default="[]"),
    sa.Column("key_prefix", sa.String(16), nullable=False),
    sa.Column("key_hash", sa.String(64), nullable=False),
    sa.Column("enabled", sa.Boolean, nullable=False, server_default=sa.true()),
    sa.Column("revoked", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("expires", sa.DateTime(timezone=True), nullable=True),
    sa.Column("capacity", sa.Integer, nullable=False, server_default="120"),
    sa.Column("frequency", sa.Integer, nullable=False, server_default="60"),
    sa.Column("createdby", sa.String(255), nullable=True),
    sa.Column("config_managed", sa.Boolean, nullable=False, server_default=sa.false()),
    _ts("created"),
    _ts("updated"),
    sa.UniqueConstraint("tenant", "name", name="uq_apikeys_tenant_name"),
    sa.Index("ix_apikeys_key_prefix", "key_prefix"),
)

nex_gapis = sa.Table(
    "nex_gapis",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("url", sa.Text, nullable=False),
    sa.Column("clientid", sa.String(255), nullable=False),
    sa.Column("apikey", sa.Text, nullable=False, server_default=""),
    sa.Column("clientsecret", sa.Text, nullable=False, server_default=""),
    _ts("created"),
)

users = sa.Table(
    "users",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("tenant", sa.String(64), nullable=True),
    sa.Column("username", sa.String(255), nullable=False),
    sa.Column("roles", sa.Text, nullable=False, server_default="[]"),
    sa.Column("password_hash", sa.Text, nullable=True),
    sa.Column("agent_queues", sa.Text, nullable=False, server_default="[]"),
    sa.Column("capacity", sa.Text, nullable=False, server_default="{}"),
    sa.Column("config_managed", sa.Boolean, nullable=False, server_default=sa.false()),
    _ts("created"),
    _ts("updated"),
)
sa.Index(
    "ux_users_tenant_username",
    sa.func.coalesce(users.c.tenant, ""),
    users.c.username,
    unique=True,
)

audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column("id", _BigId, primary_key=True, autoincrement=True),
    _ts("at"),
    sa.Column("actor", sa.String(255), nullable=False),
    sa.Column("action", sa.String(16), nullable=False),
    sa.Column("object_type", sa.String(64), nullable=False),
    sa.Column("object_key", sa.String(255), nullable=False),
    sa.Column("tenant", sa.String(64), nullable=True),
    sa.Column("details", sa.Text, nullable=False, server_default="{}"),
    sa.Index("ix_audit_log_tenant_at", "tenant", "at"),
    sa.Index("ix_audit_log_object", "object_type", "object_key"),
)


def statements(dialect: str) -> list[ExecutableDDLElement]:
    """The DDL of this version, in dependency order (same on every dialect)."""
    out: list[ExecutableDDLElement] = []
    for table in metadata.sorted_tables:
        if table.name == "schema_migrations":
            continue  # created by the runner before any migration
        out.append(CreateTable(table))
        out.extend(CreateIndex(index) for index in sorted(table.indexes, key=lambda i: i.name))
    return out
