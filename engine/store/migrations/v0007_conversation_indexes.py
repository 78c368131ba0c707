"""v7: the conversations' indexes leave the lookup by address one index to use, and the
group commit's function keeps one plan per connection.

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
of PostgreSQL's CPU. tests/integration/store/test_query_plans.py builds that situation.

On PostgreSQL, the group commit's function also plans its statements once per connection
(``plan_cache_mode = force_generic_plan``). PL/pgSQL otherwise compares a generic plan with
the custom plans of the first calls, and for small batches it kept choosing custom plans:
three statements planned again on every call. Measured with one message per call (a chat
at 1,000 msg/s commits about that): 850 us of PostgreSQL CPU per call with replanning,
400 us with the generic plan; no change at 20 messages per call. The generic plan is safe
because every row is reached through an index (``enable_seqscan = off``) and, with the
indexes above, through the right one.

Frozen: a later change is a new migration.
"""

from __future__ import annotations

VERSION = 7
NAME = "conversation_indexes"

APPEND_MESSAGES_SIGNATURE = (
    "nexus_append_messages(text[], text[], text[], text[], text[], text[], text[], text[], "
    "text, timestamptz)"
)


def statements(dialect: str) -> list[str]:
    """The indexes on both dialects; the function's plan mode on PostgreSQL."""
    indexes = [
        "DROP INDEX IF EXISTS ix_conversations_tenant_state",
        "DROP INDEX IF EXISTS ix_conversations_contact",
        "CREATE INDEX ix_conversations_contact ON conversations (contact_id, tenant)",
    ]
    if dialect != "postgresql":
        return indexes
    return [
        *indexes,
        f"ALTER FUNCTION {APPEND_MESSAGES_SIGNATURE} SET plan_cache_mode = force_generic_plan",
    ]
