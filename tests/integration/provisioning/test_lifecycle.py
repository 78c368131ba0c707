"""The engine's life: refusing an invalid config, SIGHUP reloads (applied and rejected),
health going yellow without Redis and red without PostgreSQL, and `make run`'s commands
followed by the README's first steps."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.integration.provisioning.harness import (
    ROOT,
    T1001,
    Backend,
    Engine,
    base_env,
    copy_config,
    dev_secrets,
    free_port,
    make_backend,
    pg_database,
    serve_command,
    start_engine,
)

PROV = "/nexus/v3/provisioning"


def _until(engine: Engine, predicate, what: str) -> None:
    engine.wait(predicate, what)


# ---------------------------------------------------------------------- invalid config
def test_serve_refuses_an_invalid_config(tmp_path: Path) -> None:
    config = copy_config(tmp_path)
    backend = make_backend("sqlite", tmp_path)
    env = base_env(tmp_path, backend, dev_secrets(config, tmp_path / "dev.env"))
    del env["T1001_GWS_TOKEN"]  # serve mode: an unset secret is an error (NX703)
    proc = subprocess.run(serve_command(config, backend, free_port(), free_port()), cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert re.search(r"t1001\.yaml:\d+:\d+: error: NX703 spec\.token: environment variable "
                     r"'T1001_GWS_TOKEN' is not set", proc.stderr)
    assert lines[-1] == (f"nexus serve: the config at {config} is invalid (1 error(s)); "
                         "not starting")
    assert not (tmp_path / "var" / "nexus.db").exists()  # nothing was applied


# ---------------------------------------------------------------------- reload
NEW_KEY = """    - name: Reloaded key
      permissions: ['nexus:provisioning:*']
      key: ${file:reloaded.key}
