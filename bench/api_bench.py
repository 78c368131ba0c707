"""Benchmark: an authenticated GET of a service definition vs a bare Sanic handler.

Usage: .venv/bin/python bench/api_bench.py [--seconds 10] [--concurrency 50] [--workers 1]
       [--db-url URL --redis-url URL]   (default: SQLite in a temp dir + memory://)

Both servers run in the same run on this machine, one after the other, as subprocesses with the
same worker count: the real engine (`python -m engine.cli serve`, the sample config) and a bare
Sanic app whose one handler answers a JSON body of the same size. The client is an asyncio
httpx client (HTTP/1.1 keep-alive, ``--concurrency`` requests in flight). The engine's request
does everything a real one does: trace id, access log, metrics, API-key authentication (cached
key lookup), the per-key rate limit in the cache, the permission and tenant check, the store
read, the envelope. Prints req/s of both and the ratio (goal: >= 0.5).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
T1001 = "578ec98e-f07c-46ad-9675-f36c22f3ba9f"

BARE_APP = """
import json as json_module
import sys
from sanic import Sanic
from sanic.response import json

app = Sanic("bare")
app.config.MOTD = False
app.config.ACCESS_LOG = False
PAYLOAD = json_module.loads({PAYLOAD})

@app.get("/nexus/v3/provisioning/services/<ccid>/<name>")
async def service(request, ccid, name):
    return json(PAYLOAD)

if __name__ == "__main__":
    app.run(host="127.0.0.1", port=int(sys.argv[1]), workers=int(sys.argv[2]),
            access_log=False, single_process=sys.argv[2] == "1")
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_up(url: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"{url} did not come up")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def load(url: str, headers: dict[str, str], seconds: float, concurrency: int) -> tuple[
        int, int]:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    ok = errors = 0
    async with httpx.AsyncClient(limits=limits, timeout=30, http2=False) as client:
        for _ in range(concurrency):  # warm the connections
            await client.get(url, headers=headers)
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal ok, errors
            while time.perf_counter() < deadline:
                resp = await client.get(url, headers=headers)
                if resp.status_code == 200:
                    ok += 1
                else:
                    errors += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return ok, errors


def load_wrk(url: str, headers: dict[str, str], seconds: float, concurrency: int) -> tuple[
        int, int]:
    """wrk (one thread, ``concurrency`` connections): a C client, so the client is not the
    bottleneck when measuring the bare handler."""
    cmd = ["wrk", "-t1", f"-c{concurrency}", f"-d{int(seconds)}s", "--latency"]
    for name, value in headers.items():
        cmd += ["-H", f"{name}: {value}"]
    out = subprocess.run([*cmd, url], capture_output=True, text=True, check=True).stdout
    total = errors = 0
    for line in out.splitlines():
        line = line.strip()
        if " requests in " in line:
            total = int(line.split()[0])
        elif line.startswith("Non-2xx or 3xx responses:"):
            errors = int(line.split(":")[1])
    return total - errors, errors


def start_engine(tmp: Path, args: argparse.Namespace) -> tuple[subprocess.Popen[bytes], str,
                                                             dict[str, str]]:
    sys.path.insert(0, str(ROOT / "scripts"))
    import dev_env

    dev_env.write_dev_env(ROOT / "config", tmp / "dev.env")
    secrets = dev_env.read_env_file(tmp / "dev.env")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NEXUS_", "PROMETHEUS_"))}
    env.update(secrets)
    env.update({"NEXUS_VAR_DIR": str(tmp / "var"), "NEXUS_LOG_FORMAT": "json",
                "PYTHONPATH": str(ROOT), "NEXUS_REDIS_PREFIX": f"bench-{os.getpid()}:"})
    port = free_port()
    db_url = args.db_url or f"sqlite:///{tmp / 'var' / 'nexus.db'}"
    log = (tmp / "engine.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
         "--metrics-port", str(free_port()), "--config", str(ROOT / "config"),
         "--db-url", db_url, "--redis-url", args.redis_url or "memory://",
         "--workers", str(args.workers)],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    api = f"http://127.0.0.1:{port}"
    try:
        wait_up(api + "/health", proc)
    except SystemExit:
        print((tmp / "engine.log").read_text()[-3000:], file=sys.stderr)
        raise
    token = httpx.post(api + "/auth/v3/oauth/token", auth=("nexus_client", ""), data={
        "username": "nexus", "password": secrets["NEXUS_ADMIN_PASSWORD"],
        "grant_type": "password", "client_id": "nexus_client"}).json()["access_token"]
    key = httpx.post(api + "/nexus/v3/apikeys", headers={"Authorization": f"Bearer {token}"},
                     json={"tenant": T1001, "name": f"bench-{time.time_ns()}",
                           "permissions": ["nexus:provisioning:*"],
                           "capacity": 1_000_000_000, "frequency": 60}).json()["key"]
    return proc, api, {"x-api-key": key, "x-ccid": T1001}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--db-url")
    parser.add_argument("--redis-url")
    parser.add_argument("--client", choices=("wrk", "httpx"),
                        default="wrk" if shutil.which("wrk") else "httpx",
                        help="load generator (default: wrk when installed: apt-get install wrk)")
    args = parser.parse_args()

    def run_load(url: str, headers: dict[str, str]) -> tuple[int, int]:
        if args.client == "wrk":
            return load_wrk(url, headers, args.seconds, args.concurrency)
        return asyncio.run(load(url, headers, args.seconds, args.concurrency))

    tmp = Path(tempfile.mkdtemp(prefix="nexus-bench-"))
    path = f"/nexus/v3/provisioning/services/{T1001}/mGageSMS"
    try:
        engine, api, headers = start_engine(tmp, args)
        try:
            sample = httpx.get(api + path, headers=headers)
            assert sample.status_code == 200, sample.text
            payload = sample.json()
            engine_ok, engine_err = run_load(api + path, headers)
        finally:
            stop(engine)
        script = tmp / "bare_app.py"
        script.write_text(BARE_APP.replace("{PAYLOAD}", repr(json.dumps(payload))))
        port = free_port()
        bare = subprocess.Popen([sys.executable, str(script), str(port), str(args.workers)],
                                cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_up(f"http://127.0.0.1:{port}{path}", bare)
            bare_ok, bare_err = run_load(f"http://127.0.0.1:{port}{path}", {})
        finally:
            stop(bare)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    engine_rps = engine_ok / args.seconds
    bare_rps = bare_ok / args.seconds
    print(f"client {args.client}, concurrency {args.concurrency}, {args.seconds:.0f} s each, "
          f"{args.workers} worker(s), "
          f"db {'sqlite' if not args.db_url else 'postgresql'}, "
          f"cache {args.redis_url or 'memory://'}")
    print(f"engine  authenticated GET service: {engine_rps:9.0f} req/s ({engine_err} errors)")
    print(f"bare    Sanic handler:             {bare_rps:9.0f} req/s ({bare_err} errors)")
    print(f"ratio   {engine_rps / bare_rps:.2f} (goal >= 0.5)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
