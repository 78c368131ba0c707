"""Value objects and typed errors of the conversation engine (no I/O here).

The HTTP layer maps every :class:`ConversationError` to the error envelope with
``status.code = error.code`` and ``status.message = error.identifier`` (the widget's
identifiers: ``INVALID_FILE_TYPE``, ``LIMIT_FILE_SIZE``, ``LIMIT_FILE_COUNT``,
``INVALID_CONTACT_CENTER``, ``INVALID_ENDPOINT``, ``INVALID_NICKNAME``, ...) and
``status.field = error.field`` when set.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any


class Media(StrEnum):
    CHAT = "chat"
    SMS = "sms"
    EMAIL = "email"


class ConversationState(StrEnum):
    OPEN = "open"
    CLOSED = "closed"


class SegmentState(StrEnum):
    QUEUED = "queued"
    OFFERED = "offered"
    ASSIGNED = "assigned"
    HELD = "held"
    DONE = "done"
    ABANDONED = "abandoned"

    @property
    def is_open(self) -> bool:
        return self not in (SegmentState.DONE, SegmentState.ABANDONED)


class MessageType(StrEnum):
    TEXT = "Text"
    PARTICIPANT_JOINED = "ParticipantJoined"
    PARTICIPANT_LEFT = "ParticipantLeft"
    TYPING_STARTED = "TypingStarted"
    TYPING_STOPPED = "TypingStopped"
    NOTICE = "Notice"
    FILE = "File"
    SEGMENT_ENDED = "SegmentEnded"


#: types that are never stored: published live only
LIVE_ONLY_TYPES = frozenset({MessageType.TYPING_STARTED, MessageType.TYPING_STOPPED})


class ParticipantType(StrEnum):
    CUSTOMER = "Customer"
    AGENT = "Agent"
    BOT = "Bot"
    SYSTEM = "System"


class MessageStatus(StrEnum):
    PENDING = "pending"
    SENT = "sent"
    DELIVERED = "delivered"
    FAILED = "failed"
    READ = "read"


class InteractionEventType(StrEnum):
    STARTED = "STARTED"
    FINISHED = "FINISHED"


SYSTEM_PARTICIPANT = "system"


def utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def iso(value: datetime | None) -> str | None:
    value = utc(value)
    return None if value is None else value.isoformat().replace("+00:00", "Z")


def from_epoch(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def _json(text: str | None, default: Any) -> Any:
    if not text:
        return default
    return json.loads(text)


# ---- errors -----------------------------------------------------------------------------


class ConversationError(Exception):
    """Base of the engine's typed errors. ``code`` is the API's ``status.code`` (1 missing
    parameter, 2 invalid for the state, 3 forbidden, 6 not found, ...), ``identifier`` the
    widget identifier for ``status.message``, ``field`` the offending request field."""

    code = 2
    identifier = "INVALID_REQUEST"
    http_status = 400

    def __init__(self, message: str = "", *, field: str | None = None) -> None:
        super().__init__(message or self.identifier)
        self.field = field


class InvalidContactCenter(ConversationError):
    code, identifier, http_status = 6, "INVALID_CONTACT_CENTER", 404


class InvalidEndpoint(ConversationError):
    code, identifier, http_status = 2, "INVALID_ENDPOINT", 400


class InvalidNickname(ConversationError):
    code, identifier, http_status = 1, "INVALID_NICKNAME", 400


class InvalidChannel(ConversationError):
    code, identifier, http_status = 6, "INVALID_CHANNEL", 404


class InvalidMessage(ConversationError):
    code, identifier, http_status = 2, "INVALID_MESSAGE", 400


class InvalidFileType(ConversationError):
    code, identifier, http_status = 2, "INVALID_FILE_TYPE", 400


class FileTooLarge(ConversationError):
    code, identifier, http_status = 2, "LIMIT_FILE_SIZE", 413


class TooManyFiles(ConversationError):
    code, identifier, http_status = 2, "LIMIT_FILE_COUNT", 400


class ConversationNotFound(ConversationError):
    code, identifier, http_status = 6, "SESSION_NOT_FOUND", 404


class FileNotFound(ConversationError):
    code, identifier, http_status = 6, "FILE_NOT_FOUND", 404


class InteractionNotFound(ConversationError):
    code, identifier, http_status = 6, "INTERACTION_NOT_FOUND", 404


class ConversationClosed(ConversationError):
    code, identifier, http_status = 2, "SESSION_CLOSED", 409


class InvalidState(ConversationError):
    """The interaction is not in a state that allows the action (not offered to this agent,
    not assigned to them, already done, ...)."""

    code, identifier, http_status = 2, "INVALID_STATE", 409


class InvalidQueue(ConversationError):
    code, identifier, http_status = 2, "INVALID_QUEUE", 400


class NotAnAgent(ConversationError):
    code, identifier, http_status = 3, "NOT_AN_AGENT", 403


class InvalidContact(ConversationError):
    code, identifier, http_status = 2, "INVALID_CONTACT", 400


class ContactNotFound(ConversationError):
    code, identifier, http_status = 6, "CONTACT_NOT_FOUND", 404


class UcsUnavailable(ConversationError):
    code, identifier, http_status = 4, "UCS_UNAVAILABLE", 502


# ---- values -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Customer:
    """What a customer told about themselves when the session started."""

    nickname: str
    first_name: str | None = None
    last_name: str | None = None
    email: str | None = None
    phone: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "nickname": self.nickname,
            "firstName": self.first_name,
            "lastName": self.last_name,
            "email": self.email,
            "phone": self.phone,
        }


@dataclass(frozen=True, slots=True)
class Conversation:
    id: str
    tenant: str
    media: Media
    channel_id: str | None
    endpoint: str
    contact_id: str | None
    customer_id: str
    customer_nickname: str
    customer_address: str | None
    customer: Mapping[str, Any]
    subject: str | None
    user_data: Mapping[str, Any]
    state: ConversationState
    last_agent: str | None
    last_index: int
    customer_left_at: datetime | None
    created: datetime
    closed_at: datetime | None

    @property
    def is_open(self) -> bool:
        return self.state is ConversationState.OPEN

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Conversation:
        return cls(
            id=row["id"],
            tenant=row["tenant"],
            media=Media(row["media"]),
            channel_id=row["channel_id"],
            endpoint=row["endpoint"],
            contact_id=row["contact_id"],
            customer_id=row["customer_id"],
            customer_nickname=row["customer_nickname"],
            customer_address=row["customer_address"],
            customer=_json(row["customer"], {}),
            subject=row["subject"],
            user_data=_json(row["user_data"], {}),
            state=ConversationState(row["state"]),
            last_agent=row["last_agent"],
            last_index=int(row["last_index"]),
            customer_left_at=utc(row["customer_left_at"]),
            created=utc(row["created"]),  # type: ignore[arg-type]
            closed_at=utc(row["closed_at"]),
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "tenant": self.tenant,
            "media": str(self.media),
            "channelId": self.channel_id,
            "endpoint": self.endpoint,
            "contactId": self.contact_id,
            "customer": {"participantId": self.customer_id, **dict(self.customer)},
            "subject": self.subject,
            "userData": dict(self.user_data),
            "state": str(self.state),
            "lastAgent": self.last_agent,
            "lastIndex": self.last_index,
            "created": iso(self.created),
            "closedAt": iso(self.closed_at),
        }


@dataclass(frozen=True, slots=True)
class Segment:
    """One interaction of a conversation (segment id = interaction id)."""

    id: str
    conversation_id: str
    tenant: str
    media: Media
    state: SegmentState
    queue: str
    agent: str | None
    offered_to: str | None
    offer_deadline: datetime | None
    queued_at: datetime
    wake_at: datetime | None
    attempt: int
    declined: Mapping[str, float]
    created: datetime
    assigned_at: datetime | None
    ended_at: datetime | None
    end_reason: str | None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Segment:
        return cls(
            id=row["id"],
            conversation_id=row["conversation_id"],
            tenant=row["tenant"],
            media=Media(row["media"]),
            state=SegmentState(row["state"]),
            queue=row["queue"],
            agent=row["agent"],
            offered_to=row["offered_to"],
            offer_deadline=utc(row["offer_deadline"]),
            queued_at=utc(row["queued_at"]),  # type: ignore[arg-type]
            wake_at=utc(row["wake_at"]),
            attempt=int(row["attempt"]),
            declined=_json(row["declined"], {}),
            created=utc(row["created"]),  # type: ignore[arg-type]
            assigned_at=utc(row["assigned_at"]),
            ended_at=utc(row["ended_at"]),
            end_reason=row["end_reason"],
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "conversationId": self.conversation_id,
            "media": str(self.media),
            "state": str(self.state),
            "queue": self.queue,
            "agent": self.agent,
            "offeredTo": self.offered_to,
            "offerDeadline": iso(self.offer_deadline),
            "created": iso(self.created),
            "assignedAt": iso(self.assigned_at),
            "endedAt": iso(self.ended_at),
            "endReason": self.end_reason,
        }


@dataclass(frozen=True, slots=True)
class Message:
    """A message of a conversation. ``index`` is None only for live-only events (typing)."""

    conversation_id: str
    index: int | None
    id: str
    type: MessageType
    text: str | None
    from_participant_id: str
    from_nickname: str | None
    from_type: ParticipantType
    timestamp: datetime
    segment_id: str | None = None
    file_id: str | None = None
    provider_message_id: str | None = None
    status: MessageStatus | None = None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Message:
        return cls(
            conversation_id=row["conversation_id"],
            index=int(row["idx"]),
            id=row["id"],
            type=MessageType(row["type"]),
            text=row["text"],
            from_participant_id=row["from_participant_id"],
            from_nickname=row["from_nickname"],
            from_type=ParticipantType(row["from_type"]),
            timestamp=utc(row["timestamp"]),  # type: ignore[arg-type]
            segment_id=row["segment_id"],
            file_id=row["file_id"],
            provider_message_id=row["provider_message_id"],
            status=MessageStatus(row["status"]) if row["status"] else None,
        )

    def as_dict(self) -> dict[str, Any]:
        """The API's message JSON (plus the engine's extra fields)."""
        out: dict[str, Any] = {
            "index": self.index,
            "id": self.id,
            "type": str(self.type),
            "text": self.text,
            "from": {
                "nickname": self.from_nickname,
                "participantId": self.from_participant_id,
                "type": str(self.from_type),
            },
            "timestamp": iso(self.timestamp),
            "conversationId": self.conversation_id,
        }
        if self.segment_id is not None:
            out["interactionId"] = self.segment_id
        if self.file_id is not None:
            out["fileId"] = self.file_id
        if self.status is not None:
            out["status"] = str(self.status)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Message:
        sender = data["from"]
        stamp = datetime.fromisoformat(str(data["timestamp"]).replace("Z", "+00:00"))
        return cls(
            conversation_id=data["conversationId"],
            index=data["index"],
            id=data["id"],
            type=MessageType(data["type"]),
            text=data.get("text"),
            from_participant_id=sender["participantId"],
            from_nickname=sender.get("nickname"),
            from_type=ParticipantType(sender["type"]),
            timestamp=stamp,
            segment_id=data.get("interactionId"),
            file_id=data.get("fileId"),
            status=MessageStatus(data["status"]) if data.get("status") else None,
        )


@dataclass(frozen=True, slots=True)
class FileInfo:
    id: str
    conversation_id: str
    name: str
    mime: str
    size: int
    sha256: str
    uploaded_by: str
    created: datetime

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "mimetype": self.mime,
            "size": self.size,
            "sha256": self.sha256,
            "created": iso(self.created),
        }


@dataclass(frozen=True, slots=True)
class InteractionEvent:
    """A STARTED/FINISHED event (also a row of the ``interaction_events`` outbox)."""

    event: InteractionEventType
    tenant: str
    interaction_id: str
    conversation_id: str
    media: Media
    subtype: str | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "event": str(self.event),
            "tenant": self.tenant,
            "interactionId": self.interaction_id,
            "conversationId": self.conversation_id,
            "mediaType": str(self.media),
            "interactionSubtype": self.subtype,
        }


@dataclass(frozen=True, slots=True)
class FilePolicy:
    """Upload limits, chosen by the caller (the HTTP layer, from config or defaults).

    ``allowed_types``: MIME types, ``type/*`` wildcards allowed (default: images).
    """

    allowed_types: tuple[str, ...] = ("image/*",)
    max_size: int = 10 * 1024 * 1024
    max_count: int = 10

    def allows(self, mime: str) -> bool:
        mime = mime.split(";", 1)[0].strip().lower()
        for pattern in self.allowed_types:
            pattern = pattern.lower()
            if pattern == "*/*" or pattern == mime:
                return True
            if pattern.endswith("/*") and mime.startswith(pattern[:-1]):
                return True
        return False


