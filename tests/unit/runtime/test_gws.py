"""The GWS provider against a fake auth server on loopback (plain asyncio streams)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from engine.auth import AuthError, AuthUnavailable
from engine.auth.gws import GwsAuthProvider

GOOD = "good-token-123"
GOOD_INFO = {
    "user_name": "agent7",
    "contactCenterId": "ccid1",
    "roles": ["ROLE_AGENT", "ROLE_SUPERVISOR"],
}


class FakeAuthServer:
    def __init__(self) -> None:
        self.requests: list[dict[str, str]] = []
        self.server: asyncio.base_events.Server | None = None
        self.port = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                method, path, _ = line.decode().split(" ", 2)
                headers: dict[str, str] = {"_path": path, "_method": method}
                while (h := await reader.readline()) not in (b"\r\n", b""):
                    key, _, value = h.decode().partition(":")
                    headers[key.strip().lower()] = value.strip()
                self.requests.append(headers)
                auth = headers.get("authorization", "")
                if path != "/auth/v3/userinfo":
                    status, body = 404, b"{}"
                elif auth == f"Bearer {GOOD}":
                    status, body = 200, json.dumps(GOOD_INFO).encode()
                elif auth == "Bearer broken":
                    status, body = 500, b"oops"
                elif auth == "Bearer garbage":
                    status, body = 200, b"<html>"
                else:
                    status, body = 401, b'{"error":"invalid_token"}'
                writer.write(
                    f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n".encode() + body
                )
                await writer.drain()
        finally:
            writer.close()

    async def __aenter__(self) -> FakeAuthServer:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


@pytest.fixture
async def fake() -> AsyncIterator[FakeAuthServer]:
    async with FakeAuthServer() as server:
        yield server


async def test_valid_token_and_cache(fake: FakeAuthServer) -> None:
    now = [0.0]
    provider = GwsAuthProvider(f"http://127.0.0.1:{fake.port}/", ttl=30, clock=lambda: now[0])
    try:
        principal = await provider.authenticate(GOOD, trace_id="ab" * 8)
        assert principal.name == "agent7" and principal.tenant == "ccid1"
        assert principal.roles == {"agent", "supervisor"}
        assert fake.requests[0]["x-b3-traceid"] == "ab" * 8
        assert fake.requests[0]["_path"] == "/auth/v3/userinfo"
        await provider.authenticate(GOOD)
        assert provider.lookups == 1 and len(fake.requests) == 1
        now[0] += 31  # the cached answer expires
        await provider.authenticate(GOOD)
        assert provider.lookups == 2
        # The cache is keyed by a hash: the token itself is not kept.
        assert all(len(key) == 32 for key in provider._cache)
    finally:
        await provider.aclose()


async def test_concurrent_lookups_share_one_request(fake: FakeAuthServer) -> None:
    provider = GwsAuthProvider(f"http://127.0.0.1:{fake.port}")
    try:
        results = await asyncio.gather(*(provider.authenticate(GOOD) for _ in range(5)))
        assert {p.name for p in results} == {"agent7"}
        assert provider.lookups == 1
    finally:
        await provider.aclose()


async def test_rejected_and_unavailable(fake: FakeAuthServer) -> None:
    provider = GwsAuthProvider(f"http://127.0.0.1:{fake.port}")
    try:
        with pytest.raises(AuthError):
            await provider.authenticate("bad-token")
        with pytest.raises(AuthUnavailable, match="HTTP 500"):
            await provider.authenticate("broken")
        with pytest.raises(AuthUnavailable, match="invalid JSON"):
            await provider.authenticate("garbage")
        with pytest.raises(AuthError):
            await provider.authenticate("")
        # Failures are not cached.
        with pytest.raises(AuthError):
            await provider.authenticate("bad-token")
        assert provider.lookups == 4
    finally:
        await provider.aclose()


async def test_unreachable_auth_service() -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    provider = GwsAuthProvider(f"http://127.0.0.1:{port}", timeout=2)
    try:
        with pytest.raises(AuthUnavailable, match="unreachable"):
            await provider.authenticate(GOOD)
    finally:
        await provider.aclose()
