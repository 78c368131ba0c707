"""Inbound verification and parsing of every provider (no network)."""

from __future__ import annotations

import base64
import json
from urllib.parse import urlencode

import pytest

from engine.channels.async_gateway import AsyncGatewayAdapter
from engine.channels.base import (
    AuthInvalid,
    InboundContext,
    InboundInvalid,
    InboundMessage,
    MessageType,
    Receipt,
    ReceiptStatus,
    SignatureInvalid,
    basic_auth_header,
)
from engine.channels.mgage import MGageAdapter
from engine.channels.portico import PorticoSmsAdapter
from engine.channels.portico_email import PorticoEmailAdapter
from engine.channels.signing import sign_sha1, sign_sha256, verify_hub_signature
from engine.channels.sparkpost import SparkPostAdapter

from .support import API_SECRET, ASYNC_CHANNEL, CCID, CCID2, ENV, make_model

MODEL = make_model()
TENANT = MODEL.tenant("t1001")
GOOD_KEY = "cluster-key"


async def check_key(ccid: str, key: str) -> bool:
    return ccid.lower() == CCID and key == GOOD_KEY


def async_body(**overrides) -> bytes:
    message = {
        "id": "m-1",
        "channel": {
            "from": {"id": "+15551234", "idType": "Phone", "firstName": "Ada",
                     "lastName": "L", "nickname": "ada"},
            "to": {"id": ASYNC_CHANNEL},
        },
        "type": "Text",
        "text": "hello",
        "timestamp": "2024-05-01T10:00:00.000Z",
    }
    message.update(overrides)
    return json.dumps({"messages": [message]}).encode()


# ---- signatures ------------------------------------------------------------------------


def test_signature_helpers_match_hmac_definition() -> None:
    import hashlib
    import hmac

    body = b'{"a":1}'
    assert sign_sha1("k", body) == "sha1=" + hmac.new(b"k", body, hashlib.sha1).hexdigest()
    assert sign_sha256("k", body) == "sha256=" + hmac.new(b"k", body, hashlib.sha256).hexdigest()


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Hub-Signature": sign_sha1(API_SECRET, b"body")},
        {"x-hub-signature-256": sign_sha256(API_SECRET, b"body")},
        {"X-Hub-Signature": sign_sha1(API_SECRET, b"body"),
         "X-Hub-Signature-256": sign_sha256(API_SECRET, b"body")},
        {"X-Hub-Signature": sign_sha1(API_SECRET, b"body").upper().replace("SHA1=", "sha1=")},
    ],
)
def test_good_signatures(headers) -> None:
    verify_hub_signature(b"body", headers, API_SECRET)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"X-Hub-Signature": ""},
        {"X-Hub-Signature": "sha1="},
        {"X-Hub-Signature": "garbage"},
        {"X-Hub-Signature": "sha256=" + sign_sha1(API_SECRET, b"body")[5:]},
        {"X-Hub-Signature": sign_sha1("wrong", b"body")},
        {"X-Hub-Signature": sign_sha1(API_SECRET, b"body ")},  # signature of another body
        {"X-Hub-Signature-256": sign_sha256(API_SECRET, b"bodY")},
        {"X-Hub-Signature-256": "sha256=zz" + "0" * 62},
        # a good sha1 does not excuse a bad sha256
        {"X-Hub-Signature": sign_sha1(API_SECRET, b"body"),
         "X-Hub-Signature-256": sign_sha256("wrong", b"body")},
    ],
)
def test_bad_signatures(headers) -> None:
    with pytest.raises(SignatureInvalid):
        verify_hub_signature(b"body", headers, API_SECRET)


def test_no_secret_never_verifies() -> None:
    with pytest.raises(SignatureInvalid):
        verify_hub_signature(b"body", {"X-Hub-Signature": sign_sha1("", b"body")}, "")


# ---- Async -----------------------------------------------------------------------------


