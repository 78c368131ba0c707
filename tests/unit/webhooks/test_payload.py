"""Webhook payloads and delivery views (no database)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import httpx
import pytest

from engine.webhooks.dispatcher import _refused
from engine.webhooks.outbox import InteractionEvent, WebhookDelivery


def test_payload_shape_per_api_md() -> None:
    event = InteractionEvent(event="FINISHED", interaction_id="i-1", media_type="email",
                             interaction_subtype=None, operation_id="op-1")
    assert event.payload("http://nexus/") == {
        "operationId": "op-1",
        "data": {"entities": [{"event": "FINISHED", "entity": {
            "id": "i-1", "mediaType": "email", "interactionSubtype": None,
            "selfUri": "http://nexus/nexus/v3/agent/interactions/i-1"}}]},
    }
    custom = InteractionEvent(event="STARTED", interaction_id="i", self_uri="http://x/i")
    assert custom.payload()["data"]["entities"][0]["entity"]["selfUri"] == "http://x/i"
    assert custom.payload()["operationId"] != custom.payload()["operationId"]


def test_delivery_view_hides_claim_internals() -> None:
    at = datetime(2024, 1, 1, tzinfo=UTC)
    row = {
        "id": "d", "tenant": "c", "target": "WebhookTransportTarget-a", "event": "STARTED",
        "interaction_id": "i", "payload": '{"operationId":"o"}', "status": "pending",
        "attempts": 1, "replays": 0, "next_attempt_at": at.replace(tzinfo=None),
        "last_status": 500, "last_error": "HTTP 500", "created": at, "updated": at,
        "delivered_at": None, "claimed_until": None, "claim_token": None,
        "source_event_id": None,
    }
    view = WebhookDelivery.from_row(row).to_dict()
    assert view["nextAttemptAt"] == "2024-01-01T00:00:00Z"
    assert view["payload"] == {"operationId": "o"}
    assert "claimToken" not in view and "claim_token" not in json.dumps(view)


@pytest.mark.parametrize(
    ("body", "refused"),
    [
        (b'{"status": "PAYLOAD_SIGNATURE_CHECK_FAILED"}', True),
        (b'{"status": "OK"}', False),
        (b"PAYLOAD_SIGNATURE_CHECK_FAILED", False),
        (b"", False),
    ],
)
def test_signature_refusal_detection(body: bytes, refused: bool) -> None:
    assert _refused(httpx.Response(200, content=body)) is refused
