"""A fake provider: a real HTTP/1.1 server on loopback (``asyncio.start_server``).

It records every request (method, path, query, headers, body) and answers from a script:
per path, a queue of :class:`Reply` (status, JSON or raw body, headers, and ``hold``: an
``asyncio.Event`` the reply waits for, to simulate a provider that does not answer in time),
else the path's default, else 200 ``{}``. Keep-alive is supported; bodies are read by
``Content-Length``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

REASONS = {200: "OK", 201: "Created", 202: "Accepted", 204: "No Content", 400: "Bad Request",
           401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 408: "Request Timeout",
           410: "Gone", 422: "Unprocessable Entity", 429: "Too Many Requests",
           500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable"}


@dataclass
class Reply:
    status: int = 200
    json: Any = None
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    hold: asyncio.Event | None = None  # answer only once set (or the client gives up)


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-cased names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def form(self) -> dict[str, str]:
        return dict(parse_qsl(self.body.decode(), keep_blank_values=True))


class FakeProvider:
    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self._queues: dict[str, deque[Reply]] = defaultdict(deque)
        self._defaults: dict[str, Reply | Callable[[Recorded], Reply]] = {}
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0
        self.arrived = asyncio.Condition()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def script(self, path: str, *replies: Reply) -> None:
        """Answer the next requests to ``path`` with ``replies``, in order."""
        self._queues[path].extend(replies)

    def default(self, path: str, reply: Reply | Callable[[Recorded], Reply]) -> None:
        self._defaults[path] = reply

    def on(self, path: str) -> list[Recorded]:
        return [r for r in self.requests if r.path == path]

    async def wait_for(self, count: int, path: str | None = None) -> None:
        async with self.arrived:
            await self.arrived.wait_for(
                lambda: len(self.on(path) if path else self.requests) >= count
            )

    async def start(self) -> FakeProvider:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    async def __aenter__(self) -> FakeProvider:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _reply_for(self, request: Recorded) -> Reply:
        queue = self._queues.get(request.path)
        if queue:
            return queue.popleft()
        found = self._defaults.get(request.path)
        if found is None:
            return Reply()
        return found(request) if callable(found) else found

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                method, target, _ = line.decode("latin-1").split(" ", 2)
                headers: dict[str, str] = {}
                while True:
                    raw = await reader.readline()
                    if raw in (b"\r\n", b"\n", b""):
                        break
                    name, _, value = raw.decode("latin-1").partition(":")
                    headers[name.strip().lower()] = value.strip()
                length = int(headers.get("content-length", "0") or 0)
                body = await reader.readexactly(length) if length else b""
                parts = urlsplit(target)
                request = Recorded(method, parts.path, dict(parse_qsl(parts.query)), headers, body)
                self.requests.append(request)
                async with self.arrived:
                    self.arrived.notify_all()
                reply = self._reply_for(request)
                if reply.hold is not None:
                    await reply.hold.wait()
                payload = reply.body
                out_headers = dict(reply.headers)
                if reply.status in (204, 304):
                    payload = b""  # no body allowed (it would corrupt the next keep-alive reply)
                elif payload is None:
                    payload = json.dumps({} if reply.json is None else reply.json).encode()
                    out_headers.setdefault("Content-Type", "application/json")
                head = [f"HTTP/1.1 {reply.status} {REASONS.get(reply.status, 'Status')}"]
                head += [f"{k}: {v}" for k, v in out_headers.items()]
                head.append(f"Content-Length: {len(payload)}")
                writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + payload)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            return
        finally:
            self._writers.discard(writer)
            with contextlib.suppress(Exception):
                writer.close()
