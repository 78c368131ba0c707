"""One fake provider (threaded loopback HTTP server) and one real engine per backend for the
package: SQLite + memory:// (one worker; the undelivered strategy parks) and PostgreSQL +
Redis (two workers; the strategy terminates)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.integration.channels.fakeprovider import Reply
from tests.integration.messaging.support import Console, ThreadedFake, messaging_config, start
from tests.integration.provisioning.harness import Engine, make_backend


@dataclass
class Setup:
    engine: Engine
    fake: ThreadedFake
    console: Console
    on_give_up: str


@pytest.fixture(scope="package")
def fake() -> Iterator[ThreadedFake]:
    server = ThreadedFake().start()
    server.default("/login/oauth/token",
                   Reply(json={"access_token": "tok-1", "expires_in": 3600}))
    server.default("/portico/api/v2/conversations/messages/agentless",
                   lambda r: Reply(json={"id": "gc-" + r.json()["toAddress"]}))
    server.default("/sparkpost/api/v1/transmissions", Reply(json={
        "results": {"id": "sp-1", "total_accepted_recipients": 1,
                    "total_rejected_recipients": 0}}))
    yield server
    server.close()


@pytest.fixture(scope="package", params=["sqlite", "pg"])
def setup(request, tmp_path_factory, fake: ThreadedFake) -> Iterator[Setup]:
    tmp = tmp_path_factory.mktemp(f"messaging-{request.param}")
    on_give_up = "park" if request.param == "sqlite" else "terminate"
    if request.param == "pg":
        backend = make_backend("pg", tmp, request.getfixturevalue("pg_url"),
                               request.getfixturevalue("redis_url"))
    else:
        backend = make_backend("sqlite", tmp)
    try:
        engine = start(tmp, backend, messaging_config(tmp, fake.url, on_give_up=on_give_up))
        try:
            yield Setup(engine, fake, Console(engine), on_give_up)
        finally:
            engine.stop()
    finally:
        backend.close()
