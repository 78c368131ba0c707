"""A connected :class:`Cache` for one test, under a unique key prefix whose keys are deleted
afterwards (so tests can share the real Redis)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from engine.store import Cache


@asynccontextmanager
async def throwaway_cache(url: str, name: str = "nexus-test") -> AsyncIterator[Cache]:
    cache = Cache(
        url,
        prefix=f"{name}-{uuid.uuid4().hex}:",
        health_check_interval=None,
        backoff_initial=0.02,
        backoff_max=0.2,
    )
    assert await cache.connect()
    try:
        yield cache
    finally:
        if cache.ready:
            client = cache.client
            keys = [k async for k in client.scan_iter(match=f"{cache.prefix}*", count=500)]
            if keys:
                await client.delete(*keys)
        await cache.close()