async def test_async_verify_on_raw_bytes() -> None:
    adapter = AsyncGatewayAdapter()
    body = async_body()
    ctx = InboundContext(model=MODEL, tenant=TENANT, channel_id=ASYNC_CHANNEL, env=ENV)
    await adapter.verify_inbound(body, {"X-Hub-Signature": sign_sha1(API_SECRET, body)}, ctx)
    await adapter.verify_inbound(body, {"X-Hub-Signature-256": sign_sha256(API_SECRET, body)}, ctx)
    # without x-ccid the channel's owner is found from the config
    anyone = InboundContext(model=MODEL, channel_id=ASYNC_CHANNEL, env=ENV)
    await adapter.verify_inbound(body, {"X-Hub-Signature": sign_sha1(API_SECRET, body)}, anyone)
    modified = body.replace(b"hello", b"hellO")
    with pytest.raises(SignatureInvalid):
        await adapter.verify_inbound(
            modified, {"X-Hub-Signature": sign_sha1(API_SECRET, body)}, ctx
        )
    with pytest.raises(SignatureInvalid):
        await adapter.verify_inbound(body, {}, ctx)
    other = InboundContext(model=MODEL, tenant=MODEL.tenant("t2002"), channel_id=ASYNC_CHANNEL,
                           env=ENV)
    with pytest.raises(AuthInvalid):
        await adapter.verify_inbound(body, {"X-Hub-Signature": sign_sha1(API_SECRET, body)}, other)
    unknown = InboundContext(model=MODEL, channel_id="999", env=ENV)
    with pytest.raises(SignatureInvalid):
        await adapter.verify_inbound(body, {"X-Hub-Signature": sign_sha1(API_SECRET, body)},
                                     unknown)
    unset = InboundContext(model=MODEL, tenant=TENANT, channel_id=ASYNC_CHANNEL, env={})
    with pytest.raises(SignatureInvalid):
        await adapter.verify_inbound(body, {"X-Hub-Signature": sign_sha1(API_SECRET, body)},
                                     unset)
    await adapter.aclose()


def test_async_parse_text_media_and_receipt() -> None:
    adapter = AsyncGatewayAdapter()
    [msg] = adapter.parse_inbound(async_body(), {}, "application/json")
    assert isinstance(msg, InboundMessage)
    assert (msg.provider_message_id, msg.channel_id, msg.type, msg.text) == (
        "m-1", ASYNC_CHANNEL, MessageType.TEXT, "hello")
    assert msg.sender.id == "+15551234" and msg.sender.first_name == "Ada"
    assert msg.sender.nickname == "ada" and msg.timestamp.year == 2024
    content = [{"contentType": "Attachment", "attachment": {
        "mediaType": "Image", "url": "https://x/y.png", "mime": "image/png", "filename": "y.png"}}]
    [rich] = adapter.parse_inbound(async_body(type="RichMedia", text=None, content=content),
                                   {}, None)
    assert rich.type == MessageType.RICH_MEDIA
    assert rich.media[0].url == "https://x/y.png" and rich.media[0].content_type == "image/png"
    [receipt] = adapter.parse_inbound(
        async_body(id="r-1", type="Receipt", status="Read", refId="out-9", text=None), {}, None)
    assert isinstance(receipt, Receipt)
    assert (receipt.ref_id, receipt.status, receipt.provider_message_id) == (
        "out-9", ReceiptStatus.READ, "r-1")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"not json", None),
        (b'{"messages": {}}', "messages"),
        (async_body(id=None), "messages[0].id"),
        (async_body(type="Video"), "messages[0].type"),
        (async_body(text=None), "messages[0].text"),
        (async_body(type="Receipt", status="Lost", refId="x"), "messages[0].status"),
        (async_body(type="Receipt", status="Delivered"), "messages[0].refId"),
        (async_body(timestamp="yesterday"), "messages[0].timestamp"),
        (async_body(channel={"from": {"id": "1"}}), "messages[0].channel.to.id"),
    ],
)
def test_async_parse_rejects_malformed(body: bytes, field) -> None:
    with pytest.raises(InboundInvalid) as info:
        AsyncGatewayAdapter().parse_inbound(body, {}, "application/json")
    assert info.value.field == field


# ---- Portico ---------------------------------------------------------------------------


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": basic_auth_header(user, password)}