@dataclass(frozen=True, slots=True)
class QueueStats:
    queue: str
    waiting: int = 0
    offered: int = 0
    assigned: int = 0
    held: int = 0
    agents_ready: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "queue": self.queue,
            "waiting": self.waiting,
            "offered": self.offered,
            "assigned": self.assigned,
            "held": self.held,
            "agentsReady": self.agents_ready,
        }


@dataclass(frozen=True, slots=True)
class Contact:
    id: str
    tenant: str
    first_name: str | None
    last_name: str | None
    nickname: str | None
    email: str | None
    phone: str | None
    created: datetime
    updated: datetime
    merged_into: str | None = None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Contact:
        return cls(
            id=row["id"],
            tenant=row["tenant"],
            first_name=row["first_name"],
            last_name=row["last_name"],
            nickname=row["nickname"],
            email=row["email"],
            phone=row["phone"],
            created=utc(row["created"]),  # type: ignore[arg-type]
            updated=utc(row["updated"]),  # type: ignore[arg-type]
            merged_into=row["merged_into"],
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "firstName": self.first_name,
            "lastName": self.last_name,
            "nickname": self.nickname,
            "email": self.email,
            "phone": self.phone,
            "created": iso(self.created),
            "mergedInto": self.merged_into,
        }


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One conversation of a contact with its interactions and transcript."""

    conversation: Mapping[str, Any]
    segments: tuple[Mapping[str, Any], ...] = ()
    messages: tuple[Mapping[str, Any], ...] = field(default_factory=tuple)

    def as_dict(self) -> dict[str, Any]:
        return {
            "conversation": dict(self.conversation),
            "interactions": [dict(s) for s in self.segments],
            "messages": [dict(m) for m in self.messages],
        }
