"""Group commit for customer messages into open conversations (PostgreSQL).

The common case of chat and SMS traffic is a customer's text into a conversation that is
open and has an open segment. Done one by one, each such message costs a lookup, a
transaction (BEGIN, lock and reserve, insert, COMMIT) and a publish: a handful of round trips
and, in Python, far more CPU than the database work itself. :class:`AppendBatcher` takes the
messages that arrive while a commit is in flight and stores them together in one transaction
of four or five round trips, whatever their number, then publishes them in one Redis pipeline.

Guarantees are those of :meth:`ConversationService._post` (see docs/conversations.md):

* **indexes without gaps**: the batch locks its conversation rows (``FOR UPDATE``, always in
  id order, conversations named by address resolved to their ids first: two batches do not
  deadlock each other, and a one-conversation transaction of the general path cannot form a
  cycle with them; should another shape ever deadlock, the batch takes the general path),
  reads their
  open segments with a fresh snapshot *after* the locks, and reserves indexes only for the
  messages that have an open segment to go to;
* **durable before acknowledged**: a caller's future resolves after the COMMIT;
* **a provider message id stored once**: the unique index stands; a batch that hits it (a
  retry whose idempotency marker is gone, a concurrent duplicate) rolls back as a whole, and
  every message of it takes the general path, which answers duplicates from the store.

Anything that is not the common case (no open conversation, no open segment, a closed
conversation, a failed batch) answers ``None``: the caller runs the general path, unchanged.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from engine.routing.conversation_models import (
    Conversation,
    Message,
    MessageType,
    ParticipantType,
    Segment,
    from_epoch,
)
from engine.routing.conversation_repo import Draft
from engine.store.conversation_tables import OPEN_SEGMENT_STATES
from engine.store.db import Store
from engine.store.errors import Conflict, StoreError

log = logging.getLogger("nexus.routing.batch")

#: at most this many messages per transaction
MAX_BATCH = 256
#: batches of one process committing at the same time (the next one fills meanwhile)
MAX_INFLIGHT = 2

_OPEN_STATES = ", ".join(f"'{s}'" for s in OPEN_SEGMENT_STATES)

# One parameterised index lookup per conversation (LATERAL ... LIMIT 1 is never flattened
# into a join, so the plan does not depend on table statistics). Messages named by address
# are first resolved to conversation ids without a lock; then every row of the batch is
# locked as it is found, in the order of the id array, which the caller sorts: all batches,
# whatever their shape, take their locks in id order and never deadlock each other.
_IDS_BY_ADDRESS = (
    "SELECT v.tenant, c.id FROM unnest($1::text[], $2::text[], $3::text[]) "
    "AS v(tenant, channel_id, address) "
    "CROSS JOIN LATERAL (SELECT x.id FROM conversations x WHERE x.tenant = v.tenant "
    "AND x.channel_id = v.channel_id AND x.customer_address = v.address "
    "AND x.state = 'open' LIMIT 1) c"
)
_LOCK_BY_ID = (
    "SELECT c.* FROM unnest($1::text[], $2::text[]) AS v(tenant, id) "
    "CROSS JOIN LATERAL (SELECT * FROM conversations x WHERE x.id = v.id "
    "AND x.tenant = v.tenant AND x.state = 'open' LIMIT 1 FOR UPDATE) c"
)
# After the locks, one statement (its snapshot is taken after them, so it sees every change
# made under them): read the open segments, reserve the indexes of the messages that have one
# to go to, insert those messages. Two round trips (this and COMMIT) with the locks held.
_APPEND = (
    "WITH seg AS (SELECT * FROM segments WHERE conversation_id = ANY($1::text[]) "
    f"AND state IN ({_OPEN_STATES})), "
    "m AS (SELECT * FROM unnest($2::text[], $3::int[], $4::int[], $5::text[], $6::text[], "
    "$7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[]) "
    "AS m(cid, k, n, id, tenant, type, text, fpid, fnick, ftype, pmid) "
    "WHERE m.cid IN (SELECT conversation_id FROM seg)), "
    "r AS (UPDATE conversations c SET last_index = c.last_index + x.n, updated = $13 "
    "FROM (SELECT DISTINCT cid, n FROM m) x WHERE c.id = x.cid "
    "RETURNING c.id, c.last_index), "
    "i AS (INSERT INTO messages (conversation_id, idx, id, tenant, type, text, "
    "from_participant_id, from_nickname, from_type, segment_id, provider_message_id, "
    "timestamp) SELECT m.cid, r.last_index - m.n + m.k, m.id, m.tenant, m.type, m.text, "
    "m.fpid, m.fnick, m.ftype, s.id, m.pmid, $13 FROM m JOIN r ON r.id = m.cid "
    "JOIN seg s ON s.conversation_id = m.cid RETURNING id, idx, conversation_id) "
    "SELECT i.id AS message_id, i.idx AS message_idx, s.* FROM i "
    "JOIN seg s ON s.conversation_id = i.conversation_id"
)


@dataclass(frozen=True, slots=True)
class Appended:
    """A stored customer message: the conversation as locked and updated by the batch, the
    open segment it went to, and the message."""

    conversation: Conversation
    segment: Segment
    message: Message


@dataclass(slots=True, eq=False)
class _Request:
    tenant: str
    text: str | None
    type: MessageType
    provider_message_id: str | None
    mark: tuple[str, float] | None
    conversation_id: str | None = None
    channel_id: str | None = None
    address: str | None = None
    future: asyncio.Future[Appended | None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


#: publish(stored pairs, cache sets): fans the messages out after the commit, never raises
Publish = Callable[
    [Sequence[tuple[Segment, Message]], Sequence[tuple[str, str, float]]], Awaitable[None]
]


class AppendBatcher:
    """See the module docstring. ``publish`` fans stored messages out (one call per batch);
    ``clock`` returns epoch seconds."""

    def __init__(
        self,
        store: Store,
        publish: Publish,
        clock: Callable[[], float],
        *,
        max_batch: int = MAX_BATCH,
        max_inflight: int = MAX_INFLIGHT,
    ) -> None:
        if store.dialect != "postgresql":
            raise ValueError("group commit needs PostgreSQL")
        self.store = store
        self.publish = publish
        self.clock = clock
        self.max_batch = max_batch
        self.max_inflight = max_inflight
        self._pending: list[_Request] = []
        self._running = 0
        self._tasks: set[asyncio.Task[None]] = set()
        #: counters for tests and the benchmark: batches committed, messages in them,
        #: messages handed back to the general path
        self.batches = 0
        self.appended = 0
        self.declined = 0

    # ---- callers ----------------------------------------------------------------------

    async def append_by_id(
        self,
        tenant: str,
        conversation_id: str,
        text: str | None,
        *,
        type: MessageType = MessageType.TEXT,
        provider_message_id: str | None = None,
        mark: tuple[str, float] | None = None,
    ) -> Appended | None:
        """The customer's message into conversation ``conversation_id``; None: not stored,
        take the general path."""
        return await self._submit(_Request(
            tenant, text, type, provider_message_id, mark, conversation_id=conversation_id
        ))

    async def append_by_address(
        self,
        tenant: str,
        channel_id: str,
        address: str,
        text: str | None,
        *,
        provider_message_id: str | None = None,
        mark: tuple[str, float] | None = None,
    ) -> Appended | None:
        """The customer's message into their open conversation on ``channel_id`` (``address``
        normalised as the conversation stores it); None: not stored, take the general path."""
        return await self._submit(_Request(
            tenant, text, MessageType.TEXT, provider_message_id, mark, channel_id=channel_id,
            address=address,
        ))

    async def _submit(self, request: _Request) -> Appended | None:
        self._pending.append(request)
        if self._running < self.max_inflight:
            self._running += 1
            task = asyncio.get_running_loop().create_task(self._drain())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        # the batch runs in its own task: a cancelled caller does not cancel the others'
        return await asyncio.shield(request.future)

    async def close(self) -> None:
        """Wait for the batches in flight (at shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # ---- batches ----------------------------------------------------------------------

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch = self._pending[: self.max_batch]
                del self._pending[: self.max_batch]
                try:
                    await self._flush(batch)
                except Exception as exc:  # noqa: BLE001 - every waiter gets the error
                    for request in batch:
                        if not request.future.done():
                            request.future.set_exception(exc)
                except BaseException:  # cancelled (shutdown): so are the waiters
                    for request in batch + self._pending:
                        request.future.cancel()
                    self._pending.clear()
                    raise
        finally:
            self._running -= 1

    async def _flush(self, batch: list[_Request]) -> None:
        try:
            stored = await self._store(batch)
        except Conflict:
            stored = None  # a duplicate provider id (or a race on one): the general path
        except StoreError as exc:
            if getattr(exc.__cause__, "sqlstate", None) != "40P01":
                raise
            stored = None  # deadlock with a transaction of another shape: the general path
        if stored is None:
            self.declined += len(batch)
            for request in batch:
                request.future.set_result(None)
            return
        self.batches += 1
        self.appended += len(stored)
        if stored:
            pairs = [(a.segment, a.message) for _, a in stored]
            sets = [
                (r.mark[0], f"done:{a.message.id}", r.mark[1])
                for r, a in stored
                if r.mark is not None
            ]
            await self.publish(pairs, sets)
        results = {id(r): a for r, a in stored}
        for request in batch:
            found = results.get(id(request))
            if found is None:
                self.declined += 1
            request.future.set_result(found)

    async def _store(self, batch: list[_Request]) -> list[tuple[_Request, Appended]]:
        wanted = {(r.tenant, r.conversation_id) for r in batch if r.conversation_id}
        by_address = sorted({
            (r.tenant, r.channel_id, r.address)
            for r in batch
            if r.conversation_id is None and r.channel_id and r.address
        })
        async with self.store.raw_connection() as conn:
            if by_address:  # an unlocked read: outside the transaction
                found = await conn.fetch(
                    _IDS_BY_ADDRESS,
                    [t for t, _, _ in by_address],
                    [c for _, c, _ in by_address],
                    [a for _, _, a in by_address],
                )
                wanted |= {(row["tenant"], row["id"]) for row in found}
            if not wanted:
                return []  # first messages of their senders: nothing to lock
            async with conn.transaction():
                return await self._append(conn, batch, wanted)

    async def _append(
        self, conn: Any, batch: list[_Request], wanted: set[tuple[str, str]]
    ) -> list[tuple[_Request, Appended]]:
        # sorted by id: every batch takes its row locks in the same order
        order = sorted(wanted, key=lambda key: key[1])
        rows = await conn.fetch(_LOCK_BY_ID, [t for t, _ in order], [c for _, c in order])
        if not rows:
            return []
        locked = {row["id"]: row for row in rows}
        by_key: dict[tuple[str, ...], str] = {}
        for row in rows:
            by_key[(row["tenant"], row["id"])] = row["id"]
            if row["channel_id"] is not None and row["customer_address"] is not None:
                by_key[(row["tenant"], row["channel_id"], row["customer_address"])] = row["id"]
        # who goes where: per conversation, in arrival order
        targets: dict[str, list[_Request]] = {}
        for request in batch:
            key: tuple[str, ...] = (
                (request.tenant, request.conversation_id)
                if request.conversation_id
                else (request.tenant, request.channel_id or "", request.address or "")
            )
            cid = by_key.get(key)
            if cid is not None:
                targets.setdefault(cid, []).append(request)
        if not targets:
            return []
        now = from_epoch(self.clock())
        columns: list[list[Any]] = [[] for _ in range(11)]
        ids: dict[int, str] = {}
        for cid, requests in targets.items():
            row = locked[cid]
            for k, request in enumerate(requests, start=1):
                message_id = str(uuid.uuid4())
                ids[id(request)] = message_id
                for column, value in zip(columns, (
                    cid, k, len(requests), message_id, row["tenant"], str(request.type),
                    request.text, row["customer_id"], row["customer_nickname"],
                    str(ParticipantType.CUSTOMER), request.provider_message_id,
                ), strict=True):
                    column.append(value)
        stored = await conn.fetch(_APPEND, list(targets), *columns, now)
        return self._results(targets, locked, ids, stored, now)

    @staticmethod
    def _results(
        targets: dict[str, list[_Request]],
        locked: dict[str, Any],
        ids: dict[int, str],
        stored: list[Any],
        now: datetime,
    ) -> list[tuple[_Request, Appended]]:
        by_message = {row["message_id"]: row for row in stored}
        out: list[tuple[_Request, Appended]] = []
        for cid, requests in targets.items():
            rows = [by_message.get(ids[id(r)]) for r in requests]
            if rows[0] is None:
                continue  # no open segment: nothing was reserved or inserted
            segment = Segment.from_row(rows[0])
            conversation = replace(
                Conversation.from_row(locked[cid]),
                last_index=int(locked[cid]["last_index"]) + len(requests),
            )
            for request, row in zip(requests, rows, strict=True):
                draft = Draft(
                    request.type,
                    conversation.customer_id,
                    ParticipantType.CUSTOMER,
                    from_nickname=conversation.customer_nickname,
                    text=request.text,
                    provider_message_id=request.provider_message_id,
                )
                message = draft.stored(
                    cid, int(row["message_idx"]), row["message_id"], now, segment.id
                )
                out.append((request, Appended(conversation, segment, message)))
        return out
