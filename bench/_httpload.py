"""Cheap load side for bench/chat_bench.py: sender and listener processes.

``sender`` posts the widgets' form messages (``data[type]=Text&data[text]=...`` to
``{selfUri}/messages`` with ``x-api-key`` and ``x-nexus-client-key``) over a minimal asyncio
HTTP/1.1 keep-alive client, paced at its share of the rate. The message text carries the
send time (``time.monotonic_ns``, CLOCK_MONOTONIC, shared by all processes of the box) so the
``listener`` process, which holds the agents' WebSockets, computes each latency on arrival.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any
from urllib.parse import quote

try:
    import uvloop
except ImportError:  # pragma: no cover
    uvloop = None


def _run(coro: Any) -> Any:
    if uvloop is not None:
        return uvloop.run(coro)
    return asyncio.run(coro)


def cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


class Http1:
    """One keep-alive HTTP/1.1 connection: write a request, read status + Content-Length body."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, host: str, port: int) -> Http1:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    async def request(self, data: bytes) -> tuple[int, bytes]:
        self.writer.write(data)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        chunked = False
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
        if chunked:
            body = b""
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                body += await self.reader.readexactly(size + 2)
                if size == 0:
                    break
            return status, body
        return status, (await self.reader.readexactly(length)) if length else b""

    def close(self) -> None:
        self.writer.close()


class Session:
    """One customer: precomputed request head; a small pool of keep-alive connections."""

    def __init__(self, host: str, port: int, api_key: str, self_uri: str, token: str) -> None:
        self.host = host
        self.port = port
        self.head = (f"POST {self_uri}/messages HTTP/1.1\r\nHost: {host}:{port}\r\n"
                     f"x-api-key: {api_key}\r\nx-nexus-client-key: {token}\r\n"
                     "Content-Type: application/x-www-form-urlencoded\r\n"
                     "Content-Length: ").encode()
        self.idle: list[Http1] = []

    async def post_text(self, text: str) -> int:
        body = ("data%5Btype%5D=Text&data%5Btext%5D=" + quote(text, safe="")).encode()
        conn = self.idle.pop() if self.idle else await Http1.open(self.host, self.port)
        try:
            status, _ = await conn.request(self.head + str(len(body)).encode() + b"\r\n\r\n"
                                           + body)
        except BaseException:
            conn.close()
            raise
        self.idle.append(conn)
        return status


def sender(conn: Any, index: int, count: int, host: str, port: int, api_key: str,
           sessions: list[tuple[str, str]], rate: float) -> None:
    """Process: send ``count``-strided messages ``index, index+count, ...`` at their slots."""
    _run(_sender(conn, index, count, host, port, api_key, sessions, rate))


async def _sender(conn: Any, index: int, count: int, host: str, port: int, api_key: str,
                  sessions: list[tuple[str, str]], rate: float) -> None:
    clients = [Session(host, port, api_key, uri, token) for uri, token in sessions]
    for client in clients:
        client.idle.append(await Http1.open(host, port))
    conn.send("ready")
    start_ns, total = conn.recv()
    cpu0 = cpu_seconds()
    errors = ok = 0
    late_ns = 0
    answered: list[tuple[int, float]] = []  # (send time, ms until the POST's answer)

    async def send(i: int, client: Session) -> None:
        nonlocal errors, ok
        sent = time.monotonic_ns()
        try:
            status = await client.post_text(f"bench-{sent}-{i}")
        except (OSError, asyncio.IncompleteReadError, ValueError):
            errors += 1
            return
        if status == 200:
            ok += 1
            answered.append((sent, (time.monotonic_ns() - sent) / 1e6))
        else:
            errors += 1

    tasks = set()
    mine = range(index, total, count)
    for n, i in enumerate(mine):
        due = start_ns + int(i * 1e9 / rate)
        delay = due - time.monotonic_ns()
        if delay > 0:
            await asyncio.sleep(delay / 1e9)
        else:
            late_ns = max(late_ns, -delay)
        task = asyncio.create_task(send(i, clients[n % len(clients)]))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    while tasks:
        await asyncio.gather(*list(tasks))
    end_ns = time.monotonic_ns()
    for client in clients:
        for c in client.idle:
            c.close()
    conn.send({"ok": ok, "errors": errors, "end_ns": end_ns, "max_late_ms": late_ns / 1e6,
               "cpu_s": cpu_seconds() - cpu0, "answered": answered})


def listener(conn: Any, urls: list[str]) -> None:
    """Process: hold the agents' WebSockets; record the latency of every ``bench-`` message."""
    _run(_listener(conn, urls))


async def _listener(conn: Any, urls: list[str]) -> None:
    import websockets

    latencies: dict[int, float] = {}
    sent_at: dict[int, int] = {}
    sockets = [await websockets.connect(url, open_timeout=15, max_queue=None) for url in urls]

    async def listen(ws: Any) -> None:
        try:
            async for raw in ws:
                if "bench-" not in raw:
                    continue
                now = time.monotonic_ns()
                event = json.loads(raw)
                if event.get("kind") != "message":
                    continue
                text = event["message"].get("text") or ""
                if text.startswith("bench-"):
                    _, sent, seq = text.split("-")
                    if int(seq) not in latencies:
                        latencies[int(seq)] = (now - int(sent)) / 1e6
                        sent_at[int(seq)] = int(sent)
        except websockets.ConnectionClosed:
            pass

    tasks = [asyncio.create_task(listen(ws)) for ws in sockets]
    conn.send("ready")
    cpu0 = cpu_seconds()
    expect = None
    deadline = None
    while True:
        await asyncio.sleep(0.05)
        if conn.poll():
            expect = conn.recv()
            deadline = time.monotonic() + 10
        if expect is not None and (len(latencies) >= expect or time.monotonic() > deadline):
            break
    cpu = cpu_seconds() - cpu0
    for task in tasks:
        task.cancel()
    for ws in sockets:
        await ws.close()
    conn.send({"latencies": list(latencies.values()), "cpu_s": cpu,
               "samples": [(sent_at[seq], ms) for seq, ms in latencies.items()]})
