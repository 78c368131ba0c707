"""v6: ``conversations.streamed_until``, and ``nexus_append_messages``: the group commit's
function with lean results, the provider-id check done in the same call, and whether anyone
streams the conversation (the function is PostgreSQL only; SQLite has no group commit).

``streamed_until`` (both dialects): a live stream of the conversation (a customer's or a
bot's WebSocket) sets it ahead while it runs. Customer messages stored by the group commit
are published on the conversation's channel only while it lies ahead: most conversations
(SMS, chat widgets that poll) have nobody listening there, and the publish cost as much CPU
as the insert. A stream marks the row (taking its lock) before it reads the stored messages,
so a batch that locked the row before the mark committed its messages before that read,
and every batch after it sees the mark and publishes.

It does what ``nexus_append_batch`` (v5) does, in the same three steps (find, lock in id
order, reserve and insert with a fresh snapshot), with two differences:

* **Duplicates are answered by the database.** A message whose provider message id is
  already stored for its tenant, or appears earlier in the same call, is not inserted: it
  gets no row, and the caller takes the general path, which answers it from the store. So
  the inbound path needs no idempotency key in Redis before the batch: the unique index is
  the key, checked in the round trip that stores. (A duplicate that a concurrent, still
  uncommitted batch is inserting makes this call fail on the unique index, as before: the
  whole batch then takes the general path.)
* **One plain row per stored message** and nothing else: the message's id and index, the
  conversation's id, the customer's participant id and nickname as stored on the message,
  the open segment's id, state, agent and media, and whether the conversation is streamed
  (``streamed_until`` after ``p_now``). v5 returned the whole conversation and
  segment rows as composite values: decoding them (and asyncpg's introspection of the two
  row types on every new connection) cost more than the insert itself.

v5's function stays for engine processes of the previous release during a rolling upgrade;
nothing of this release calls it.

Frozen: a later change is a new migration.
"""

from __future__ import annotations

VERSION = 6
NAME = "append_messages"

# No ":name" anywhere below: the store runs plain strings as SQLAlchemy text, where a colon
# before a word would be a bind parameter ("::" casts are fine).
APPEND_MESSAGES = """\
CREATE OR REPLACE FUNCTION nexus_append_messages(
    p_tenant text[], p_conversation text[], p_channel text[], p_address text[],
    p_id text[], p_type text[], p_text text[], p_pmid text[], p_from_type text,
    p_now timestamptz)
RETURNS TABLE (message_id text, message_idx integer, conversation_id text,
               from_participant_id text, from_nickname text, segment_id text,
               segment_state text, segment_agent text, segment_media text,
               streamed boolean)
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
    -- 3. a fresh snapshot (VOLATILE: one per statement), taken after the locks: the new
    --    messages (not a provider id stored before or earlier in this call), the open
    --    segments, the indexes reserved, the messages inserted; a row per stored message
    RETURN QUERY
    WITH u AS (
        SELECT u.cid, u.tenant, u.id, u.type, u.text, u.pmid, u.ord,
            row_number() OVER (PARTITION BY u.tenant, u.pmid ORDER BY u.ord) AS nth
        FROM unnest(v_cid, p_tenant, p_id, p_type, p_text, p_pmid) WITH ORDINALITY
            AS u(cid, tenant, id, type, text, pmid, ord)
        WHERE u.cid = ANY(v_open)
    ), m AS (
        SELECT u.cid, u.tenant, u.id, u.type, u.text, u.pmid,
            row_number() OVER (PARTITION BY u.cid ORDER BY u.ord)::int AS k,
            count(*) OVER (PARTITION BY u.cid)::int AS n
        FROM u
        WHERE u.pmid IS NULL OR (u.nth = 1 AND NOT EXISTS (
            SELECT 1 FROM messages e
            WHERE e.tenant = u.tenant AND e.provider_message_id = u.pmid))
    ), t AS (
        SELECT d.cid, d.n, g.id AS sid, g.state AS sstate, g.agent AS sagent,
            g.media AS smedia
        FROM (SELECT DISTINCT m.cid, m.n FROM m) d
        CROSS JOIN LATERAL (
            SELECT x.id, x.state, x.agent, x.media FROM segments x
            WHERE x.conversation_id = d.cid
                AND x.state IN ('queued', 'offered', 'assigned', 'held')
            LIMIT 1
        ) g
    ), r AS (
        UPDATE conversations c SET last_index = c.last_index + t.n, updated = p_now
        FROM t WHERE c.id = t.cid
        RETURNING c.id AS cid, c.last_index, c.customer_id, c.customer_nickname, t.sid,
            t.sstate, t.sagent, t.smedia,
            coalesce(c.streamed_until > p_now, false) AS streamed
    ), i AS (
        INSERT INTO messages (conversation_id, idx, id, tenant, type, text,
            from_participant_id, from_nickname, from_type, segment_id, provider_message_id,
            timestamp)
        SELECT m.cid, r.last_index - m.n + m.k, m.id, m.tenant, m.type, m.text,
            r.customer_id, r.customer_nickname, p_from_type, r.sid, m.pmid, p_now
        FROM m JOIN r ON r.cid = m.cid
        RETURNING messages.id, messages.idx, messages.conversation_id
    )
    SELECT i.id::text, i.idx, i.conversation_id::text, r.customer_id::text,
        r.customer_nickname::text, r.sid::text, r.sstate::text, r.sagent::text,
        r.smedia::text, r.streamed
    FROM i JOIN r ON r.cid = i.conversation_id;
END
$fn$;
"""


def statements(dialect: str) -> list[str]:
    """The column on both; the function on PostgreSQL."""
    if dialect == "postgresql":
        return [
            "ALTER TABLE conversations ADD COLUMN streamed_until TIMESTAMP WITH TIME ZONE",
            APPEND_MESSAGES,
        ]
    return ["ALTER TABLE conversations ADD COLUMN streamed_until DATETIME"]
