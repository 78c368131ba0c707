"""A real `nexus serve` (2 workers, real sockets) in a subprocess, driven with httpx.

The fake store/cache/users come in through ``--wiring``; the workers are spawned by Sanic's
worker manager, so this covers the factory loader, the main-process metrics server, metrics
aggregation across workers, SIGHUP reloads and a graceful stop.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from engine.observability.metrics import GUIDE_METRICS
from engine.settings import SHARED_MEMORY, default_multiproc_dir
from tests.integration.provisioning.harness import stop_process
from tests.ports import free_port as _free_port

ROOT = Path(__file__).resolve().parents[3]
RUN = (
    "import argparse, sys\n"
    "from engine import serve_command\n"
    "p = argparse.ArgumentParser(prog='nexus')\n"
    "serve_command.register(p.add_subparsers(dest='command'))\n"
    "a = p.parse_args(sys.argv[1:])\n"
    "sys.exit(a.func(a))\n"
)
DEADLINE = 60.0


@dataclass
class Engine:
    proc: subprocess.Popen[bytes]
    api: str
    metrics: str
    config: Path
    stdout: Path
    stderr: Path
    requests: int = 0

    def call(self, method: str, path: str, **kw) -> httpx.Response:
        resp = httpx.request(method, self.api + path, timeout=10, **kw)
        self.requests += 1  # answered, so counted by the engine
        return resp

    def scrape(self) -> str:
        resp = httpx.get(self.metrics, timeout=10)
        assert resp.status_code == 200
        return resp.text

    def logs(self) -> str:
        return self.stdout.read_text() + self.stderr.read_text()


def _sample(text: str, name: str, labels: dict[str, str] | None = None) -> float | None:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and (labels is None or s.labels == labels):
                return s.value
    return None


def _wait(predicate, engine: Engine, what: str) -> None:
    end = time.monotonic() + DEADLINE
    while time.monotonic() < end:
        if engine.proc.poll() is not None:
            pytest.fail(f"the engine exited ({engine.proc.returncode}):\n{engine.logs()[-4000:]}")
        try:
            if predicate():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}:\n{engine.logs()[-4000:]}")


def serve_env(tmp: Path, **extra: str) -> dict[str, str]:
    """The environment of a test engine in ``tmp``: none of the caller's NEXUS_/SANIC_
    settings, the fake cache's URL, JSON logs, plus ``extra``."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("NEXUS_", "PROMETHEUS_", "SANIC_"))}
    env.update({
        "NEXUS_VAR_DIR": str(tmp / "var"),
        "NEXUS_REDIS_URL": "redis://127.0.0.1:6390",  # the fake cache never dials it
        "NEXUS_LOG_FORMAT": "json",
        "PYTHONPATH": str(ROOT),
        **extra,
    })
    return env


def serve_args(port: int, metrics_port: int, config: Path, wiring: str) -> list[str]:
    """``nexus serve`` with 2 workers and ``wiring`` (a ``tests...fakes`` function)."""
    return [sys.executable, "-c", RUN, "serve", "--host", "127.0.0.1", "--port", str(port),
            "--metrics-port", str(metrics_port), "--workers", "2", "--config", str(config),
            "--wiring", f"tests.integration.runtime.fakes:{wiring}"]


@pytest.fixture(scope="module")
def engine(tmp_path_factory) -> Iterator[Engine]:
    tmp = tmp_path_factory.mktemp("serve")
    config = tmp / "config"
    config.mkdir()
    port, metrics_port = _free_port(), _free_port()
    env = serve_env(tmp, NEXUS_BODY_LIMIT="4096")
    stdout, stderr = tmp / "stdout.log", tmp / "stderr.log"
    with stdout.open("wb") as out, stderr.open("wb") as err:
        proc = subprocess.Popen(serve_args(port, metrics_port, config, "wiring"),
                                cwd=ROOT, env=env, stdout=out, stderr=err)
    eng = Engine(proc, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}/metrics",
                 config, stdout, stderr)
    try:
        _wait(lambda: eng.call("GET", "/health").status_code == 200, eng, "the API")
        _wait(lambda: httpx.get(eng.metrics, timeout=5).status_code == 200, eng, "metrics")
        yield eng
    finally:
        stop_process(proc)


