"""Fixtures: a throwaway PostgreSQL database per test, a fresh SQLite file, a key-prefixed
cache on memory:// and on the real Redis."""

from __future__ import annotations

import asyncio
import concurrent.futures
import uuid
from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlsplit

import asyncpg
import pytest

from engine.store.cache import Cache
from engine.store.db import Store
from tests.cache_support import throwaway_cache

PEPPER = "test-pepper"


def _in_thread(coro_fn, *args):  # run a coroutine on its own loop, off the test's loop
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro_fn(*args)).result()


async def _admin(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url, timeout=10)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def with_database(url: str, name: str) -> str:
    return urlsplit(url)._replace(path=f"/{name}").geturl()


@pytest.fixture
def pg_database(pg_url: str) -> Iterator[str]:
    """URL of a new, empty database ``nexus_test_<random>``, dropped afterwards."""
    name = f"nexus_test_{uuid.uuid4().hex[:16]}"
    _in_thread(_admin, pg_url, f'CREATE DATABASE "{name}"')
    try:
        yield with_database(pg_url, name)
    finally:
        _in_thread(_admin, pg_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/store/nexus.db"
    return request.getfixturevalue("pg_database")


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[Store]:
    s = Store(db_url, pepper=PEPPER)
    await s.connect()
    try:
        yield s
    finally:
        await s.disconnect()


@pytest.fixture(params=["memory", "redis"])
def cache_url(request: pytest.FixtureRequest) -> str:
    if request.param == "memory":
        return f"memory://test-{uuid.uuid4().hex}"
    return request.getfixturevalue("redis_url")


@pytest.fixture
async def cache(cache_url: str) -> AsyncIterator[Cache]:
    async with throwaway_cache(cache_url) as c:
        yield c
