"""Portico: Genesys Cloud CX SMS aggregation.

Inbound (the aggregator's ``moUrl`` / ``drUrl``): form-encoded bodies, HTTP Basic
``<ccid>:<api key>`` (the guide's ``webhookUsername`` / ``webhookPassword``; the key itself is
checked by the caller's ``check_api_key``):

* MO ``type=MO&message_id&shortcode&phone_number&carrier&message`` with
  ``mms_attachment[n].content_type`` / ``mms_attachment[n].content`` (a URL, or base64 bytes);
* DR ``type=receipt&message_id&message_state&result_code&app_id&conversation_id``; the
  receipt's ``ref_id`` is ``message_id`` (the MT's id), its idempotency key
  ``<message_id>:<message_state>``.

Outbound (MT): ``POST {PorticoSMS url}/api/v2/conversations/messages/agentless`` (the
Genesys Cloud agentless-message API) with ``Authorization: Bearer <PurecloudIDP token>`` and
``{"fromAddress": <channelId>, "toAddress": <number>, "toAddressMessengerType": "sms",
"textBody": <text, then one line per media URL>}``; the answer's ``id`` is the provider
message id. A 401 invalidates the token and the send is retried once with a new one.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from typing import Any

import httpx

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
    PermanentSendError,
    ProviderAdapter,
    Receipt,
    ReceiptStatus,
    SendContext,
    SendResult,
    basic_credentials,
    form_fields,
    json_body,
    media_type_of,
    parse_timestamp,
    raise_for_response,
    require,
)
from engine.channels.purecloud import PurecloudTokens

AGENTLESS_MESSAGE_PATH = "/api/v2/conversations/messages/agentless"

RECEIPT_STATES: Mapping[str, ReceiptStatus | None] = {
    "delivered": ReceiptStatus.DELIVERED,
    "read": ReceiptStatus.READ,
    "failed": ReceiptStatus.FAILED,
    "undeliverable": ReceiptStatus.FAILED,
    "undelivered": ReceiptStatus.FAILED,
    "rejected": ReceiptStatus.FAILED,
    "expired": ReceiptStatus.FAILED,
    "error": ReceiptStatus.FAILED,
    "deleted": ReceiptStatus.FAILED,
    "sent": None,
    "queued": None,
    "accepted": None,
    "enroute": None,
    "submitted": None,
    "pending": None,
}

_ATTACHMENT = re.compile(r"^mms_attachment\[(\d+)\]\.(content_type|content)$")


async def verify_api_key_basic(
    headers: Mapping[str, str], context: InboundContext
) -> str:
    """HTTP Basic ``<ccid>:<api key>``: the user must be the tenant's ccid (when the call
    names a tenant) and the caller's ``check_api_key`` must accept the key. Returns the ccid."""
    ccid, key = basic_credentials(headers)
    if context.tenant is not None and ccid.lower() != context.tenant.ccid.lower():
        raise AuthInvalid("the Basic user is not this tenant's ccid")
    if context.check_api_key is None:
        raise AuthInvalid("no API key check is available for this call")
    if not key or not await context.check_api_key(ccid, key):
        raise AuthInvalid("invalid API key")
    return ccid


