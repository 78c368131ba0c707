"""Real engines for the chat tests: ``nexus serve`` subprocesses (see
tests/integration/provisioning/harness.py) on SQLite + memory:// (one worker) and on a
throwaway PostgreSQL database + the real Redis under a unique key prefix (two workers).

The config is the sample one plus, for isolation and limits:

* a second tenant ``t2002`` (chat and Designer keys, no agents: its sessions stay queued, so
  the error, file, bot and concurrency tests never disturb the routing tests of t1001);
* a t1001 chat key with a large rate limit (the 50-concurrent-posts test), an agent ``bob``
  next to ``alice`` (last-agent preference), no PlatformUCS (contacts are local);
* small upload limits (``NEXUS_CHAT_FILE_MAX_SIZE`` 4096 bytes, ``..._MAX_COUNT`` 2).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.provisioning.harness import (
    Backend,
    Engine,
    copy_config,
    make_backend,
    start_engine,
)

T1001 = "578ec98e-f07c-46ad-9675-f36c22f3ba9f"
T2002 = "0c2f6a4e-5b7d-4c1e-9a3f-2d8e7b6a5c41"
FILE_LIMITS = {"NEXUS_CHAT_FILE_MAX_SIZE": "4096", "NEXUS_CHAT_FILE_MAX_COUNT": "2"}

EXTRA_CONFIG = f"""\
apiVersion: nexus/v1
kind: Tenant
name: t2002
spec:
  ccid: {T2002}
  type: PureEngage
  backendurl: http://gws2.example.com
  username: nexus
  token: ${{env:T2002_GWS_TOKEN}}
  genesystenantid: 2
  enabled: true
  apikeys:
    - name: t2002 chat
      permissions: ['nexus:consumer:chat']
      key: ${{env:T2002_CHAT_API_KEY}}
      capacity: 100000
    - name: t2002 designer
      permissions: ['nexus:designer:chat']
      key: ${{env:T2002_DESIGNER_API_KEY}}
      capacity: 100000
---
apiVersion: nexus/v1
kind: User
name: bob
tenant: t1001
spec:
  username: bob
  firstName: Bob
  lastName: Agent
  employeeId: '1003'
  roles: [agent]
  password: ${{env:T1001_BOB_PASSWORD}}
  agent:
    queues: [sms-support]
    capacity:
      chat: 3
      sms: 3
      email: 0
"""

LOAD_KEY = """\
    - name: t1001 widget (load)
      permissions: ['nexus:consumer:chat']
      key: ${env:T1001_WIDGET_LOAD_KEY}
      capacity: 100000
"""


def chat_config(tmp: Path) -> Path:
    config = copy_config(tmp)
    tenant = config / "tenants" / "t1001.yaml"
    text = tenant.read_text()
    text = re.sub(r"    # Universal Contact Service connection\.\n    PlatformUCS:\n"
                  r"(?:      .*\n)+", "", text)
    assert "PlatformUCS" not in text
    tenant.write_text(text.rstrip("\n") + "\n" + LOAD_KEY)
    (config / "test-chat.yaml").write_text(EXTRA_CONFIG)
    return config


@dataclass
class ChatEngine:
    engine: Engine

    @property
    def api(self) -> str:
        return self.engine.api

    def env(self, name: str) -> str:
        return self.engine.env[name]

    @property
    def chat_key(self) -> str:
        return self.engine.env["T1001_CHAT_API_KEY"]

    @property
    def load_key(self) -> str:
        return self.engine.env["T1001_WIDGET_LOAD_KEY"]

    @property
    def other_key(self) -> str:
        return self.engine.env["T2002_CHAT_API_KEY"]

    def password(self, user: str) -> str:
        return self.engine.env[f"T1001_{user.upper()}_PASSWORD"]


def backend_for(kind: str, request: pytest.FixtureRequest, tmp: Path,
                workers: int | None = None) -> Backend:
    if kind == "pg":
        return make_backend("pg", tmp, request.getfixturevalue("pg_url"),
                            request.getfixturevalue("redis_url"), workers)
    return make_backend("sqlite", tmp)


@pytest.fixture(scope="package", params=["sqlite", "pg"])
def chat_engine(request: pytest.FixtureRequest, tmp_path_factory) -> Iterator[ChatEngine]:
    tmp = tmp_path_factory.mktemp(f"chat-{request.param}")
    backend = backend_for(request.param, request, tmp)
    try:
        engine = start_engine(tmp, backend, chat_config(tmp), extra_env=FILE_LIMITS)
        try:
            yield ChatEngine(engine)
        finally:
            engine.stop()
    finally:
        backend.close()
