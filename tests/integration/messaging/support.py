"""Real engines (``nexus serve`` subprocesses with the test agent console) and loopback fake
providers for the messaging tests."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.integration.channels.fakeprovider import FakeProvider, Recorded, Reply
from tests.integration.provisioning.harness import (
    Backend,
    Engine,
    base_env,
    copy_config,
    dev_secrets,
    free_port,
    ready_workers,
    serve_command,
)

T1001 = "578ec98e-f07c-46ad-9675-f36c22f3ba9f"
ASYNC_CHANNEL = "16504661149"  # chat.SMS_CustomGateway (Async)
MGAGE_CHANNEL = "1650466114"  # chat.SMS_Kaleyra (mGage)
PORTICO_CHANNEL = "18885550100"  # chat.SMS_Main_Corporate (Portico)
CXC_CHANNEL = "18885550101"  # chat.SMS_Campaigns (cxcOnly, Portico)
WIRING = "tests.integration.messaging.agentwiring:wiring"
DEADLINE = 30.0


class ThreadedFake:
    """A :class:`FakeProvider` served from its own thread and event loop, so synchronous
    and asynchronous tests (and several engines) can share it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.fake = FakeProvider()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> ThreadedFake:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.fake.start(), self.loop).result(10)
        return self

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.fake.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)

    @property
    def url(self) -> str:
        return self.fake.url

    def on(self, path: str) -> list[Recorded]:
        return list(self.fake.on(path))

    def script(self, path: str, *replies: Reply) -> None:
        self.loop.call_soon_threadsafe(self.fake.script, path, *replies)
        time.sleep(0.01)

    def default(self, path: str, reply: Reply | Callable[[Recorded], Reply]) -> None:
        self.loop.call_soon_threadsafe(self.fake.default, path, reply)
        time.sleep(0.01)

    def matching(self, path: str, predicate: Callable[[Recorded], bool]) -> list[Recorded]:
        return [r for r in self.on(path) if predicate(r)]


def wait_until(predicate: Callable[[], Any], what: str, timeout: float = DEADLINE) -> Any:
    end = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < end:
        try:
            last = predicate()
        except (httpx.HTTPError, KeyError, IndexError, ValueError):
            last = None
        if last:
            return last
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what} (last: {last!r})")


# ---------------------------------------------------------------------- config
def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _write(path: Path, docs: list[dict[str, Any]]) -> None:
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))


def messaging_config(tmp: Path, fake_url: str, *, on_give_up: str = "park",
                     webhook_delay: float = 0.05) -> Path:
    """The sample config with every provider, the webhook target and the policies pointed at
    the fake and shortened for tests."""
    config = copy_config(tmp)
    tenant_file = config / "tenants" / "t1001.yaml"
    (tenant,) = _docs(tenant_file)
    services = tenant["spec"]["services"]
    services.pop("PlatformUCS", None)  # no UCS: contacts stay local
    services["mGageSMS"]["url"] = f"{fake_url}/mgage/send"
    for channel in services["Async"]["data"]["channels"]:
        channel["webhook"]["url"] = f"{fake_url}/async/{channel['channelId']}"
    services["PurecloudIDP"]["url"] = f"{fake_url}/login"
    services["PorticoSMS"]["url"] = f"{fake_url}/portico"
    services["PorticoEmail"]["url"] = f"{fake_url}/portico"
    services["SparkPostEmail"]["url"] = f"{fake_url}/sparkpost/api/v1"
    services["WebhookTransportTarget-ai-connector"]["url"] = f"{fake_url}/hooks"
    _write(tenant_file, [tenant])
    env_file = config / "environment.yaml"
    (environment,) = _docs(env_file)
    spec = environment["spec"]
    spec["routing"]["undelivered"].update({
        "maxAttempts": 2, "initialDelaySeconds": 0.3, "backoffMultiplier": 1,
        "maxDelaySeconds": 1, "onGiveUp": on_give_up, "parkQueue": "sms-support",
    })
    spec["delivery"] = {"timeoutSeconds": 2, "maxAttempts": 3,
                        "initialDelaySeconds": webhook_delay, "backoffMultiplier": 2,
                        "maxDelaySeconds": max(0.5, webhook_delay * 4), "jitter": 0}
    _write(env_file, [environment])
    tx_file = config / "transactions.yaml"
    docs = _docs(tx_file)
    for doc in docs:
        if doc["name"] == "NexusServices":
            doc["spec"]["sections"]["chat.SMS_Campaigns"]["mps"] = 20
    _write(tx_file, docs)
    users_file = config / "users.yaml"
    users = _docs(users_file)
    for user in users:
        if user["name"] == "alice":
            user["spec"]["agent"]["capacity"]["sms"] = 100
    _write(users_file, users)
    return config


