"""Outbound sends of every provider against a real HTTP server on loopback."""

from __future__ import annotations

import asyncio
import base64

import pytest

from engine.channels.base import (
    MessageType,
    OutboundMessage,
    PermanentSendError,
    ProviderNotConfigured,
    SendContext,
    TransientSendError,
)
from engine.channels.registry import AdapterRegistry
from engine.channels.signing import sign_sha1, sign_sha256
from tests.unit.channels.support import (
    ASYNC_CHANNEL,
    ENV,
    MGAGE_NUMBER,
    PORTICO_NUMBER,
    WEBHOOK_SECRET,
    make_model,
)

from .fakeprovider import FakeProvider, Reply


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def fake():
    async with FakeProvider() as server:
        yield server


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def registry(clock: Clock):
    reg = AdapterRegistry(clock=clock)
    yield reg
    await reg.aclose()


def ctx_for(fake: FakeProvider, **kw) -> SendContext:
    return SendContext(model=make_model(fake.url), env=ENV, trace_id="abc123", **kw)


def sms(channel: str, **kw) -> OutboundMessage:
    defaults = {"message_id": "out-1", "tenant": "t1001", "channel_id": channel,
                "to": "+16505550000", "text": "Your code is 1234"}
    defaults.update(kw)
    return OutboundMessage(**defaults)


def token_reply(token: str = "tok-1", expires_in: int = 3600) -> Reply:
    return Reply(json={"access_token": token, "token_type": "bearer", "expires_in": expires_in})


# ---- Async -----------------------------------------------------------------------------


async def test_async_send_signed_with_custom_headers(fake, registry) -> None:
    fake.script("/async/hook", Reply(json={"messageId": "gw-1"}))
    result = await registry.get("Async").send(sms(ASYNC_CHANNEL), ctx_for(fake))
    assert result.provider_message_id == "gw-1" and result.status == "sent"
    [req] = fake.on("/async/hook")
    assert req.headers["x-hub-signature"] == sign_sha1(WEBHOOK_SECRET, req.body)
    assert req.headers["x-hub-signature-256"] == sign_sha256(WEBHOOK_SECRET, req.body)
    assert req.headers["x-b3-traceid"] == "abc123"
    assert req.headers["content-type"] == "application/json"
    assert req.headers["custom-header-for-async-1"] == "12345"
    assert req.headers["x-tenant"] == "t1001"
    [message] = req.json()["messages"]
    assert message["id"] == "out-1" and message["type"] == "Text"
    assert message["channel"] == {"from": {"id": ASYNC_CHANNEL}, "to": {"id": "+16505550000"}}
    assert message["text"] == "Your code is 1234" and message["content"] == []
    assert message["timestamp"].endswith("Z")


async def test_async_email_and_rich_media(fake, registry) -> None:
    from engine.channels.base import Media

    adapter = registry.get("Async")
    await adapter.send(
        OutboundMessage(message_id="e-1", tenant="t1001", channel_id="company.com",
                        to="ada@example.com", subject="Hello", text="plain", html="<b>hi</b>",
                        from_name="ACME"),
        ctx_for(fake),
    )
    await adapter.send(
        sms(ASYNC_CHANNEL, media=(Media(content_type="image/png", url="https://m/x.png",
                                        filename="x.png"),)),
        ctx_for(fake),
    )
    email, rich = (r.json()["messages"][0] for r in fake.on("/async/hook"))
    assert email["subject"] == "Hello" and email["html"] == "<b>hi</b>"
    assert email["channel"]["from"] == {"id": "company.com", "address": "noreply@company.com",
                                        "name": "ACME"}
    assert rich["type"] == "RichMedia"
    assert rich["content"] == [{"contentType": "Attachment", "attachment": {
        "mediaType": "Image", "url": "https://m/x.png", "mime": "image/png",
        "filename": "x.png"}}]


async def test_async_failures_are_classified(fake, registry) -> None:
    adapter = registry.get("Async")
    fake.script("/async/hook", Reply(status=500), Reply(status=503),
                Reply(status=429, headers={"Retry-After": "12"}),
                Reply(status=408), Reply(status=400), Reply(status=404))
    for expected in (TransientSendError, TransientSendError, TransientSendError,
                     TransientSendError, PermanentSendError, PermanentSendError):
        with pytest.raises(expected) as info:
            await adapter.send(sms(ASYNC_CHANNEL), ctx_for(fake))
    assert info.value.status_code == 404
    fake.script("/async/hook", Reply(status=429, headers={"Retry-After": "12"}))
    with pytest.raises(TransientSendError) as limited:
        await adapter.send(sms(ASYNC_CHANNEL), ctx_for(fake))
    assert limited.value.retry_after == 12 and limited.value.status_code == 429
    with pytest.raises(ProviderNotConfigured):
        await adapter.send(sms("nope"), ctx_for(fake))
    with pytest.raises(ProviderNotConfigured):  # the webhook secret's env var is unset
        await adapter.send(sms(ASYNC_CHANNEL), SendContext(model=make_model(fake.url), env={}))


