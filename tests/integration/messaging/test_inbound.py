"""Provider webhooks in: signatures, tenants, Basic auth, idempotency, routing, opt-outs."""

from __future__ import annotations

import base64
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.integration.messaging.conftest import Setup
from tests.integration.messaging.support import (
    ASYNC_CHANNEL,
    CXC_CHANNEL,
    MGAGE_CHANNEL,
    PORTICO_CHANNEL,
    T1001,
    async_body,
    post_async,
    sign,
    text_message,
    unique_phone,
)


def test_signed_inbound_opens_a_conversation_routed_to_the_endpoint_queue(setup: Setup) -> None:
    mid = f"m-{uuid.uuid4()}"
    resp = post_async(setup.engine, async_body(text_message(mid, unique_phone(), "Hello")))
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["status"] == {"code": 0}
    (message_id,) = body["data"]["ids"]
    found = setup.console.find(mid)
    assert found["messageId"] == message_id
    segment = setup.console.segment(found["interactionId"])
    assert segment["media"] == "sms"
    assert segment["queue"] == "sms-support"
    texts = [m["text"] for m in setup.console.messages(found["conversationId"])
             if m["type"] == "Text"]
    assert texts == ["Hello"]


def test_sha256_signature_and_no_ccid_are_accepted(setup: Setup) -> None:
    body = async_body(text_message(f"m-{uuid.uuid4()}", unique_phone(), "hi"))
    assert post_async(setup.engine, body, algo="sha256", ccid=None).status_code == 200


def test_bad_missing_and_foreign_signatures_are_401(setup: Setup) -> None:
    body = async_body(text_message(f"m-{uuid.uuid4()}", unique_phone(), "hi"))
    wrong = post_async(setup.engine, body, secret="not-the-secret")
    assert wrong.status_code == 401
    assert wrong.json()["status"]["code"] == 3
    missing = setup.engine.call("POST", f"/nexus/v3/channels/{ASYNC_CHANNEL}/messages",
                                content=body, headers={"Content-Type": "application/json"})
    assert missing.status_code == 401
    # the signature covers the raw bytes: the same JSON re-serialised does not verify
    headers = {"Content-Type": "application/json", "x-ccid": T1001,
               **sign(setup.engine.env["T1001_ASYNC_API_SECRET"], body)}
    tampered = setup.engine.call("POST", f"/nexus/v3/channels/{ASYNC_CHANNEL}/messages",
                                 content=body.replace(b'"hi"', b'"HI"'), headers=headers)
    assert tampered.status_code == 401
    # a malformed body is never parsed before the signature check
    garbage = setup.engine.call("POST", f"/nexus/v3/channels/{ASYNC_CHANNEL}/messages",
                                content=b"{not json", headers={"Content-Type": "application/json"})
    assert garbage.status_code == 401


def test_wrong_tenant_unknown_channel_and_malformed_body(setup: Setup) -> None:
    body = async_body(text_message(f"m-{uuid.uuid4()}", unique_phone(), "hi"))
    other = post_async(setup.engine, body, ccid=str(uuid.uuid4()))
    assert other.status_code == 403
    assert other.json()["status"]["field"] == "x-ccid"
    unknown = post_async(setup.engine, body, channel="19995550000")
    assert unknown.status_code == 404
    bad = post_async(setup.engine, b'{"messages": [{"id": "x", "type": "Text"}]}')
    assert bad.status_code == 400
    assert bad.json()["status"]["field"].startswith("messages[0].channel")
    elsewhere = async_body(text_message(f"m-{uuid.uuid4()}", unique_phone(), "hi",
                                        channel=PORTICO_CHANNEL))
    assert post_async(setup.engine, elsewhere).status_code == 400


def test_duplicates_sequential_and_concurrent_are_processed_once(setup: Setup) -> None:
    mid = f"dup-{uuid.uuid4()}"
    body = async_body(text_message(mid, unique_phone(), "only once"))
    first = post_async(setup.engine, body).json()["data"]["ids"]
    again = post_async(setup.engine, body).json()["data"]["ids"]
    assert first == again
    mid2 = f"dup-{uuid.uuid4()}"
    body2 = async_body(text_message(mid2, unique_phone(), "twenty at once"))
    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(lambda _: post_async(setup.engine, body2), range(20)))
    assert {a.status_code for a in answers} == {200}
    ids = {tuple(a.json()["data"]["ids"]) for a in answers}
    assert len(ids) == 1
    found = setup.console.find(mid2)
    texts = [m for m in setup.console.messages(found["conversationId"]) if m["type"] == "Text"]
    assert [m["text"] for m in texts] == ["twenty at once"]


def test_duplicates_into_an_open_conversation_are_stored_once(setup: Setup) -> None:
    # the group-commit path (PostgreSQL): the batch's function leaves out a stored or
    # repeated provider id; duplicates spread over both workers also race on the index
    phone = unique_phone()
    opened = post_async(setup.engine, async_body(text_message(f"o-{uuid.uuid4()}", phone, "hi")))
    assert opened.status_code == 200
    mid = f"dup-open-{uuid.uuid4()}"
    body = async_body(text_message(mid, phone, "once into the open conversation"))
    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(lambda _: post_async(setup.engine, body), range(20)))
    assert {a.status_code for a in answers} == {200}
    ids = {tuple(a.json()["data"]["ids"]) for a in answers}
    assert len(ids) == 1
    assert post_async(setup.engine, body).json()["data"]["ids"] == list(ids.pop())
    stored = setup.console.messages(setup.console.find(mid)["conversationId"])
    texts = [m["text"] for m in stored if m["type"] == "Text"]
    assert texts == ["hi", "once into the open conversation"]
    assert [m["index"] for m in stored] == list(range(1, len(stored) + 1))  # no gap