async def test_portico_basic_auth() -> None:
    adapter = PorticoSmsAdapter()
    ctx = InboundContext(model=MODEL, check_api_key=check_key)
    assert await adapter.verify_inbound(b"", basic(CCID, GOOD_KEY), ctx) == CCID
    assert await adapter.verify_inbound(b"", basic(CCID.upper(), GOOD_KEY), ctx) == CCID.upper()
    for headers in (
        {},
        basic(CCID, "wrong"),
        basic(CCID, ""),
        {"Authorization": "Bearer abc"},
        {"Authorization": "Basic !!!"},
        {"Authorization": "Basic " + base64.b64encode(b"no-colon").decode()},
    ):
        with pytest.raises(AuthInvalid):
            await adapter.verify_inbound(b"", headers, ctx)
    scoped = InboundContext(model=MODEL, tenant=MODEL.tenant("t2002"), check_api_key=check_key)
    with pytest.raises(AuthInvalid):  # the key is good but names another tenant
        await adapter.verify_inbound(b"", basic(CCID, GOOD_KEY), scoped)
    with pytest.raises(AuthInvalid):  # no key check available: refuse
        await adapter.verify_inbound(b"", basic(CCID, GOOD_KEY), InboundContext(model=MODEL))
    await adapter.aclose()


def test_portico_mo_with_mms_and_receipts() -> None:
    adapter = PorticoSmsAdapter()
    form = urlencode({
        "type": "MO", "message_id": "gc-1", "shortcode": "18885550100",
        "phone_number": "+16505550000", "carrier": "T-Mobile", "message": "Hi there",
        "mms_attachment[0].content_type": "image/jpeg",
        "mms_attachment[0].content": "https://media.example/1.jpg",
        "mms_attachment[1].content_type": "text/plain",
        "mms_attachment[1].content": base64.b64encode(b"note").decode(),
    }).encode()
    [mo] = adapter.parse_inbound(form, {}, "application/x-www-form-urlencoded")
    assert isinstance(mo, InboundMessage)
    assert (mo.provider_message_id, mo.channel_id, mo.sender.id, mo.carrier) == (
        "gc-1", "18885550100", "+16505550000", "T-Mobile")
    assert mo.type == MessageType.RICH_MEDIA and mo.text == "Hi there"
    assert mo.media[0].url == "https://media.example/1.jpg"
    assert mo.media[1].content == b"note" and mo.media[1].content_type == "text/plain"
    dr = urlencode({"type": "receipt", "message_id": "out-1", "message_state": "DELIVERED",
                    "result_code": "0", "app_id": "a", "conversation_id": "c"}).encode()
    [receipt] = adapter.parse_inbound(dr, {}, "application/x-www-form-urlencoded")
    assert isinstance(receipt, Receipt)
    assert (receipt.ref_id, receipt.status, receipt.provider_message_id) == (
        "out-1", ReceiptStatus.DELIVERED, "out-1:DELIVERED")
    failed = urlencode({"type": "receipt", "message_id": "out-2", "message_state": "undeliverable",
                        "result_code": "4001"}).encode()
    [bad] = adapter.parse_inbound(failed, {}, None)
    assert bad.status == ReceiptStatus.FAILED and bad.error_code == "4001"
    enroute = urlencode({"type": "receipt", "message_id": "o", "message_state": "ENROUTE"})
    assert adapter.parse_inbound(enroute.encode(), {}, None) == []
    as_json = json.dumps({"type": "MO", "message_id": "j", "shortcode": "1",
                          "phone_number": "2", "message": "x"}).encode()
    assert adapter.parse_inbound(as_json, {}, "application/json")[0].text == "x"


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"message_id": "1"}, "type"),
        ({"type": "XX"}, "type"),
        ({"type": "MO", "shortcode": "1", "phone_number": "2", "message": "m"}, "message_id"),
        ({"type": "MO", "message_id": "1", "phone_number": "2", "message": "m"}, "shortcode"),
        ({"type": "MO", "message_id": "1", "shortcode": "1", "phone_number": "2"}, "message"),
        ({"type": "MO", "message_id": "1", "shortcode": "1", "phone_number": "2",
          "mms_attachment[0].content": "%%%"}, "mms_attachment[0].content"),
        ({"type": "receipt", "message_id": "1"}, "message_state"),
    ],
)
def test_portico_rejects_malformed(fields, field) -> None:
    with pytest.raises(InboundInvalid) as info:
        PorticoSmsAdapter().parse_inbound(urlencode(fields).encode(), {}, None)
    assert info.value.field == field


