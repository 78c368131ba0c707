"""SparkPost email (the transmissions API).

Outbound: ``POST {url}/api/v1/transmissions`` (when the SparkPostEmail ``url`` already ends
with ``/api/v1``, just ``/transmissions`` is appended), header ``Authorization: <apikey>``
(the raw key, as SparkPost expects), ``Content-Type: application/json``::

    {"options": {"transactional": true},
     "metadata": {"nexus_message_id": <our id>},
     "recipients": [{"address": {"email": <to>, "name": <to_name>}}],
     "content": {"from": {"email": <from_address or noreply@<domain>>, "name": <from_name>},
                 "subject": ..., "text": ..., "html": ...}}

Answer ``{"results": {"id", "total_accepted_recipients", ...}}``: ``results.id`` is the
provider message id; zero accepted recipients is a permanent failure.

Inbound: SparkPost event webhooks (configured with Basic auth ``<ccid>:<api key>``): a JSON
list of ``{"msys": {"message_event"|"track_event": {"type", "event_id", "transmission_id",
"timestamp", "rcpt_to"}}}``. delivery -> Delivered; bounce, out_of_band, policy_rejection,
generation_failure, generation_rejection -> Failed; open, initial_open, click -> Read;
other events (injection, delay, ...) are ignored. ``ref_id`` is the ``transmission_id``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from engine.channels.base import (
    Inbound,
    InboundContext,
    InboundInvalid,
    OutboundMessage,
    PermanentSendError,
    ProviderAdapter,
    Receipt,
    ReceiptStatus,
    SendContext,
    SendResult,
    email_sender,
    json_body,
    parse_timestamp,
    raise_for_response,
)
from engine.channels.portico import verify_api_key_basic

EVENTS: Mapping[str, ReceiptStatus | None] = {
    "delivery": ReceiptStatus.DELIVERED,
    "bounce": ReceiptStatus.FAILED,
    "out_of_band": ReceiptStatus.FAILED,
    "policy_rejection": ReceiptStatus.FAILED,
    "generation_failure": ReceiptStatus.FAILED,
    "generation_rejection": ReceiptStatus.FAILED,
    "open": ReceiptStatus.READ,
    "initial_open": ReceiptStatus.READ,
    "click": ReceiptStatus.READ,
}


def transmissions_url(base: str) -> str:
    base = base.rstrip("/")
    if urlsplit(base).path.rstrip("/").endswith("/api/v1"):
        return base + "/transmissions"
    return base + "/api/v1/transmissions"


class SparkPostAdapter(ProviderAdapter):
    name = "SparkPost"
    media = "email"

    async def verify_inbound(
        self, raw_body: bytes, headers: Mapping[str, str], context: InboundContext
    ) -> str | None:
        return await verify_api_key_basic(headers, context)

    def map_receipt(self, provider_status: str) -> ReceiptStatus | None:
        return EVENTS.get(provider_status.strip().lower())

    def parse_inbound(
        self, raw_body: bytes, headers: Mapping[str, str], content_type: str | None
    ) -> list[Inbound]:
        try:
            batch = json.loads(raw_body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InboundInvalid("the body is not JSON") from exc
        if not isinstance(batch, list):
            raise InboundInvalid("the body must be a list of events")
        out: list[Inbound] = []
        for i, item in enumerate(batch):
            msys = item.get("msys") if isinstance(item, dict) else None
            if not isinstance(msys, dict):
                raise InboundInvalid("each event needs msys", f"[{i}].msys")
            for group in msys.values():
                if not isinstance(group, dict):
                    continue
                kind = str(group.get("type", ""))
                status = self.map_receipt(kind)
                if status is None:
                    continue
                event_id = group.get("event_id")
                transmission = group.get("transmission_id")
                if not event_id or not transmission:
                    raise InboundInvalid(
                        "event_id and transmission_id are required", f"[{i}].msys"
                    )
                out.append(
                    Receipt(
                        provider=self.name,
                        provider_message_id=str(event_id),
                        ref_id=str(transmission),
                        status=status,
                        timestamp=parse_timestamp(group.get("timestamp"), f"[{i}].timestamp"),
                        provider_status=kind,
                        error_code=str(group["bounce_class"]) if group.get("bounce_class")
                        else None,
                    )
                )
        return out

    def build_body(self, outbound: OutboundMessage) -> dict[str, Any]:
        sender: dict[str, Any] = {"email": email_sender(outbound)}
        if outbound.from_name:
            sender["name"] = outbound.from_name
        address: dict[str, Any] = {"email": outbound.to}
        if outbound.to_name:
            address["name"] = outbound.to_name
        content: dict[str, Any] = {"from": sender, "subject": outbound.subject or ""}
        if outbound.html is not None:
            content["html"] = outbound.html
        if outbound.text is not None or outbound.html is None:
            content["text"] = outbound.text or ""
        return {
            "options": {"transactional": True},
            "metadata": {"nexus_message_id": outbound.message_id},
            "recipients": [{"address": address}],
            "content": content,
        }

    async def send(self, outbound: OutboundMessage, ctx: SendContext) -> SendResult:
        tenant = ctx.tenant(outbound.tenant)
        service = ctx.service(tenant, "SparkPostEmail")
        if not service.url:
            raise PermanentSendError("SparkPostEmail has no url")
        headers = {
            "Authorization": ctx.secret(service.secret.get("apikey"), "SparkPostEmail apikey"),
            "Accept": "application/json",
        }
        if ctx.trace_id or outbound.trace_id:
            headers["X-B3-TraceId"] = str(ctx.trace_id or outbound.trace_id)
        response = await self.post(
            transmissions_url(service.url), ctx, json=self.build_body(outbound), headers=headers
        )
        raise_for_response(response, self.name)
        answer = json_body(response)
        results = answer.get("results") if isinstance(answer, dict) else None
        if not isinstance(results, dict):
            raise PermanentSendError("SparkPost answered without results")
        if results.get("total_accepted_recipients") == 0:
            raise PermanentSendError("SparkPost rejected every recipient")
        message_id = results.get("id")
        return SendResult(provider_message_id=str(message_id) if message_id else None)
