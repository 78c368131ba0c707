"""Agent replies out through the provider: signed webhook with custom headers, retries,
receipts, and the undelivered strategy (retry, then park or terminate)."""

from __future__ import annotations

import hashlib
import hmac
import uuid

from tests.integration.channels.fakeprovider import Reply
from tests.integration.messaging.conftest import Setup
from tests.integration.messaging.support import (
    ASYNC_CHANNEL,
    async_body,
    post_async,
    text_message,
    unique_phone,
    wait_until,
)

GATEWAY = f"/async/{ASYNC_CHANNEL}"


def _conversation(setup: Setup, phone: str, text: str = "hello") -> dict[str, str]:
    mid = f"in-{uuid.uuid4()}"
    assert post_async(setup.engine, async_body(text_message(mid, phone, text))).status_code == 200
    found = setup.console.find(mid)
    setup.console.take(found["interactionId"])
    return found


def _to(setup: Setup, phone: str) -> list:
    return setup.fake.matching(GATEWAY, lambda r: r.json()["messages"][0]["channel"]["to"]["id"]
                               == phone)


def _status(setup: Setup, conversation_id: str, message_id: str) -> str | None:
    for message in setup.console.messages(conversation_id):
        if message["id"] == message_id:
            return message.get("status")
    return None


def test_agent_reply_reaches_the_gateway_signed_with_custom_headers(setup: Setup) -> None:
    phone = unique_phone()
    found = _conversation(setup, phone)
    sent = setup.console.reply(found["interactionId"], "Hi, how can I help?")
    (request,) = wait_until(lambda: _to(setup, phone), "the reply at the gateway")
    body = request.body
    secret = setup.engine.env["T1001_ASYNC_WEBHOOK_SECRET"].encode()
    assert request.headers["x-hub-signature"] == "sha1=" + hmac.new(
        secret, body, hashlib.sha1).hexdigest()
    assert request.headers["x-hub-signature-256"] == "sha256=" + hmac.new(
        secret, body, hashlib.sha256).hexdigest()
    assert request.headers["custom-header-for-async-1"] == "12345"
    assert request.headers["x-tenant"] == "t1001"
    assert len(request.headers["x-b3-traceid"]) >= 16
    message = request.json()["messages"][0]
    assert message["id"] == sent["id"]
    assert message["text"] == "Hi, how can I help?"
    assert message["channel"]["from"]["id"] == ASYNC_CHANNEL
    wait_until(lambda: _status(setup, found["conversationId"], sent["id"]) == "sent", "sent")
    # a signed receipt from the gateway: delivered, then read (never backwards)
    for status in ("Delivered", "Read", "Delivered"):
        receipt = {"id": f"r-{uuid.uuid4()}", "type": "Receipt", "status": status,
                   "refId": sent["id"], "channel": {"to": {"id": ASYNC_CHANNEL}}}
        assert post_async(setup.engine, async_body(receipt)).status_code == 200
    wait_until(lambda: _status(setup, found["conversationId"], sent["id"]) == "read", "read")


def test_5xx_then_success_is_retried_with_backoff(setup: Setup) -> None:
    phone = unique_phone()
    found = _conversation(setup, phone)
    setup.fake.script(GATEWAY, Reply(500), Reply(503, headers={"Retry-After": "0"}),
                      Reply(200, json={"messageId": "gw-1"}))
    sent = setup.console.reply(found["interactionId"], "third time lucky")
    wait_until(lambda: _status(setup, found["conversationId"], sent["id"]) == "sent", "sent")
    attempts = _to(setup, phone)
    assert len(attempts) == 3
    assert {r.json()["messages"][0]["id"] for r in attempts} == {sent["id"]}


def test_permanent_failure_runs_the_undelivered_strategy_until_it_gives_up(
    setup: Setup,
) -> None:
    phone = unique_phone()
    found = _conversation(setup, phone)
    iid = found["interactionId"]
    # 400 = permanent: the first send and both strategy retries (maxAttempts 2) fail
    setup.fake.script(GATEWAY, Reply(400), Reply(400), Reply(400))
    sent = setup.console.reply(iid, "this will not arrive")
    wait_until(lambda: len(_to(setup, phone)) >= 1, "the first attempt")
    wait_until(lambda: _status(setup, found["conversationId"], sent["id"]) == "failed",
               "the message failed")
    if setup.on_give_up == "park":
        # parked: back in sms-support (and offered again to the ready agent)
        final = wait_until(lambda: (lambda s: s if s["queue"] == "sms-support" and s["state"]
                                    in ("queued", "offered") else None)(
            setup.console.segment(iid)), "parked")
        assert final["agent"] is None
    else:
        final = wait_until(lambda: (lambda s: s if s["state"] == "abandoned" else None)(
            setup.console.segment(iid)), "terminated")
        texts = [m["text"] for m in setup.console.messages(found["conversationId"])
                 if m["type"] == "SegmentEnded"]
        assert texts == ["undelivered"]
    # one first send and exactly two strategy retries (undelivered.maxAttempts = 2)
    assert len(_to(setup, phone)) == 3


def test_a_strategy_retry_that_succeeds_delivers_and_holds_the_interaction(
    setup: Setup,
) -> None:
    phone = unique_phone()
    found = _conversation(setup, phone)
    iid = found["interactionId"]
    setup.fake.script(GATEWAY, Reply(404), Reply(200, json={"messageId": "late"}))
    sent = setup.console.reply(iid, "second chance")
    wait_until(lambda: len(_to(setup, phone)) == 2, "the strategy's retry")
    wait_until(lambda: _status(setup, found["conversationId"], sent["id"]) == "sent", "sent")
    segment = wait_until(lambda: (lambda s: s if s["queue"] == "asynchold" else None)(
        setup.console.segment(iid)), "back in asynchold")
    assert segment["state"] == "held"
    # the customer answers: the held interaction wakes and is routed again
    post_async(setup.engine, async_body(text_message(f"in-{uuid.uuid4()}", phone, "thanks")))
    wait_until(lambda: setup.console.segment(iid)["state"] in ("queued", "offered", "assigned"),
               "woken")


def test_retry_contract_endpoint_authentication(setup: Setup) -> None:
    path = "/nexus/v3/routing/undelivered/retry"
    assert setup.engine.call("POST", path, json={"interactionid": "x"}).status_code == 401
    chat = {"x-api-key": setup.engine.env["T1001_CHAT_API_KEY"]}
    assert setup.engine.call("POST", path, headers=chat,
                             json={"interactionid": "x"}).status_code == 403
    unknown = setup.engine.call("POST", path, headers=setup.console.headers,
                                params={"interactionid": str(uuid.uuid4()), "attempt": "1",
                                        "maxAttempts": "3"})
    assert unknown.status_code == 404
    missing = setup.engine.call("POST", path, headers=setup.console.headers, json={})
    assert missing.status_code == 400
