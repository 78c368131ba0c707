"""v5: ``nexus_append_batch``, the group commit of customer messages in one round trip
(PostgreSQL only; SQLite has no group commit).

The batch (engine/routing/append_batcher.py) used to be its own transaction of four round
trips: BEGIN, lock the conversation rows, one statement that reserves indexes and inserts,
COMMIT. This function runs the same three statements in one call, in the call's implicit
transaction. It is VOLATILE, so each statement takes a fresh snapshot, and the insert sees
everything committed by the time the locks are held, exactly as in the explicit
transaction.

Steps:

1. Find each message's open conversation of its tenant, named by id or found by the
   sender's address. This read takes no lock: a conversation's tenant never changes, and a
   closed one never reopens.
2. Lock those rows one at a time in id order (``LATERAL ... LIMIT 1 FOR UPDATE``, plans that
   do not depend on table statistics). Batches of any shape never deadlock each other.
3. In one statement: read the open segments, reserve the indexes of the messages that have
   an open segment to go to (row_number per conversation, in arrival order), and insert
   those messages. Returns per stored message its id and index, the updated conversation
   row and its open segment row (composite values of the tables' row types).

Frozen: a later change is a new migration with ``CREATE OR REPLACE FUNCTION``.
"""

from __future__ import annotations

VERSION = 5
NAME = "append_function"

# No ":name" anywhere below: the store runs plain strings as SQLAlchemy text, where a colon
# before a word would be a bind parameter ("::" casts are fine).
APPEND_BATCH = """\
CREATE OR REPLACE FUNCTION nexus_append_batch(
    p_tenant text[], p_conversation text[], p_channel text[], p_address text[],
    p_id text[], p_type text[], p_text text[], p_pmid text[], p_from_type text,
    p_now timestamptz)
RETURNS TABLE (message_id text, message_idx integer, conv conversations, seg segments)
LANGUAGE plpgsql VOLATILE AS $fn$
#variable_conflict use_column
DECLARE
    v_cid text[];
BEGIN
    -- 1. each message's open conversation of its tenant: named by id, or found by the
    --    sender's address (unlocked; a conversation's tenant never changes, nor does a
    --    closed one reopen)
    SELECT array_agg(coalesce(n.id, a.id) ORDER BY u.ord) INTO v_cid
    FROM unnest(p_tenant, p_conversation, p_channel, p_address) WITH ORDINALITY
        AS u(tenant, cid, channel, address, ord)
    LEFT JOIN LATERAL (
        SELECT x.id FROM conversations x
        WHERE x.id = u.cid AND x.tenant = u.tenant AND x.state = 'open' LIMIT 1
    ) n ON true
    LEFT JOIN LATERAL (
        SELECT x.id FROM conversations x
        WHERE u.cid IS NULL AND x.tenant = u.tenant AND x.channel_id = u.channel
            AND x.customer_address = u.address AND x.state = 'open' LIMIT 1
    ) a ON true;
    -- 2. lock them, one at a time in id order: batches never deadlock each other
    PERFORM 1
    FROM (SELECT DISTINCT u.tenant, u.cid FROM unnest(p_tenant, v_cid) AS u(tenant, cid)
          WHERE u.cid IS NOT NULL ORDER BY u.cid) v
    CROSS JOIN LATERAL (
        SELECT 1 FROM conversations x
        WHERE x.id = v.cid AND x.tenant = v.tenant AND x.state = 'open' LIMIT 1 FOR UPDATE
    ) l;
    -- 3. a fresh snapshot (VOLATILE: one per statement), taken after the locks
    RETURN QUERY
    WITH m AS (
        SELECT u.cid, u.tenant, u.id, u.type, u.text, u.pmid,
            row_number() OVER (PARTITION BY u.cid ORDER BY u.ord)::int AS k,
            count(*) OVER (PARTITION BY u.cid)::int AS n
        FROM unnest(v_cid, p_tenant, p_id, p_type, p_text, p_pmid) WITH ORDINALITY
            AS u(cid, tenant, id, type, text, pmid, ord)
        WHERE u.cid IS NOT NULL
    ), s AS (
        SELECT x AS seg FROM segments x
        WHERE x.conversation_id = ANY(v_cid)
            AND x.state IN ('queued', 'offered', 'assigned', 'held')
    ), r AS (
        UPDATE conversations c SET last_index = c.last_index + t.n, updated = p_now
        FROM (SELECT DISTINCT m.cid, m.tenant, m.n FROM m
              JOIN s ON (s.seg).conversation_id = m.cid) t
        WHERE c.id = t.cid AND c.tenant = t.tenant AND c.state = 'open'
        RETURNING c AS conv
    ), i AS (
        INSERT INTO messages (conversation_id, idx, id, tenant, type, text,
            from_participant_id, from_nickname, from_type, segment_id, provider_message_id,
            timestamp)
        SELECT m.cid, (r.conv).last_index - m.n + m.k, m.id, m.tenant, m.type, m.text,
            (r.conv).customer_id, (r.conv).customer_nickname, p_from_type, (s.seg).id, m.pmid,
            p_now
        FROM m JOIN r ON (r.conv).id = m.cid JOIN s ON (s.seg).conversation_id = m.cid
        RETURNING messages.id, messages.idx, messages.conversation_id
    )
    SELECT i.id::text, i.idx, r.conv, s.seg FROM i
    JOIN r ON (r.conv).id = i.conversation_id
    JOIN s ON (s.seg).conversation_id = i.conversation_id;
END
$fn$;
"""


def statements(dialect: str) -> list[str]:
    """The function on PostgreSQL; nothing on SQLite."""
    return [APPEND_BATCH] if dialect == "postgresql" else []
