"""Benchmark: signed inbound SMS (Async gateway API) into the real engine vs a bare Sanic handler.

Usage: .venv/bin/python bench/ingest_bench.py --db-url postgresql://postgres@127.0.0.1:5432/test
       --redis-url redis://127.0.0.1:6379/0 [--seconds 10] [--connections 64] [--threads 2]
       [--workers 2] [--senders 2000] [--rate-connections 20]

Both servers run in the same run, as subprocesses with the same worker count:

* the real engine (``python -m engine.cli serve``, the sample config without UCS) on a throwaway
  PostgreSQL database (created and dropped here) and the real Redis (a unique key prefix,
  deleted afterwards). Each request is a ``POST /nexus/v3/channels/16504661149/messages`` with
  ``x-ccid`` and ``X-Hub-Signature`` (HMAC-SHA1 of the raw body with the channel's api secret):
  signature check, idempotency key in Redis, opt-out keyword check, the conversation of the
  sender (``--senders`` distinct senders: the first message of each opens a conversation and an
  interaction, STARTED event, routing), the message stored durably before the 200;
* a bare Sanic app whose one handler reads the body and answers the same envelope.

Load: first one message from every sender (a minimal asyncio client over ``--connections``
keep-alive connections): each opens a conversation, timed on its own as new
conversations/s. Then ``wrk`` with a Lua script. wrk's Lua has no HMAC, so N signed bodies
(unique message ids) are precomputed into the script and each wrk thread walks its own slice
(no id is sent twice, so no request takes the duplicate fast path). Two phases per server:

1. throughput: ``--connections`` connections as fast as possible for ``--seconds``: msg/s
   into the open conversations;
2. latency at ``--rate`` (2,000) msg/s: ``--rate-connections`` connections on a fixed
   schedule (each thread's next request is due one interval after its previous one, whatever
   the latency, as long as a connection is free): the achieved rate, p50/p99.

Afterwards the engine's database is counted: every 200 must be a stored message. The engine's
throughput phase also reports PostgreSQL's CPU per message (all ``postgres`` processes of the
machine, this run's probe included) and about how many messages each commit carried. Each phase
also reports the machine's scheduling stalls (bench/_stalls.py: wake-ups more than 10 ms
late) and, for the engine, the database's slow WAL flushes (bench/_walstalls.py), which tell
a slow machine or disk from slow code.
Goals (issue #6): >= 5,000 msg/s and >= 0.2 x bare; p99 < 50 ms at 2,000 msg/s.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _procstat import cpu_seconds, cpu_seconds_named  # noqa: E402
from _receiver import Receiver, start_receiver  # noqa: E402
from _stalls import StallProbe  # noqa: E402
from _walstalls import WalStallProbe  # noqa: E402

T1001 = "578ec98e-f07c-46ad-9675-f36c22f3ba9f"
CHANNEL = "16504661149"
PATH = f"/nexus/v3/channels/{CHANNEL}/messages"

BARE_APP = """
import sys
from sanic import Sanic
from sanic.response import json

app = Sanic("bare")
app.config.MOTD = False
app.config.ACCESS_LOG = False

@app.post("/nexus/v3/channels/<channel>/messages")
async def messages(request, channel):
    body = request.body
    return json({"status": {"code": 0}, "data": {"ids": [str(len(body))]}})

if __name__ == "__main__":
    app.run(host="127.0.0.1", port=int(sys.argv[1]), workers=int(sys.argv[2]),
            access_log=False, single_process=sys.argv[2] == "1")
"""

LUA = """
local bodies = {BODIES}
local sigs = {SIGS}
local n = #bodies
local counter = 0
local slice = 0
local threads = {THREADS}
local rate = {RATE}
local thread_no = 0
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } nexus_timespec;
int clock_gettime(int clk_id, nexus_timespec *tp);
]]
local ts = ffi.new("nexus_timespec")
local function now_ms()
  ffi.C.clock_gettime(1, ts)  -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end
local interval = 0
local due = 0

function setup(thread)
  thread:set("slice", thread_no)
  thread_no = thread_no + 1
end

function init(args)
  slice = tonumber(wrk.thread:get("slice")) or 0
  if rate > 0 then
    interval = threads * 1000.0 / rate  -- this thread's share of the schedule
    due = now_ms()
  end
end

function request()
  local per = math.floor(n / threads)
  local i = slice * per + (counter % per) + 1
  counter = counter + 1
  local headers = {}
  headers["Content-Type"] = "application/json"
  headers["x-ccid"] = "{CCID}"
  headers["X-Hub-Signature"] = sigs[i]
  return wrk.format("POST", "{PATH}", headers, bodies[i])