"""


@pytest.fixture(params=["sqlite", "pg"])
def reload_backend(request, tmp_path: Path):
    if request.param == "pg":
        backend = make_backend("pg", tmp_path, request.getfixturevalue("pg_url"),
                               request.getfixturevalue("redis_url"))
    else:
        backend = make_backend("sqlite", tmp_path)
    yield backend
    backend.close()


def test_sighup_applies_a_good_config_and_rejects_a_bad_one(tmp_path: Path,
                                                            reload_backend: Backend) -> None:
    config = copy_config(tmp_path)
    engine = start_engine(tmp_path / "run", reload_backend, config)
    try:
        admin = {"Authorization": f"Bearer {engine.admin_token()}"}
        workers = reload_backend.workers
        tenant_file = config / "tenants" / "t1001.yaml"
        original = tenant_file.read_text()
        (config / "tenants" / "reloaded.key").write_text("reloaded-key-value-0123456789\n")
        edited = original.replace("url: https://api.mypurecloud.com\n      secret: {}\n"
                                  "      data: {}\n    # Campaign",
                                  "url: https://api2.mypurecloud.com\n      secret: {}\n"
                                  "      data: {}\n    # Campaign")
        assert edited != original
        tenant_file.write_text(edited + NEW_KEY)
        engine.proc.send_signal(signal.SIGHUP)
        applied = {"result": "applied"}
        _until(engine, lambda: engine.sample("nexus_config_reload_total", applied) == workers,
               "the reload in every worker")
        key = {"x-api-key": "reloaded-key-value-0123456789", "x-ccid": T1001}
        resp = engine.call("GET", f"{PROV}/services/{T1001}/PorticoSMS", headers=key)
        assert resp.status_code == 200 and resp.json()["data"]["url"] == (
            "https://api2.mypurecloud.com")

        # a bad config is rejected by every worker; the running one keeps serving
        tenant_file.write_text(edited.replace("provider: SparkPost", "provider: SparkPst")
                               + NEW_KEY)
        engine.proc.send_signal(signal.SIGHUP)
        rejected = {"result": "rejected"}
        _until(engine, lambda: engine.sample("nexus_config_reload_total", rejected) == workers,
               "the rejection in every worker")
        assert engine.sample("nexus_config_reload_total", applied) == workers
        assert engine.call("GET", f"{PROV}/services/{T1001}/Email",
                           headers=key).json()["data"]["data"] == {"provider": "SparkPost"}
        _until(engine, lambda: "config reload rejected" in engine.logs(), "the log line")
        assert re.search(r"NX\d+ spec\.services\.Email\.data\.provider", engine.logs())
        assert engine.call("GET", "/health/detail").json()["state"] == "green"

        # removing the key from config deletes it (config-managed) at the next reload
        tenant_file.write_text(original)
        engine.proc.send_signal(signal.SIGHUP)
        _until(engine, lambda: engine.sample("nexus_config_reload_total", applied)
               == 2 * workers, "the second reload")
        _until(engine, lambda: engine.call("GET", f"{PROV}/tenants/{T1001}",
                                           headers=key).status_code == 401, "key removal")
        assert engine.call("GET", f"{PROV}/tenants/{T1001}", headers=admin).status_code == 200
    finally:
        engine.stop()


# ---------------------------------------------------------------------- health
def _redis_server(port: int, tmp: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no", "--dir", str(tmp)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    end = time.monotonic() + 20
    while time.monotonic() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    pytest.fail("redis-server did not start")


def test_health_yellow_without_redis_red_without_postgres(tmp_path: Path, pg_url: str) -> None:
    redis_port = free_port()
    redis_proc = _redis_server(redis_port, tmp_path)
    db_url, drop = pg_database(pg_url)
    backend = Backend("pg", db_url, f"redis://127.0.0.1:{redis_port}/0", 1)
    engine = start_engine(tmp_path / "run", backend, copy_config(tmp_path))
    try:
        detail = engine.call("GET", "/health/detail").json()
        assert detail["state"] == "green" and detail["cache"]["ready"] and detail["db"]["ready"]
        admin = {"Authorization": f"Bearer {engine.admin_token()}"}
        chat = {"x-api-key": engine.env["T1001_CHAT_API_KEY"], "x-ccid": T1001}

        redis_proc.kill()
        redis_proc.wait()
        _until(engine, lambda: engine.call("GET", "/health/detail").json()["state"] == "yellow",
               "yellow")
        detail = engine.call("GET", "/health/detail")
        assert detail.status_code == 200 and detail.json()["cache"]["ready"] is False
        assert detail.json()["db"]["ready"] is True
        # the API keeps working: rate limits are not enforced while Redis is away
        assert engine.call("GET", f"{PROV}/tenants/{T1001}", headers=admin).status_code == 200
        assert engine.call("GET", "/nexus/v3/openapi.json", headers=chat).status_code == 200

        drop()  # DROP DATABASE ... WITH (FORCE): every connection of the engine is cut
        _until(engine, lambda: engine.call("GET", "/health/detail").status_code == 503, "red")
        detail = engine.call("GET", "/health/detail").json()
        assert detail["state"] == "red" and detail["db"]["ready"] is False
        resp = engine.call("GET", f"{PROV}/tenants/{T1001}", headers=admin)
        assert resp.status_code == 503 and resp.json()["status"]["code"] == 4
        assert engine.call("GET", "/health").status_code == 200  # liveness stays
    finally:
        engine.stop()
        if redis_proc.poll() is None:
            redis_proc.kill()
            redis_proc.wait()
        drop()


# ---------------------------------------------------------------------- make run + README
def _makefile_run_recipe() -> list[str]:
    text = (ROOT / "Makefile").read_text()
    recipe = text.split("\nrun: ", 1)[1].split("\n\n", 1)[0].splitlines()[1:]
    return [line.strip() for line in recipe]


def _first_steps() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("### First steps", 1)[1]
    return section.split("```sh\n", 1)[1].split("```", 1)[0]


def test_make_run_then_the_readme_first_steps(tmp_path: Path) -> None:
    recipe = _makefile_run_recipe()
    assert recipe == [
        "$(BIN)/python scripts/dev_env.py --config config --out var/dev.env --hint",
        "set -a && . ./var/dev.env && set +a && exec $(BIN)/nexus serve --config config",
    ]
    port, metrics_port = free_port(), free_port()
    work = tmp_path / "checkout"  # a checkout-like folder: config/, var/ made by the recipe
    work.mkdir()
    os.symlink(ROOT / "config", work / "config")
    os.symlink(ROOT / "scripts", work / "scripts")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("NEXUS_", "PROMETHEUS_", "SANIC_", "T1001_"))}
    env.update({"NEXUS_PORT": str(port), "NEXUS_METRICS_PORT": str(metrics_port),
                "NEXUS_HOST": "127.0.0.1", "PYTHONPATH": str(ROOT)})
    bin_dir = str(Path(sys.executable).parent)
    commands = [line.replace("$(BIN)", bin_dir) for line in recipe]
    hint = subprocess.run(commands[0], shell=True, cwd=work, env=env, capture_output=True,
                          text=True, timeout=60)
    assert hint.returncode == 0, hint.stderr
    assert f"http://127.0.0.1:{port}/health/detail" in hint.stderr
    assert "$(grep '^NEXUS_ADMIN_PASSWORD=' var/dev.env | cut -d= -f2)" in hint.stderr
    dev_env = work / "var" / "dev.env"
    assert oct(dev_env.stat().st_mode & 0o777) == "0o600"
    password = next(line.split("=", 1)[1] for line in dev_env.read_text().splitlines()
                    if line.startswith("NEXUS_ADMIN_PASSWORD="))
    assert password not in hint.stderr
    before = dev_env.read_text()
    subprocess.run(commands[0], shell=True, cwd=work, env=env, check=True, timeout=60,
                   capture_output=True)
    assert dev_env.read_text() == before  # generated once, kept

    stdout, stderr = tmp_path / "stdout.log", tmp_path / "stderr.log"
    with stdout.open("wb") as out, stderr.open("wb") as err:
        proc = subprocess.Popen(["bash", "-c", commands[1]], cwd=work, env=env, stdout=out,
                                stderr=err)
    engine = Engine(proc, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}/metrics",
                    work / "config", env, stdout, stderr,
                    Backend("sqlite", "sqlite:///./var/nexus.db", "memory://", 1))
    try:
        engine.wait(lambda: engine.call("GET", "/health").status_code == 200, "the API")
        engine.wait(lambda: httpx.get(engine.metrics, timeout=5).status_code == 200, "metrics")
        assert (work / "var" / "nexus.db").exists()
        banner = stderr.read_text()
        assert f"http://127.0.0.1:{port}/health/detail" in banner and "/metrics" in banner
        script = (_first_steps().replace("localhost:8080", f"127.0.0.1:{port}")
                  .replace("localhost:4004", f"127.0.0.1:{metrics_port}"))
        run = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=work, env=env,
                             capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stdout + run.stderr
        out = run.stdout
        assert '"xapikey"' in out
        assert '"name":"SMS"' in out and '"status":{"code":0}' in out
        assert '"state":"green"' in out
        assert re.search(r"^nexus_request_total [1-9]", out, re.M)
    finally:
        engine.stop()
