"""v7: drop ``ix_conversations_tenant_state`` (tenant, state).

No query needs it: conversations are found by id (the primary key), by contact
(``ix_conversations_contact``) or by the customer's address on a channel (the partial unique
``ux_conversations_open_address``). It was a trap for the planner: with one tenant and almost
every row open, both of its columns say next to nothing, yet without fresh statistics a
lookup by address costs the same through it as through the unique index (the planner
expects at most one row from each). A plan that picked it, cached by the group commit's
function for the life of a connection, read every open conversation of the tenant for each
message: measured in the ingest benchmark (2,000 open conversations), about 1,300 index
tuples and heap fetches per message and most of PostgreSQL's CPU.

Frozen: a later change is a new migration.
"""

from __future__ import annotations

VERSION = 7
NAME = "drop_tenant_state_index"


def statements(dialect: str) -> list[str]:
    """The same statement on both dialects."""
    return ["DROP INDEX IF EXISTS ix_conversations_tenant_state"]