def test_portico_email_parses_receipts_too() -> None:
    dr = urlencode({"type": "receipt", "message_id": "e-1", "message_state": "READ"}).encode()
    [receipt] = PorticoEmailAdapter().parse_inbound(dr, {}, None)
    assert receipt.status == ReceiptStatus.READ and receipt.provider == "PorticoEmail"


# ---- mGage -----------------------------------------------------------------------------


async def test_mgage_basic_auth() -> None:
    adapter = MGageAdapter()
    ctx = InboundContext(model=MODEL, tenant=TENANT, check_api_key=check_key, env=ENV)
    assert await adapter.verify_inbound(b"", basic("kaleyra-user", "kaleyra-pass"), ctx)
    assert await adapter.verify_inbound(b"", basic(CCID, GOOD_KEY), ctx) == CCID
    for headers in ({}, basic("kaleyra-user", "nope"), basic("someone", "kaleyra-pass"),
                    basic(CCID, "nope"), basic(CCID2, GOOD_KEY)):
        with pytest.raises(AuthInvalid):
            await adapter.verify_inbound(b"", headers, ctx)
    with pytest.raises(AuthInvalid):
        await adapter.verify_inbound(b"", basic("kaleyra-user", "kaleyra-pass"),
                                     InboundContext(model=MODEL))
    await adapter.aclose()


def test_mgage_mo_and_receipts() -> None:
    adapter = MGageAdapter()
    form = urlencode({"device_address": "16505551111", "inbound_address": "1650466114",
                      "message": "STOP", "message_id": "k-1", "carrier": "ATT",
                      "message_subid": "7"}).encode()
    [mo] = adapter.parse_inbound(form, {}, "application/x-www-form-urlencoded")
    assert isinstance(mo, InboundMessage)
    assert (mo.sender.id, mo.channel_id, mo.text, mo.carrier) == (
        "16505551111", "1650466114", "STOP", "ATT")
    assert mo.extra == {"message_subid": "7"}
    dr = urlencode({"message_id": "out-7", "status": "DELIVRD"}).encode()
    [receipt] = adapter.parse_inbound(dr, {}, None)
    assert isinstance(receipt, Receipt) and receipt.status == ReceiptStatus.DELIVERED
    assert adapter.parse_inbound(urlencode({"message_id": "o", "status": "ACCEPTD"}).encode(),
                                 {}, None) == []
    assert adapter.map_receipt("REJECTD") == ReceiptStatus.FAILED
    with pytest.raises(InboundInvalid):
        adapter.parse_inbound(urlencode({"device_address": "1", "message": "x"}).encode(),
                              {}, None)


# ---- SparkPost -------------------------------------------------------------------------


async def test_sparkpost_events() -> None:
    adapter = SparkPostAdapter()
    ctx = InboundContext(model=MODEL, tenant=TENANT, check_api_key=check_key)
    await adapter.verify_inbound(b"[]", basic(CCID, GOOD_KEY), ctx)
    with pytest.raises(AuthInvalid):
        await adapter.verify_inbound(b"[]", basic(CCID, "bad"), ctx)
    events = [
        {"msys": {"message_event": {"type": "delivery", "event_id": "e1",
                                     "transmission_id": "t1", "timestamp": "1714557600"}}},
        {"msys": {"message_event": {"type": "bounce", "event_id": "e2", "transmission_id": "t2",
                                     "bounce_class": "10"}}},
        {"msys": {"track_event": {"type": "open", "event_id": "e3", "transmission_id": "t1"}}},
        {"msys": {"message_event": {"type": "injection", "event_id": "e4",
                                     "transmission_id": "t1"}}},
        {"msys": {}},
    ]
    receipts = adapter.parse_inbound(json.dumps(events).encode(), {}, "application/json")
    assert [(r.ref_id, r.status) for r in receipts] == [
        ("t1", ReceiptStatus.DELIVERED), ("t2", ReceiptStatus.FAILED), ("t1", ReceiptStatus.READ)]
    assert receipts[1].error_code == "10" and receipts[0].timestamp.year == 2024
    with pytest.raises(InboundInvalid):
        adapter.parse_inbound(b'{"msys": {}}', {}, None)