end

if rate > 0 then
  -- a fixed schedule (open loop while enough connections are idle): each request is due
  -- one interval after the previous one of this thread, whatever the latency was
  function delay()
    due = due + interval
    local wait = due - now_ms()
    if wait < 0 then return 0 end
    return wait
  end
end
"""


def lua_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def make_script(path: Path, secret: str, count: int, senders: int, threads: int,
                rate: int, tag: str, first: int = 0) -> None:
    """``count`` signed bodies with unique ids, sender ``(first + i) % senders``; wrk
    thread k sends slice k of them. ``rate`` > 0: paced at that many requests/s in all."""
    bodies, sigs = [], []
    for j in range(count):
        i = first + j
        body = json.dumps({"messages": [{
            "id": f"{tag}-{i}", "type": "Text", "text": f"bench message {i}",
            "channel": {"from": {"id": f"+1650{(i % senders):07d}", "nickname": "Bench"},
                        "to": {"id": CHANNEL}}}]}, separators=(",", ":"))
        bodies.append(lua_string(body))
        sigs.append(lua_string("sha1=" + hmac.new(secret.encode(), body.encode(),
                                                  hashlib.sha1).hexdigest()))
    text = (LUA.replace("{BODIES}", "{" + ",".join(bodies) + "}")
            .replace("{SIGS}", "{" + ",".join(sigs) + "}")
            .replace("{THREADS}", str(threads)).replace("{RATE}", str(rate))
            .replace("{CCID}", T1001).replace("{PATH}", PATH))
    path.write_text(text)


def run_wrk(url: str, script: Path, seconds: int, connections: int, threads: int) -> dict:
    out = subprocess.run(
        ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s", "--latency",
         "-s", str(script), url], capture_output=True, text=True, check=True, timeout=seconds + 60,
    ).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)

    def pct(label: str) -> float:
        match = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s)", out, re.M)
        value, unit = float(match.group(1)), match.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    return {"rate": rate, "total": total, "non2xx": int(non2xx.group(1)) if non2xx else 0,
            "errors": errors.group(1) if errors else "", "p50": pct("50"), "p99": pct("99")}


def db_commits(db_url: str) -> int:
    """Transactions committed in ``db_url``'s database so far (``pg_stat_database``; each
    backend reports its counts about once a second, so a phase's count is close, not exact)."""
    return int(subprocess.run(
        ["psql", db_url, "-tAc",
         "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"],
        capture_output=True, text=True, check=True).stdout.strip())


def wait_http(url: str, deadline: float = 60) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            httpx.get(url, timeout=2)
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise SystemExit(f"{url} did not come up")


def signed_body(secret: str, message_id: str, sender: int) -> tuple[bytes, str]:
    body = json.dumps({"messages": [{
        "id": message_id, "type": "Text", "text": f"hello from {sender}",
        "channel": {"from": {"id": f"+1650{sender:07d}", "nickname": "Bench"},
                    "to": {"id": CHANNEL}}}]}, separators=(",", ":")).encode()
    return body, "sha1=" + hmac.new(secret.encode(), body, hashlib.sha1).hexdigest()


async def _post_all(port: int, requests: list[tuple[bytes, str]], connections: int) -> int:
    """POST every request over ``connections`` keep-alive connections (a minimal HTTP/1.1
    client: the load side must cost little CPU); returns the number of 2xx answers."""
    queue = list(reversed(requests))
    ok = 0

    async def worker() -> None:
        nonlocal ok
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while queue:
                body, signature = queue.pop()
                writer.write(
                    f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    f"Content-Type: application/json\r\nx-ccid: {T1001}\r\n"
                    f"X-Hub-Signature: {signature}\r\nContent-Length: {len(body)}\r\n\r\n"
                    .encode() + body)
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))
                await reader.readexactly(length)
                ok += head.startswith(b"HTTP/1.1 2")
        finally:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(connections)))
    return ok


def warm_up(port: int, secret: str, senders: int, connections: int) -> dict:
    """The first message of every sender: each opens a conversation (contact matching, a new
    interaction and its STARTED event, routing). Timed on its own: new conversations/s."""
    tag = uuid.uuid4().hex[:8]
    requests = [signed_body(secret, f"warm-{tag}-{i}", i) for i in range(senders)]
    start = time.perf_counter()
    ok = asyncio.run(_post_all(port, requests, connections))
    elapsed = time.perf_counter() - start
    return {"count": senders, "ok": ok, "seconds": elapsed, "rate": senders / elapsed}


