"""Durable conversation state: the SQL of the conversation engine (SQLAlchemy Core).

Used by :class:`engine.routing.conversations.ConversationService` and
:class:`engine.routing.router.Router`; nothing else writes these tables.

Lock order (PostgreSQL row locks): a transaction that touches a conversation and its segments
locks the conversation row first (:meth:`ConversationRepo.lock_conversation`), then segments.
Single-statement segment claims lock only the segment row, so no cycle can form.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import sqlalchemy as sa

from engine.routing.conversation_models import (
    Conversation,
    FileInfo,
    InteractionEvent,
    InteractionEventType,
    Media,
    Message,
    MessageStatus,
    MessageType,
    ParticipantType,
    Segment,
    SegmentState,
    from_epoch,
    utc,
)
from engine.store.conversation_tables import (
    OPEN_SEGMENT_STATES,
    conversations,
    files,
    interaction_events,
    messages,
    segments,
)
from engine.store.db import Store
from engine.store.planning import by_key_only

T = TypeVar("T")


def dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


@dataclass(frozen=True, slots=True)
class Draft:
    """A message to store: the index, id and timestamp are given when it is appended."""

    type: MessageType
    from_participant_id: str
    from_type: ParticipantType
    from_nickname: str | None = None
    text: str | None = None
    segment_id: str | None = None
    file_id: str | None = None
    provider_message_id: str | None = None
    status: MessageStatus | None = None

    def stored(
        self,
        conversation_id: str,
        index: int,
        message_id: str,
        timestamp: datetime,
        segment_id: str | None = None,
    ) -> Message:
        """The message as stored at ``index`` (``segment_id`` overrides the draft's)."""
        return Message(
            conversation_id=conversation_id,
            index=index,
            id=message_id,
            type=self.type,
            text=self.text,
            from_participant_id=self.from_participant_id,
            from_nickname=self.from_nickname,
            from_type=self.from_type,
            timestamp=timestamp,
            segment_id=segment_id if segment_id is not None else self.segment_id,
            file_id=self.file_id,
            provider_message_id=self.provider_message_id,
            status=self.status,
        )


# 'open' written into the SQL, not bound: a prepared statement's generic plan can use the
# partial index ux_conversations_open_address (state = 'open') only when the query says so
_OPEN = sa.literal_column("'open'")
_OPEN_STATES_SQL = ", ".join(f"'{state}'" for state in OPEN_SEGMENT_STATES)

#: PostgreSQL: read the open segment of a conversation and insert one message into it, in one
#: statement (one round trip). Run it *after* the conversation's row lock is taken (in the same
#: transaction): under READ COMMITTED the statement's snapshot then already sees every change
#: made under that lock (a new or ended segment), exactly like a separate SELECT would.
#: Without an open segment nothing is inserted and no row is returned.
_APPEND_TO_OPEN_SEGMENT = sa.text(
    "WITH s AS (SELECT * FROM segments WHERE conversation_id = :cid "
    f"AND state IN ({_OPEN_STATES_SQL}) LIMIT 1), "
    "m AS (INSERT INTO messages (conversation_id, idx, id, tenant, type, text, "
    "from_participant_id, from_nickname, from_type, segment_id, file_id, "
    "provider_message_id, status, timestamp) "
    "SELECT :cid, CAST(:idx AS INTEGER), :id, :tenant, :type, CAST(:text AS TEXT), :fpid, "
    "CAST(:fnick AS TEXT), :ftype, s.id, CAST(:file_id AS TEXT), CAST(:pmid AS TEXT), "
    "CAST(:status AS TEXT), CAST(:ts AS TIMESTAMPTZ) FROM s RETURNING idx) "
    "SELECT s.* FROM s"
)


class ConversationRepo:
    def __init__(self, store: Store, clock: Callable[[], float]) -> None:
        self.store = store
        self.clock = clock

    @property
    def combined_append(self) -> bool:
        """True when :meth:`append_to_open_segment` is available (PostgreSQL)."""
        return self.store.dialect == "postgresql"

    async def append_to_open_segment(
        self, conversation: Conversation, draft: Draft
    ) -> tuple[Segment, Message] | None:
        """PostgreSQL only: insert ``draft`` (its ``segment_id`` is taken from the open
        segment) at the index reserved by :meth:`lock_conversation` (``reserve=1``), in one
        round trip with reading the open segment. None, with nothing inserted, when the
        conversation has no open segment."""
        now = self.now()
        message_id = str(uuid.uuid4())
        row = await self.store.fetch_one(
            _APPEND_TO_OPEN_SEGMENT.bindparams(
                cid=conversation.id,
                idx=conversation.last_index,
                id=message_id,
                tenant=conversation.tenant,
                type=str(draft.type),
                text=draft.text,
                fpid=draft.from_participant_id,
                fnick=draft.from_nickname,
                ftype=str(draft.from_type),
                file_id=draft.file_id,
                pmid=draft.provider_message_id,
                status=None if draft.status is None else str(draft.status),
                ts=now,
            )
        )
        if row is None:
            return None
        segment = Segment.from_row(row)
        message = draft.stored(
            conversation.id, conversation.last_index, message_id, now, segment.id
        )
        return segment, message

    def now(self) -> datetime:
        return from_epoch(self.clock())

    # ---- conversations ------------------------------------------------------------------

    async def insert_conversation(self, values: Mapping[str, Any]) -> Conversation:
        now = self.now()
        row = {
            "state": "open",
            "last_index": 0,
            "created": now,
            "updated": now,
            "customer": "{}",
            "user_data": "{}",
            **values,
        }
        found = await self.store.fetch_one(
            sa.insert(conversations).values(**row).returning(*conversations.c)
        )
        assert found is not None
        return Conversation.from_row(found)

    async def get_conversation(self, tenant: str, conversation_id: str) -> Conversation | None:
        row = await self.store.fetch_one(
            sa.select(conversations).where(
                conversations.c.id == conversation_id, conversations.c.tenant == tenant
            )
        )
        return None if row is None else Conversation.from_row(row)

    async def open_conversation_by_address(
        self, tenant: str, channel_id: str, address: str
    ) -> Conversation | None:
        row = await self.store.fetch_one(
            sa.select(conversations).where(
                conversations.c.tenant == tenant,
                conversations.c.channel_id == channel_id,
                conversations.c.customer_address == address,
                conversations.c.state == _OPEN,
            )
        )
        return None if row is None else Conversation.from_row(row)

    async def inbound_lookup(
        self, tenant: str, channel_id: str, address: str, provider_message_id: str | None
    ) -> tuple[str | None, str | None]:
        """One round trip for an inbound message: ``(id of the message already stored with
        this provider message id or None, id of the customer's open conversation on the
        channel or None)``. Neither is locked: the caller re-checks under the lock."""
        open_conversation = (
            sa.select(conversations.c.id)
            .where(
                conversations.c.tenant == tenant,
                conversations.c.channel_id == channel_id,
                conversations.c.customer_address == address,
                conversations.c.state == _OPEN,
            )
            .limit(1)
            .scalar_subquery()
        )
        if provider_message_id:
            known = (
                sa.select(messages.c.id)
                .where(
                    messages.c.tenant == tenant,
                    messages.c.provider_message_id == provider_message_id,
                )
                .limit(1)
                .scalar_subquery()
            )
        else:
            known = sa.null()
        row = await self.store.fetch_one(
            sa.select(known.label("known"), open_conversation.label("conversation"))
        )
        if row is None:
            return None, None
        return row["known"], row["conversation"]

    async def lock_conversation(
        self, tenant: str, conversation_id: str, reserve: int = 0
    ) -> Conversation | None:
        """Lock the conversation row for the rest of the transaction and reserve ``reserve``
        message indexes: returns the conversation as updated (its ``last_index`` is the last
        reserved index; the first is ``last_index - reserve + 1``)."""
        row = await self.store.fetch_one(
            sa.update(conversations)
            .where(conversations.c.id == conversation_id, conversations.c.tenant == tenant)
            .values(last_index=conversations.c.last_index + reserve, updated=self.now())
            .returning(*conversations.c)
        )
        return None if row is None else Conversation.from_row(row)

    async def update_conversation(self, tenant: str, conversation_id: str, **values: Any) -> None:
        await self.store.execute(
            sa.update(conversations)
            .where(conversations.c.id == conversation_id, conversations.c.tenant == tenant)
            .values(updated=self.now(), **values)
        )

    async def mark_streamed(self, conversation_id: str, until: datetime) -> None:
        """A live stream reads the conversation until ``until`` (moved forward only). The
        update takes the row's lock: a group commit that locked it earlier has committed
        by the time this returns, and every later one sees the mark."""
        column = conversations.c.streamed_until
        await self.store.execute(
            sa.update(conversations)
            .where(conversations.c.id == conversation_id,
                   sa.or_(column.is_(None), column < until))
            .values(streamed_until=until)
        )

    async def close_conversation(self, tenant: str, conversation_id: str) -> bool:
        row = await self.store.fetch_one(
            sa.update(conversations)
            .where(
                conversations.c.id == conversation_id,
                conversations.c.tenant == tenant,
                conversations.c.state == "open",
            )
            .values(state="closed", closed_at=self.now(), updated=self.now())
            .returning(conversations.c.id)
        )
        return row is not None

    async def conversations_of_contact(
        self, tenant: str, contact_ids: Sequence[str]
    ) -> list[Conversation]:
        rows = await self.store.fetch_all(
            sa.select(conversations)
            .where(conversations.c.tenant == tenant, conversations.c.contact_id.in_(contact_ids))
            .order_by(conversations.c.created, conversations.c.id)
        )
        return [Conversation.from_row(r) for r in rows]

    async def conversations_by_ids(
        self, tenant: str, ids: Sequence[str]
    ) -> dict[str, Conversation]:
        if not ids:
            return {}
        rows = await self.store.fetch_all(
            sa.select(conversations).where(
                conversations.c.tenant == tenant, conversations.c.id.in_(list(ids))
            )
        )
        return {r["id"]: Conversation.from_row(r) for r in rows}

    # ---- messages -----------------------------------------------------------------------

    async def append(self, conversation: Conversation, drafts: Sequence[Draft]) -> list[Message]:
        """Insert ``drafts`` with the indexes reserved by :meth:`lock_conversation` (call it
        first, in the same transaction, with ``reserve=len(drafts)``)."""
        first = conversation.last_index - len(drafts) + 1
        now = self.now()
        out: list[Message] = []
        rows: list[dict[str, Any]] = []
        for offset, draft in enumerate(drafts):
            message = draft.stored(conversation.id, first + offset, str(uuid.uuid4()), now)
            out.append(message)
            rows.append(
                {
                    "conversation_id": conversation.id,
                    "idx": message.index,
                    "id": message.id,
                    "tenant": conversation.tenant,
                    "type": str(message.type),
                    "text": message.text,
                    "from_participant_id": message.from_participant_id,
                    "from_nickname": message.from_nickname,
                    "from_type": str(message.from_type),
                    "segment_id": message.segment_id,
                    "file_id": message.file_id,
                    "provider_message_id": message.provider_message_id,
                    "status": None if message.status is None else str(message.status),
                    "timestamp": now,
                }
            )
        if len(rows) == 1:  # a single-row INSERT has a cached compiled form
            await self.store.execute(sa.insert(messages).values(**rows[0]))
        elif rows:
            await self.store.execute(sa.insert(messages).values(rows))
        return out

    async def messages_by_provider_ids(
        self, tenant: str, provider_ids: Sequence[str]
    ) -> dict[str, Message]:
        if not provider_ids:
            return {}
        rows = await self.store.fetch_all(
            sa.select(messages).where(
                messages.c.tenant == tenant,
                messages.c.provider_message_id.in_(list(provider_ids)),
            )
        )
        return {r["provider_message_id"]: Message.from_row(r) for r in rows}

    async def read_messages(
        self,
        conversation_id: str,
        from_index: int = 1,
        *,
        to_index: int | None = None,
        limit: int | None = None,
    ) -> list[Message]:
        query = (
            sa.select(messages)
            .where(messages.c.conversation_id == conversation_id, messages.c.idx >= from_index)
            .order_by(messages.c.idx)
        )
        if to_index is not None:
            query = query.where(messages.c.idx <= to_index)
        if limit is not None:
            query = query.limit(limit)
        return [Message.from_row(r) for r in await self.store.fetch_all(query)]

    async def _grouped(
        self, table: sa.Table, conversation_ids: Sequence[str], order: tuple[Any, ...],
        from_row: Callable[[Any], T],
    ) -> dict[str, list[T]]:
        """Rows of ``table`` for several conversations in one query, grouped by conversation."""
        out: dict[str, list[T]] = {cid: [] for cid in conversation_ids}
        if not conversation_ids:
            return out
        rows = await self.store.fetch_all(
            sa.select(table)
            .where(table.c.conversation_id.in_(list(conversation_ids)))
            .order_by(*order)
        )
        for row in rows:
            out[row["conversation_id"]].append(from_row(row))
        return out

    async def messages_of(self, conversation_ids: Sequence[str]) -> dict[str, list[Message]]:
        return await self._grouped(
            messages, conversation_ids, (messages.c.conversation_id, messages.c.idx),
            Message.from_row,
        )

    async def set_message_status(
        self, tenant: str, message_id: str, status: MessageStatus
    ) -> Message | None:
        row = await self.store.fetch_one(
            sa.update(messages)
            .where(messages.c.tenant == tenant, messages.c.id == message_id)
            .values(status=str(status))
            .returning(*messages.c)
        )
        return None if row is None else Message.from_row(row)

    # ---- files --------------------------------------------------------------------------

    async def count_files(self, conversation_id: str) -> int:
        return int(
            await self.store.fetch_val(
                sa.select(sa.func.count())
                .select_from(files)
                .where(files.c.conversation_id == conversation_id)
            )
        )

    async def insert_file(self, info: FileInfo, tenant: str, data: bytes) -> None:
        await self.store.execute(
            sa.insert(files).values(
                id=info.id,
                conversation_id=info.conversation_id,
                tenant=tenant,
                name=info.name,
                mime=info.mime,
                size=info.size,
                sha256=info.sha256,
                bytes=data,
                uploaded_by=info.uploaded_by,
                created=info.created,
            )
        )

    async def get_file(
        self, tenant: str, conversation_id: str, file_id: str
    ) -> tuple[FileInfo, bytes] | None:
        row = await self.store.fetch_one(
            sa.select(files).where(
                files.c.id == file_id,
                files.c.tenant == tenant,
                files.c.conversation_id == conversation_id,
            )
        )
        if row is None:
            return None
        info = FileInfo(
            id=row["id"],
            conversation_id=row["conversation_id"],
            name=row["name"],
            mime=row["mime"],
            size=int(row["size"]),
            sha256=row["sha256"],
            uploaded_by=row["uploaded_by"],
            created=utc(row["created"]),  # type: ignore[arg-type]
        )
        return info, bytes(row["bytes"])

    # ---- segments -----------------------------------------------------------------------

    async def open_segment(self, conversation_id: str) -> Segment | None:
        row = await self.store.fetch_one(
            sa.select(segments).where(
                segments.c.conversation_id == conversation_id,
                segments.c.state.in_(OPEN_SEGMENT_STATES),
            )
        )
        return None if row is None else Segment.from_row(row)

    async def get_segment(self, tenant: str, segment_id: str) -> Segment | None:
        row = await self.store.fetch_one(
            sa.select(segments).where(
                segments.c.id == segment_id, by_key_only(segments.c.tenant == tenant)
            )
        )
        return None if row is None else Segment.from_row(row)

    async def segments_by_ids(self, tenant: str, ids: Sequence[str]) -> dict[str, Segment]:
        if not ids:
            return {}
        rows = await self.store.fetch_all(
            sa.select(segments).where(
                segments.c.id.in_(list(ids)), by_key_only(segments.c.tenant == tenant)
            )
        )
        return {r["id"]: Segment.from_row(r) for r in rows}

    async def segments_where(self, tenant: str, *conditions: Any) -> list[Segment]:
        rows = await self.store.fetch_all(
            sa.select(segments)
            .where(segments.c.tenant == tenant, *conditions)
            .order_by(segments.c.queued_at, segments.c.id)
        )
        return [Segment.from_row(r) for r in rows]

    async def segments_of(self, conversation_ids: Sequence[str]) -> dict[str, list[Segment]]:
        return await self._grouped(
            segments, conversation_ids, (segments.c.created, segments.c.id), Segment.from_row
        )

    async def insert_segment(
        self,
        conversation: Conversation,
        *,
        queue: str,
        state: SegmentState = SegmentState.QUEUED,
        subtype: str | None = None,
    ) -> tuple[Segment, InteractionEvent]:
        """A new open segment (a new interaction) and its STARTED outbox row. Raises
        :class:`engine.store.errors.Conflict` when the conversation already has one."""
        now = self.now()
        segment_id = str(uuid.uuid4())
        row = await self.store.fetch_one(
            sa.insert(segments)
            .values(
                id=segment_id,
                conversation_id=conversation.id,
                tenant=conversation.tenant,
                media=str(conversation.media),
                state=str(state),
                queue=queue,
                queued_at=now,
                created=now,
                declined="{}",
                attempt=0,
            )
            .returning(*segments.c)
        )
        assert row is not None
        event = await self.insert_event(
            InteractionEventType.STARTED, conversation, segment_id, subtype
        )
        return Segment.from_row(row), event

    async def transition(
        self,
        tenant: str,
        segment_id: str,
        *,
        expect_states: Sequence[SegmentState],
        values: Mapping[str, Any],
        **expect: Any,
    ) -> Segment | None:
        """Conditional update: applies ``values`` only when the segment is in one of
        ``expect_states`` (and the columns in ``expect`` have those values). Returns the
        updated segment, or None when the condition did not hold (someone else won)."""
        checks = [
            segments.c.tenant == tenant,
            segments.c.state.in_([str(s) for s in expect_states]),
        ]
        for column, value in expect.items():
            col = segments.c[column]
            checks.append(col.is_(None) if value is None else col == value)
        row = await self.store.fetch_one(
            sa.update(segments)
            .where(segments.c.id == segment_id, by_key_only(*checks))
            .values(**values)
            .returning(*segments.c)
        )
        return None if row is None else Segment.from_row(row)

    async def count_states(self, tenant: str) -> dict[tuple[str, str], int]:
        rows = await self.store.fetch_all(
            sa.select(segments.c.queue, segments.c.state, sa.func.count().label("n"))
            .where(segments.c.tenant == tenant, segments.c.state.in_(OPEN_SEGMENT_STATES))
            .group_by(segments.c.queue, segments.c.state)
        )
        return {(r["queue"], r["state"]): int(r["n"]) for r in rows}

    # ---- outbox -------------------------------------------------------------------------

    async def insert_event(
        self,
        event: InteractionEventType,
        conversation: Conversation,
        segment_id: str,
        subtype: str | None,
    ) -> InteractionEvent:
        await self.store.execute(
            sa.insert(interaction_events).values(
                tenant=conversation.tenant,
                event=str(event),
                interaction_id=segment_id,
                conversation_id=conversation.id,
                media=str(conversation.media),
                subtype=subtype,
                created=self.now(),
            )
        )
        return InteractionEvent(
            event=event,
            tenant=conversation.tenant,
            interaction_id=segment_id,
            conversation_id=conversation.id,
            media=Media(conversation.media),
            subtype=subtype,
        )

    async def events_of(self, interaction_id: str) -> list[dict[str, Any]]:
        return await self.store.fetch_all(
            sa.select(interaction_events)
            .where(interaction_events.c.interaction_id == interaction_id)
            .order_by(interaction_events.c.id)
        )
