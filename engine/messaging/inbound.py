"""Provider webhooks in: verify (on the raw bytes, first), parse, then route each message once.

Idempotency: every inbound item has a provider message id, and nothing is acknowledged
before it is durable.

* A message into a chat channel on PostgreSQL (group commit) is checked by the database in
  the round trip that stores it: the batch's function leaves out a provider id already
  stored for the tenant (or earlier in the same batch), and that message takes the general
  path, which answers the stored message's id. No Redis key is involved.
* Everything else (SQLite, campaign replies on ``cxcOnly`` channels, receipts) has a Redis
  key ``inb:<ccid>:<provider message id>`` as the fast path: ``SET NX`` marks it in
  progress, and after the durable write it holds ``done:<our id>``, so a retry of a finished
  message is acknowledged from Redis alone. Whenever the key says anything else (in progress
  elsewhere, Redis down, key expired) the durable path runs, and it is idempotent by itself:
  the conversation engine stores a provider message id once per tenant (``post_inbound``
  answers the stored message), campaign replies have a unique ``(tenant,
  provider_message_id)``, and receipts only ever move a status forward.

So retries and concurrent duplicates are acknowledged with the same id and processed once.

Routing: the receiving ``channelId`` names its ``chat.*`` section. Chat channels go to the
conversation engine (``post_inbound``: one conversation per customer and channel, media sms,
the channel's endpoint and queue). ``cxcOnly`` channels go to campaigns (``inbound_replies``).
Opt-out keywords (STOP, ...) are recorded per tenant, channel and sender on both kinds of
channel; on chat channels the message is still delivered to the agent, who then sees that the
customer opted out (later campaign sends to that number are refused).
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from engine.channels.async_gateway import find_channel
from engine.channels.base import (
    AuthInvalid,
    Inbound,
    InboundContext,
    InboundInvalid,
    InboundMessage,
    ProviderAdapter,
    ProviderNotConfigured,
    Receipt,
    basic_credentials,
)
from engine.channels.optout import OptOutList
from engine.channels.registry import AdapterRegistry
from engine.config.model import Model, Tenant
from engine.messaging.outbound import OutboundService
from engine.store.errors import CacheError, Conflict
from engine.store.messaging_tables import inbound_media, inbound_replies

log = logging.getLogger("nexus.messaging.inbound")

IDEMPOTENCY_TTL = 24 * 3600.0
IN_PROGRESS_TTL = 60.0
MEDIA_SCHEME = "genesys://nexus/"


class TenantMismatch(Exception):
    """The call names a tenant the channel does not belong to (403)."""


class UnknownChannel(Exception):
    """No such channel is configured (404)."""


@dataclass(frozen=True, slots=True)
class MediaInfo:
    media_id: str
    filename: str
    mimetype: str
    length: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "mediaId": self.media_id,
            "url": f"{MEDIA_SCHEME}{self.media_id}",
            "filename": self.filename,
            "mimetype": self.mimetype,
            "length": self.length,
        }


class InboundService:
    def __init__(
        self,
        store: Any,
        cache: Any,
        model: Callable[[], Model],
        registry: AdapterRegistry,
        optouts: OptOutList,
        outbound: OutboundService,
        *,
        conversations: Callable[[], Any],
        check_api_key: Callable[[str, str], Awaitable[bool]],
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.store = store
        self.cache = cache
        self._model = model
        self.registry = registry
        self.optouts = optouts
        self.outbound = outbound
        self._conversations = conversations
        self.check_api_key = check_api_key
        self.env = env

    @property
    def model(self) -> Model:
        return self._model()

    # -- verification --------------------------------------------------------------------

    async def verify_async(self, channel_id: str, ccid: str | None, raw: bytes,
                           headers: Mapping[str, str]) -> Tenant:
        """The Async channel's tenant, once the signature over ``raw`` is verified."""
        model = self.model
        try:
            owner, _ = find_channel(model.tenants, channel_id)
        except ProviderNotConfigured as exc:
            raise UnknownChannel(str(exc)) from exc
        if ccid is not None and ccid != owner.ccid:
            raise TenantMismatch(f"channel {channel_id} does not belong to tenant {ccid}")
        adapter = self.registry.get("Async")
        await adapter.verify_inbound(
            raw, headers, InboundContext(model, owner, channel_id, self.check_api_key, self.env)
        )
        return owner

    async def verify_basic(self, adapter: ProviderAdapter, raw: bytes,
                           headers: Mapping[str, str], ccid: str | None = None) -> Tenant:
        """Portico / mGage: the tenant of the path (mGage) or of the Basic user (Portico),
        once its credentials are verified."""
        model = self.model
        if ccid is None:
            ccid, _ = basic_credentials(headers)
        tenant = model.tenant_by_ccid(ccid)
        if tenant is None or not tenant.enabled:
            raise AuthInvalid("unknown contact center")
        await adapter.verify_inbound(
            raw, headers, InboundContext(model, tenant, None, self.check_api_key, self.env)
        )
        return tenant

    # -- ingest ----------------------------------------------------------------------------

    async def ingest(self, tenant: Tenant, items: list[Inbound],
                     channel_id: str | None = None) -> list[str]:
        """Route verified, parsed items; returns one id per item (the same id for a repeat)."""
        for i, item in enumerate(items):
            if channel_id is not None and isinstance(item, InboundMessage) \
                    and item.channel_id != channel_id:
                raise InboundInvalid("channel.to.id is not the channel of the URL",
                                     f"messages[{i}].channel.to.id")
        ids = []
        for item in items:
            ids.append(await self._once(tenant, item))
        return ids

    def _key(self, tenant: Tenant, provider_message_id: str) -> str:
        digest = hashlib.sha1(provider_message_id.encode("utf-8")).hexdigest()
        return f"inb:{tenant.ccid}:{digest}"

    def _stored_once_by_database(self, item: Inbound) -> bool:
        """A message into a chat channel with group commit (PostgreSQL): the batch's own
        function leaves out a provider id stored before, so a Redis key would only repeat
        that check at the cost of a round trip."""
        if not isinstance(item, InboundMessage):
            return False
        channel = self.model.channel(item.channel_id)
        if channel is None or channel.cxc_only:
            return False
        service = self._conversations()
        return service is not None and service.batcher is not None

    async def _once(self, tenant: Tenant, item: Inbound) -> str:
        if self._stored_once_by_database(item):
            return await self._process(tenant, item)
        key = self._key(tenant, item.provider_message_id)
        try:
            seen = await self.cache.claim(key, "pending", IN_PROGRESS_TTL)
            if seen is not None and seen.startswith("done:"):
                return seen[5:]
        except CacheError:
            pass  # the durable path is idempotent on its own
        marked: list[bool] = []
        try:
            result = await self._process(tenant, item, key, marked)
        except BaseException:
            try:
                if await self.cache.get(key) == "pending":
                    await self.cache.delete(key)
            except CacheError:
                pass
            raise
        if marked:  # the conversation engine wrote it with its publish (after the commit)
            return result
        try:
            await self.cache.set(key, f"done:{result}", ttl=IDEMPOTENCY_TTL)
        except CacheError:
            pass
        return result

    async def _process(self, tenant: Tenant, item: Inbound, key: str | None = None,
                       marked: list[bool] | None = None) -> str:
        if isinstance(item, Receipt):
            await self.outbound.apply_receipt(tenant.ccid, item.ref_id, item.status,
                                              item.error_code or item.provider_status)
            return item.provider_message_id
        model = self.model
        channel = model.channel(item.channel_id)
        if channel is None or channel.channel_type != "sms" or channel.tenant not in (
            None, tenant.name
        ):
            raise UnknownChannel(f"no SMS channel {item.channel_id!r} for this tenant")
        text = await self._text(tenant, item)
        await self.optouts.handle_inbound(tenant.ccid, item.channel_id, item.sender.id,
                                          item.text, message_id=item.provider_message_id)
        if channel.cxc_only:
            return await self._campaign_reply(tenant, item, text)
        service = self._conversations()
        if service is None:
            raise RuntimeError("the conversation engine is not running in this process")
        message, created = await service.post_inbound(
            tenant.ccid, item.channel_id, item.sender.id, text,
            provider_message_id=item.provider_message_id, nickname=item.sender.nickname,
            first_name=item.sender.first_name, last_name=item.sender.last_name,
            mark=None if key is None else (key, IDEMPOTENCY_TTL),
        )
        if created and key is not None and marked is not None:
            marked.append(True)
        return str(message.id)

    async def _text(self, tenant: Tenant, item: InboundMessage) -> str:
        """The message text, with one line per attachment (inline bytes are stored and
        referenced as ``genesys://nexus/<id>``)."""
        lines = [item.text] if item.text else []
        for media in item.media:
            if media.url:
                lines.append(media.url)
            elif media.content:
                info = await self.save_media(tenant, item.channel_id, media.filename or "file",
                                             media.content_type or "application/octet-stream",
                                             media.content)
                lines.append(f"{MEDIA_SCHEME}{info.media_id}")
        text = "\n".join(lines).strip()
        if not text:
            raise InboundInvalid("the message has no text or content", "text")
        return text

    async def _campaign_reply(self, tenant: Tenant, item: InboundMessage, text: str) -> str:
        from engine.channels.optout import classify

        keyword = classify(item.text)
        t = inbound_replies
        new_id = str(uuid.uuid4())
        try:
            await self.store.execute(sa.insert(t).values(
                id=new_id, tenant=tenant.ccid, channel_id=item.channel_id,
                address=item.sender.id, provider=item.provider,
                provider_message_id=item.provider_message_id, text=text,
                keyword=keyword.keyword if keyword else None,
            ))
            return new_id
        except Conflict:
            existing = await self.store.fetch_val(
                sa.select(t.c.id).where(t.c.tenant == tenant.ccid,
                                        t.c.provider_message_id == item.provider_message_id)
            )
            return str(existing)

    async def save_media(self, tenant: Tenant, channel_id: str, filename: str, mime: str,
                         data: bytes) -> MediaInfo:
        media_id = str(uuid.uuid4())
        clean = (filename or "file").replace("/", "_").replace("\\", "_").strip()[:255] or "file"
        mimetype = (mime or "application/octet-stream").split(";", 1)[0].strip().lower()
        await self.store.execute(sa.insert(inbound_media).values(
            id=media_id, tenant=tenant.ccid, channel_id=channel_id, filename=clean,
            mime=mimetype, length=len(data), sha256=hashlib.sha256(data).hexdigest(),
            bytes=data,
        ))
        return MediaInfo(media_id, clean, mimetype, len(data))
