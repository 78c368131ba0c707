"""Async: the Third-Party Messaging API (a custom SMS / email gateway).

Inbound (``POST /nexus/v3/channels/{channelId}/messages``): the gateway signs the raw body
with the channel's **api secret**: ``X-Hub-Signature: sha1=<hex>`` and/or
``X-Hub-Signature-256: sha256=<hex>``; the body is::

    {"messages": [{"id", "channel": {"from": {"id", "idType", "firstName", "lastName",
      "nickname"}, "to": {"id"}}, "type": "Text|RichMedia|Receipt", "text", "content": [...],
      "status": "Delivered|Failed|Read", "refId", "timestamp"}]}

``content`` items are ``{"contentType": "Attachment", "attachment": {"mediaType", "url",
"mime", "filename"}}``.

Outbound: ``POST`` to the channel's ``webhook.url`` with the **webhook secret**'s
``X-Hub-Signature`` (and ``X-Hub-Signature-256``), ``X-B3-TraceId``, ``Content-Type:
application/json`` and every ``header:<name>`` option of the NexusServices ``Async`` section::

    {"messages": [{"id", "channel": {"from": {"id": <channelId>}, "to": {"id": <consumer>}},
      "type": "Text|RichMedia", "text", "content": [...], "timestamp"}]}

Email through the gateway (a ``cxc.*`` channel whose id is the email domain) adds
``"subject"``, ``"html"`` (when given) and ``channel.from.address`` / ``channel.from.name``.
A 2xx answer is "sent"; its ``messageId`` is the provider message id.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from engine.channels.base import (
    Address,
    AuthInvalid,
    Inbound,
    InboundContext,
    InboundInvalid,
    InboundMessage,
    Media,
    MessageType,
    OutboundMessage,
    ProviderAdapter,
    ProviderNotConfigured,
    Receipt,
    ReceiptStatus,
    SendContext,
    SendResult,
    SignatureInvalid,
    email_sender,
    json_body,
    parse_timestamp,
    raise_for_response,
)
from engine.channels.signing import signature_headers, verify_hub_signature
from engine.config.model import AsyncChannel, Tenant

_RECEIPT_STATUSES = {s.value.lower(): s for s in ReceiptStatus}
_MESSAGE_TYPES = {str(t.value): t for t in (MessageType.TEXT, MessageType.RICH_MEDIA)}


def _str(value: Any, where: str, name: str, *, required: bool = False) -> str | None:
    """``value`` as text (a number is taken as its text). The field's name in an error is
    ``<where>.<name>``, built only for the error: this runs for every field of every
    inbound message."""
    if value.__class__ is str and value:
        return value  # the usual case, first
    if value is None or value == "":
        if required:
            raise InboundInvalid(f"{where}.{name} is required", f"{where}.{name}")
        return None
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        raise InboundInvalid(f"{where}.{name} must be a string", f"{where}.{name}")
    return str(value)


def _media(content: Any, index: int) -> tuple[Media, ...]:
    if content is None:
        return ()
    if not isinstance(content, list):
        raise InboundInvalid("content must be a list", f"messages[{index}].content")
    out: list[Media] = []
    for item in content:
        if not isinstance(item, dict):
            raise InboundInvalid("content items must be objects", f"messages[{index}].content")
        attachment = item.get("attachment", item)
        if not isinstance(attachment, dict):
            continue
        url = attachment.get("url")
        if not isinstance(url, str) or not url:
            continue
        out.append(
            Media(
                content_type=attachment.get("mime") or attachment.get("mimeType"),
                url=url,
                filename=attachment.get("filename"),
            )
        )
    return tuple(out)


def _content(media: tuple[Media, ...]) -> list[dict[str, Any]]:
    out = []
    for item in media:
        kind = (item.content_type or "").split("/", 1)[0].capitalize() or "File"
        attachment: dict[str, Any] = {"mediaType": "Image" if kind == "Image" else "File"}
        if item.url:
            attachment["url"] = item.url
        if item.content_type:
            attachment["mime"] = item.content_type
        if item.filename:
            attachment["filename"] = item.filename
        out.append({"contentType": "Attachment", "attachment": attachment})
    return out


def find_channel(model_tenants: tuple[Tenant, ...], channel_id: str) -> tuple[Tenant, AsyncChannel]:
    for tenant in model_tenants:
        channel = tenant.async_channel(channel_id)
        if channel is not None:
            return tenant, channel
    raise ProviderNotConfigured(f"no Async channel {channel_id!r} is configured")


class AsyncGatewayAdapter(ProviderAdapter):
    name = "Async"
    media = "sms"  # and email: a cxc channel whose id is a domain

    # -- inbound -------------------------------------------------------------------------

    async def verify_inbound(
        self, raw_body: bytes, headers: Mapping[str, str], context: InboundContext
    ) -> str | None:
        if not context.channel_id:
            raise SignatureInvalid("the channel of the call is unknown")
        if context.tenant is not None:
            channel = context.tenant.async_channel(context.channel_id)
            if channel is None:
                raise AuthInvalid(
                    f"channel {context.channel_id!r} is not an Async channel of this tenant"
                )
        else:
            try:
                _, channel = find_channel(context.model.tenants, context.channel_id)
            except ProviderNotConfigured as exc:
                raise SignatureInvalid(str(exc)) from exc
        if channel.api_secret is None:
            raise SignatureInvalid("the channel has no api secret")
        try:
            secret = channel.api_secret.resolve(context.env)
        except Exception as exc:  # an unset ${env:} reference: nothing can verify
            raise SignatureInvalid("the channel's api secret is not available") from exc
        verify_hub_signature(raw_body, headers, secret)
        return None

    def parse_inbound(
        self, raw_body: bytes, headers: Mapping[str, str], content_type: str | None
    ) -> list[Inbound]:
        try:
            body = json.loads(raw_body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InboundInvalid("the body is not JSON") from exc
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            raise InboundInvalid("messages must be a list", "messages")
        out: list[Inbound] = []
        for i, item in enumerate(body["messages"]):
            where = f"messages[{i}]"
            if not isinstance(item, dict):
                raise InboundInvalid("each message must be an object", where)
            message_id = _str(item.get("id"), where, "id", required=True)
            assert message_id is not None
            channel = item.get("channel")
            if not isinstance(channel, dict):
                raise InboundInvalid("channel is required", f"{where}.channel")
            sender = channel.get("from") if isinstance(channel.get("from"), dict) else {}
            to = channel.get("to") if isinstance(channel.get("to"), dict) else {}
            to_id = _str(to.get("id"), where, "channel.to.id", required=True)
            assert to_id is not None
            kind = item.get("type")
            timestamp = parse_timestamp(item.get("timestamp"), f"{where}.timestamp")
            if kind == MessageType.RECEIPT:
                raw_status = _str(item.get("status"), where, "status", required=True)
                assert raw_status is not None
                status = self.map_receipt(raw_status)
                if status is None:
                    raise InboundInvalid(
                        "status must be Delivered, Failed or Read", f"{where}.status"
                    )
                ref_id = _str(item.get("refId"), where, "refId", required=True)
                assert ref_id is not None
                out.append(
                    Receipt(
                        provider=self.name,
                        provider_message_id=message_id,
                        ref_id=ref_id,
                        status=status,
                        channel_id=to_id,
                        timestamp=timestamp,
                        provider_status=raw_status,
                    )
                )
                continue
            if kind not in (MessageType.TEXT, MessageType.RICH_MEDIA):
                raise InboundInvalid("type must be Text, RichMedia or Receipt", f"{where}.type")
            from_id = _str(sender.get("id"), where, "channel.from.id", required=True)
            assert from_id is not None
            text = _str(item.get("text"), where, "text")
            media = _media(item.get("content"), i)
            if kind == MessageType.TEXT and text is None:
                raise InboundInvalid("a Text message needs text", f"{where}.text")
            if kind == MessageType.RICH_MEDIA and not media and text is None:
                raise InboundInvalid("a RichMedia message needs content", f"{where}.content")
            out.append(
                InboundMessage(
                    provider=self.name,
                    provider_message_id=message_id,
                    channel_id=to_id,
                    sender=Address(
                        id=from_id,
                        id_type=_str(sender.get("idType"), where, "channel.from.idType"),
                        first_name=_str(sender.get("firstName"), where, "channel.from.firstName"),
                        last_name=_str(sender.get("lastName"), where, "channel.from.lastName"),
                        nickname=_str(sender.get("nickname"), where, "channel.from.nickname"),
                    ),
                    to=to_id,
                    type=_MESSAGE_TYPES[kind],
                    text=text,
                    media=media,
                    timestamp=timestamp,
                )
            )
        return out

    def map_receipt(self, provider_status: str) -> ReceiptStatus | None:
        return _RECEIPT_STATUSES.get(provider_status.strip().lower())

    # -- outbound ------------------------------------------------------------------------

    def build_body(self, outbound: OutboundMessage, *, email: bool) -> dict[str, Any]:
        timestamp = (outbound.timestamp or datetime.now(UTC)).astimezone(UTC)
        sender: dict[str, Any] = {"id": outbound.channel_id}
        to: dict[str, Any] = {"id": outbound.to}
        message: dict[str, Any] = {
            "id": outbound.message_id,
            "channel": {"from": sender, "to": to},
            "type": str(MessageType.RICH_MEDIA if outbound.media else outbound.type),
            "text": outbound.text or "",
            "content": _content(outbound.media),
            "timestamp": timestamp.isoformat().replace("+00:00", "Z"),
        }
        if email:
            sender["address"] = email_sender(outbound)
            if outbound.from_name:
                sender["name"] = outbound.from_name
            if outbound.to_name:
                to["name"] = outbound.to_name
            message["subject"] = outbound.subject or ""
            if outbound.html is not None:
                message["html"] = outbound.html
        return {"messages": [message]}

    async def send(self, outbound: OutboundMessage, ctx: SendContext) -> SendResult:
        tenant = ctx.tenant(outbound.tenant)
        channel = tenant.async_channel(outbound.channel_id)
        if channel is None:
            raise ProviderNotConfigured(
                f"tenant {tenant.name} has no Async channel {outbound.channel_id!r}"
            )
        secret = ctx.secret(
            channel.webhook_secret, f"Async channel {channel.channel_id} webhook secret"
        )
        model_channel = ctx.model.channel(outbound.channel_id)
        is_email = (
            model_channel.channel_type == "email"
            if model_channel is not None
            else "@" in outbound.to
        )
        body = json.dumps(
            self.build_body(outbound, email=is_email), separators=(",", ":"), ensure_ascii=False
        ).encode("utf-8")
        headers = dict(ctx.model.headers(self.name, tenant.name))
        # ours last: a custom header can never replace the signature or the trace id
        for reserved in ("content-type", "x-hub-signature", "x-hub-signature-256", "x-b3-traceid"):
            for key in [k for k in headers if k.lower() == reserved]:
                del headers[key]
        headers.update(signature_headers(secret, body))
        headers["X-B3-TraceId"] = ctx.trace_id or outbound.trace_id or uuid.uuid4().hex
        headers["Content-Type"] = "application/json"
        response = await self.post(channel.webhook_url, ctx, content=body, headers=headers)
        raise_for_response(response, self.name)
        answer = json_body(response)
        message_id = answer.get("messageId") if isinstance(answer, dict) else None
        return SendResult(provider_message_id=str(message_id) if message_id else None)