async def test_timeout_is_transient(fake, registry) -> None:
    release = asyncio.Event()
    fake.script("/async/hook", Reply(hold=release))
    with pytest.raises(TransientSendError) as info:
        await registry.get("Async").send(sms(ASYNC_CHANNEL), ctx_for(fake, timeout=0.2))
    assert "no answer" in str(info.value)
    release.set()


async def test_connection_refused_is_transient(registry) -> None:
    closed = FakeProvider()
    await closed.start()
    url = closed.url
    await closed.close()
    ctx = SendContext(model=make_model(url), env=ENV)
    with pytest.raises(TransientSendError):
        await registry.get("Async").send(sms(ASYNC_CHANNEL), ctx)


# ---- Portico ---------------------------------------------------------------------------


async def test_portico_send_with_cached_token(fake, registry, clock) -> None:
    fake.default("/login/oauth/token", token_reply("tok-1", 3600))
    fake.default("/gcapi/api/v2/conversations/messages/agentless",
                 Reply(status=202, json={"id": "gc-out-1", "conversationId": "c"}))
    adapter = registry.get("Portico")
    result = await adapter.send(sms(PORTICO_NUMBER), ctx_for(fake))
    assert result.provider_message_id == "gc-out-1"
    [token_req] = fake.on("/login/oauth/token")
    assert token_req.form() == {"grant_type": "client_credentials"}
    assert token_req.headers["authorization"] == "Basic " + base64.b64encode(
        b"client-id-1:client-secret-1").decode()
    [send] = fake.on("/gcapi/api/v2/conversations/messages/agentless")
    assert send.headers["authorization"] == "Bearer tok-1"
    assert send.json() == {"fromAddress": PORTICO_NUMBER, "toAddress": "+16505550000",
                           "toAddressMessengerType": "sms", "textBody": "Your code is 1234"}
    # cached: a second send asks for no token; shortly before expiry it refreshes
    await adapter.send(sms(PORTICO_NUMBER), ctx_for(fake))
    assert len(fake.on("/login/oauth/token")) == 1
    clock.now += 3600 - 30
    await adapter.send(sms(PORTICO_NUMBER), ctx_for(fake))
    assert len(fake.on("/login/oauth/token")) == 2


async def test_portico_concurrent_sends_fetch_one_token(fake, registry) -> None:
    release = asyncio.Event()
    fake.script("/login/oauth/token", Reply(json={"access_token": "tok-c", "expires_in": 600},
                                            hold=release))
    fake.default("/gcapi/api/v2/conversations/messages/agentless", Reply(json={"id": "x"}))
    adapter = registry.get("Portico")
    sends = [asyncio.create_task(adapter.send(sms(PORTICO_NUMBER), ctx_for(fake)))
             for _ in range(5)]
    await fake.wait_for(1, "/login/oauth/token")
    release.set()
    results = await asyncio.gather(*sends)
    assert [r.provider_message_id for r in results] == ["x"] * 5
    assert len(fake.on("/login/oauth/token")) == 1
    assert {r.headers["authorization"] for r in
            fake.on("/gcapi/api/v2/conversations/messages/agentless")} == {"Bearer tok-c"}


async def test_portico_401_refreshes_token_once(fake, registry) -> None:
    fake.script("/login/oauth/token", token_reply("old"), token_reply("new"), token_reply("x"))
    path = "/gcapi/api/v2/conversations/messages/agentless"
    fake.script(path, Reply(status=401), Reply(json={"id": "ok-after-refresh"}))
    adapter = registry.get("Portico")
    result = await adapter.send(sms(PORTICO_NUMBER), ctx_for(fake))
    assert result.provider_message_id == "ok-after-refresh"
    assert [r.headers["authorization"] for r in fake.on(path)] == ["Bearer old", "Bearer new"]
    # a second 401 with the fresh token is permanent (bad credentials / permissions)
    fake.script(path, Reply(status=401), Reply(status=401))
    with pytest.raises(PermanentSendError) as info:
        await adapter.send(sms(PORTICO_NUMBER), ctx_for(fake))
    assert info.value.status_code == 401
    assert len(fake.on("/login/oauth/token")) == 3


async def test_portico_token_endpoint_failures(fake, registry) -> None:
    adapter = registry.get("Portico")
    fake.script("/login/oauth/token", Reply(status=503))
    with pytest.raises(TransientSendError):
        await adapter.send(sms(PORTICO_NUMBER), ctx_for(fake))
    fake.script("/login/oauth/token", Reply(status=401, json={"error": "invalid_client"}))
    with pytest.raises(PermanentSendError) as info:
        await adapter.send(sms(PORTICO_NUMBER), ctx_for(fake))
    assert "refused the client credentials" in str(info.value)
    fake.script("/login/oauth/token", Reply(json={"token_type": "bearer"}))
    with pytest.raises(PermanentSendError):
        await adapter.send(sms(PORTICO_NUMBER), ctx_for(fake))
    assert fake.on("/gcapi/api/v2/conversations/messages/agentless") == []


