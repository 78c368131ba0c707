"""Benchmark: customer -> agent relay over WebSocket, and the memory of open async sessions.

Usage: .venv/bin/python bench/chat_bench.py [--seconds 10] [--rate 1000] [--warmup 2]
       [--sessions 20000] [--workers 2] [--dump FILE] [--pg-url URL] [--redis-url URL]
       (defaults: $NEXUS_TEST_DB_URL / $NEXUS_TEST_REDIS_URL, else the local servers)

A real engine (``python -m engine.cli serve``, ``--workers 2``) on a throwaway PostgreSQL
database and the real Redis under a unique key prefix, with the sample config plus the chat
tests' additions (tests/integration/chat/conftest.py: a chat key with a high rate limit, a
second agent). Both are removed afterwards. The interaction webhooks (the STARTED event of
each chat) go to a receiver in this process that answers 200, as a deployment's would: the
sample config's target is a closed port, whose retries would run through the measured
seconds (bench/ingest_bench.py does the same).

1. Relay: ``--agents`` agents (``alice``, ``bob`` and ``load01``..., chat capacity 3 each like
   the config's agents) get ready; a listener process holds their agent WebSockets; customers,
   one per agent slot and at most 50 (the sms-support queue's capacity), open chats (widget
   form POSTs) that are accepted. Then ``--senders`` processes (bench/_httpload.py: a minimal
   asyncio HTTP/1.1 keep-alive client, so the load side stays cheap) send the customers' Text
   messages (form POSTs ``data[type]=Text&data[text]=...`` to ``{selfUri}/messages`` with
   ``x-api-key`` and ``x-nexus-client-key``) paced at ``--rate`` per second in total for
   ``--seconds``; each text carries its send time (CLOCK_MONOTONIC), taken just before the
   POST, and the listener computes the latency when the agent's WebSocket delivers it. The
   schedule starts with ``--warmup`` seconds whose messages are not in the headline numbers
   (a fresh engine's first messages prepare statements and open pooled connections; the
   percentiles with them are printed too). Prints count, p50, p90, p99, max, errors, the
   CPU (% of one core) of the engine's processes (/proc/<pid>/stat) and of the load
   processes, and two kinds of stall during the measured seconds: the machine's scheduling
   stalls (bench/_stalls.py: a wake-up more than 10 ms late) and the database's slow WAL
   flushes (bench/_walstalls.py: a commit waiting 20 ms or more on the WAL), and how many of
   the engine's database requests took over 5, 10, 50 and 100 ms (its own
   ``nexus_db_request_duration_milliseconds``, warm-up included). One stall of 100 ms delays
   every message in flight and decides the p99 on its own.
2. Memory: ``--sessions`` chats are created through the API (50 in flight) and left open;
   prints the summed RSS (``/proc/<pid>/status`` VmRSS) of the engine's processes (main and
   workers) before and after.

Goals (issue #5): p99 < 20 ms at 1,000 msg/s; < 1 GB RSS across workers for 20,000 sessions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import _httpload  # noqa: E402
from _procstat import cpu_ticks, rss_kb  # noqa: E402
from _procstat import tree as engine_pids  # noqa: E402
from _receiver import Receiver, start_receiver  # noqa: E402
from _stalls import StallProbe  # noqa: E402
from _walstalls import WalStallProbe  # noqa: E402

from tests.integration.chat.clients import AgentClient, WidgetClient  # noqa: E402
from tests.integration.chat.conftest import T1001, chat_config  # noqa: E402
from tests.integration.provisioning.harness import make_backend, start_engine  # noqa: E402

AI_CONNECTOR_URL = "http://localhost:4084/athena/v1/agent-assist-chat/messages"


def point_webhooks(config: Path, receiver: ThreadingHTTPServer) -> None:
    """The ai-connector webhook target of ``config`` at ``receiver``."""
    tenant = config / "tenants" / "t1001.yaml"
    text = tenant.read_text()
    assert AI_CONNECTOR_URL in text, "the sample config's webhook target moved"
    tenant.write_text(text.replace(
        AI_CONNECTOR_URL, f"http://127.0.0.1:{receiver.server_port}/hooks"))


def slow_db_requests(metrics_url: str) -> dict[str, float]:
    """Database requests the engine timed (``nexus_db_request_duration_milliseconds``, every
    method, all workers) so far: how many in all, and how many took over 5, 10, 50 and
    100 ms. A chat message waits for its commit: when many requests take over 5 ms, the
    database's flushes are slow all through the run, short of the stalls the WAL probe
    reports (20 ms or more)."""
    bounds = {"5.0": 5, "10.0": 10, "50.0": 50, "100.0": 100}
    total, within = 0.0, dict.fromkeys(bounds.values(), 0.0)
    text = httpx.get(metrics_url, timeout=10).text
    for family in text_string_to_metric_families(text):
        if family.name != "nexus_db_request_duration_milliseconds":
            continue
        for sample in family.samples:
            if not sample.name.endswith("_bucket"):
                continue
            bound = sample.labels.get("le") or ""
            if bound == "+Inf":
                total += sample.value
            elif bound in bounds:
                within[bounds[bound]] += sample.value
    return {"all": total, **{f"over_{ms}ms": total - n for ms, n in within.items()}}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def extra_agents(config: Path, count: int) -> list[str]:
    """``count`` more agents like alice and bob (queue sms-support, chat capacity 3)."""
    names = [f"load{n:02d}" for n in range(1, count + 1)]
    docs = [f"""\
