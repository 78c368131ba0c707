"""PorticoEmail: campaign email through Genesys Cloud CX aggregation.

Outbound: ``POST {PorticoEmail url}/api/v2/conversations/emails/agentless`` with
``Authorization: Bearer <PurecloudIDP token>`` (same token cache, same 401 retry as Portico
SMS) and::

    {"senderType": "Outbound",
     "fromAddress": {"email": <from_address or noreply@<domain>>, "name": <from_name>},
     "toAddresses": [{"email": <to>, "name": <to_name>}],
     "subject": ..., "textBody": ..., "htmlBody": ...}

The answer's ``id`` is the provider message id. Delivery receipts arrive as Portico DR forms
(``type=receipt``, Basic ``<ccid>:<api key>``), parsed exactly like Portico SMS receipts.
"""

from __future__ import annotations

from typing import Any

from engine.channels.base import (
    OutboundMessage,
    SendContext,
    SendResult,
    email_sender,
    json_body,
)
from engine.channels.portico import GenesysCloudInbound, GenesysCloudSender

AGENTLESS_EMAIL_PATH = "/api/v2/conversations/emails/agentless"


class PorticoEmailAdapter(GenesysCloudInbound, GenesysCloudSender):
    name = "PorticoEmail"
    media = "email"
    service_name = "PorticoEmail"

    def build_body(self, outbound: OutboundMessage) -> dict[str, Any]:
        sender: dict[str, Any] = {"email": email_sender(outbound)}
        if outbound.from_name:
            sender["name"] = outbound.from_name
        recipient: dict[str, Any] = {"email": outbound.to}
        if outbound.to_name:
            recipient["name"] = outbound.to_name
        body: dict[str, Any] = {
            "senderType": "Outbound",
            "fromAddress": sender,
            "toAddresses": [recipient],
            "subject": outbound.subject or "",
            "textBody": outbound.text or "",
        }
        if outbound.html is not None:
            body["htmlBody"] = outbound.html
        return body

    async def send(self, outbound: OutboundMessage, ctx: SendContext) -> SendResult:
        response = await self.send_json(
            outbound, ctx, AGENTLESS_EMAIL_PATH, self.build_body(outbound)
        )
        answer = json_body(response)
        message_id = answer.get("id") if isinstance(answer, dict) else None
        return SendResult(provider_message_id=str(message_id) if message_id else None)
