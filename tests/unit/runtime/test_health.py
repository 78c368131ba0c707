from __future__ import annotations

import asyncio

import pytest

from engine.api.health import StaticProbes
from engine.app import create_app
from engine.settings import Settings
from tests.integration.runtime.fakes import FakeCache, FakeStore

KEYS = {"buildInfo", "startTime", "os", "upTime", "memoryUsage", "cache", "db", "state"}


async def test_liveness(settings: Settings) -> None:
    app = create_app(settings, probes=StaticProbes(db_ok=False))
    _, resp = await app.asgi_client.get("/health")
    assert resp.status == 200 and resp.json == {"state": "green"}


@pytest.mark.parametrize(
    ("db_ok", "cache_state", "state", "status"),
    [
        (True, "READY", "green", 200),
        (True, "RECONNECTING", "yellow", 200),
        (True, "CONNECTING", "yellow", 200),
        (False, "READY", "red", 503),
        (False, "RECONNECTING", "red", 503),
    ],
)
async def test_detail_states(settings, db_ok, cache_state, state, status) -> None:
    app = create_app(settings, probes=StaticProbes(db_ok=db_ok, cache_state=cache_state))
    _, resp = await app.asgi_client.get("/health/detail")
    assert resp.status == status
    body = resp.json
    assert set(body) == KEYS
    assert body["state"] == state
    assert body["db"] == {"ready": db_ok}
    assert body["cache"] == {"ready": cache_state == "READY", "state": cache_state}


async def test_detail_shape(settings: Settings) -> None:
    app = create_app(settings, probes=StaticProbes())
    _, resp = await app.asgi_client.get("/health/detail")
    body = resp.json
    assert set(body["buildInfo"]) == {"version", "changeset", "timestamp"}
    assert body["startTime"].endswith("Z")
    assert set(body["os"]) == {"upTime", "freemem", "loadavg", "totalmem"}
    assert len(body["os"]["loadavg"]) == 3 and body["os"]["totalmem"] > 0
    assert set(body["memoryUsage"]) == {"rss", "heapTotal", "heapUsed", "external",
                                        "arrayBuffers"}
    assert body["memoryUsage"]["rss"] > 0
    assert isinstance(body["upTime"], int) and body["upTime"] >= 0


async def test_store_and_cache_probes_through_listeners(settings: Settings) -> None:
    # The ASGI client runs the server listeners around every request: the factories hand out
    # the same objects so the test can steer them.
    store = FakeStore(settings)
    cache = FakeCache(settings, state="RECONNECTING")
    app = create_app(settings, store_factory=lambda s: store, cache_factory=lambda s: cache)
    _, resp = await app.asgi_client.get("/health/detail")
    assert resp.json["state"] == "yellow" and resp.json["db"]["ready"] is True
    assert resp.json["cache"] == {"ready": False, "state": "RECONNECTING"}
    cache.target = "READY"
    _, resp = await app.asgi_client.get("/health/detail")
    assert resp.json["state"] == "green"
    store.ok = False
    _, resp = await app.asgi_client.get("/health/detail")
    assert resp.status == 503 and resp.json["state"] == "red"
    assert store.events[:2] == ["connect", "disconnect"] and not store.connected
    assert cache.events[:2] == ["connect", "close"] and cache.state == "CLOSED"


async def test_a_hanging_db_ping_is_red(settings: Settings, monkeypatch) -> None:
    class Hanging(StaticProbes):
        async def db_ping(self) -> bool:
            await asyncio.Event().wait()
            return True

    monkeypatch.setattr("engine.api.health.DB_PING_TIMEOUT", 0.05)
    app = create_app(settings, probes=Hanging())
    _, resp = await app.asgi_client.get("/health/detail")
    assert resp.status == 503 and resp.json["state"] == "red"