# ---------------------------------------------------------------------- engines
def start(tmp: Path, backend: Backend, config: Path) -> Engine:
    tmp.mkdir(parents=True, exist_ok=True)
    secrets_file = tmp / "dev.env"
    secrets = dev_secrets(config, secrets_file) if not secrets_file.exists() else None
    if secrets is None:
        import sys

        from tests.integration.provisioning.harness import ROOT

        sys.path.insert(0, str(ROOT / "scripts"))
        try:
            import dev_env
        finally:
            sys.path.pop(0)
        secrets = dev_env.read_env_file(secrets_file)
    secrets.setdefault("T1001_ADMIN_PASSWORD", "unused")
    env = base_env(tmp, backend, secrets)
    port, metrics_port = free_port(), free_port()
    run = uuid.uuid4().hex[:6]
    stdout, stderr = tmp / f"stdout-{run}.log", tmp / f"stderr-{run}.log"
    command = serve_command(config, backend, port, metrics_port) + ["--wiring", WIRING]
    with stdout.open("wb") as out, stderr.open("wb") as err:
        proc = subprocess.Popen(command, cwd=Path(__file__).resolve().parents[3], env=env,
                                stdout=out, stderr=err)
    engine = Engine(proc, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}/metrics",
                    config, env, stdout, stderr, backend)
    try:
        engine.wait(lambda: engine.call("GET", "/health/detail").status_code in (200, 503),
                    "the API")
        if backend.workers > 1:
            engine.wait(lambda: len(ready_workers(engine)) >= backend.workers, "all workers")
        engine.wait(lambda: engine.logs().count("messaging started") >= backend.workers,
                    "messaging in every worker")
    except BaseException:
        engine.stop()
        raise
    return engine


# ---------------------------------------------------------------------- requests
def sign(secret: str, body: bytes, algo: str = "sha1") -> dict[str, str]:
    if algo == "sha1":
        return {"X-Hub-Signature": "sha1=" + hmac.new(secret.encode(), body,
                                                       hashlib.sha1).hexdigest()}
    return {"X-Hub-Signature-256": "sha256=" + hmac.new(secret.encode(), body,
                                                         hashlib.sha256).hexdigest()}


def async_body(*messages: dict[str, Any]) -> bytes:
    return json.dumps({"messages": list(messages)}).encode()


def text_message(message_id: str, sender: str, text: str,
                 channel: str = ASYNC_CHANNEL) -> dict[str, Any]:
    return {"id": message_id, "type": "Text", "text": text,
            "channel": {"from": {"id": sender, "nickname": "Customer"}, "to": {"id": channel}}}


def post_async(engine: Engine, body: bytes, *, ccid: str | None = T1001, algo: str = "sha1",
               secret: str | None = None, channel: str = ASYNC_CHANNEL,
               headers: dict[str, str] | None = None) -> httpx.Response:
    key = secret if secret is not None else engine.env["T1001_ASYNC_API_SECRET"]
    sent = {"Content-Type": "application/json", **sign(key, body, algo), **(headers or {})}
    if ccid:
        sent["x-ccid"] = ccid
    return engine.call("POST", f"/nexus/v3/channels/{channel}/messages", content=body,
                       headers=sent)


def unique_phone() -> str:
    return "+1650" + str(uuid.uuid4().int)[:7]


class Console:
    """The test agent console of one engine (admin Bearer token)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.headers = {"Authorization": f"Bearer {engine.admin_token()}"}
        self.base = f"/nexus/v3/test-agent/{T1001}"

    def call(self, method: str, path: str, **kw: Any) -> Any:
        resp = self.engine.call(method, self.base + path, headers=self.headers, **kw)
        assert resp.status_code == 200, resp.text
        return resp.json()["data"]

    def segment(self, iid: str) -> dict[str, Any]:
        return self.call("GET", f"/segments/{iid}")

    def messages(self, conversation_id: str) -> list[dict[str, Any]]:
        return self.call("GET", f"/conversations/{conversation_id}/messages")

    def find(self, provider_message_id: str) -> dict[str, Any]:
        return self.call("GET", f"/by-provider-id/{provider_message_id}")

    def take(self, iid: str, agent: str = "alice") -> dict[str, Any]:
        """Ready, wait for the offer of ``iid``, accept it: the assigned interaction."""
        self.call("POST", f"/{agent}/ready")

        def offered() -> Any:
            return [s for s in self.call("GET", f"/{agent}/interactions")
                    if s["state"] == "offered" and s["id"] == iid]

        wait_until(offered, f"the offer of {iid}")
        return self.call("POST", f"/{agent}/accept/{iid}")

    def reply(self, iid: str, text: str, agent: str = "alice") -> dict[str, Any]:
        return self.call("POST", f"/{agent}/messages/{iid}", json={"text": text})

    def done(self, iid: str, agent: str = "alice") -> dict[str, Any]:
        return self.call("POST", f"/{agent}/done/{iid}")