apiVersion: nexus/v1
kind: User
name: {name}
tenant: t1001
spec:
  username: {name}
  firstName: Load{n}
  lastName: Agent
  employeeId: '{2000 + n}'
  roles: [agent]
  password: ${{env:T1001_{name.upper()}_PASSWORD}}
  agent:
    queues: [sms-support]
    capacity:
      chat: 3
      sms: 3
      email: 0
""" for n, name in enumerate(names, 1)]
    (config / "bench-agents.yaml").write_text("---\n".join(docs))
    return names


async def relay(api: str, env: dict[str, str], seconds: float, rate: float,
                agent_names: list[str], senders: int, engine_pid: int,
                dump: Path | None = None, warmup: float = 0.0,
                db_url: str | None = None, metrics_url: str | None = None) -> dict[str, Any]:
    key = env["T1001_WIDGET_LOAD_KEY"]
    agents = [AgentClient(api, T1001, name, env[f"T1001_{name.upper()}_PASSWORD"])
              for name in agent_names]
    for agent in agents:
        await agent.login()
        await agent.presence("ready")
    ctx = mp.get_context("spawn")
    listen_conn, child = ctx.Pipe()
    root = api.replace("http://", "ws://", 1)
    urls = [f"{root}/nexus/v3/agent/stream?{urlencode({'access_token': a.access_token})}"
            for a in agents]
    listener = ctx.Process(target=_httpload.listener, args=(child, urls), daemon=True)
    listener.start()
    if not listen_conn.poll(60):
        raise RuntimeError("the listener did not start")
    assert listen_conn.recv() == "ready"

    customers: list[WidgetClient] = []
    # one per agent chat slot (capacity 3), at most the queue sms-support's capacity (50)
    for n in range(min(3 * len(agents), 50)):
        widget = WidgetClient(api, key)
        await widget.create(firstName=f"Bench{n}", endpoint="SMS_Main")
        customers.append(widget)
    pending = {w.session_id for w in customers}
    for _ in range(400):  # accept every offer
        for agent in agents:
            for item in await agent.interactions():
                if item["conversationId"] in pending and item["state"] == "offered":
                    await agent.act(item["id"], "accept")
                    pending.discard(item["conversationId"])
        if not pending:
            break
        await asyncio.sleep(0.05)
    else:
        raise RuntimeError(f"{len(pending)} sessions were never offered")
    for widget in customers:
        await widget.http.aclose()

    host, port = api.removeprefix("http://").split(":")
    total = int((warmup + seconds) * rate)
    procs, conns = [], []
    for index in range(senders):
        share = [(w.self_uri, w.token) for w in customers[index::senders]]
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_httpload.sender, daemon=True,
                           args=(child, index, senders, host, int(port), key, share, rate))
        proc.start()
        procs.append(proc)
        conns.append(parent)
    for conn in conns:
        if not conn.poll(60):
            raise RuntimeError("a sender did not start")
        assert conn.recv() == "ready"
    pids = engine_pids(engine_pid)
    probe = StallProbe().start()
    wal = WalStallProbe(db_url).start() if db_url else None
    db0 = slow_db_requests(metrics_url) if metrics_url else None
    ticks0 = cpu_ticks(pids)
    began = time.monotonic_ns() + 200_000_000
    for conn in conns:
        conn.send((began, total))
    results = [conn.recv() for conn in conns]
    ticks1 = cpu_ticks(pids)
    ended = max(r["end_ns"] for r in results)
    probe.stop()
    if wal is not None:
        wal.stop()
    db1 = slow_db_requests(metrics_url) if metrics_url else None
    ok = sum(r["ok"] for r in results)
    listen_conn.send(ok)
    heard = listen_conn.recv()
    for proc in [*procs, listener]:
        proc.join(10)
    for agent in agents:
        await agent.presence("not-ready")
        await agent.http.aclose()
    elapsed = (ended - began) / 1e9
    hz = os.sysconf("SC_CLK_TCK")
    cpu = {("main" if p == engine_pid else f"worker{p}"):
           round(100 * (ticks1[p] - ticks0.get(p, 0)) / hz / elapsed, 1)
           for p in ticks1}
    samples = sorted(heard["samples"])
    # --dump: one line per message: ms since the start of the schedule, latency in ms; and
    # the same for the POST's answer in FILE.post
    if dump:
        dump.write_text("".join(f"{(sent - began) / 1e6:.3f} {lat:.3f}\n"
                                for sent, lat in samples))
        posted = sorted(x for r in results for x in r["answered"])
        dump.with_suffix(".post").write_text("".join(f"{(sent - began) / 1e6:.3f} {ms:.3f}\n"
                                                     for sent, ms in posted))
    measured_from = began + int(warmup * 1e9)
    ms = [lat for sent, lat in samples if sent >= measured_from]
    every = [lat for _, lat in samples]
    posts = [ms for r in results for sent, ms in r["answered"] if sent >= measured_from]
    post_errors = sum(r["errors"] for r in results)
    return {
        "rate": rate, "sessions": len(customers), "agents": len(agents), "senders": senders,
        "warmup_s": warmup, "sent": total, "delivered": len(every),
        "errors": post_errors + ok - len(every), "post_errors": post_errors,
        "achieved_rate": round(total / elapsed, 1), "measured": len(ms),
        "p50_ms": round(percentile(ms, 0.50), 2), "p90_ms": round(percentile(ms, 0.90), 2),
        "p99_ms": round(percentile(ms, 0.99), 2), "max_ms": round(max(ms), 2),
        # the customer's POST until its 200 (stored and published): the rest of the relay
        # latency is the fan-out to the agent's WebSocket
        "post_p50_ms": round(percentile(posts, 0.50), 2),
        "post_p99_ms": round(percentile(posts, 0.99), 2),
        "with_warmup": {"p50_ms": round(percentile(every, 0.50), 2),
                        "p99_ms": round(percentile(every, 0.99), 2),
                        "max_ms": round(max(every), 2)},
        "max_send_lag_ms": round(max(r["max_late_ms"] for r in results), 2),
        "machine_stalls": probe.since(measured_from, ended).as_dict(),
        "wal_stalls": wal.since(measured_from, ended).as_dict() if wal else None,
        # the engine's own timings of its database requests, warm-up included
        "db_requests": {k: db1[k] - db0[k] for k in db0} if db0 and db1 else None,
        "engine_cpu_pct": cpu,
        "load_cpu_pct": {"senders": [round(100 * r["cpu_s"] / elapsed, 1) for r in results],
                         "listener": round(100 * heard["cpu_s"] / elapsed, 1)},
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
    parser.add_argument("--agents", type=int, default=17,
                        help="agents (alice, bob and load01...), chat capacity 3 each; "
                        "one customer session per slot, at most 50 (the queue's capacity)")
    parser.add_argument("--senders", type=int, default=2, help="sender processes")
    parser.add_argument("--warmup", type=float, default=2.0,
                        help="seconds sent at the rate before the measured --seconds (the "
                        "first messages of a fresh engine warm its pools and caches); their "
                        "latencies are reported apart, under with_warmup")
    parser.add_argument("--dump", type=Path, help="write each message's send time and "
                        "latency (ms) to this file, to see when the slow ones happened")
    parser.add_argument("--pg-url", default=os.environ.get(
        "NEXUS_TEST_DB_URL", "postgresql://postgres@127.0.0.1:5432/test"))
    parser.add_argument("--redis-url", default=os.environ.get(
        "NEXUS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"))
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="chat-bench-"))
    backend = make_backend("pg", tmp, args.pg_url, args.redis_url, args.workers)
    try:
        config = chat_config(tmp)
        receiver = start_receiver()
        point_webhooks(config, receiver)
        names = ["alice", "bob", *extra_agents(config, max(0, args.agents - 2))]
        engine = start_engine(tmp / "engine", backend, config,
                              extra_env={"NEXUS_LOG_FORMAT": "json",
                                         # passed through to compare: 0 = group commit off
                                         "NEXUS_GROUP_COMMIT":
                                         os.environ.get("NEXUS_GROUP_COMMIT", "1")})
        try:
            report = {"workers": args.workers}
            report["relay"] = asyncio.run(relay(engine.api, engine.env, args.seconds, args.rate,
                                                 names, args.senders, engine.proc.pid,
                                                 args.dump, args.warmup, backend.db_url,
                                                 engine.metrics))
            report["relay"]["webhooks_received"] = Receiver.received
            print(json.dumps(report["relay"]), flush=True)
            if args.sessions:
                report["sessions"] = asyncio.run(
                    sessions(engine.api, engine.env, args.sessions, engine.proc.pid))
                print(json.dumps(report["sessions"]), flush=True)
            print(json.dumps(report, indent=2))
        finally:
            engine.stop()
            receiver.shutdown()
    finally:
        backend.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