async def test_portico_send_5xx_and_4xx(fake, registry) -> None:
    fake.default("/login/oauth/token", token_reply())
    path = "/gcapi/api/v2/conversations/messages/agentless"
    fake.script(path, Reply(status=502), Reply(status=400))
    adapter = registry.get("Portico")
    with pytest.raises(TransientSendError):
        await adapter.send(sms(PORTICO_NUMBER), ctx_for(fake))
    with pytest.raises(PermanentSendError):
        await adapter.send(sms(PORTICO_NUMBER), ctx_for(fake))


# ---- PorticoEmail ----------------------------------------------------------------------


async def test_portico_email_shape(fake, registry) -> None:
    fake.default("/login/oauth/token", token_reply("tok-e"))
    path = "/gcapi/api/v2/conversations/emails/agentless"
    fake.script(path, Reply(json={"id": "gc-mail-1", "conversationId": "c"}))
    result = await registry.get("PorticoEmail").send(
        OutboundMessage(message_id="m", tenant="t1001", channel_id="news.company.com",
                        to="ada@example.com", to_name="Ada", subject="Sale", text="50% off",
                        html="<p>50% off</p>", from_address="deals@news.company.com",
                        from_name="ACME"),
        ctx_for(fake),
    )
    assert result.provider_message_id == "gc-mail-1"
    [req] = fake.on(path)
    assert req.headers["authorization"] == "Bearer tok-e"
    assert req.json() == {
        "senderType": "Outbound",
        "fromAddress": {"email": "deals@news.company.com", "name": "ACME"},
        "toAddresses": [{"email": "ada@example.com", "name": "Ada"}],
        "subject": "Sale", "textBody": "50% off", "htmlBody": "<p>50% off</p>",
    }


# ---- mGage -----------------------------------------------------------------------------


async def test_mgage_send_form(fake, registry) -> None:
    fake.script("/mgage/send", Reply(json={"message_id": "kal-1"}),
                Reply(body=b"kal-2\n", headers={"Content-Type": "text/plain"}),
                Reply(json={"status": "error", "message": "bad number"}),
                Reply(status=500), Reply(status=403))
    adapter = registry.get("mGage")
    assert (await adapter.send(sms(MGAGE_NUMBER), ctx_for(fake))).provider_message_id == "kal-1"
    assert (await adapter.send(sms(MGAGE_NUMBER), ctx_for(fake))).provider_message_id == "kal-2"
    with pytest.raises(PermanentSendError):
        await adapter.send(sms(MGAGE_NUMBER), ctx_for(fake))
    with pytest.raises(TransientSendError):
        await adapter.send(sms(MGAGE_NUMBER), ctx_for(fake))
    with pytest.raises(PermanentSendError):
        await adapter.send(sms(MGAGE_NUMBER), ctx_for(fake))
    first = fake.on("/mgage/send")[0]
    assert first.headers["content-type"] == "application/x-www-form-urlencoded"
    assert first.form() == {"username": "kaleyra-user", "password": "kaleyra-pass",
                            "to": "+16505550000", "from": MGAGE_NUMBER,
                            "message": "Your code is 1234", "message_id": "out-1"}


# ---- SparkPost -------------------------------------------------------------------------


async def test_sparkpost_transmission_shape(fake, registry) -> None:
    path = "/sparkpost/api/v1/transmissions"
    fake.script(path, Reply(json={"results": {"total_rejected_recipients": 0,
                                              "total_accepted_recipients": 1, "id": "sp-1"}}),
                Reply(json={"results": {"total_accepted_recipients": 0, "id": "sp-2"}}),
                Reply(status=420 + 2), Reply(status=503))
    adapter = registry.get("SparkPost")
    message = OutboundMessage(message_id="m-5", tenant="t1001", channel_id="news.company.com",
                              to="ada@example.com", subject="Hi", html="<b>x</b>",
                              from_address="team@news.company.com")
    assert (await adapter.send(message, ctx_for(fake))).provider_message_id == "sp-1"
    [req] = fake.on(path)
    assert req.headers["authorization"] == "sp-key-1"
    assert req.headers["content-type"] == "application/json"
    assert req.json() == {
        "options": {"transactional": True},
        "metadata": {"nexus_message_id": "m-5"},
        "recipients": [{"address": {"email": "ada@example.com"}}],
        "content": {"from": {"email": "team@news.company.com"}, "subject": "Hi",
                    "html": "<b>x</b>"},
    }
    with pytest.raises(PermanentSendError):  # every recipient rejected
        await adapter.send(message, ctx_for(fake))
    with pytest.raises(PermanentSendError):
        await adapter.send(message, ctx_for(fake))
    with pytest.raises(TransientSendError):
        await adapter.send(message, ctx_for(fake))


async def test_messaging_type_default_is_text() -> None:
    assert sms(ASYNC_CHANNEL).type == MessageType.TEXT
