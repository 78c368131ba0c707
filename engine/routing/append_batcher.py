"""Group commit for customer messages into open conversations (PostgreSQL).

The common case of chat and SMS traffic is a customer's text into a conversation that is
open and has an open segment. Done one by one, each such message costs a lookup, a
transaction (BEGIN, lock and reserve, insert, COMMIT) and a publish: a handful of round trips
and, in Python, far more CPU than the database work itself. :class:`AppendBatcher` takes the
messages that arrive while a commit is in flight and stores them together in one call of the
function ``nexus_append_messages`` (migration v0006): one round trip and one transaction,
whatever their number. Then it publishes them in one Redis pipeline.

Guarantees are those of :meth:`ConversationService._post` (see docs/conversations.md):

* **indexes without gaps**: the batch locks its conversation rows (``FOR UPDATE``, always in
  id order, conversations named by address resolved to their ids first: two batches do not
  deadlock each other, and a one-conversation transaction of the general path cannot form a
  cycle with them; should another shape ever deadlock, the batch takes the general path),
  reads their open segments with a fresh snapshot *after* the locks (the function is
  VOLATILE: a snapshot per statement), and reserves indexes only for the messages that have
  an open segment to go to;
* **durable before acknowledged**: a caller's future resolves after the COMMIT;
* **a provider message id stored once**: the function leaves out a message whose provider
  id is already stored for its tenant or comes earlier in the same batch (that message takes
  the general path, which answers it from the store); the unique index stands behind it, and
  a batch that hits it (a duplicate that a concurrent batch is storing) rolls back as a
  whole, every message of it taking the general path.

Anything that is not the common case (no open conversation, no open segment, a closed
conversation, a failed batch) answers ``None``: the caller runs the general path, unchanged.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from engine.ids import uuid4
from engine.routing.conversation_models import (
    Media,
    Message,
    MessageType,
    ParticipantType,
    SegmentState,
    from_epoch,
)
from engine.store.db import Store
from engine.store.errors import Conflict, StoreError

log = logging.getLogger("nexus.routing.batch")

_CUSTOMER = str(ParticipantType.CUSTOMER)
# the enum members by their stored value: a dict lookup, not an Enum call, per row
_SEGMENT_STATES = {str(state.value): state for state in SegmentState}
_MEDIA = {str(media.value): media for media in Media}

#: at most this many messages per transaction
MAX_BATCH = 256
#: batches of one process committing at the same time (the next one fills meanwhile). One:
#: a second batch in flight only split the messages into smaller batches, each paying a
#: round trip and a commit (ingest benchmark: 8 us less engine CPU and about 13 us less
#: database CPU per message with one; the chat relay's p99 no worse)
MAX_INFLIGHT = 1
#: Under load a batch first waits this long for more messages: when the batch before it
#: carried at least LINGER_FROM messages (the process is busy) and fewer than LINGER_TARGET
#: wait. The database pays about 200 us of CPU per commit whatever its size, and the engine
#: a round trip per batch, so under load fewer, bigger commits leave more CPU for the
#: requests (ingest benchmark: about 11 -> 16 messages per commit, 10 us less engine CPU and
#: 10 us less database CPU per message); at a light load (batches of a few messages, the
#: chat relay) nothing waits.
LINGER = 0.001
LINGER_FROM = 8
LINGER_TARGET = 32

# One round trip: the function of migration v0006 finds, locks (in id order) and appends in
# the call's own transaction; see engine/store/migrations/v0006_append_messages.py.
_APPEND_MESSAGES = (
    "SELECT message_id, message_idx, conversation_id, from_participant_id, from_nickname, "
    "segment_id, segment_state, segment_agent, segment_media, streamed "
    "FROM nexus_append_messages("
    "$1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], "
    "$8::text[], $9::text, $10::timestamptz)"
)


@dataclass(frozen=True, slots=True)
class OpenSegment:
    """What a group commit learns of the open segment a message went to: enough to fan the
    message out (the assigned agent) and to wake a held interaction."""

    id: str
    tenant: str
    conversation_id: str
    state: SegmentState
    agent: str | None
    media: Media


@dataclass(frozen=True, slots=True)
class Appended:
    """A stored customer message, the open segment it went to, and whether a live stream
    reads the conversation (``conversations.streamed_until`` ahead)."""

    segment: OpenSegment
    message: Message
    streamed: bool = True


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


#: publish(stored pairs, cache sets, conversations nobody streams): fans the messages out
#: after the commit (the conversation's channel only where someone streams), never raises
Publish = Callable[
    [
        Sequence[tuple[OpenSegment, Message]],
        Sequence[tuple[str, str, float]],
        Collection[str],
    ],
    Awaitable[None],
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
        linger: float = LINGER,
        linger_from: int = LINGER_FROM,
        linger_target: int = LINGER_TARGET,
    ) -> None:
        if store.dialect != "postgresql":
            raise ValueError("group commit needs PostgreSQL")
        self.store = store
        self.publish = publish
        self.clock = clock
        self.max_batch = max_batch
        self.max_inflight = max_inflight
        self.linger = linger
        self.linger_from = linger_from
        self.linger_target = linger_target
        self._pending: list[_Request] = []
        self._running = 0
        self._last_size = 0  # messages in the batch taken last: is the process busy?
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
        # The batch runs in its own task: a cancelled caller cancels only its own future,
        # which the batch then skips (every result is set only on a future not done), so the
        # others' answers are unaffected. No shield: it cost an extra future per message.
        return await request.future

    async def close(self) -> None:
        """Wait for the batches in flight (at shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # ---- batches ----------------------------------------------------------------------

    async def _drain(self) -> None:
        try:
            while self._pending:
                if (
                    self.linger > 0
                    and self._last_size >= self.linger_from
                    and len(self._pending) < self.linger_target
                ):
                    await self._linger()
                batch = self._pending[: self.max_batch]
                del self._pending[: self.max_batch]
                self._last_size = len(batch)
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

    async def _linger(self) -> None:
        try:
            await asyncio.sleep(self.linger)
        except BaseException:  # cancelled (shutdown): so are the waiters
            for request in self._pending:
                request.future.cancel()
            self._pending.clear()
            raise

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
                if not request.future.done():
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
            unheard = {a.message.conversation_id for _, a in stored if not a.streamed}
            await self.publish(pairs, sets, unheard)
        results = {id(r): a for r, a in stored}
        for request in batch:
            found = results.get(id(request))
            if found is None:
                self.declined += 1
            if not request.future.done():
                request.future.set_result(found)

    async def _store(self, batch: list[_Request]) -> list[tuple[_Request, Appended]]:
        ids = [uuid4() for _ in batch]
        now = from_epoch(self.clock())
        async with self.store.raw_connection() as conn:
            rows = await conn.fetch(
                _APPEND_MESSAGES,
                [r.tenant for r in batch],
                [r.conversation_id for r in batch],
                [None if r.conversation_id else r.channel_id for r in batch],
                [None if r.conversation_id else r.address for r in batch],
                ids,
                [str(r.type) for r in batch],
                [r.text for r in batch],
                [r.provider_message_id for r in batch],
                _CUSTOMER,
                now,
            )
        return self._results(batch, ids, rows, now)

    @staticmethod
    def _results(
        batch: list[_Request], ids: list[str], rows: list[Any], now: datetime
    ) -> list[tuple[_Request, Appended]]:
        # a row per stored message: (id, index, conversation, sender, nickname, segment's
        # id, state, agent, media, streamed); no row: not stored (no open conversation or
        # segment, or a provider message id stored before)
        by_id = {row[0]: row for row in rows}
        segments: dict[str, OpenSegment] = {}
        out: list[tuple[_Request, Appended]] = []
        for request, message_id in zip(batch, ids, strict=True):
            row = by_id.get(message_id)
            if row is None:
                continue
            (_, index, conversation_id, sender, nickname, segment_id, state, agent, media,
             streamed) = row
            segment = segments.get(segment_id)
            if segment is None:
                segment = segments[segment_id] = OpenSegment(
                    segment_id, request.tenant, conversation_id, _SEGMENT_STATES[state], agent,
                    _MEDIA[media],
                )
            message = Message(
                conversation_id, index, message_id, request.type, request.text, sender,
                nickname, ParticipantType.CUSTOMER, now, segment_id,
                provider_message_id=request.provider_message_id,
            )
            out.append((request, Appended(segment, message, streamed)))
        return out
