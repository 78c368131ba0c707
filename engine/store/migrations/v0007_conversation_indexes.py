"""v7: the conversations' indexes leave the lookup by address one index to use.

The group commit's function finds a customer's open conversation by address (tenant, channel,
address). ``ux_conversations_open_address`` answers that in one index probe. But two other
indexes began with ``tenant``:

* ``ix_conversations_tenant_state`` (tenant, state), which no query needs: conversations are
  found by id (the primary key), by contact or by address. Dropped.
* ``ix_conversations_contact`` (tenant, contact_id), used by contact history and merges,
  which always name the contact. Rebuilt as (contact_id, tenant).

With one tenant, either could stand in for the unique index with a filter, and without
fresh statistics (autovacuum off, or before its first ANALYZE) the planner expects at most
one row from each, so it may pick them. PL/pgSQL caches a generic plan per connection after a
few calls; one made while the table was small stays for the life of the connection and reads
every open conversation of the tenant for each message. Measured in the ingest benchmark
(2,000 open conversations): about 1,300 index tuples and heap fetches per message, and most
of PostgreSQL's CPU. tests/integration/store/test_append_plan.py builds that situation.

Frozen: a later change is a new migration.
"""

from __future__ import annotations

VERSION = 7
NAME = "conversation_indexes"


def statements(dialect: str) -> list[str]:
    """The same statements on both dialects."""
    return [
        "DROP INDEX IF EXISTS ix_conversations_tenant_state",
        "DROP INDEX IF EXISTS ix_conversations_contact",
        "CREATE INDEX ix_conversations_contact ON conversations (contact_id, tenant)",
    ]
