"""mGage (Kaleyra) SMS.

Inbound (``POST /nexus/v3/sms/mgage/{ccid}``): form-encoded, HTTP Basic. The credentials are
the tenant's ``mGageSMS`` ``username`` / ``password`` (the account Kaleyra holds), or
``<ccid>:<api key>`` checked by the caller's ``check_api_key``.

* MO: ``device_address`` (the customer), ``inbound_address`` (our short/long code),
  ``message``, ``message_id``, ``carrier`` (other fields are kept in ``extra``);
* DR: a form with ``message_id`` and ``status`` (or ``message_status``) and no ``message``;
  ``ref_id`` is ``message_id``. States: DELIVRD/DELIVERED -> Delivered; UNDELIV/
  UNDELIVERABLE/FAILED/REJECTD/REJECTED/EXPIRED/DELETED/ERROR -> Failed; READ -> Read; others
  (ACCEPTD, ENROUTE, SENT, ...) are acknowledged and ignored.

Outbound (MT): ``POST {mGageSMS url}`` (the URL is the send endpoint, used as configured),
``application/x-www-form-urlencoded``: ``username, password, to, from, message,
message_id`` (our id, the client reference). A 2xx answer is sent; the provider message id
is the JSON answer's ``message_id`` / ``messageId`` / ``id``, else the answer's text, else
our id. A JSON answer with ``"status": "error"|"failed"`` is a permanent failure.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping

from engine.channels.base import (
    Address,
    AuthInvalid,
    Inbound,
    InboundContext,
    InboundInvalid,
    InboundMessage,
    MessageType,
    OutboundMessage,
    PermanentSendError,
    ProviderAdapter,
    Receipt,
    ReceiptStatus,
    SendContext,
    SendResult,
    basic_credentials,
    json_body,
    parse_timestamp,
    raise_for_response,
    require,
)
from engine.channels.portico import body_fields

RECEIPT_STATES: Mapping[str, ReceiptStatus | None] = {
    "delivrd": ReceiptStatus.DELIVERED,
    "delivered": ReceiptStatus.DELIVERED,
    "read": ReceiptStatus.READ,
    "undeliv": ReceiptStatus.FAILED,
    "undelivered": ReceiptStatus.FAILED,
    "undeliverable": ReceiptStatus.FAILED,
    "failed": ReceiptStatus.FAILED,
    "rejectd": ReceiptStatus.FAILED,
    "rejected": ReceiptStatus.FAILED,
    "expired": ReceiptStatus.FAILED,
    "deleted": ReceiptStatus.FAILED,
    "error": ReceiptStatus.FAILED,
}

_MO_FIELDS = {"device_address", "inbound_address", "message", "message_id", "carrier"}


def _equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))


class MGageAdapter(ProviderAdapter):
    name = "mGage"
    media = "sms"

    async def verify_inbound(
        self, raw_body: bytes, headers: Mapping[str, str], context: InboundContext
    ) -> str | None:
        user, password = basic_credentials(headers)
        tenant = context.tenant
        if tenant is None:
            raise AuthInvalid("the tenant of the call is unknown")
        service = tenant.service("mGageSMS")
        if service is not None:
            try:
                expected_user = service.secret["username"].resolve(context.env)
                expected_password = service.secret["password"].resolve(context.env)
            except Exception:  # noqa: BLE001 - unset secret: fall through to the API key
                expected_user = expected_password = None
            if expected_user is not None and expected_password is not None:
                user_ok = _equal(user, expected_user)
                password_ok = _equal(password, expected_password)
                if user_ok and password_ok:
                    return user
        if (
            user.lower() == tenant.ccid.lower()
            and context.check_api_key is not None
            and password
            and await context.check_api_key(tenant.ccid, password)
        ):
            return user
        raise AuthInvalid("invalid credentials")

    def map_receipt(self, provider_status: str) -> ReceiptStatus | None:
        return RECEIPT_STATES.get(provider_status.strip().lower())

    def parse_inbound(
        self, raw_body: bytes, headers: Mapping[str, str], content_type: str | None
    ) -> list[Inbound]:
        fields = body_fields(raw_body, content_type)
        state = fields.get("status") or fields.get("message_status")
        if state and "message" not in fields:
            message_id = require(fields, "message_id")
            status = self.map_receipt(state)
            if status is None:
                return []
            return [
                Receipt(
                    provider=self.name,
                    provider_message_id=f"{message_id}:{state.strip().upper()}",
                    ref_id=message_id,
                    status=status,
                    channel_id=fields.get("inbound_address") or None,
                    timestamp=parse_timestamp(fields.get("timestamp")),
                    provider_status=state,
                    error_code=fields.get("error_code") or fields.get("reason") or None,
                )
            ]
        text = fields.get("message")
        if text is None or text == "":
            raise InboundInvalid("message is required", "message")
        channel = require(fields, "inbound_address")
        return [
            InboundMessage(
                provider=self.name,
                provider_message_id=require(fields, "message_id"),
                channel_id=channel,
                sender=Address(id=require(fields, "device_address"), id_type="Phone"),
                to=channel,
                type=MessageType.TEXT,
                text=text,
                timestamp=parse_timestamp(fields.get("timestamp")),
                carrier=fields.get("carrier") or None,
                extra={k: v for k, v in fields.items() if k not in _MO_FIELDS},
            )
        ]

    async def send(self, outbound: OutboundMessage, ctx: SendContext) -> SendResult:
        tenant = ctx.tenant(outbound.tenant)
        service = ctx.service(tenant, "mGageSMS")
        if not service.url:
            raise PermanentSendError("mGageSMS has no url")
        lines = [outbound.text] if outbound.text else []
        lines.extend(m.url for m in outbound.media if m.url)
        form = {
            "username": ctx.secret(service.secret.get("username"), "mGageSMS username"),
            "password": ctx.secret(service.secret.get("password"), "mGageSMS password"),
            "to": outbound.to,
            "from": outbound.channel_id,
            "message": "\n".join(lines),
            "message_id": outbound.message_id,
        }
        headers = {"Accept": "application/json, text/plain"}
        if ctx.trace_id or outbound.trace_id:
            headers["X-B3-TraceId"] = str(ctx.trace_id or outbound.trace_id)
        response = await self.post(service.url, ctx, data=form, headers=headers)
        raise_for_response(response, self.name)
        answer = json_body(response)
        if isinstance(answer, dict):
            if str(answer.get("status", "")).lower() in ("error", "failed"):
                raise PermanentSendError(
                    f"mGage rejected the message: {answer.get('message') or answer}",
                    status_code=response.status_code,
                )
            for key in ("message_id", "messageId", "id"):
                if answer.get(key):
                    return SendResult(provider_message_id=str(answer[key]))
        elif answer is None and response.content:
            text = response.text.strip()
            if text and len(text) <= 255 and "\n" not in text:
                return SendResult(provider_message_id=text)
        return SendResult(provider_message_id=outbound.message_id)
