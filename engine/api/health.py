"""``GET /health`` (liveness) and ``GET /health/detail`` in the guide's shape.

The detail reads the store and cache through :class:`HealthProbes` on ``app.ctx.probes`` (no
import of engine.store). ``state``: green when the database answers and the cache is READY;
yellow while the cache is not READY (connecting, reconnecting, closed); red, with HTTP 503, when
the database ping fails or does not answer within :data:`DB_PING_TIMEOUT` seconds.

Node.js figures are mapped to honest Python equivalents (see docs/metrics.md):
``os`` = host uptime (s), MemAvailable, load averages, MemTotal; ``upTime`` = milliseconds since
this worker started; ``memoryUsage`` = VmRSS / VmData / RssAnon / RssFile / RssShmem.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from typing import Any, Protocol

from sanic import Blueprint, Request
from sanic.response import JSONResponse
from sanic.response import json as json_response

from engine.api.openapi import describe
from engine.observability import procfs

log = logging.getLogger("nexus.health")
DB_PING_TIMEOUT = 3.0
READY = "READY"


class HealthProbes(Protocol):
    async def db_ping(self) -> bool: ...

    def cache_state(self) -> str: ...


class StaticProbes:
    """Probes with fixed answers (no store or cache wired)."""

    def __init__(self, db_ok: bool = True, cache_state: str = READY) -> None:
        self.db_ok = db_ok
        self.state = cache_state

    async def db_ping(self) -> bool:
        return self.db_ok

    def cache_state(self) -> str:
        return self.state


class StoreCacheProbes:
    """Probes over a store (``ping()``) and a cache (``state``), either of which may be None."""

    def __init__(self, store: Any, cache: Any) -> None:
        self.store = store
        self.cache = cache

    async def db_ping(self) -> bool:
        return bool(await self.store.ping()) if self.store is not None else False

    def cache_state(self) -> str:
        if self.cache is None:
            return "CLOSED"
        state = self.cache.state
        return str(state() if callable(state) else state).upper()


bp = Blueprint("health")


@bp.get("/health", name="health")
@describe("Liveness: green while the process serves", tags=["health"],
          responses={200: '{"state": "green"}'})
async def health(request: Request) -> JSONResponse:
    return json_response({"state": "green"})


async def _db_ready(probes: HealthProbes) -> bool:
    try:
        return bool(await asyncio.wait_for(probes.db_ping(), DB_PING_TIMEOUT))
    except Exception as exc:  # a failing probe is a red state, not a 500
        log.warning("database ping failed: %s", type(exc).__name__)
        return False


def _proc_snapshot() -> tuple[dict[str, object], procfs.MemoryUsage]:
    return procfs.host_stats(), procfs.memory_usage()


@bp.get("/health/detail", name="health_detail")
@describe(
    "Readiness detail in the guide's shape (state green|yellow|red)",
    tags=["health"],
    responses={200: "green or yellow", 503: "red: the database does not answer"},
)
async def health_detail(request: Request) -> JSONResponse:
    ctx = request.app.ctx
    probes: HealthProbes = ctx.probes
    db_ok, (host, memory) = await asyncio.gather(
        _db_ready(probes), asyncio.to_thread(_proc_snapshot)
    )
    try:
        cache_state = str(probes.cache_state()).upper()
    except Exception:
        cache_state = "CLOSED"
    cache_ready = cache_state == READY
    state = "red" if not db_ok else ("green" if cache_ready else "yellow")
    started: float = ctx.started_at
    body = {
        "buildInfo": dict(ctx.build_info),
        "startTime": datetime.fromtimestamp(started, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z"),
        "os": host,
        "upTime": int((time.time() - started) * 1000),
        "memoryUsage": memory.as_node(),
        "cache": {"ready": cache_ready, "state": cache_state},
        "db": {"ready": db_ok},
        "state": state,
    }
    return json_response(body, status=503 if state == "red" else 200)