def test_banner_and_generated_secret(engine: Engine) -> None:
    err = engine.stderr.read_text()
    assert "/health/detail" in err and "/metrics" in err and "curl --user nexus_client:" in err
    secret = (Path(engine.config.parent) / "var" / "secret").read_text().strip()
    assert len(secret) >= 64 and secret not in engine.logs()
    # each worker froze what start-up built (full collections no longer scan it); a worker
    # may still be starting when the first one answers
    def frozen() -> list[dict]:
        return [json.loads(line) for line in engine.stdout.read_text().splitlines()
                if "start-up heap frozen" in line]

    _wait(lambda: len({line["pid"] for line in frozen()}) == 2, engine, "both workers' freeze")
    assert all(int(line["msg"].split()[3]) > 10_000 for line in frozen())


def test_guide_token_flow_and_health(engine: Engine) -> None:
    body = urlencode({"username": "ccid1\\\\agent1", "client_id": "nexus_client",
                      "grant_type": "password", "password": "nexus_password"})
    resp = engine.call("POST", "/auth/v3/oauth/token", content=body, auth=("nexus_client", ""),
                       headers={"Content-Type": "application/x-www-form-urlencoded",
                                "X-B3-TraceId": "0af7651916cd43dd8448eb211c80319c"})
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-b3-traceid"] == "0af7651916cd43dd8448eb211c80319c"
    token = resp.json()["access_token"]
    assert resp.json()["expires_in"] == 43199
    cc = engine.call("POST", "/auth/v3/oauth/token?grant_type=client_credentials&scope=*"
                     "&client_id=nexus_client&client_secret=", auth=("nexus_client", ""))
    assert cc.status_code == 200 and cc.json()["token_type"] == "bearer"
    info = engine.call("GET", "/auth/v3/userinfo", headers={"Authorization": f"Bearer {token}"})
    assert info.status_code == 200 and info.json()["contactCenterId"] == "ccid1"
    detail = engine.call("GET", "/health/detail")
    assert detail.status_code == 200
    assert detail.json()["state"] == "green"
    assert detail.json()["db"] == {"ready": True}
    assert detail.json()["cache"] == {"ready": True, "state": "READY"}
    # Secrets never reach the logs.
    logs = engine.logs()
    assert "nexus_password" not in logs and token not in logs


