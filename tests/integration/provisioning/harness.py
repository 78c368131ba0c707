"""A real `nexus serve` in a subprocess (``python -m engine.cli serve``), its backends, and a
replayer of the guide's curl commands.

Backends: ``sqlite`` (SQLite file + ``memory://``, one worker) and ``pg`` (a throwaway
PostgreSQL database + the real Redis under a unique key prefix, two workers). Both are
cleaned up: the database is dropped, the Redis keys of the prefix deleted.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.ports import free_port

ROOT = Path(__file__).resolve().parents[3]
DEADLINE = 60.0
T1001 = "578ec98e-f07c-46ad-9675-f36c22f3ba9f"

#: A tenant admin of t1001 (the guide's `$ccId\\$tenantUser`), added to the sample config.
TENANT_ADMIN = """\
apiVersion: nexus/v1
kind: User
name: t1001-admin
tenant: t1001
spec:
  username: nexus
  firstName: Tenant
  lastName: Admin
  employeeId: '1000'
  roles: [admin]
  password: ${env:T1001_ADMIN_PASSWORD}
"""


def dev_secrets(config: Path, out: Path) -> dict[str, str]:
    """The config's ``${env:}`` names with random values (scripts/dev_env.py)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import dev_env
    finally:
        sys.path.pop(0)
    dev_env.write_dev_env(config, out)
    return dev_env.read_env_file(out)


def copy_config(tmp: Path, *, tenant_admin: bool = True) -> Path:
    config = tmp / "config"
    shutil.copytree(ROOT / "config", config)
    if tenant_admin:
        (config / "test-users.yaml").write_text(TENANT_ADMIN)
    return config


# ---------------------------------------------------------------------- backends
@dataclass
class Backend:
    name: str
    db_url: str
    redis_url: str
    workers: int
    prefix: str = ""
    cleanup: list[Any] = field(default_factory=list)

    def close(self) -> None:
        for action in reversed(self.cleanup):
            action()


def psql(admin_url: str, sql: str) -> None:
    subprocess.run(["psql", admin_url, "-v", "ON_ERROR_STOP=1", "-q", "-c", sql], check=True,
                   capture_output=True, timeout=30)


