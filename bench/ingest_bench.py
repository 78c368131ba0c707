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

Load: ``wrk`` with a Lua script. wrk's Lua has no HMAC, so N signed bodies (unique message ids)
are precomputed into the script and each wrk thread walks its own slice (no id is sent twice,
so no request takes the duplicate fast path). Two phases per server:

1. throughput: ``--connections`` connections as fast as possible for ``--seconds``: msg/s;
2. latency at ~2,000 msg/s: ``--rate-connections`` connections, each pausing so that together
   they offer about 2,000 requests/s (wrk's ``delay()``): p50/p99.

Afterwards the engine's database is counted: every 200 must be a stored message.
Goals (issue #6): >= 5,000 msg/s and >= 0.2 x bare; p99 < 50 ms at 2,000 msg/s.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

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
local delay_ms = {DELAY}
local thread_no = 0

function setup(thread)
  thread:set("slice", thread_no)
  thread_no = thread_no + 1
end

function init(args)
  slice = tonumber(wrk.thread:get("slice")) or 0
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

if delay_ms > 0 then
  function delay()
    return delay_ms
  end
end
"""


def lua_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def make_script(path: Path, secret: str, count: int, senders: int, threads: int,
                delay_ms: int, tag: str) -> None:
    bodies, sigs = [], []
    for i in range(count):
        body = json.dumps({"messages": [{
            "id": f"{tag}-{i}", "type": "Text", "text": f"bench message {i}",
            "channel": {"from": {"id": f"+1650{(i % senders):07d}", "nickname": "Bench"},
                        "to": {"id": CHANNEL}}}]}, separators=(",", ":"))
        bodies.append(lua_string(body))
        sigs.append(lua_string("sha1=" + hmac.new(secret.encode(), body.encode(),
                                                  hashlib.sha1).hexdigest()))
    text = (LUA.replace("{BODIES}", "{" + ",".join(bodies) + "}")
            .replace("{SIGS}", "{" + ",".join(sigs) + "}")
            .replace("{THREADS}", str(threads)).replace("{DELAY}", str(delay_ms))
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


def wait_http(url: str, deadline: float = 60) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            httpx.get(url, timeout=2)
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise SystemExit(f"{url} did not come up")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def measure(url: str, secret: str, args: argparse.Namespace, tmp: Path, tag: str) -> dict:
    # throughput: enough unique bodies for a generous upper bound of the run
    count = max(20_000, args.max_rate * args.seconds)
    fast = tmp / f"{tag}-fast.lua"
    make_script(fast, secret, count, args.senders, args.threads, 0,
                f"{tag}-f-{uuid.uuid4().hex[:6]}")
    throughput = run_wrk(url, fast, args.seconds, args.connections, args.threads)
    delay = max(1, round(args.rate_connections * 1000 / 2000))
    slow = tmp / f"{tag}-slow.lua"
    make_script(slow, secret, max(4_000, 2_200 * args.seconds), args.senders, args.threads,
                delay, f"{tag}-s-{uuid.uuid4().hex[:6]}")
    latency = run_wrk(url, slow, args.seconds, args.rate_connections, args.threads)
    return {"throughput": throughput, "latency": latency}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db-url", required=True, help="PostgreSQL server URL (a database "
                        "is created on it and dropped afterwards)")
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--senders", type=int, default=2000)
    parser.add_argument("--rate-connections", type=int, default=20)
    parser.add_argument("--max-rate", type=int, default=8000,
                        help="upper bound of msg/s used to size the unique-id pool")
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
    )

    tmp = Path(tempfile.mkdtemp(prefix="nexus-ingest-bench-"))
    backend = make_backend("pg", tmp, args.db_url, args.redis_url, workers=args.workers)
    results: dict[str, dict] = {}
    try:
        config = messaging_config(tmp, "http://127.0.0.1:9")  # sends are not part of this run
        secrets = dev_secrets(config, tmp / "dev.env")
        secrets.setdefault("T1001_ADMIN_PASSWORD", "unused")
        env = base_env(tmp, backend, secrets)
        env["NEXUS_LOG_FORMAT"] = "json"
        port, metrics_port = free_port(), free_port()
        log = (tmp / "engine.log").open("wb")
        engine = subprocess.Popen(serve_command(config, backend, port, metrics_port), cwd=ROOT,
                                  env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_http(f"http://127.0.0.1:{port}/health")
            time.sleep(3)  # every worker up
            results["engine"] = measure(f"http://127.0.0.1:{port}",
                                        secrets["T1001_ASYNC_API_SECRET"], args, tmp, "engine")
        finally:
            stop(engine)
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
            results["bare"] = measure(f"http://127.0.0.1:{bare_port}", "x", args, tmp, "bare")
        finally:
            stop(bare)
    finally:
        backend.close()
        shutil.rmtree(tmp, ignore_errors=True)

    e, b = results["engine"], results["bare"]
    accepted = (e["throughput"]["total"] - e["throughput"]["non2xx"]
                + e["latency"]["total"] - e["latency"]["non2xx"])
    print(f"workers={args.workers} connections={args.connections} threads={args.threads} "
          f"seconds={args.seconds} senders={args.senders}")
    for name, r in (("engine", e), ("bare", b)):
        t, lat = r["throughput"], r["latency"]
        print(f"{name:6s} throughput {t['rate']:9.1f} msg/s (p50 {t['p50']:.2f} ms, p99 "
              f"{t['p99']:.2f} ms, non-2xx {t['non2xx']}, {t['errors'] or 'no socket errors'})")
        print(f"{name:6s} at ~2000/s  {lat['rate']:9.1f} msg/s  p50 {lat['p50']:.2f} ms  "
              f"p99 {lat['p99']:.2f} ms  non-2xx {lat['non2xx']}")
    print(f"ratio engine/bare {e['throughput']['rate'] / b['throughput']['rate']:.3f}")
    print(f"durable: {stored} stored messages for {accepted} accepted requests "
          f"({conversations} conversations)")


if __name__ == "__main__":
    main()