def test_error_envelopes_over_sockets(engine: Engine) -> None:
    resp = engine.call("GET", "/nexus/v3/nothing")
    assert resp.status_code == 404 and resp.json()["status"]["code"] == 6
    resp = engine.call("POST", "/health")
    assert resp.status_code == 405 and resp.json()["status"]["code"] == 2
    resp = engine.call("POST", "/auth/v3/oauth/token", content=b"x=" + b"a" * 10000,
                       headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert resp.status_code == 413 and resp.json()["status"]["code"] == 2
    spec = engine.call("GET", "/nexus/v3/openapi.json").json()
    assert {"/health", "/health/detail", "/auth/v3/oauth/token"} <= set(spec["paths"])


def test_metrics_aggregate_both_workers(engine: Engine) -> None:
    for _ in range(20):
        engine.call("GET", "/health")
    text = engine.scrape()
    types = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
    for name, kind in GUIDE_METRICS.items():
        base = name[: -len("_total")] if kind == "counter" else name
        assert types.get(base) == kind, name
    # Every request this test module made, whichever worker served it, is counted once.
    assert _sample(text, "nexus_request_total") == engine.requests
    assert _sample(text, "nexus_errors_total") == 0
    assert _sample(text, "nexus_process_open_fds") > 0
    assert _sample(text, "nexus_process_resident_memory_bytes") > 0
    access = [json.loads(line) for line in engine.stdout.read_text().splitlines()
              if line.startswith("{") and '"nexus.access"' in line]
    assert len({line["worker"] for line in access}) >= 1
    assert all(line["trace_id"] and line["duration_ms"] >= 0 for line in access)
    # the workers' metric files are in shared memory (RAM), not on the var dir's disk
    directory = default_multiproc_dir(engine.config.parent / "var")
    if SHARED_MEMORY.is_dir() and os.access(SHARED_MEMORY, os.W_OK):
        assert directory.parent == SHARED_MEMORY
    assert f"prometheus multiprocess directory {directory}" in engine.logs()
    assert list(directory.glob("counter_*.db"))


def _children(pid: int) -> list[int]:
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended meanwhile
            continue
        if int(fields[1]) == pid:
            children.append(int(stat.parent.name))
    return children


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def _accepted_inodes(port: int) -> dict[int, int]:
    """Client port -> inode of the engine's end of each connection to ``port`` (IPv4)."""
    accepted = {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, inode = fields[1], fields[2], int(fields[9])
        if int(local.split(":")[1], 16) == port and inode:
            accepted[int(remote.split(":")[1], 16)] = inode
    return accepted


def test_connections_are_spread_over_the_workers(engine: Engine) -> None:
    # One listening socket per worker (SO_REUSEPORT): the kernel hashes each connection
    # to one, rather than the first worker awake taking most of them.
    port = int(engine.api.rsplit(":", 1)[1])
    clients = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(40)]
    try:
        for client in clients:  # answered, so each is accepted by a worker
            client.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            assert client.recv(65536).startswith(b"HTTP/1.1 200")
            engine.requests += 1
        accepted = _accepted_inodes(port)
        owners: dict[int, int] = {}
        for pid in _children(engine.proc.pid):
            for inode in _socket_inodes(pid):
                owners[inode] = pid
        per_worker: dict[int, int] = {}
        for client in clients:
            pid = owners[accepted[client.getsockname()[1]]]
            per_worker[pid] = per_worker.get(pid, 0) + 1
    finally:
        for client in clients:
            client.close()
    assert len(per_worker) == 2, per_worker
    # a fair hash puts fewer than 6 of 40 on one side about once in 10 million runs
    assert min(per_worker.values()) >= 6, per_worker


def test_a_port_in_use_is_refused_clearly(engine: Engine, tmp_path) -> None:
    port = int(engine.api.rsplit(":", 1)[1])  # the module's engine listens on it
    config = tmp_path / "config"
    config.mkdir()
    result = subprocess.run(serve_args(port, _free_port(), config, "wiring"), cwd=ROOT,
                            env=serve_env(tmp_path), capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2, result.stderr[-3000:]
    assert f"nexus serve: cannot listen on 127.0.0.1:{port}: Address already in use" \
        in result.stderr
    assert "Traceback" not in result.stderr


def test_sighup_reload(engine: Engine) -> None:
    broken = engine.config / "broken"
    broken.write_text("x")
    engine.proc.send_signal(signal.SIGHUP)
    _wait(lambda: _sample(engine.scrape(), "nexus_config_reload_total",
                          {"result": "rejected"}) == 2, engine, "two rejected reloads")
    assert "X001 broken on purpose" in engine.stdout.read_text()
    assert engine.call("GET", "/health").status_code == 200  # still serving the old config
    broken.unlink()
    engine.proc.send_signal(signal.SIGHUP)
    _wait(lambda: _sample(engine.scrape(), "nexus_config_reload_total",
                          {"result": "applied"}) == 2, engine, "two applied reloads")


def test_graceful_stop(engine: Engine) -> None:
    directory = default_multiproc_dir(engine.config.parent / "var")
    assert directory.is_dir()
    engine.proc.send_signal(signal.SIGTERM)
    assert engine.proc.wait(timeout=30) == 0
    with pytest.raises(httpx.HTTPError):
        httpx.get(engine.metrics, timeout=2)
    # the default directory in shared memory holds RAM: the main process removes it
    assert directory.is_dir() == (directory.parent != SHARED_MEMORY)