def measure(port: int, secret: str, args: argparse.Namespace, tmp: Path, tag: str,
            pid: int, db_url: str | None = None) -> dict:
    url = f"http://127.0.0.1:{port}"
    out: dict = {}
    if tag == "engine":
        out["warm"] = warm_up(port, secret, args.senders, args.connections)
        # the new conversations' STARTED webhooks are delivered in the background: let them
        # drain first, so that the throughput phase measures messages, not that backlog
        start, deadline = time.perf_counter(), time.monotonic() + 180
        while Receiver.received < args.senders and time.monotonic() < deadline:
            time.sleep(0.2)
        out["warm"]["webhooks"] = Receiver.received
        out["warm"]["drain"] = time.perf_counter() - start
    # throughput: enough unique bodies for a generous upper bound of the run
    count = max(20_000, args.max_rate * args.seconds)
    fast = tmp / f"{tag}-fast.lua"
    make_script(fast, secret, count, args.senders, args.threads, 0,
                f"{tag}-f-{uuid.uuid4().hex[:6]}")
    probe = StallProbe().start()
    wal = WalStallProbe(db_url).start() if db_url else None
    cpu0, pg0 = cpu_seconds(pid), cpu_seconds_named("postgres")
    commits0 = db_commits(db_url) if db_url else 0
    began = time.monotonic_ns()
    out["throughput"] = t = run_wrk(url, fast, args.seconds, args.connections, args.threads)
    # each wrk thread walks its own slice of the pool and wraps around at its end: past that,
    # ids repeat (answered as duplicates, stored once) and the durable count means nothing
    t["pool"] = count // args.threads * args.threads
    t["stalls"] = probe.since(began)
    t["wal"] = wal.since(began) if wal else None
    # the server's CPU per request: steadier than msg/s on a machine shared with the load
    answered = max(1, t["total"])
    t["cpu_us"] = 1e6 * (cpu_seconds(pid) - cpu0) / answered
    if db_url:
        # the database's share, and how many messages each group commit carried: PostgreSQL
        # pays about 200 us of CPU per commit whatever its size (issue #6's notes)
        t["pg_cpu_us"] = 1e6 * (cpu_seconds_named("postgres") - pg0) / answered
        t["commits"] = db_commits(db_url) - commits0
    paced = tmp / f"{tag}-paced.lua"
    make_script(paced, secret, max(4_000, args.rate * args.seconds * 11 // 10), args.senders,
                args.threads, args.rate, f"{tag}-p-{uuid.uuid4().hex[:6]}")
    began = time.monotonic_ns()
    out["latency"] = run_wrk(url, paced, args.seconds, args.rate_connections, args.threads)
    out["latency"]["stalls"] = probe.since(began)
    out["latency"]["wal"] = wal.since(began) if wal else None
    probe.stop()
    if wal is not None:
        wal.stop()
    return out


def add_load_arguments(parser: argparse.ArgumentParser, seconds: int) -> None:
    """The servers and the throughput load (shared with bench/ingest_ab.py)."""
    parser.add_argument("--db-url", required=True, help="PostgreSQL server URL (a database "
                        "is created on it and dropped afterwards)")
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--seconds", type=int, default=seconds)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--senders", type=int, default=2000)
    parser.add_argument("--max-rate", type=int, default=16000,
                        help="upper bound of msg/s used to size the unique-id pool (a run "
                        "that sends more than the pool repeats ids, and says so)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_load_arguments(parser, seconds=10)
    parser.add_argument("--rate", type=int, default=2000,
                        help="offered msg/s of the latency phase (paced)")
    parser.add_argument("--rate-connections", type=int, default=200,
                        help="connections of the latency phase (enough to stay open-loop)")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is required (apt-get install wrk)")

    from tests.integration.messaging.support import messaging_config
    from tests.integration.provisioning.harness import (
        base_env,
        dev_secrets,
        free_port,
        make_backend,
        serve_command,
        stop_process,
    )

    tmp = Path(tempfile.mkdtemp(prefix="nexus-ingest-bench-"))
    backend = make_backend("pg", tmp, args.db_url, args.redis_url, workers=args.workers)
    results: dict[str, dict] = {}
    try:
        # the interaction webhooks (STARTED of every new conversation) go to a receiver that
        # answers 200, as a deployment's would (a closed port would add retries to the run)
        receiver = start_receiver()
        config = messaging_config(tmp, f"http://127.0.0.1:{receiver.server_port}")
        secrets = dev_secrets(config, tmp / "dev.env")
        secrets.setdefault("T1001_ADMIN_PASSWORD", "unused")
        env = base_env(tmp, backend, secrets)
        env["NEXUS_LOG_FORMAT"] = "json"
        # passed through to compare: 0 = group commit off
        env["NEXUS_GROUP_COMMIT"] = os.environ.get("NEXUS_GROUP_COMMIT", "1")
        port, metrics_port = free_port(), free_port()
        log = (tmp / "engine.log").open("wb")
        engine = subprocess.Popen(serve_command(config, backend, port, metrics_port), cwd=ROOT,
                                  env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_http(f"http://127.0.0.1:{port}/health")
            time.sleep(3)  # every worker up
            results["engine"] = measure(port, secrets["T1001_ASYNC_API_SECRET"], args, tmp,
                                        "engine", engine.pid, backend.db_url)
        finally:
            stop_process(engine)
        stored = subprocess.run(
            ["psql", backend.db_url, "-tAc",
             "SELECT count(*) FROM messages WHERE provider_message_id IS NOT NULL"],
            capture_output=True, text=True, check=True).stdout.strip()
        conversations = subprocess.run(
            ["psql", backend.db_url, "-tAc", "SELECT count(*) FROM conversations"],
            capture_output=True, text=True, check=True).stdout.strip()
        app_file = tmp / "bare.py"
        app_file.write_text(BARE_APP)
        bare_port = free_port()
        bare = subprocess.Popen([sys.executable, str(app_file), str(bare_port), str(args.workers)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_http(f"http://127.0.0.1:{bare_port}/")
            time.sleep(2)
            results["bare"] = measure(bare_port, "x", args, tmp, "bare", bare.pid)
        finally:
            stop_process(bare)
    finally:
        backend.close()
        shutil.rmtree(tmp, ignore_errors=True)

    e, b = results["engine"], results["bare"]
    w = e["warm"]
    accepted = (w["ok"] + e["throughput"]["total"] - e["throughput"]["non2xx"]
                + e["latency"]["total"] - e["latency"]["non2xx"])
    print(f"workers={args.workers} connections={args.connections} threads={args.threads} "
          f"seconds={args.seconds} senders={args.senders} paced rate={args.rate}/s over "
          f"{args.rate_connections} connections")
    print(f"engine first messages (each opens a conversation): {w['count']} in "
          f"{w['seconds']:.1f} s = {w['rate']:.1f} new conversations/s ({w['ok']} 2xx); "
          f"their {w['webhooks']} STARTED webhooks delivered {w['drain']:.1f} s later")
    for name, r in (("engine", e), ("bare", b)):
        t, lat = r["throughput"], r["latency"]
        print(f"{name:6s} throughput {t['rate']:9.1f} msg/s (p50 {t['p50']:.2f} ms, p99 "
              f"{t['p99']:.2f} ms, non-2xx {t['non2xx']}, {t['errors'] or 'no socket errors'}; "
              f"server CPU {t['cpu_us']:.0f} us/msg)")
        print(f"{name:6s} paced {args.rate}/s: achieved {lat['rate']:9.1f} msg/s  p50 "
              f"{lat['p50']:.2f} ms  p99 {lat['p99']:.2f} ms  non-2xx {lat['non2xx']}")
        print(f"{name:6s} machine: throughput phase {t['stalls']}; paced phase "
              f"{lat['stalls']}")
        if "pg_cpu_us" in t:
            per_commit = t["total"] / t["commits"] if t["commits"] > 0 else float("nan")
            print(f"{name:6s} database in the throughput phase: PostgreSQL CPU "
                  f"{t['pg_cpu_us']:.0f} us/msg, about {per_commit:.1f} msg per commit "
                  f"({t['commits']} commits)")
        if t["wal"] is not None:
            print(f"{name:6s} database WAL flushes of 20 ms or more: throughput phase "
                  f"{t['wal'].count} (longest {t['wal'].max_ms:.0f} ms); paced phase "
                  f"{lat['wal'].count} (longest {lat['wal'].max_ms:.0f} ms)")
    print(f"ratio engine/bare {e['throughput']['rate'] / b['throughput']['rate']:.3f}")
    print(f"durable: {stored} stored messages for {accepted} accepted requests "
          f"({conversations} conversations)")
    if e["throughput"]["total"] > e["throughput"]["pool"] * 0.8:
        print(f"warning: {e['throughput']['total']} requests over a pool of "
              f"{e['throughput']['pool']} unique ids: a wrk thread may have wrapped around "
              f"and repeated ids; rerun with a larger --max-rate")

if __name__ == "__main__":
    main()