def body_fields(raw_body: bytes, content_type: str | None) -> dict[str, str]:
    """Form fields of a body; a JSON object is accepted too (values as text)."""
    if media_type_of(content_type) == "application/json":
        try:
            data = json.loads(raw_body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InboundInvalid("the body is not JSON") from exc
        if not isinstance(data, dict):
            raise InboundInvalid("the body must be an object")
        return {str(k): "" if v is None else str(v) for k, v in data.items()}
    return form_fields(raw_body)


def _attachments(fields: Mapping[str, str]) -> tuple[Media, ...]:
    found: dict[int, dict[str, str]] = {}
    for key, value in fields.items():
        match = _ATTACHMENT.match(key)
        if match:
            found.setdefault(int(match.group(1)), {})[match.group(2)] = value
    out: list[Media] = []
    for index in sorted(found):
        item = found[index]
        content = item.get("content", "")
        kind = item.get("content_type") or None
        if content.startswith(("http://", "https://")):
            out.append(Media(content_type=kind, url=content))
            continue
        try:
            data = base64.b64decode(content, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InboundInvalid(
                "attachment content must be a URL or base64",
                f"mms_attachment[{index}].content",
            ) from exc
        if data:
            out.append(Media(content_type=kind, content=data))
    return tuple(out)


class GenesysCloudInbound:
    """Verification, parsing and receipt mapping shared by Portico SMS and PorticoEmail."""

    name = "Portico"

    async def verify_inbound(
        self, raw_body: bytes, headers: Mapping[str, str], context: InboundContext
    ) -> str | None:
        return await verify_api_key_basic(headers, context)

    def map_receipt(self, provider_status: str) -> ReceiptStatus | None:
        return RECEIPT_STATES.get(provider_status.strip().lower())

    def parse_inbound(
        self, raw_body: bytes, headers: Mapping[str, str], content_type: str | None
    ) -> list[Inbound]:
        fields = body_fields(raw_body, content_type)
        kind = require(fields, "type").strip().lower()
        if kind == "receipt":
            message_id = require(fields, "message_id")
            state = require(fields, "message_state")
            status = self.map_receipt(state)
            if status is None:
                return []  # an intermediate state: acknowledged, nothing to record
            return [
                Receipt(
                    provider=self.name,
                    provider_message_id=f"{message_id}:{state.strip().upper()}",
                    ref_id=message_id,
                    status=status,
                    timestamp=parse_timestamp(fields.get("timestamp")),
                    provider_status=state,
                    error_code=fields.get("result_code") or None,
                )
            ]
        if kind != "mo":
            raise InboundInvalid("type must be MO or receipt", "type")
        media = _attachments(fields)
        text = fields.get("message", "")
        if not text and not media:
            raise InboundInvalid("message is required", "message")
        shortcode = require(fields, "shortcode")
        return [
            InboundMessage(
                provider=self.name,
                provider_message_id=require(fields, "message_id"),
                channel_id=shortcode,
                sender=Address(id=require(fields, "phone_number"), id_type="Phone"),
                to=shortcode,
                type=MessageType.RICH_MEDIA if media else MessageType.TEXT,
                text=text or None,
                media=media,
                timestamp=parse_timestamp(fields.get("timestamp")),
                carrier=fields.get("carrier") or None,
            )
        ]


class GenesysCloudSender(ProviderAdapter):
    """Sends through a Genesys Cloud API with the tenant's PurecloudIDP token."""

    service_name = ""  # the tenant service holding the API URL

    def __init__(
        self, client: httpx.AsyncClient | None = None, *, tokens: PurecloudTokens | None = None
    ) -> None:
        super().__init__(client)
        self.tokens = tokens or PurecloudTokens(self.client)

    async def send_json(
        self, outbound: OutboundMessage, ctx: SendContext, path: str, body: dict[str, Any]
    ) -> httpx.Response:
        tenant = ctx.tenant(outbound.tenant)
        api = ctx.service(tenant, self.service_name)
        idp = ctx.service(tenant, "PurecloudIDP")
        if not api.url or not idp.url:
            raise PermanentSendError(f"{self.service_name} or PurecloudIDP has no url")
        tokens = self.tokens.provider(
            idp.url,
            ctx.secret(idp.secret.get("clientId"), "PurecloudIDP clientId"),
            ctx.secret(idp.secret.get("clientSecret"), "PurecloudIDP clientSecret"),
            timeout=ctx.request_timeout,
        )
        url = api.url.rstrip("/") + path
        for attempt in (1, 2):
            token = await tokens.token()
            headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
            if ctx.trace_id or outbound.trace_id:
                headers["X-B3-TraceId"] = str(ctx.trace_id or outbound.trace_id)
            response = await self.post(url, ctx, json=body, headers=headers)
            if response.status_code == 401 and attempt == 1:
                tokens.invalidate(token)
                continue
            raise_for_response(response, self.name)
            return response
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises


class PorticoSmsAdapter(GenesysCloudInbound, GenesysCloudSender):
    name = "Portico"
    media = "sms"
    service_name = "PorticoSMS"

    async def send(self, outbound: OutboundMessage, ctx: SendContext) -> SendResult:
        lines = [outbound.text] if outbound.text else []
        lines.extend(m.url for m in outbound.media if m.url)
        body = {
            "fromAddress": outbound.channel_id,
            "toAddress": outbound.to,
            "toAddressMessengerType": "sms",
            "textBody": "\n".join(lines),
        }
        response = await self.send_json(outbound, ctx, AGENTLESS_MESSAGE_PATH, body)
        answer = json_body(response)
        message_id = answer.get("id") if isinstance(answer, dict) else None
        return SendResult(provider_message_id=str(message_id) if message_id else None)
