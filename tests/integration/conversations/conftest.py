"""Fixtures: the conversation engine on SQLite + memory:// and on PostgreSQL + Redis.

Each test gets a throwaway database (a fresh SQLite file, or a new PostgreSQL database
dropped afterwards), a cache with a unique key prefix (its keys are deleted afterwards, never
FLUSHALL), a fake clock, a fake strategy decider, and a config model with three agents.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from urllib.parse import urlsplit

import asyncpg
import pytest

from engine.config.model import AgentSettings, Endpoint, Model, Queue, Secret, User
from engine.config.validate import validate_paths
from engine.routing.conversation_models import Message
from engine.routing.conversations import ConversationService
from engine.routing.decider import FakeDecider
from engine.routing.router import Router
from engine.store.cache import Cache
from engine.store.db import Store
from tests.cache_support import throwaway_cache

CONFIG = Path(__file__).resolve().parents[3] / "config"
CCID = "578ec98e-f07c-46ad-9675-f36c22f3ba9f"
TENANT = "t1001"
SMS_CHANNEL = "16504661149"  # chat.SMS_CustomGateway -> chat.SMS_CustomerSupport


class FakeClock:
    def __init__(self, start: float = 1_900_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def _agent(username: str, queues: tuple[str, ...], chat: int = 1, sms: int = 1) -> User:
    return User(
        name=username,
        username=username,
        tenant=TENANT,
        roles=("agent",),
        password=Secret("${env:UNUSED}"),
        first_name=username.capitalize(),
        agent=AgentSettings(queues, MappingProxyType({"chat": chat, "sms": sms, "email": 0})),
    )


def build_model(*, ucs_url: str | None = None) -> Model:
    result = validate_paths([CONFIG], env={})
    assert result.model is not None, result.errors
    base = result.model
    tenants = []
    for tenant in base.tenants:
        services = dict(tenant.services)
        services.pop("PlatformUCS", None)
        if ucs_url is not None:
            services["PlatformUCS"] = dataclasses.replace(
                tenant.services["PlatformUCS"], url=ucs_url
            )
        tenants.append(dataclasses.replace(tenant, services=MappingProxyType(services)))
    all_queues = ("support", "rr", "lb", "other", "sms-support")
    queues = [
        *base.queues,
        Queue("support", None, True, offer_timeout_seconds=30),
        Queue("rr", None, True, distribution="round-robin"),
        Queue("lb", None, True, distribution="least-busy"),
        Queue("other", None, True),
        Queue("small", None, True, capacity=1),
    ]
    users = [
        *(u for u in base.users if u.username != "alice"),
        _agent("alice", (*all_queues, "small")),
        _agent("bob", (*all_queues, "small")),
        _agent("carol", ("rr", "lb", "other", "sms-support")),
    ]
    endpoints = [
        *base.endpoints,
        Endpoint("chat.Main", "support", None, None),
        Endpoint("chat.RR", "rr", None, None),
        Endpoint("chat.LB", "lb", None, None),
        Endpoint("chat.Small", "small", None, None),
        Endpoint("chat.Strat", "support", "custom", None),
    ]
    return dataclasses.replace(
        base,
        tenants=tuple(tenants),
        queues=tuple(queues),
        users=tuple(users),
        endpoints=tuple(endpoints),
    )


MODEL = build_model()


def _in_thread(coro_fn, *args):
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro_fn(*args)).result()


async def _admin(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url, timeout=10)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture
def pg_database(pg_url: str) -> Iterator[str]:
    name = f"nexus_test_{uuid.uuid4().hex[:16]}"
    _in_thread(_admin, pg_url, f'CREATE DATABASE "{name}"')
    try:
        yield urlsplit(pg_url)._replace(path=f"/{name}").geturl()
    finally:
        _in_thread(_admin, pg_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite+memory", "postgresql+redis"])
def backend(request: pytest.FixtureRequest, tmp_path) -> tuple[str, str]:
    if request.param == "sqlite+memory":
        return f"sqlite:///{tmp_path}/conv/nexus.db", f"memory://conv-{uuid.uuid4().hex}"
    return request.getfixturevalue("pg_database"), request.getfixturevalue("redis_url")


@dataclass
class Engine:
    store: Store
    cache: Cache
    clock: FakeClock
    decider: FakeDecider
    router: Router
    service: ConversationService

    def second_router(self, cache: Cache | None = None) -> Router:
        return Router(
            self.store, cache or self.cache, MODEL, decider=self.decider, clock=self.clock
        )

    async def make_ready(self, *agents: str) -> None:
        for agent in agents:
            await self.router.set_presence(CCID, agent, "ready")

    async def session(self, endpoint: str = "Main", **fields: object):
        return await self.service.create_session(
            CCID, endpoint=endpoint, nickname=fields.pop("nickname", "Cust"), **fields
        )


@pytest.fixture
async def cache(backend: tuple[str, str]) -> AsyncIterator[Cache]:
    async with throwaway_cache(backend[1]) as c:
        yield c


@pytest.fixture
async def engine(backend: tuple[str, str], cache: Cache) -> AsyncIterator[Engine]:
    store = Store(backend[0], max_size=20)
    await store.connect()
    clock = FakeClock()
    decider = FakeDecider()
    router = Router(store, cache, MODEL, decider=decider, clock=clock)
    service = ConversationService(store, cache, MODEL, router=router, poll_interval=0.05)
    try:
        yield Engine(store, cache, clock, decider, router, service)
    finally:
        await router.stop()
        await store.disconnect()


async def collect(stream, until_index: int, timeout: float = 10.0) -> list[Message]:
    """The messages of a subscription up to index ``until_index`` (fails after ``timeout``)."""
    got: list[Message] = []

    async def run() -> None:
        async for message in stream:
            got.append(message)
            if message.index is not None and message.index >= until_index:
                return

    await asyncio.wait_for(run(), timeout)
    return got