def pg_database(pg_url: str) -> tuple[str, Any]:
    """A new empty database on the server of ``pg_url``; returns (its URL, drop())."""
    name = f"nexus_t_{uuid.uuid4().hex[:12]}"
    psql(pg_url, f"CREATE DATABASE {name}")
    parts = urlsplit(pg_url)
    url = urlunsplit(parts._replace(path=f"/{name}"))

    def drop() -> None:
        psql(pg_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    return url, drop


def redis_cleanup(redis_url: str, prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def make_backend(kind: str, tmp: Path, pg_url: str | None = None,
                 redis_url: str | None = None, workers: int | None = None) -> Backend:
    if kind == "sqlite":
        return Backend("sqlite", f"sqlite:///{tmp / 'var' / 'nexus.db'}", "memory://",
                       workers or 1)
    assert pg_url and redis_url
    db_url, drop = pg_database(pg_url)
    prefix = f"nexus-test-{uuid.uuid4().hex[:10]}:"
    backend = Backend("pg", db_url, redis_url, workers or 2, prefix)
    backend.cleanup += [drop, lambda: redis_cleanup(redis_url, prefix)]
    return backend


# ---------------------------------------------------------------------- the engine
@dataclass
class Engine:
    proc: subprocess.Popen[bytes]
    api: str
    metrics: str
    config: Path
    env: dict[str, str]
    stdout: Path
    stderr: Path
    backend: Backend

    def call(self, method: str, path: str, **kw: Any) -> httpx.Response:
        kw.setdefault("timeout", 15)
        return httpx.request(method, self.api + path, **kw)

    def scrape(self) -> str:
        resp = httpx.get(self.metrics, timeout=10)
        assert resp.status_code == 200
        return resp.text

    def sample(self, name: str, labels: dict[str, str] | None = None) -> float:
        total = 0.0
        for family in text_string_to_metric_families(self.scrape()):
            for s in family.samples:
                if s.name == name and (labels is None or s.labels == labels):
                    total += s.value
        return total

    def logs(self) -> str:
        return self.stdout.read_text(errors="replace") + self.stderr.read_text(errors="replace")

    def log_records(self) -> list[dict[str, Any]]:
        out = []
        for line in self.stdout.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue
        return out

    def token(self, username: str, password: str) -> str:
        resp = self.call("POST", "/auth/v3/oauth/token", auth=("nexus_client", ""), data={
            "username": username, "password": password, "grant_type": "password",
            "client_id": "nexus_client"})
        assert resp.status_code == 200, resp.text
        return resp.json()["access_token"]

    def admin_token(self) -> str:
        return self.token("nexus", self.env["NEXUS_ADMIN_PASSWORD"])

    def wait(self, predicate: Any, what: str) -> None:
        end = time.monotonic() + DEADLINE
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                pytest.fail(f"the engine exited ({self.proc.returncode}):\n{self.logs()[-4000:]}")
            try:
                if predicate():
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        pytest.fail(f"timed out waiting for {what}:\n{self.logs()[-4000:]}")

    def stop(self) -> None:
        stop_process(self.proc)


def stop_process(proc: subprocess.Popen) -> None:
    """SIGTERM, as a deployment stops the engine; SIGKILL if it is still there 30 s later."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def base_env(tmp: Path, backend: Backend, secrets: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("NEXUS_", "PROMETHEUS_", "SANIC_", "T1001_"))}
    env.update(secrets)
    env.update({
        "NEXUS_VAR_DIR": str(tmp / "var"),
        "NEXUS_LOG_FORMAT": "json",
        "PYTHONPATH": str(ROOT),
    })
    if backend.prefix:
        env["NEXUS_REDIS_PREFIX"] = backend.prefix
    return env


def serve_command(config: Path, backend: Backend, port: int, metrics_port: int) -> list[str]:
    return [sys.executable, "-m", "engine.cli", "serve", "--host", "127.0.0.1",
            "--port", str(port), "--metrics-port", str(metrics_port), "--config", str(config),
            "--db-url", backend.db_url, "--redis-url", backend.redis_url,
            "--workers", str(backend.workers)]


def start_engine(tmp: Path, backend: Backend, config: Path,
                 extra_env: dict[str, str] | None = None) -> Engine:
    tmp.mkdir(parents=True, exist_ok=True)
    secrets = dev_secrets(config, tmp / "dev.env")
    secrets.setdefault("T1001_ADMIN_PASSWORD", "unused")
    env = base_env(tmp, backend, secrets)
    env.update(extra_env or {})
    port, metrics_port = free_port(), free_port()
    stdout, stderr = tmp / "stdout.log", tmp / "stderr.log"
    with stdout.open("wb") as out, stderr.open("wb") as err:
        proc = subprocess.Popen(serve_command(config, backend, port, metrics_port), cwd=ROOT,
                                env=env, stdout=out, stderr=err)
    engine = Engine(proc, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}/metrics",
                    config, env, stdout, stderr, backend)
    try:
        engine.wait(lambda: engine.call("GET", "/health/detail").status_code in (200, 503),
                    "the API")
        engine.wait(lambda: httpx.get(engine.metrics, timeout=5).status_code == 200, "metrics")
        if backend.workers > 1:
            engine.wait(lambda: len(ready_workers(engine)) >= backend.workers, "all workers")
    except BaseException:
        engine.stop()
        raise
    return engine


def ready_workers(engine: Engine) -> set[int]:
    return {int(m) for m in re.findall(r"Worker ready \[(\d+)\]", engine.logs())}


# ---------------------------------------------------------------------- curl replay
@dataclass
class CurlCall:
    method: str
    url: str
    headers: list[tuple[str, str]]
    body: bytes | None
    auth: tuple[str, str] | None


def substitute(text: str, variables: dict[str, str]) -> str:
    """Replace ``$name`` and ``{name}`` variables (longest names first)."""
    for name in sorted(variables, key=len, reverse=True):
        text = text.replace(f"${name}", variables[name]).replace(f"{{{name}}}", variables[name])
    return text


def parse_curl(command: str) -> CurlCall:
    """The request a curl command line makes (the options the guide uses)."""
    argv = shlex.split(command.replace("\\\n", " "))
    assert argv[0] == "curl", argv
    method, url, headers, data, encoded, auth = None, None, [], None, [], None
    i = 1
    while i < len(argv):
        arg = argv[i]
        if arg in ("-X", "--request"):
            method, i = argv[i + 1], i + 2
        elif arg in ("-H", "--header"):
            name, _, value = argv[i + 1].partition(":")
            headers.append((name.strip(), value.strip()))
            i += 2
        elif arg in ("-d", "--data", "--data-raw"):
            data, i = argv[i + 1], i + 2
        elif arg == "--data-urlencode":
            name, _, value = argv[i + 1].partition("=")
            encoded.append(f"{name}={quote(value, safe='')}")
            i += 2
        elif arg in ("-u", "--user"):
            user, _, password = argv[i + 1].partition(":")
            auth, i = (user, password), i + 2
        elif arg.startswith("-"):
            raise AssertionError(f"unsupported curl option {arg}")
        else:
            url, i = arg, i + 1
    body: bytes | None = None
    if encoded:
        body = "&".join(encoded).encode()
    elif data is not None:
        body = data.encode()
    if body is not None and not any(h.lower() == "content-type" for h, _ in headers):
        headers.append(("Content-Type", "application/x-www-form-urlencoded"))
    assert url, command
    return CurlCall(method or ("POST" if body is not None else "GET"), url, headers, body, auth)


def replay(command: str, variables: dict[str, str]) -> httpx.Response:
    call = parse_curl(substitute(command, variables))
    return httpx.request(call.method, call.url, headers=call.headers, content=call.body,
                         auth=call.auth, timeout=15)