def test_concurrent_first_messages_of_one_sender_make_one_conversation(setup: Setup) -> None:
    phone = unique_phone()
    mids = [f"c-{uuid.uuid4()}" for _ in range(10)]
    with ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(
            lambda m: post_async(setup.engine, async_body(text_message(m, phone, m))), mids))
    assert {a.status_code for a in answers} == {200}
    conversations = {setup.console.find(m)["conversationId"] for m in mids}
    assert len(conversations) == 1


def _basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def test_portico_mo_with_basic_ccid_and_api_key(setup: Setup) -> None:
    key = setup.engine.env["T1001_CHAT_API_KEY"]
    mid = f"p-{uuid.uuid4()}"
    form = {"type": "MO", "message_id": mid, "shortcode": PORTICO_CHANNEL,
            "phone_number": unique_phone(), "carrier": "att", "message": "from portico"}
    good = setup.engine.call("POST", "/nexus/v3/sms/message", data=form,
                             headers=_basic(T1001, key))
    assert good.status_code == 200, good.text
    assert good.json()["data"]["ids"] == [setup.console.find(mid)["messageId"]]
    retry = setup.engine.call("POST", "/nexus/v3/sms/message", data=form,
                              headers=_basic(T1001, key))
    assert retry.json()["data"]["ids"] == good.json()["data"]["ids"]
    assert setup.engine.call("POST", "/nexus/v3/sms/message", data=form,
                             headers=_basic(T1001, "wrong")).status_code == 401
    assert setup.engine.call("POST", "/nexus/v3/sms/message", data=form).status_code == 401
    assert setup.engine.call("POST", "/nexus/v3/sms/message", data=form,
                             headers=_basic(str(uuid.uuid4()), key)).status_code == 401


def test_mgage_mo_with_the_tenant_account(setup: Setup) -> None:
    env = setup.engine.env
    mid = f"k-{uuid.uuid4()}"
    form = {"device_address": unique_phone(), "inbound_address": MGAGE_CHANNEL,
            "message": "from kaleyra", "message_id": mid, "carrier": "tmo"}
    path = f"/nexus/v3/sms/mgage/{T1001}"
    good = setup.engine.call("POST", path, data=form, headers=_basic(
        env["T1001_KALEYRA_USERNAME"], env["T1001_KALEYRA_PASSWORD"]))
    assert good.status_code == 200, good.text
    assert setup.console.find(mid)["interactionId"]
    assert setup.engine.call("POST", path, data=form,
                             headers=_basic("someone", "else")).status_code == 401


def test_cxc_only_channel_goes_to_campaigns_and_records_opt_out(setup: Setup) -> None:
    key = setup.engine.env["T1001_CHAT_API_KEY"]
    phone = unique_phone()
    mid = f"s-{uuid.uuid4()}"
    form = {"type": "MO", "message_id": mid, "shortcode": CXC_CHANNEL,
            "phone_number": phone, "message": "STOP"}
    resp = setup.engine.call("POST", "/nexus/v3/sms/message", data=form,
                             headers=_basic(T1001, key))
    assert resp.status_code == 200, resp.text
    again = setup.engine.call("POST", "/nexus/v3/sms/message", data=form,
                              headers=_basic(T1001, key))
    assert again.json()["data"]["ids"] == resp.json()["data"]["ids"]
    # not a chat: no conversation holds it
    lookup = setup.engine.call("GET", f"/nexus/v3/test-agent/{T1001}/by-provider-id/{mid}",
                               headers=setup.console.headers)
    assert lookup.status_code == 404
    cxc = {"x-api-key": setup.engine.env["T1001_CXC_API_KEY"], "x-ccid": T1001}
    sent = setup.engine.call("POST", "/nexus/v3/cxc/sms", headers=cxc, json={
        "data": {"from": CXC_CHANNEL, "to": phone, "text": "promo"}})
    assert sent.status_code == 207, sent.text
    assert sent.json()["status"]["code"] == 7
    assert sent.json()["data"]["status"] == "refused"
    assert sent.json()["data"]["reason"] == "OPTED_OUT"


def test_media_upload_is_signed_and_answers_a_genesys_url(setup: Setup) -> None:
    request = httpx.Request("POST", "http://x/", files={
        "file": ("pic.png", b"\x89PNG fake image", "image/png")})
    body = request.read()
    headers = {"Content-Type": request.headers["Content-Type"], "x-ccid": T1001}
    unsigned = setup.engine.call("POST", f"/nexus/v3/channels/{ASYNC_CHANNEL}/media",
                                 content=body, headers=headers)
    assert unsigned.status_code == 401
    headers.update(sign(setup.engine.env["T1001_ASYNC_API_SECRET"], body))
    resp = setup.engine.call("POST", f"/nexus/v3/channels/{ASYNC_CHANNEL}/media",
                             content=body, headers=headers)
    assert resp.status_code == 201, resp.text
    info = resp.json()
    assert info["url"] == f"genesys://nexus/{info['mediaId']}"
    assert (info["filename"], info["mimetype"], info["length"]) == (
        "pic.png", "image/png", len(b"\x89PNG fake image"))
