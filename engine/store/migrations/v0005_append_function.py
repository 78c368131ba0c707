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
2. Lock those rows one at a time in id order (``LATERAL ... FOR UPDATE``). Batches of any
   shape never deadlock each other.
3. In one statement: read the open segments, reserve the indexes of the messages that have
   an open segment to go to (row_number per conversation, in arrival order), and insert
   those messages. Returns a row per stored message (its id, index and conversation id),
   then a row per conversation: the updated conversation row and its open segment row
   (composite values of the tables' row types, decoded once per conversation).

Lookups by id name the primary key alone (tenant and state are checked on the row found, past
an ``OFFSET 0`` fence, or after the lock); segments are found per conversation through a
``LATERAL ... LIMIT 1``. With stale statistics the planner otherwise read every open
conversation of the tenant for each message (the (tenant, state) index) and scanned the
segments table.

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
RETURNS TABLE (message_id text, message_idx integer, conversation_id text,
               conv conversations, seg segments)
LANGUAGE plpgsql VOLATILE
-- every row is reached through an index; stale statistics must not turn one into a scan
SET enable_seqscan = off
AS $fn$
#variable_conflict use_column
DECLARE
    v_cid text[];
    v_open text[];
BEGIN
    -- 1. each message's open conversation of its tenant: named by id, or found by the
    --    sender's address (unlocked; a conversation's tenant never changes, nor does a
    --    closed one reopen)
    SELECT array_agg(coalesce(n.id, a.id) ORDER BY u.ord) INTO v_cid
    FROM unnest(p_tenant, p_conversation, p_channel, p_address) WITH ORDINALITY
        AS u(tenant, cid, channel, address, ord)
    LEFT JOIN LATERAL (
        SELECT x.id FROM (SELECT y.id, y.tenant, y.state FROM conversations y
                          WHERE y.id = u.cid OFFSET 0) x
        WHERE x.tenant = u.tenant AND x.state = 'open'
    ) n ON true
    LEFT JOIN LATERAL (
        SELECT x.id FROM conversations x
        WHERE u.cid IS NULL AND x.tenant = u.tenant AND x.channel_id = u.channel
            AND x.customer_address = u.address AND x.state = 'open' LIMIT 1
    ) a ON true;
    -- 2. lock them, one at a time in id order (batches never deadlock each other); keep
    --    those still open: FOR UPDATE returns the row as it is once locked
    SELECT array_agg(l.id) INTO v_open
    FROM (SELECT DISTINCT u.cid FROM unnest(v_cid) AS u(cid)
          WHERE u.cid IS NOT NULL ORDER BY u.cid) v
    CROSS JOIN LATERAL (
        SELECT x.id, x.state FROM conversations x WHERE x.id = v.cid FOR UPDATE
    ) l
    WHERE l.state = 'open';
    -- 3. a fresh snapshot (VOLATILE: one per statement), taken after the locks: the open
    --    segments, the indexes reserved, the messages inserted. Rows: one per message
    --    (conv, seg NULL), then one per conversation (message_id, message_idx NULL).
    RETURN QUERY
    WITH m AS (
        SELECT u.cid, u.tenant, u.id, u.type, u.text, u.pmid,
            row_number() OVER (PARTITION BY u.cid ORDER BY u.ord)::int AS k,
            count(*) OVER (PARTITION BY u.cid)::int AS n
        FROM unnest(v_cid, p_tenant, p_id, p_type, p_text, p_pmid) WITH ORDINALITY
            AS u(cid, tenant, id, type, text, pmid, ord)
        WHERE u.cid = ANY(v_open)
    ), t AS (
        SELECT d.cid, d.n, g.seg FROM (SELECT DISTINCT m.cid, m.n FROM m) d
        CROSS JOIN LATERAL (
            SELECT x AS seg FROM segments x
            WHERE x.conversation_id = d.cid
                AND x.state IN ('queued', 'offered', 'assigned', 'held')
            LIMIT 1
        ) g
    ), r AS (
        UPDATE conversations c SET last_index = c.last_index + t.n, updated = p_now
        FROM t WHERE c.id = t.cid
        RETURNING c AS conv, t.seg AS seg
    ), i AS (
        INSERT INTO messages (conversation_id, idx, id, tenant, type, text,
            from_participant_id, from_nickname, from_type, segment_id, provider_message_id,
            timestamp)
        SELECT m.cid, (r.conv).last_index - m.n + m.k, m.id, m.tenant, m.type, m.text,
            (r.conv).customer_id, (r.conv).customer_nickname, p_from_type, (r.seg).id, m.pmid,
            p_now
        FROM m JOIN r ON (r.conv).id = m.cid
        RETURNING messages.id, messages.idx, messages.conversation_id
    )
    SELECT i.id::text, i.idx, i.conversation_id::text, NULL::conversations, NULL::segments
    FROM i
    UNION ALL
    SELECT NULL, NULL, (r.conv).id::text, r.conv, r.seg FROM r;
END
$fn$;
"""


def statements(dialect: str) -> list[str]:
    """The function on PostgreSQL; nothing on SQLite."""
    return [APPEND_BATCH] if dialect == "postgresql" else []
