"""Bad input everywhere gets the documented status, code and widget identifier; files, bots,
supervisor statistics. Sessions here belong to tenant t2002, which has no agents, so nothing
is routed to the agents of the story tests."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
import websockets

from tests.integration.chat.clients import AgentClient, WidgetClient, form, receive
from tests.integration.chat.conftest import T1001, T2002, ChatEngine

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


def status(resp: httpx.Response) -> tuple[int, int, str]:
    body = resp.json()["status"]
    return resp.status_code, body["code"], body["message"]


async def new_session(engine: ChatEngine, key: str | None = None, **fields: Any) -> WidgetClient:
    widget = WidgetClient(engine.api, key or engine.other_key)
    await widget.create(**({"nickname": "Pat", "endpoint": "SMS_Main"} | fields))
    return widget


async def test_create_errors(chat_engine: ChatEngine) -> None:
    async with WidgetClient(chat_engine.api, chat_engine.other_key) as widget:
        resp = await widget.create_raw({"endpoint": "SMS_Main"})
        assert status(resp) == (400, 1, "INVALID_NICKNAME")
        assert resp.json()["status"]["field"] == "nickname"
        resp = await widget.create_raw({"nickname": "Pat", "endpoint": "NoSuchEndpoint"})
        assert status(resp) == (400, 2, "INVALID_ENDPOINT")
        resp = await widget.create_raw({"nickname": "Pat"})
        assert status(resp) == (400, 2, "INVALID_ENDPOINT")
        # the first name or the email stand in for the nickname
        assert (await widget.create_raw({"email": "p@example.com",
                                         "endpoint": "SMS_Main"})).status_code == 200
        # malformed bodies
        resp = await widget.http.post("/nexus/v3/chat/sessions", content=b"data[a]b=1",
                                      headers={"x-api-key": widget.api_key,
                                               "content-type":
                                               "application/x-www-form-urlencoded"})
        assert status(resp)[:2] == (400, 1)
        resp = await widget.http.post("/nexus/v3/chat/sessions", content=b"{not json",
                                      headers={"x-api-key": widget.api_key,
                                               "content-type": "application/json"})
        assert status(resp)[:2] == (400, 1)
        resp = await widget.create_raw({"nickname": "Pat", "endpoint": "SMS_Main",
                                        "userData": "x"})
        assert status(resp)[:2] == (400, 1)
        # credentials
        resp = await widget.http.post("/chat/v3/sessions", data=form({"nickname": "Pat"}))
        assert status(resp)[:2] == (401, 3)
        resp = await widget.http.post("/chat/v3/sessions", data=form({"nickname": "Pat"}),
                                      headers={"x-api-key": "not-a-key"})
        assert status(resp)[:2] == (401, 3)
        resp = await widget.create_raw({"nickname": "Pat", "endpoint": "SMS_Main"},
                                       headers={"x-ccid": T1001})
        assert status(resp)[:2] == (403, 5)
        # a key without nexus:consumer:chat
        designer = WidgetClient(chat_engine.api, chat_engine.env("T2002_DESIGNER_API_KEY"))
        async with designer:
            resp = await designer.create_raw({"nickname": "Pat", "endpoint": "SMS_Main"})
            assert status(resp)[:2] == (403, 5)


async def test_unknown_contact_center(chat_engine: ChatEngine) -> None:
    """A key of a tenant that exists in the store but not in the config."""
    engine = chat_engine.engine
    admin = {"Authorization": f"Bearer {engine.admin_token()}"}
    ccid = str(uuid.uuid4())
    resp = engine.call("POST", "/nexus/v3/provisioning/tenants", headers=admin, json={
        "id": ccid, "name": f"x{ccid[:8]}", "type": "PureEngage",
        "backendurl": "http://gws.example.com", "username": "u", "token": "t",
        "genesystenantid": 9})
    assert resp.status_code == 201, resp.text
    resp = engine.call("POST", "/nexus/v3/apikeys", headers=admin, json={
        "tenant": ccid, "name": "chat", "permissions": ["nexus:consumer:chat"]})
    assert resp.status_code == 201, resp.text
    async with WidgetClient(chat_engine.api, resp.json()["key"]) as widget:
        resp = await widget.create_raw({"nickname": "Pat", "endpoint": "SMS_Main"})
        assert status(resp) == (404, 6, "INVALID_CONTACT_CENTER")


async def test_client_token_rules(chat_engine: ChatEngine) -> None:
    mine = await new_session(chat_engine)
    other = await new_session(chat_engine)
    foreign = await new_session(chat_engine, chat_engine.load_key)  # tenant t1001
    try:
        headers = {"x-api-key": mine.api_key}
        url = f"{mine.self_uri}/messages"
        assert status(await mine.http.get(url, headers=headers)) == (
            401, 3, "AUTHENTICATION_REQUIRED")
        bad = {**headers, "x-nexus-client-key": "garbage"}
        assert status(await mine.http.get(url, headers=bad)) == (
            401, 3, "AUTHENTICATION_REQUIRED")
        forged = mine.token[:-4] + ("AAAA" if not mine.token.endswith("AAAA") else "BBBB")
        assert status(await mine.http.get(url, headers={
            **headers, "x-nexus-client-key": forged}))[0] == 401
        # another session's token
        stolen = {**headers, "x-nexus-client-key": other.token}
        assert status(await mine.http.get(url, headers=stolen)) == (
            403, 5, "AUTHENTICATION_REQUIRED")
        assert status(await mine.http.post(url, headers=stolen,
                                           data=form({"text": "hi"})))[0] == 403
        # another tenant's session: its id with our key and token, our token with its key
        theirs = f"/nexus/v3/chat/sessions/{foreign.session_id}/messages"
        resp = await mine.http.get(theirs, headers={**headers, "x-nexus-client-key": mine.token})
        assert status(resp) == (403, 5, "AUTHENTICATION_REQUIRED")
        resp = await mine.http.get(theirs, headers={"x-api-key": mine.api_key,
                                                    "x-nexus-client-key": foreign.token})
        assert status(resp) == (403, 5, "AUTHENTICATION_REQUIRED")
        # a Designer key of t2002 does not see t1001's session
        designer = {"x-api-key": chat_engine.env("T2002_DESIGNER_API_KEY")}
        resp = await mine.http.get(theirs, headers=designer)
        assert status(resp) == (404, 6, "SESSION_NOT_FOUND")
        # an unknown session with a token minted for it cannot exist: any id -> 403
        resp = await mine.http.get(f"/chat/v3/sessions/{uuid.uuid4()}/messages",
                                   headers=mine.headers)
        assert status(resp)[0] == 403
        # bad message input
        assert status(await mine.send_raw("hi", type="Shout"))[:2] == (400, 1)
        assert status(await mine.send_raw("   "))[2] == "INVALID_MESSAGE"
        assert status(await mine.send_raw(None, type="ParticipantJoined"))[2] == (
            "INVALID_MESSAGE")
        resp = await mine.http.get(url, params={"from": "zero"}, headers=mine.headers)
        assert status(resp)[:2] == (400, 1)
        # the WebSocket: a bad token closes it with 4401, no key refuses the upgrade
        bad_ws = mine.stream_url().replace(f"clientToken={mine.token}", "clientToken=x")
        async with websockets.connect(bad_ws) as ws:
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await ws.recv()
            assert closed.value.rcvd.code == 4401
            assert closed.value.rcvd.reason == "AUTHENTICATION_REQUIRED"
        no_key = mine.stream_url().replace(f"apikey={mine.api_key}", "apikey=")
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with websockets.connect(no_key):
                pass
        assert refused.value.response.status_code == 401
    finally:
        for widget in (mine, other, foreign):
            await widget.http.aclose()


async def test_files(chat_engine: ChatEngine) -> None:
    widget = await new_session(chat_engine)
    try:
        resp = await widget.upload("photo one.png", PNG, "image/png")
        assert resp.status_code == 200, resp.text
        file_id = resp.json()["data"]["file"]["id"]
        assert resp.json()["data"]["message"]["type"] == "File"
        got = await widget.http.get(f"{widget.self_uri}/files/{file_id}", headers=widget.headers)
        assert got.status_code == 200 and got.content == PNG
        assert got.headers["content-type"] == "image/png"
        assert got.headers["content-disposition"].startswith('inline; filename="photo one.png"')
        assert got.headers["x-content-type-options"] == "nosniff"
        # an <img src> cannot send headers: the query works too
        query = {"apikey": widget.api_key, "clientToken": widget.token}
        got = await widget.http.get(f"{widget.self_uri}/files/{file_id}", params=query)
        assert got.status_code == 200 and got.content == PNG
        # ...but only there
        resp = await widget.http.get(f"{widget.self_uri}/messages", params=query)
        assert resp.status_code == 401

        assert status(await widget.upload("a.txt", b"text", "text/plain")) == (
            415, 2, "INVALID_FILE_TYPE")
        assert status(await widget.upload("big.png", PNG + b"\x00" * 5000, "image/png")) == (
            413, 2, "LIMIT_FILE_SIZE")
        assert (await widget.upload("two.png", PNG, "image/png")).status_code == 200
        assert status(await widget.upload("three.png", PNG, "image/png")) == (
            400, 2, "LIMIT_FILE_COUNT")
        resp = await widget.http.post(f"{widget.self_uri}/files", headers=widget.headers,
                                      files={"other": ("x.png", PNG, "image/png")})
        assert status(resp)[:2] == (400, 1)
        resp = await widget.http.get(f"{widget.self_uri}/files/{uuid.uuid4()}",
                                     headers=widget.headers)
        assert status(resp) == (404, 6, "FILE_NOT_FOUND")
    finally:
        await widget.http.aclose()


async def test_designer_bot(chat_engine: ChatEngine) -> None:
    widget = await new_session(chat_engine)
    try:
        designer = {"x-api-key": chat_engine.env("T2002_DESIGNER_API_KEY")}
        async with widget.stream(2) as stream:
            resp = await widget.http.post(
                f"{widget.self_uri}/messages", headers=designer,
                data=form({"type": "Text", "text": "Hi, I am the assistant",
                           "from": {"type": "Bot", "nickname": "Helper"}}))
            assert resp.status_code == 200, resp.text
            [bot] = await receive(stream, 1)
        assert bot["from"] == {"nickname": "Helper", "participantId": "bot", "type": "Bot"}
        resp = await widget.http.get(f"{widget.self_uri}/messages", headers=designer)
        assert resp.json()["data"]["messages"][-1]["text"] == "Hi, I am the assistant"
        # the t1001 Designer key does not reach t2002's session
        resp = await widget.http.post(
            f"{widget.self_uri}/messages",
            headers={"x-api-key": chat_engine.env("T1001_DESIGNER_API_KEY")},
            data=form({"text": "hi"}))
        assert status(resp) == (404, 6, "SESSION_NOT_FOUND")
    finally:
        await widget.http.aclose()


async def test_agent_api_errors(chat_engine: ChatEngine) -> None:
    api = chat_engine.api
    async with (
        AgentClient(api, T1001, "alice", chat_engine.password("alice")) as alice,
        AgentClient(api, T1001, "sam", chat_engine.password("sam")) as sam,
        httpx.AsyncClient(base_url=api) as anon,
    ):
        resp = await alice.call("POST", f"/interactions/{uuid.uuid4()}/accept")
        assert status(resp) == (404, 6, "INTERACTION_NOT_FOUND")
        resp = await alice.call("GET", f"/interactions/{uuid.uuid4()}/messages")
        assert status(resp) == (404, 6, "INTERACTION_NOT_FOUND")
        resp = await alice.call("PUT", "/presence", json={"state": "asleep"})
        assert status(resp)[:2] == (400, 1)
        resp = await alice.call("PUT", "/presence", json={})
        assert status(resp)[:2] == (400, 1)
        resp = await alice.call("GET", f"/contacts/{uuid.uuid4()}/history")
        assert status(resp) == (404, 6, "CONTACT_NOT_FOUND")
        # a supervisor is not an agent, and an agent is not a supervisor
        assert status(await sam.call("GET", "/interactions")) == (403, 3, "NOT_AN_AGENT")
        assert status(await alice.call("GET", "/queues"))[:2] == (403, 5)
        stats = (await sam.ok("GET", "/queues"))["queues"]
        by_name = {q["queue"]: q for q in stats}
        assert {"sms-support", "asynchold"} <= set(by_name)
        assert set(by_name["sms-support"]) == {"queue", "waiting", "offered", "assigned",
                                               "held", "agentsReady"}
        # an API key or no credentials
        resp = await anon.get("/nexus/v3/agent/interactions")
        assert status(resp)[:2] == (401, 3)
        resp = await anon.get("/nexus/v3/agent/interactions",
                              headers={"x-api-key": chat_engine.chat_key})
        assert status(resp)[:2] == (403, 5)
        resp = await anon.get("/nexus/v3/agent/interactions",
                              headers={"Authorization": "Bearer nope"})
        assert status(resp)[:2] == (401, 3)
        # the agent stream: a token in the query, a bad one is refused before the upgrade
        url = api.replace("http://", "ws://") + "/nexus/v3/agent/stream?access_token=nope"
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with websockets.connect(url):
                pass
        assert refused.value.response.status_code == 401


async def test_tenant_without_agents_waits(chat_engine: ChatEngine) -> None:
    """A chat of a tenant without agents stays queued (supervisor view of t2002 is not
    reachable with t1001's supervisor)."""
    widget = await new_session(chat_engine)
    try:
        assert [m["type"] for m in await widget.messages()] == ["ParticipantJoined"]
        assert T2002 != T1001
    finally:
        await widget.http.aclose()
