"""Test clients that speak exactly as the chat widgets and an agent desktop do.

:class:`WidgetClient` is the widgets' ``pureengage-v3-rest`` transport: bracket form bodies
(``data[firstName]=...``), ``x-api-key`` on every call, ``x-nexus-client-key`` (the
``clientToken`` of the create answer) on the session's calls, and a browser WebSocket, which
cannot set headers, so the credentials travel as ``?apikey=&clientToken=``.

:class:`AgentClient` logs in through the embedded OAuth provider as ``<ccid>\\<user>`` and
calls the agent API with ``Authorization: Bearer``; its WebSocket passes ``?access_token=``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlencode

import httpx
import websockets

TIMEOUT = 15.0


def form(fields: dict[str, Any]) -> dict[str, str]:
    """The widgets' bracket encoding: ``{"firstName": "Ann", "userData": {"k": "v"}}`` ->
    ``data[firstName]=Ann``, ``data[userData][k]=v``."""
    out: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}[{key}]", item)
        else:
            out[prefix] = str(value)

    for key, value in fields.items():
        walk(f"data[{key}]", value)
    return out


async def eventually(check: Callable[[], Awaitable[Any]], what: str, timeout: float = 15.0) -> Any:
    """Poll ``check`` until it returns something truthy."""
    end = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


class WidgetClient:
    """One customer's widget (see the module docstring)."""

    def __init__(self, base: str, api_key: str, prefix: str = "/nexus/v3/chat") -> None:
        self.base = base
        self.api_key = api_key
        self.prefix = prefix
        self.http = httpx.AsyncClient(base_url=base, timeout=TIMEOUT)
        self.session_id: str | None = None
        self.self_uri: str | None = None
        self.token: str | None = None

    async def __aenter__(self) -> WidgetClient:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.http.aclose()

    @property
    def headers(self) -> dict[str, str]:
        headers = {"x-api-key": self.api_key}
        if self.token is not None:
            headers["x-nexus-client-key"] = self.token
        return headers

    async def create_raw(self, fields: dict[str, Any], **kw: Any) -> httpx.Response:
        return await self.http.post(f"{self.prefix}/sessions", data=form(fields),
                                    headers={"x-api-key": self.api_key, **kw.pop("headers", {})},
                                    **kw)

    async def create(self, **fields: Any) -> dict[str, Any]:
        resp = await self.create_raw(fields)
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["status"]["code"] == 0 and body["operationId"]
        data = body["data"]
        self.session_id = data["entity"]["id"]
        self.self_uri = data["entity"]["selfUri"]
        self.token = data["clientToken"]
        return data

    async def send_raw(self, text: str | None, type: str = "Text", **extra: Any) -> httpx.Response:
        fields: dict[str, Any] = {"type": type, **extra}
        if text is not None:
            fields["text"] = text
        return await self.http.post(f"{self.self_uri}/messages", data=form(fields),
                                    headers=self.headers)

    async def send(self, text: str | None, type: str = "Text", **extra: Any) -> dict[str, Any]:
        resp = await self.send_raw(text, type, **extra)
        assert resp.status_code == 200, resp.text
        return resp.json()["data"]["message"]

    async def messages(self, start: int = 1) -> list[dict[str, Any]]:
        resp = await self.http.get(f"{self.self_uri}/messages", params={"from": start},
                                   headers=self.headers)
        assert resp.status_code == 200, resp.text
        return resp.json()["data"]["messages"]

    async def upload(self, name: str, data: bytes, mime: str) -> httpx.Response:
        return await self.http.post(f"{self.self_uri}/files", files={"file": (name, data, mime)},
                                    headers=self.headers)

    async def leave(self) -> httpx.Response:
        return await self.http.delete(self.self_uri, headers=self.headers)

    def stream_url(self, start: int = 1, base: str | None = None) -> str:
        query = urlencode({"from": start, "apikey": self.api_key, "clientToken": self.token})
        root = (base or self.base).replace("http://", "ws://", 1)
        return f"{root}{self.self_uri}/stream?{query}"

    def stream(self, start: int = 1, base: str | None = None) -> Any:
        return websockets.connect(self.stream_url(start, base), open_timeout=TIMEOUT)


async def receive(ws: Any, count: int, *, stored_only: bool = True,
                  timeout: float = TIMEOUT) -> list[dict[str, Any]]:
    """The next ``count`` messages of a stream (typing events skipped when ``stored_only``)."""
    out: list[dict[str, Any]] = []
    while len(out) < count:
        item = json.loads(await asyncio.wait_for(ws.recv(), timeout))
        if stored_only and item.get("index") is None:
            continue
        out.append(item)
    return out


class AgentClient:
    """An agent (or supervisor) desktop on the agent API (see the module docstring)."""

    def __init__(self, base: str, ccid: str, username: str, password: str) -> None:
        self.base = base
        self.ccid = ccid
        self.username = username
        self.password = password
        self.http = httpx.AsyncClient(base_url=base, timeout=TIMEOUT)
        self.access_token: str | None = None

    async def __aenter__(self) -> AgentClient:
        await self.login()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.http.aclose()

    async def login(self) -> str:
        resp = await self.http.post(
            "/auth/v3/oauth/token", auth=("nexus_client", ""),
            data={"grant_type": "password", "client_id": "nexus_client",
                  "username": f"{self.ccid}\\{self.username}", "password": self.password},
        )
        assert resp.status_code == 200, resp.text
        self.access_token = resp.json()["access_token"]
        return self.access_token

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access_token}"}

    async def call(self, method: str, path: str, **kw: Any) -> httpx.Response:
        return await self.http.request(method, f"/nexus/v3/agent{path}", headers=self.headers,
                                       **kw)

    async def ok(self, method: str, path: str, **kw: Any) -> dict[str, Any]:
        resp = await self.call(method, path, **kw)
        assert resp.status_code == 200, f"{method} {path}: {resp.status_code} {resp.text}"
        return resp.json()["data"]

    async def presence(self, state: str) -> None:
        assert (await self.ok("PUT", "/presence", json={"state": state}))["state"] == state

    async def interactions(self) -> list[dict[str, Any]]:
        return (await self.ok("GET", "/interactions"))["interactions"]

    async def offer_for(self, conversation_id: str, timeout: float = 15.0) -> dict[str, Any]:
        async def check() -> dict[str, Any] | None:
            for item in await self.interactions():
                if item["conversationId"] == conversation_id and item["state"] == "offered":
                    return item
            return None

        return await eventually(check, f"an offer of {conversation_id} to {self.username}",
                                timeout)

    async def act(self, iid: str, action: str, **body: Any) -> dict[str, Any]:
        return (await self.ok("POST", f"/interactions/{iid}/{action}", json=body))["interaction"]

    async def send(self, iid: str, text: str, type: str = "Text") -> dict[str, Any]:
        data = await self.ok("POST", f"/interactions/{iid}/messages",
                             json={"type": type, "text": text})
        return data["message"]

    def stream(self) -> Any:
        root = self.base.replace("http://", "ws://", 1)
        url = f"{root}/nexus/v3/agent/stream?{urlencode({'access_token': self.access_token})}"
        return websockets.connect(url, open_timeout=TIMEOUT)
