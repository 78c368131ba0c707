"""In-memory store and cache for the runtime tests, and a wiring for real `serve` runs."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from engine.auth.embedded import InMemoryUserDirectory
from engine.settings import Settings


class FakeStore:
    def __init__(self, settings: Settings | None = None, *, ok: bool = True) -> None:
        self.ok = ok
        self.connected = False
        self.events: list[str] = []

    async def connect(self) -> None:
        self.connected = True
        self.events.append("connect")

    async def disconnect(self) -> None:
        self.connected = False
        self.events.append("disconnect")

    async def ping(self) -> bool:
        if not self.ok:
            raise ConnectionError("database unreachable")
        return self.connected


class FakeCache:
    def __init__(self, settings: Settings | None = None, *, state: str = "READY") -> None:
        self._state = "CLOSED"
        self.target = state
        self.events: list[str] = []

    @property
    def state(self) -> str:
        return self._state

    async def connect(self) -> bool:
        self._state = self.target
        self.events.append("connect")
        return self._state == "READY"

    async def close(self) -> None:
        self._state = "CLOSED"
        self.events.append("close")

    async def ping(self) -> bool:
        return self._state == "READY"


#: Users of the real-socket runs: an environment admin and a tenant user (passwords from env).
USERS: dict[str, dict[str, Any]] = {
    "admin": {"password": "env-admin-password", "roles": ["admin"]},
    "ccid1\\agent1": {"password": "nexus_password", "roles": ["agent"]},
}


def load_config(path: str) -> tuple[Any | None, Sequence[str]]:
    """A stand-in for the config validator: a file named ``broken`` makes the tree invalid."""
    root = Path(path)
    if (root / "broken").exists():
        return None, [f"{root / 'broken'}:1:1: error: X001 broken on purpose"]
    return {"path": str(root)}, []


def wiring(settings: Settings) -> Mapping[str, Any]:
    """Used through ``--wiring tests.integration.runtime.fakes:wiring`` by spawned workers."""
    state = os.environ.get("NEXUS_TEST_CACHE_STATE", "READY")
    return {
        "store_factory": FakeStore,
        "cache_factory": lambda s: FakeCache(s, state=state),
        "user_directory": InMemoryUserDirectory.from_mapping(USERS),
        "config_loader": load_config,
    }


class SlowStartStore(FakeStore):
    """A store whose connect takes a while, and says when it began (a file): a test can
    signal the main process while it waits for the workers to come up."""

    async def connect(self) -> None:
        marker = os.environ["NEXUS_TEST_START_MARKER"]
        with open(f"{marker}.{os.getpid()}", "w"):
            pass
        await asyncio.sleep(float(os.environ.get("NEXUS_TEST_START_DELAY", "2")))
        await super().connect()


def slow_start_wiring(settings: Settings) -> Mapping[str, Any]:
    """:func:`wiring` with a store that connects slowly (:class:`SlowStartStore`)."""
    return {**wiring(settings), "store_factory": SlowStartStore}


def _slow_after_start(app: Any) -> None:
    @app.after_server_start
    async def finishing(app: Any) -> None:
        marker = os.environ["NEXUS_TEST_START_MARKER"]
        with open(f"{marker}.{os.getpid()}", "w"):
            pass
        await asyncio.sleep(float(os.environ.get("NEXUS_TEST_START_DELAY", "2")))


def slow_after_start_wiring(settings: Settings) -> Mapping[str, Any]:
    """:func:`wiring` whose workers take a while after acknowledging (an after-start step
    that says when it began, in a file): a test can stop the engine in that window."""
    return {**wiring(settings), "setup": [_slow_after_start]}
