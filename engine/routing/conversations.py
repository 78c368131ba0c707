"""ConversationService: chat sessions and async conversations below the HTTP layer.

Guarantees (details in docs/conversations.md):

* **durable before acknowledged**: every ``post_*`` returns only after the message's
  transaction committed; publishing on Redis comes after and never fails the call (a lost
  publish is recovered by subscribers from the store);
* **indexes**: per conversation 1, 2, 3, ... without gaps or duplicates, allocated under the
  conversation's row lock (``conversations.last_index``), on SQLite and PostgreSQL, from any
  number of processes;
* **idempotent ingest**: a ``provider_message_id`` is stored once per tenant; posting it again
  returns the stored message (nothing is published or routed twice);
* **one open conversation per (tenant, channel, customer address)** and **one open segment
  per conversation**, by partial unique indexes (a losing concurrent insert retries and finds
  the winner's row);
* :meth:`ConversationService.subscribe` subscribes to the conversation's channel *first*,
  then replays stored messages from the requested index, then follows live ones,
  de-duplicating by index and filling any gap from the store: no message lost or repeated
  when a customer resumes on another process.

Tenants are ccids (``x-ccid``); the config model is looked up by ccid.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from engine.config.model import Model
from engine.config.model import Tenant as TenantConfig
from engine.routing.append_batcher import AppendBatcher, Appended, OpenSegment
from engine.routing.contacts import Contacts, normalize_phone
from engine.routing.conversation_models import (
    LIVE_ONLY_TYPES,
    SYSTEM_PARTICIPANT,
    Conversation,
    ConversationClosed,
    ConversationError,
    ConversationNotFound,
    Customer,
    FileInfo,
    FileNotFound,
    FilePolicy,
    FileTooLarge,
    InteractionEvent,
    InteractionNotFound,
    InvalidChannel,
    InvalidContact,
    InvalidContactCenter,
    InvalidEndpoint,
    InvalidFileType,
    InvalidMessage,
    InvalidNickname,
    InvalidState,
    Media,
    Message,
    MessageStatus,
    MessageType,
    ParticipantType,
    Segment,
    SegmentState,
    TooManyFiles,
    UcsUnavailable,
    from_epoch,
)
from engine.routing.conversation_repo import ConversationRepo, Draft, dumps
from engine.routing.live import conversation_channel
from engine.routing.router import Router
from engine.store.cache import Cache
from engine.store.db import Store
from engine.store.errors import Conflict

log = logging.getLogger("nexus.routing.conversations")

_RETRIES = 8
MAX_TEXT = 16 * 1024
#: a live stream marks its conversation as streamed this far ahead (renewed at half-time,
#: checked at least every poll interval); a group commit publishes on the conversation's
#: channel only while the mark lies ahead. A stream's gap check and its quiet re-reads of
#: the store deliver anything committed while a mark had lapsed.
STREAM_MARK_SECONDS = 60.0
CUSTOMER_POSTABLE = (MessageType.TEXT, MessageType.NOTICE)
AGENT_POSTABLE = (MessageType.TEXT, MessageType.NOTICE)
_HASH_OFF_LOOP = 256 * 1024  # bytes: hash larger files in a worker thread


@dataclass(frozen=True, slots=True)
class Posted:
    """The outcome of a post: the stored messages and whether they are new (False: an
    idempotent repeat of a provider message id)."""

    messages: tuple[Message, ...]
    created: bool
    #: the conversation as locked by the post (None for an idempotent repeat)
    conversation: Conversation | None = None


class ConversationService:
    """See the module docstring. ``router`` routes the interactions; ``contacts`` matches
    customers (default: built from the store and the model); ``clock`` returns epoch
    seconds; ``poll_interval`` is how often a live subscription re-reads the store when
    Redis is silent (the safety net for a lost publish)."""

    def __init__(
        self,
        store: Store,
        cache: Cache,
        model: Model | Callable[[], Model],
        *,
        router: Router,
        contacts: Contacts | None = None,
        clock: Callable[[], float] | None = None,
        poll_interval: float = 5.0,
        default_endpoint: str | None = None,
        group_commit: bool = True,
    ) -> None:
        self.store = store
        self.cache = cache
        self._model = model
        self.router = router
        self.clock = clock or router.clock or time.time
        self.contacts = contacts or Contacts(store, model, clock=self.clock)
        if router.contacts is None:
            router.contacts = self.contacts
        self.repo = ConversationRepo(store, self.clock)
        #: group commit of customer messages into open segments (PostgreSQL); None: every
        #: message takes the general path
        self.batcher: AppendBatcher | None = (
            AppendBatcher(store, self._publish_pairs, self.clock)
            if store.dialect == "postgresql" and group_commit
            else None
        )
        self.poll_interval = poll_interval
        #: (model, {(tenant, channel id): (channel, endpoint)}): see _chat_channel
        self._chat_channels: tuple[Any, dict[tuple[str, str], tuple[Any, Any]]] = (None, {})
        self.default_endpoint = default_endpoint

    async def close(self) -> None:
        """At shutdown: wait for the group commits in flight (their callers get answers)."""
        if self.batcher is not None:
            await self.batcher.close()

    @property
    def model(self) -> Model:
        return self._model() if callable(self._model) else self._model

    def on_event(self, callback: Callable[[InteractionEvent], Any]) -> None:
        """In-process STARTED/FINISHED listener (see :meth:`Router.on_event`)."""
        self.router.on_event(callback)

    # ---- lookups --------------------------------------------------------------------

    def tenant_config(self, tenant: str) -> TenantConfig:
        config = self.model.tenant_by_ccid(tenant)
        if config is None or not config.enabled:
            raise InvalidContactCenter(f"unknown contact center {tenant!r}", field="x-ccid")
        return config

    async def get_conversation(self, tenant: str, conversation_id: str) -> Conversation:
        self.tenant_config(tenant)
        conversation = await self.repo.get_conversation(tenant, conversation_id)
        if conversation is None:
            raise ConversationNotFound(f"no session {conversation_id!r}", field="sessionId")
        return conversation

    async def get_interaction(self, tenant: str, interaction_id: str) -> Segment:
        segment = await self.repo.get_segment(tenant, interaction_id)
        if segment is None:
            raise InteractionNotFound(f"no interaction {interaction_id!r}", field="iid")
        return segment

    async def open_segment(self, tenant: str, conversation_id: str) -> Segment | None:
        conversation = await self.get_conversation(tenant, conversation_id)
        return await self.repo.open_segment(conversation.id)

    # ---- sessions -------------------------------------------------------------------

    @staticmethod
    def customer_nickname(
        nickname: str | None, first_name: str | None, last_name: str | None, email: str | None
    ) -> str:
        """The nickname rule: ``nickname`` when given; else "first last" when a first name
        is given; else the email address; else :class:`InvalidNickname`. At most 255
        characters after trimming."""
        for candidate in (
            nickname,
            " ".join(p for p in ((first_name or "").strip(), (last_name or "").strip()) if p)
            if (first_name or "").strip()
            else None,
            email,
        ):
            value = (candidate or "").strip()
            if value:
                if len(value) > 255:
                    raise InvalidNickname("the nickname is longer than 255", field="nickname")
                return value
        raise InvalidNickname(
            "a nickname is required unless a first name or an email is given", field="nickname"
        )

    async def create_session(
        self,
        tenant: str,
        *,
        endpoint: str | None = None,
        nickname: str | None = None,
        first_name: str | None = None,
        last_name: str | None = None,
        email: str | None = None,
        phone: str | None = None,
        subject: str | None = None,
        user_data: Mapping[str, Any] | None = None,
    ) -> Conversation:
        """Start a chat session: the conversation, its first segment (STARTED) and a
        ParticipantJoined message of the customer; then the segment is routed."""
        config = self.tenant_config(tenant)
        endpoint_name = endpoint or self.default_endpoint
        resolved = self.model.endpoint(endpoint_name, config.name) if endpoint_name else None
        if resolved is None:
            raise InvalidEndpoint(f"no endpoint {endpoint_name!r}", field="endpoint")
        data = self.contacts.parse(
            first_name=first_name,
            last_name=last_name,
            nickname=nickname,
            email=email,
            phone=phone,
        )
        name = self.customer_nickname(nickname, first_name, last_name, data.email)
        contact_id = await self._identify(tenant, data)
        customer = Customer(name, data.first_name, data.last_name, data.email, data.phone)
        async with self.store.transaction():
            conversation = await self.repo.insert_conversation(
                {
                    "id": str(uuid.uuid4()),
                    "tenant": tenant,
                    "media": str(Media.CHAT),
                    "channel_id": None,
                    "endpoint": resolved.section,
                    "contact_id": contact_id,
                    "customer_id": str(uuid.uuid4()),
                    "customer_nickname": name,
                    "customer": dumps(customer.as_dict()),
                    "subject": (subject or "").strip() or None,
                    "user_data": dumps(dict(user_data or {})),
                }
            )
            segment, event = await self.repo.insert_segment(conversation, queue=resolved.queue)
            conversation = await self._locked(tenant, conversation.id, 1)
            messages = await self.repo.append(
                conversation,
                [
                    Draft(
                        MessageType.PARTICIPANT_JOINED,
                        conversation.customer_id,
                        ParticipantType.CUSTOMER,
                        from_nickname=name,
                        segment_id=segment.id,
                    )
                ],
            )
        await self.router.publish_messages(segment, messages)
        await self.router.emit([event])
        await self.router.start_segment(segment)
        return conversation

    async def _identify(self, tenant: str, data: Any) -> str | None:
        """The contact id, or None while the tenant's UCS is unavailable: a customer can
        always start a conversation (it is then not linked to a contact)."""
        try:
            return await self.contacts.identify(tenant, data)
        except UcsUnavailable as exc:
            log.warning("contact identification skipped for %s: %s", tenant, exc)
            return None

    async def _locked(self, tenant: str, conversation_id: str, reserve: int) -> Conversation:
        conversation = await self.repo.lock_conversation(tenant, conversation_id, reserve)
        if conversation is None:
            raise ConversationNotFound(f"no session {conversation_id!r}", field="sessionId")
        return conversation

    def normalize_address(self, address: str) -> str:
        """A customer address as stored: E.164 when it reads as a phone number, else the
        trimmed text (provider ids of messaging apps)."""
        raw = address.strip()
        if not raw:
            raise InvalidContact("the customer address is empty", field="from")
        try:
            return normalize_phone(raw, self.contacts.default_country) or raw
        except InvalidContact:
            return raw

    def _chat_channel(self, tenant: str, channel_id: str) -> tuple[Any, Any]:
        """``(channel, endpoint)`` of a chat channel of the tenant, or the typed error.

        Every inbound message asks this: the answer is kept per model (a reload builds a new
        one), and only a valid pair is kept (an error is worked out again each time)."""
        model = self.model
        if self._chat_channels[0] is not model:
            self._chat_channels = (model, {})
        known = self._chat_channels[1].get((tenant, channel_id))
        if known is not None:
            return known
        found = self._find_chat_channel(tenant, channel_id)
        if len(self._chat_channels[1]) < 4096:  # pairs come from config: a small set
            self._chat_channels[1][(tenant, channel_id)] = found
        return found

    def _find_chat_channel(self, tenant: str, channel_id: str) -> tuple[Any, Any]:
        config = self.tenant_config(tenant)
        channel = self.model.channel(channel_id)
        if (
            channel is None
            or not channel.is_chat
            or channel.cxc_only
            or channel.tenant not in (None, config.name)
        ):
            raise InvalidChannel(f"no chat channel {channel_id!r}", field="channelId")
        endpoint = self.model.endpoint(channel.endpoint or "", config.name)
        if endpoint is None:
            raise InvalidEndpoint(f"channel {channel_id} names no endpoint", field="endpoint")
        return channel, endpoint

    async def open_or_get_conversation_for_address(
        self,
        tenant: str,
        channel_id: str,
        address: str,
        *,
        nickname: str | None = None,
        first_name: str | None = None,
        last_name: str | None = None,
        user_data: Mapping[str, Any] | None = None,
    ) -> tuple[Conversation, bool]:
        """The open conversation of this customer on this channel, created when there is
        none: ``(conversation, created)``. Safe under concurrency (one conversation however
        many first messages race)."""
        return await self._open_or_get(
            tenant, channel_id, address, nickname=nickname, first_name=first_name,
            last_name=last_name, user_data=user_data, looked_up=False,
        )

    async def _open_or_get(
        self,
        tenant: str,
        channel_id: str,
        address: str,
        *,
        nickname: str | None,
        first_name: str | None,
        last_name: str | None,
        user_data: Mapping[str, Any] | None,
        looked_up: bool,
    ) -> tuple[Conversation, bool]:
        """:meth:`open_or_get_conversation_for_address`; ``looked_up``: the caller has just
        found no open conversation (skip the first lookup: the insert's unique index is the
        guarantee, a losing insert reads the winner's row)."""
        channel, endpoint = self._chat_channel(tenant, channel_id)
        normalized = self.normalize_address(address)
        if not looked_up:
            existing = await self.repo.open_conversation_by_address(
                tenant, channel_id, normalized
            )
            if existing is not None:
                return existing, False
        phone = normalized if normalized.startswith("+") else None
        data = self.contacts.parse(
            first_name=first_name, last_name=last_name, nickname=nickname, phone=phone
        )
        contact_id = await self._identify(tenant, data)
        name = (
            (nickname or "").strip()
            or " ".join(p for p in (data.first_name, data.last_name) if p)
            or normalized
        )
        customer = Customer(name[:255], data.first_name, data.last_name, None, phone)
        media = Media.SMS if channel.channel_type == "sms" else Media.CHAT
        for _ in range(_RETRIES):
            try:
                conversation = await self.repo.insert_conversation(
                    {
                        "id": str(uuid.uuid4()),
                        "tenant": tenant,
                        "media": str(media),
                        "channel_id": channel_id,
                        "endpoint": endpoint.section,
                        "contact_id": contact_id,
                        "customer_id": str(uuid.uuid4()),
                        "customer_nickname": name[:255],
                        "customer_address": normalized,
                        "customer": dumps(customer.as_dict()),
                        "user_data": dumps(dict(user_data or {})),
                    }
                )
                return conversation, True
            except Conflict:
                found = await self.repo.open_conversation_by_address(tenant, channel_id, normalized)
                if found is not None:
                    return found, False
        raise Conflict(f"could not open a conversation for {channel_id}/{normalized}")

    # ---- messages -------------------------------------------------------------------

    async def _post(
        self,
        tenant: str,
        conversation_id: str,
        drafts: Callable[[Conversation, Segment | None], Sequence[Draft]],
        *,
        start_segment: bool,
        provider_ids: Sequence[str] = (),
        check: Callable[[Conversation, Segment | None], None] | None = None,
        before_append: Callable[[Conversation], Awaitable[None]] | None = None,
        checked: bool = False,
        reserve: int = 1,
        into_open_segment: bool = False,
    ) -> tuple[Posted, Segment | None, bool, InteractionEvent | None]:
        """Store messages in one transaction (allocating their indexes under the
        conversation's row lock), starting a segment when asked and none is open.

        The lock statement already reserves ``reserve`` indexes (the number of messages the
        callers post: one), so the common case needs no second ``UPDATE``; a different
        count is corrected under the same lock, and a rollback releases them all.
        ``checked``: the caller has just looked the provider ids up (skip that on the first
        attempt; the unique index still catches a concurrent duplicate).
        ``into_open_segment``: ``drafts`` gives one message whose segment is just the open
        one (customer messages): on PostgreSQL reading the open segment and inserting the
        message is then one statement under the lock."""
        self.tenant_config(tenant)
        combined = (
            into_open_segment
            and reserve == 1
            and check is None
            and before_append is None
            and self.repo.combined_append
        )
        for attempt in range(_RETRIES):
            if provider_ids and not (checked and attempt == 0):
                known = await self.repo.messages_by_provider_ids(tenant, provider_ids)
                if len(known) == len(provider_ids):
                    ordered = tuple(known[p] for p in provider_ids)
                    return Posted(ordered, False), None, False, None
            try:
                async with self.store.transaction():
                    current = await self._locked(tenant, conversation_id, reserve)
                    if not current.is_open:
                        raise ConversationClosed(f"session {conversation_id} is closed")
                    if combined:
                        (draft,) = drafts(current, None)
                        done = await self.repo.append_to_open_segment(current, draft)
                        if done is not None:
                            segment, message = done
                            posted = Posted((message,), True, current)
                            return posted, segment, False, None
                        segment = None  # none open: the general path below
                    else:
                        segment = await self.repo.open_segment(conversation_id)
                    if check is not None:
                        check(current, segment)
                    started, event = False, None
                    if segment is None and start_segment:
                        endpoint = self.model.endpoint(
                            current.endpoint, self.tenant_config(tenant).name
                        )
                        queue = endpoint.queue if endpoint else None
                        queue = (
                            queue or self.model.environment.routing.redirect_queue.fallback_queue
                        )
                        if not queue:
                            raise InvalidEndpoint(
                                f"endpoint {current.endpoint} is gone", field="endpoint"
                            )
                        segment, event = await self.repo.insert_segment(
                            current,
                            queue=queue,
                            subtype=self.router.interaction_subtype(current.channel_id),
                        )
                        started = True
                    items = list(drafts(current, segment))
                    if before_append is not None:
                        await before_append(current)
                    conversation = current
                    if len(items) != reserve:
                        conversation = await self._locked(
                            tenant, conversation_id, len(items) - reserve
                        )
                    messages = await self.repo.append(conversation, items)
            except Conflict:
                continue  # a concurrent duplicate provider id or segment: look again
            return Posted(tuple(messages), True, conversation), segment, started, event
        raise Conflict(f"could not store the message in {conversation_id}")

    async def _after(
        self,
        posted: Posted,
        segment: Segment | None,
        started: bool,
        event: InteractionEvent | None,
        *,
        wake: bool,
        mark: tuple[str, float] | None = None,
    ) -> None:
        if not posted.created:
            return
        if mark is not None:  # "done:<id>" in the caller's idempotency key, same round trip
            sets = ((mark[0], f"done:{posted.messages[0].id}", mark[1]),)
            await self.router.publish_messages(segment, posted.messages, sets=sets)
        else:
            await self.router.publish_messages(segment, posted.messages)
        if event is not None:
            await self.router.emit([event])
        if segment is None:
            return
        if started:
            await self.router.start_segment(segment, conversation=posted.conversation)
        elif wake and segment.state is SegmentState.HELD:
            await self.router.wake(segment.tenant, segment.id)

    async def _publish_pairs(
        self,
        pairs: Sequence[tuple[OpenSegment, Message]],
        sets: Sequence[tuple[str, str, float]],
        unheard: Collection[str],
    ) -> None:
        await self.router.publish_pairs(pairs, sets, unheard)

    async def _after_appended(self, appended: Appended) -> None:
        """:meth:`_after` for a group-committed message (the batch already published it)."""
        segment = appended.segment
        if segment.state is SegmentState.HELD:
            await self.router.wake(segment.tenant, segment.id)

    @staticmethod
    def _text(text: str | None, kind: MessageType) -> str | None:
        if text is None or not text.strip():
            if kind is MessageType.TEXT:
                raise InvalidMessage("the message text is empty", field="text")
            return text
        if len(text) > MAX_TEXT:
            raise InvalidMessage(f"the message text is longer than {MAX_TEXT}", field="text")
        return text

    async def post_customer_message(
        self,
        tenant: str,
        conversation_id: str,
        text: str | None,
        *,
        type: MessageType | str = MessageType.TEXT,
        provider_message_id: str | None = None,
    ) -> Message:
        """A customer's Text or Notice (TypingStarted/TypingStopped go to :meth:`typing`).
        Starts (and routes) a new segment when none is open; wakes a held one."""
        kind = MessageType(type)
        if kind in LIVE_ONLY_TYPES:
            await self.typing(tenant, conversation_id, started=kind is MessageType.TYPING_STARTED)
            conversation = await self.get_conversation(tenant, conversation_id)
            return self._live_message(
                conversation,
                kind,
                conversation.customer_id,
                conversation.customer_nickname,
                ParticipantType.CUSTOMER,
            )
        if kind not in CUSTOMER_POSTABLE:
            raise InvalidMessage(f"a customer cannot post {kind}", field="type")
        body = self._text(text, kind)
        if self.batcher is not None:
            self.tenant_config(tenant)
            appended = await self.batcher.append_by_id(
                tenant, conversation_id, body, type=kind, provider_message_id=provider_message_id
            )
            if appended is not None:
                await self._after_appended(appended)
                return appended.message

        def drafts(conversation: Conversation, segment: Segment | None) -> list[Draft]:
            return [
                Draft(
                    kind,
                    conversation.customer_id,
                    ParticipantType.CUSTOMER,
                    from_nickname=conversation.customer_nickname,
                    text=body,
                    segment_id=segment.id if segment else None,
                    provider_message_id=provider_message_id,
                )
            ]

        result = await self._post(
            tenant,
            conversation_id,
            drafts,
            start_segment=True,
            provider_ids=[provider_message_id] if provider_message_id else (),
            into_open_segment=True,
        )
        await self._after(*result, wake=True)
        return result[0].messages[0]

    async def post_inbound(
        self,
        tenant: str,
        channel_id: str,
        address: str,
        text: str,
        *,
        provider_message_id: str | None = None,
        nickname: str | None = None,
        first_name: str | None = None,
        last_name: str | None = None,
        mark: tuple[str, float] | None = None,
    ) -> tuple[Message, bool]:
        """Ingest one inbound SMS/messaging-app message: the customer's open conversation
        on the channel (created if needed) gets the message. Returns ``(message,
        created)``; ``created`` is False for a provider message id seen before (the message
        is then the stored one; its ``conversation_id`` names the conversation).
        ``mark=(cache key, ttl)``: when the message is new, that key (unprefixed, as for
        :meth:`Cache.set`) gets ``done:<message id>`` in the publish's pipeline, after the
        commit (the caller's idempotency marker, without a round trip of its own).

        The usual case costs one lookup (the stored message of the provider id and the open
        conversation, in one statement) and one transaction (lock + reserve, open segment,
        insert); the unique indexes keep a concurrent duplicate or a concurrent first
        message of the same sender from doing anything twice."""
        try:
            self._chat_channel(tenant, channel_id)
            normalized: str | None = self.normalize_address(address)
        except ConversationError:
            normalized = None  # the full path below raises the right error in order
        if normalized is not None and self.batcher is not None:
            try:
                checked_text: str | None = self._text(text, MessageType.TEXT)
            except ConversationError:
                checked_text = None  # the general path answers it in order
            if checked_text is not None:
                appended = await self.batcher.append_by_address(
                    tenant, channel_id, normalized, checked_text,
                    provider_message_id=provider_message_id, mark=mark,
                )
                if appended is not None:
                    await self._after_appended(appended)
                    return appended.message, True
        if normalized is not None:
            known_id, conversation_id = await self.repo.inbound_lookup(
                tenant, channel_id, normalized, provider_message_id
            )
            if known_id is None:
                body = self._text(text, MessageType.TEXT)
                return await self._post_inbound(
                    tenant, channel_id, address, body, conversation_id,
                    provider_message_id=provider_message_id, nickname=nickname,
                    first_name=first_name, last_name=last_name, looked_up=True, mark=mark,
                )
        if provider_message_id:
            known = await self.repo.messages_by_provider_ids(tenant, [provider_message_id])
            if provider_message_id in known:
                return known[provider_message_id], False
        body = self._text(text, MessageType.TEXT)
        return await self._post_inbound(
            tenant, channel_id, address, body, None, provider_message_id=provider_message_id,
            nickname=nickname, first_name=first_name, last_name=last_name, checked=True,
            mark=mark,
        )

    async def _post_inbound(
        self,
        tenant: str,
        channel_id: str,
        address: str,
        body: str | None,
        conversation_id: str | None,
        *,
        provider_message_id: str | None,
        nickname: str | None,
        first_name: str | None,
        last_name: str | None,
        checked: bool = True,
        looked_up: bool = False,
        mark: tuple[str, float] | None = None,
    ) -> tuple[Message, bool]:
        """Post into ``conversation_id`` (the customer's open conversation as just looked
        up) or into the one :meth:`open_or_get_conversation_for_address` gives."""

        def drafts(conv: Conversation, segment: Segment | None) -> list[Draft]:
            return [
                Draft(
                    MessageType.TEXT,
                    conv.customer_id,
                    ParticipantType.CUSTOMER,
                    from_nickname=conv.customer_nickname,
                    text=body,
                    segment_id=segment.id if segment else None,
                    provider_message_id=provider_message_id,
                )
            ]

        for attempt in range(_RETRIES):
            if conversation_id is None or attempt > 0:
                conversation, _created = await self._open_or_get(
                    tenant,
                    channel_id,
                    address,
                    nickname=nickname,
                    first_name=first_name,
                    last_name=last_name,
                    user_data=None,
                    looked_up=attempt == 0 and looked_up,
                )
                conversation_id = conversation.id
            try:
                result = await self._post(
                    tenant,
                    conversation_id,
                    drafts,
                    start_segment=True,
                    provider_ids=[provider_message_id] if provider_message_id else (),
                    checked=checked and attempt == 0,
                    into_open_segment=True,
                )
            except ConversationClosed:
                continue  # closed (Done) meanwhile: the next message opens a new one
            await self._after(*result, wake=True, mark=mark)
            posted = result[0]
            return posted.messages[0], posted.created
        raise ConversationClosed(f"could not deliver to a conversation on {channel_id}")

    def _agent_check(self, agent: str) -> Callable[[Conversation, Segment | None], None]:
        name = agent.lower()

        def check(conversation: Conversation, segment: Segment | None) -> None:
            if segment is None:
                raise InvalidState("the conversation has no open interaction")
            if segment.state is SegmentState.ASSIGNED and segment.agent == name:
                return
            if segment.state is SegmentState.HELD and (conversation.last_agent or "") == name:
                return
            raise InvalidState(f"the interaction is not assigned to {agent}")

        return check

    async def post_agent_message(
        self,
        tenant: str,
        interaction_id: str,
        agent: str,
        text: str | None,
        *,
        type: MessageType | str = MessageType.TEXT,
    ) -> Message:
        """An agent's message in their interaction (assigned to them, or held with them as
        its last agent: a follow-up, which wakes the interaction)."""
        user = self.router.agent(tenant, agent)
        name = user.username.lower()
        nickname = user.first_name or user.username
        segment = await self.get_interaction(tenant, interaction_id)
        kind = MessageType(type)
        if kind in LIVE_ONLY_TYPES:
            conversation = await self.get_conversation(tenant, segment.conversation_id)
            self._agent_check(name)(conversation, segment if segment.state.is_open else None)
            message = self._live_message(conversation, kind, name, nickname, ParticipantType.AGENT)
            await self.router.publish_messages(segment, [message])
            return message
        if kind not in AGENT_POSTABLE:
            raise InvalidMessage(f"an agent cannot post {kind}", field="type")
        body = self._text(text, kind)

        def drafts(conversation: Conversation, open_segment: Segment | None) -> list[Draft]:
            assert open_segment is not None
            if open_segment.id != interaction_id:
                raise InvalidState(f"interaction {interaction_id} is over")
            return [
                Draft(
                    kind,
                    name,
                    ParticipantType.AGENT,
                    from_nickname=nickname,
                    text=body,
                    segment_id=interaction_id,
                )
            ]

        result = await self._post(
            tenant,
            segment.conversation_id,
            drafts,
            start_segment=False,
            check=self._agent_check(name),
        )
        await self._after(*result, wake=True)
        return result[0].messages[0]

    async def post_bot_message(
        self,
        tenant: str,
        conversation_id: str,
        text: str | None,
        *,
        nickname: str = "Bot",
        participant_id: str = "bot",
        type: MessageType | str = MessageType.TEXT,
    ) -> Message:
        """A bot's (Designer application's) message; does not start or wake a segment."""
        kind = MessageType(type)
        if kind not in (MessageType.TEXT, MessageType.NOTICE):
            raise InvalidMessage(f"a bot cannot post {kind}", field="type")
        body = self._text(text, kind)

        def drafts(conversation: Conversation, segment: Segment | None) -> list[Draft]:
            return [
                Draft(
                    kind,
                    participant_id,
                    ParticipantType.BOT,
                    from_nickname=nickname,
                    text=body,
                    segment_id=segment.id if segment else None,
                )
            ]

        result = await self._post(tenant, conversation_id, drafts, start_segment=False)
        await self._after(*result, wake=False)
        return result[0].messages[0]

    async def post_notice(self, tenant: str, conversation_id: str, text: str) -> Message:
        """A System notice in the transcript."""

        def drafts(conversation: Conversation, segment: Segment | None) -> list[Draft]:
            return [
                Draft(
                    MessageType.NOTICE,
                    SYSTEM_PARTICIPANT,
                    ParticipantType.SYSTEM,
                    text=self._text(text, MessageType.NOTICE),
                    segment_id=segment.id if segment else None,
                )
            ]

        result = await self._post(tenant, conversation_id, drafts, start_segment=False)
        await self._after(*result, wake=False)
        return result[0].messages[0]

    async def customer_leave(self, tenant: str, conversation_id: str) -> Message:
        """The customer left (``DELETE {selfUri}``): a ParticipantLeft message; the session
        stays open (async) until an agent marks the interaction Done."""

        def drafts(conversation: Conversation, segment: Segment | None) -> list[Draft]:
            return [
                Draft(
                    MessageType.PARTICIPANT_LEFT,
                    conversation.customer_id,
                    ParticipantType.CUSTOMER,
                    from_nickname=conversation.customer_nickname,
                    segment_id=segment.id if segment else None,
                )
            ]

        result = await self._post(tenant, conversation_id, drafts, start_segment=False)
        await self.repo.update_conversation(
            tenant, conversation_id, customer_left_at=from_epoch(self.clock())
        )
        await self._after(*result, wake=False)
        return result[0].messages[0]

    def _live_message(
        self,
        conversation: Conversation,
        kind: MessageType,
        participant: str,
        nickname: str | None,
        from_type: ParticipantType,
    ) -> Message:
        return Message(
            conversation_id=conversation.id,
            index=None,
            id=str(uuid.uuid4()),
            type=kind,
            text=None,
            from_participant_id=participant,
            from_nickname=nickname,
            from_type=from_type,
            timestamp=from_epoch(self.clock()),
        )

    async def typing(
        self,
        tenant: str,
        conversation_id: str,
        *,
        started: bool,
        agent: str | None = None,
    ) -> None:
        """TypingStarted/TypingStopped of the customer (or of ``agent``): live only, never
        stored, delivered to the conversation's streams (and the assigned agent's feed)."""
        conversation = await self.get_conversation(tenant, conversation_id)
        kind = MessageType.TYPING_STARTED if started else MessageType.TYPING_STOPPED
        if agent is None:
            message = self._live_message(
                conversation,
                kind,
                conversation.customer_id,
                conversation.customer_nickname,
                ParticipantType.CUSTOMER,
            )
        else:
            user = self.router.agent(tenant, agent)
            message = self._live_message(
                conversation,
                kind,
                user.username.lower(),
                user.first_name or user.username,
                ParticipantType.AGENT,
            )
        segment = await self.repo.open_segment(conversation.id)
        await self.router.publish_messages(segment, [message])

    async def set_message_status(
        self, tenant: str, message_id: str, status: MessageStatus | str
    ) -> Message:
        """Delivery status of an outbound message (receipts of #6)."""
        message = await self.repo.set_message_status(tenant, message_id, MessageStatus(status))
        if message is None:
            raise InvalidMessage(f"no message {message_id!r}", field="refId")
        return message

    # ---- files ----------------------------------------------------------------------

    async def upload_file(
        self,
        tenant: str,
        conversation_id: str,
        *,
        name: str,
        mime: str,
        data: bytes,
        policy: FilePolicy | None = None,
        agent: str | None = None,
    ) -> tuple[FileInfo, Message]:
        """Store a file of the customer (or of ``agent``) and a File message pointing at it.
        Limits: :class:`InvalidFileType` (INVALID_FILE_TYPE), :class:`FileTooLarge`
        (LIMIT_FILE_SIZE), :class:`TooManyFiles` (LIMIT_FILE_COUNT, counted under the
        conversation's lock, so concurrent uploads cannot exceed it)."""
        policy = policy or FilePolicy()
        if not policy.allows(mime):
            raise InvalidFileType(f"files of type {mime!r} are not accepted", field="file")
        if len(data) > policy.max_size:
            raise FileTooLarge(f"the file is larger than {policy.max_size} bytes", field="file")
        if len(data) > _HASH_OFF_LOOP:
            digest = await asyncio.to_thread(lambda: hashlib.sha256(data).hexdigest())
        else:
            digest = hashlib.sha256(data).hexdigest()
        clean_name = (name or "file").replace("/", "_").replace("\\", "_").strip()[:255] or "file"
        user = self.router.agent(tenant, agent) if agent else None
        info_holder: list[FileInfo] = []

        def drafts(conversation: Conversation, segment: Segment | None) -> list[Draft]:
            uploader = user.username.lower() if user else conversation.customer_id
            info = FileInfo(
                id=str(uuid.uuid4()),
                conversation_id=conversation.id,
                name=clean_name,
                mime=mime.split(";", 1)[0].strip().lower(),
                size=len(data),
                sha256=digest,
                uploaded_by=uploader,
                created=from_epoch(self.clock()),
            )
            info_holder[:] = [info]
            return [
                Draft(
                    MessageType.FILE,
                    uploader,
                    ParticipantType.AGENT if user else ParticipantType.CUSTOMER,
                    from_nickname=(user.first_name or user.username)
                    if user
                    else conversation.customer_nickname,
                    text=clean_name,
                    segment_id=segment.id if segment else None,
                    file_id=info.id,
                )
            ]

        async def store_file(conversation: Conversation) -> None:
            # inside the message transaction, under the conversation's row lock
            if await self.repo.count_files(conversation.id) >= policy.max_count:
                raise TooManyFiles(f"at most {policy.max_count} files per session", field="file")
            await self.repo.insert_file(info_holder[0], tenant, data)

        result = await self._post(
            tenant,
            conversation_id,
            drafts,
            start_segment=False,
            check=self._agent_check(user.username.lower()) if user else None,
            before_append=store_file,
        )
        await self._after(*result, wake=user is not None)
        return info_holder[0], result[0].messages[0]

    async def get_file(
        self, tenant: str, conversation_id: str, file_id: str
    ) -> tuple[FileInfo, bytes]:
        await self.get_conversation(tenant, conversation_id)
        found = await self.repo.get_file(tenant, conversation_id, file_id)
        if found is None:
            raise FileNotFound(f"no file {file_id!r}", field="fileId")
        return found

    # ---- reading and streaming -------------------------------------------------------

    async def read_messages(
        self,
        tenant: str,
        conversation_id: str,
        from_index: int = 1,
        *,
        limit: int | None = None,
    ) -> list[Message]:
        """Stored messages with ``index >= from_index``, in order."""
        conversation = await self.get_conversation(tenant, conversation_id)
        return await self.repo.read_messages(conversation.id, max(1, from_index), limit=limit)

    async def _mark_streamed(self, conversation_id: str) -> float:
        """Mark the conversation as streamed for :data:`STREAM_MARK_SECONDS`; returns until
        when (epoch seconds)."""
        until = self.clock() + STREAM_MARK_SECONDS
        await self.repo.mark_streamed(conversation_id, from_epoch(until))
        return until

    async def subscribe(
        self, tenant: str, conversation_id: str, from_index: int = 1
    ) -> AsyncIterator[Message]:
        """Every message with ``index >= from_index`` (stored ones first, then live ones as
        they come), each exactly once and in index order; typing events (index None) are
        passed through as they arrive. Runs until the caller stops iterating."""
        conversation = await self.get_conversation(tenant, conversation_id)
        sub = await self.cache.subscribe(conversation_channel(conversation.id))
        try:
            # subscribed, then marked, then read: what was committed before the mark is in
            # the read, and every group commit after it publishes (see streamed_until)
            marked_until = await self._mark_streamed(conversation.id)
            next_index = max(1, from_index)
            for message in await self.repo.read_messages(conversation.id, next_index):
                yield message
                next_index = int(message.index or 0) + 1
            while True:
                if marked_until - self.clock() < STREAM_MARK_SECONDS / 2:
                    marked_until = await self._mark_streamed(conversation.id)
                raw = await sub.get(timeout=self.poll_interval)
                if raw is None:  # quiet: re-read the store (covers a publish that got lost)
                    for message in await self.repo.read_messages(conversation.id, next_index):
                        yield message
                        next_index = int(message.index or 0) + 1
                    continue
                try:
                    payload = json.loads(raw.data)
                    message = Message.from_dict(payload["message"])
                except (ValueError, KeyError, TypeError):
                    log.warning("ignoring a malformed live event on %s", raw.channel)
                    continue
                if message.index is None:
                    yield message
                    continue
                if message.index < next_index:
                    continue  # already replayed
                if message.index > next_index:  # a gap: the store has what is missing
                    missing = await self.repo.read_messages(
                        conversation.id, next_index, to_index=message.index - 1
                    )
                    for item in missing:
                        yield item
                        next_index = int(item.index or 0) + 1
                    if message.index != next_index:
                        for item in await self.repo.read_messages(conversation.id, next_index):
                            yield item
                            next_index = int(item.index or 0) + 1
                        continue
                yield message
                next_index = message.index + 1
        finally:
            await sub.close()
