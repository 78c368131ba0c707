"""Benchmark: customer -> agent relay over WebSocket, and the memory of open async sessions.

Usage: .venv/bin/python bench/chat_bench.py [--seconds 10] [--rate 1000] [--sessions 20000]
       [--workers 2] [--pg-url URL] [--redis-url URL]
       (defaults: $NEXUS_TEST_DB_URL / $NEXUS_TEST_REDIS_URL, else the local servers)

A real engine (``python -m engine.cli serve``, ``--workers 2``) on a throwaway PostgreSQL
database and the real Redis under a unique key prefix, with the sample config plus the chat
tests' additions (tests/integration/chat/conftest.py: a chat key with a high rate limit, a
second agent). Both are removed afterwards.

1. Relay: the agents ``alice`` and ``bob`` (chat capacity 3 each) get ready and open their
   agent WebSockets; six customers open chats (widget form POSTs) that are accepted, one per
   agent slot. Then the customers send Text messages (form POSTs) paced at ``--rate`` per
   second in total for ``--seconds``; each message's latency is the time from the start of its
   POST until the agent's WebSocket delivers it. Prints count, p50, p90, p99 and max.
2. Memory: ``--sessions`` chats are created through the API (50 in flight) and left open;
   prints the summed RSS (``/proc/<pid>/status`` VmRSS) of the engine's processes (main and
   workers) before and after.

Goals (issue #5): p99 < 20 ms at 1,000 msg/s; < 1 GB RSS across workers for 20,000 sessions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.integration.chat.clients import AgentClient, WidgetClient  # noqa: E402
from tests.integration.chat.conftest import T1001, chat_config  # noqa: E402
from tests.integration.provisioning.harness import make_backend, start_engine  # noqa: E402


def rss_kb(pid: int) -> int:
    pids = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            pids += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            continue
    total = 0
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


async def relay(api: str, env: dict[str, str], seconds: float, rate: float) -> dict[str, Any]:
    key = env["T1001_WIDGET_LOAD_KEY"]
    agents = [AgentClient(api, T1001, name, env[f"T1001_{name.upper()}_PASSWORD"])
              for name in ("alice", "bob")]
    for agent in agents:
        await agent.login()
        await agent.presence("ready")
    received: dict[str, float] = {}
    waiters: dict[str, asyncio.Future[float]] = {}

    async def listen(ws: Any) -> None:
        async for raw in ws:
            event = json.loads(raw)
            if event.get("kind") != "message":
                continue
            text = event["message"].get("text") or ""
            if text.startswith("bench-"):
                now = time.perf_counter()
                received[text] = now
                future = waiters.pop(text, None)
                if future is not None and not future.done():
                    future.set_result(now)

    sockets = [await agent.stream().__aenter__() for agent in agents]
    listeners = [asyncio.create_task(listen(ws)) for ws in sockets]
    customers: list[WidgetClient] = []
    for n in range(6):
        widget = WidgetClient(api, key)
        await widget.create(firstName=f"Bench{n}", endpoint="SMS_Main")
        customers.append(widget)
    for widget in customers:  # accept every offer (3 per agent)
        for _ in range(200):
            offered = [(agent, item) for agent in agents for item in await agent.interactions()
                       if item["conversationId"] == widget.session_id
                       and item["state"] == "offered"]
            if offered:
                agent, item = offered[0]
                await agent.act(item["id"], "accept")
                break
            await asyncio.sleep(0.05)
        else:
            raise RuntimeError(f"{widget.session_id} was never offered")

    latencies: list[float] = []
    errors = 0
    total = int(seconds * rate)

    async def send(i: int) -> None:
        nonlocal errors
        widget = customers[i % len(customers)]
        text = f"bench-{i}"
        loop = asyncio.get_running_loop()
        waiters[text] = loop.create_future()
        start = time.perf_counter()
        try:
            resp = await widget.send_raw(text)
        except httpx.HTTPError:
            errors += 1
            waiters.pop(text, None)
            return
        if resp.status_code != 200:
            errors += 1
            waiters.pop(text, None)
            return
        if text in received:
            arrived = received[text]
        else:
            try:
                arrived = await asyncio.wait_for(waiters[text], 10)
            except (TimeoutError, KeyError):
                errors += 1
                return
        latencies.append(arrived - start)

    began = time.perf_counter()
    tasks = []
    for i in range(total):
        due = began + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(send(i)))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - began
    for task in listeners:
        task.cancel()
    for ws in sockets:
        await ws.close()
    for widget in customers:
        await widget.http.aclose()
    for agent in agents:
        await agent.presence("not-ready")
        await agent.http.aclose()
    ms = [x * 1000 for x in latencies]
    return {
        "sent": total, "delivered": len(ms), "errors": errors,
        "achieved_rate": round(total / elapsed, 1),
        "p50_ms": round(percentile(ms, 0.50), 2), "p90_ms": round(percentile(ms, 0.90), 2),
        "p99_ms": round(percentile(ms, 0.99), 2), "max_ms": round(max(ms), 2),
    }


async def sessions(api: str, env: dict[str, str], count: int, pid: int) -> dict[str, Any]:
    key = env["T2002_CHAT_API_KEY"]
    before = rss_kb(pid)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for n in range(count):
        queue.put_nowait(n)
    created = failed = 0
    widget = WidgetClient(api, key)

    async def worker() -> None:
        nonlocal created, failed
        while not queue.empty():
            n = queue.get_nowait()
            try:
                resp = await widget.create_raw({"firstName": f"Async{n}",
                                                "endpoint": "SMS_Main"})
            except httpx.HTTPError:
                failed += 1
                continue
            if resp.status_code == 200:
                created += 1
            else:
                failed += 1

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(50)))
    elapsed = time.perf_counter() - began
    await widget.http.aclose()
    await asyncio.sleep(2)
    after = rss_kb(pid)
    return {"created": created, "failed": failed, "seconds": round(elapsed, 1),
            "per_second": round(created / elapsed, 1),
            "rss_before_mb": round(before / 1024, 1), "rss_after_mb": round(after / 1024, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--sessions", type=int, default=20000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--pg-url", default=os.environ.get(
        "NEXUS_TEST_DB_URL", "postgresql://postgres@127.0.0.1:5432/test"))
    parser.add_argument("--redis-url", default=os.environ.get(
        "NEXUS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"))
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="chat-bench-"))
    backend = make_backend("pg", tmp, args.pg_url, args.redis_url, args.workers)
    try:
        engine = start_engine(tmp / "engine", backend, chat_config(tmp),
                              extra_env={"NEXUS_LOG_FORMAT": "json"})
        try:
            report = {"workers": args.workers}
            report["relay"] = asyncio.run(relay(engine.api, engine.env, args.seconds, args.rate))
            print(json.dumps(report["relay"]), flush=True)
            if args.sessions:
                report["sessions"] = asyncio.run(
                    sessions(engine.api, engine.env, args.sessions, engine.proc.pid))
                print(json.dumps(report["sessions"]), flush=True)
            print(json.dumps(report, indent=2))
        finally:
            engine.stop()
    finally:
        backend.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
