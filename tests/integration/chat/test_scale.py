"""Concurrency and scale-out: 50 concurrent posts into a new session; two engine processes
over one PostgreSQL and one Redis, one of them killed (SIGKILL) mid-conversation."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.chat.clients import AgentClient, WidgetClient, receive
from tests.integration.chat.conftest import (
    FILE_LIMITS,
    T1001,
    ChatEngine,
    backend_for,
    chat_config,
)
from tests.integration.provisioning.harness import Engine, start_engine


async def test_fifty_concurrent_posts(chat_engine: ChatEngine) -> None:
    async with WidgetClient(chat_engine.api, chat_engine.other_key) as widget:
        await widget.create(nickname="Quick", endpoint="SMS_Main")
        posted = await asyncio.gather(*(widget.send(f"message {n}") for n in range(50)))
        indexes = sorted(m["index"] for m in posted)
        assert indexes == list(range(2, 52))
        stored = await widget.messages()
        assert [m["index"] for m in stored] == list(range(1, 52))
        assert {m["text"] for m in stored[1:]} == {f"message {n}" for n in range(50)}
        # a client retry with the same clientMessageId is stored once
        first = await widget.send("once", clientMessageId="c-1")
        again = await widget.send("once", clientMessageId="c-1")
        assert first["id"] == again["id"] and first["index"] == again["index"] == 52
        assert len(await widget.messages()) == 52


async def test_concurrent_sessions(chat_engine: ChatEngine) -> None:
    widgets = [WidgetClient(chat_engine.api, chat_engine.other_key) for _ in range(20)]
    try:
        created = await asyncio.gather(
            *(w.create(firstName=f"C{n}", endpoint="SMS_Main") for n, w in enumerate(widgets)))
        assert len({c["entity"]["id"] for c in created}) == 20
        assert len({c["clientToken"] for c in created}) == 20
    finally:
        for w in widgets:
            await w.http.aclose()


# ---------------------------------------------------------------------- two processes
def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def kill_hard(engine: Engine) -> None:
    """SIGKILL the engine's main process and its workers (by pid), no shutdown at all."""
    pids = children(engine.proc.pid)
    for pid in [*pids, engine.proc.pid]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
    engine.proc.wait(timeout=10)


@pytest.fixture
def two_engines(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Engine, Engine]]:
    backend = backend_for("pg", request, tmp_path, workers=1)
    config = chat_config(tmp_path)
    shared = {**FILE_LIMITS, "NEXUS_SECRET": uuid.uuid4().hex * 2}
    engines: list[Engine] = []
    try:
        engines.append(start_engine(tmp_path / "a", backend, config, extra_env=shared))
        (tmp_path / "b").mkdir()
        shutil.copy(tmp_path / "a" / "dev.env", tmp_path / "b" / "dev.env")  # same secrets
        engines.append(start_engine(tmp_path / "b", backend, config, extra_env=shared))
        yield engines[0], engines[1]
    finally:
        for engine in engines:
            engine.stop()
        backend.close()


async def test_two_processes_and_a_crash(two_engines: tuple[Engine, Engine]) -> None:
    a, b = two_engines
    key, password = a.env["T1001_WIDGET_LOAD_KEY"], a.env["T1001_ALICE_PASSWORD"]
    async with (
        AgentClient(b.api, T1001, "alice", password) as alice,
        WidgetClient(a.api, key) as widget,
    ):
        await alice.presence("ready")
        await widget.create(firstName="Kim", endpoint="SMS_Main")
        sid = widget.session_id
        assert sid is not None
        async with widget.stream(1) as on_a:  # the customer's WebSocket on process A
            [joined] = await receive(on_a, 1)
            offer = await alice.offer_for(sid)  # routed by whichever dispatcher
            iid = offer["id"]
            await alice.act(iid, "accept")  # the agent works through process B
            await alice.send(iid, "hello from B")
            agent_joined, hello = await receive(on_a, 2)
            assert (agent_joined["index"], hello["index"]) == (2, 3)
            assert hello["text"] == "hello from B"
            await widget.send("from the customer, via A")
            [mine] = await receive(on_a, 1)
            last_seen = mine["index"]
            assert last_seen == 4

            kill_hard(a)  # process A dies mid-conversation

        # meanwhile the agent goes on (B), and the customer's widget retries on B
        for text in ("are you there?", "I will wait"):
            await alice.send(iid, text)
        widget.http.base_url = b.api  # type: ignore[assignment]
        await widget.send("back, through B")
        async with widget.stream(last_seen + 1, base=b.api) as on_b:
            resumed = await receive(on_b, 3)
            assert [m["index"] for m in resumed] == [5, 6, 7]
            assert [m["text"] for m in resumed] == ["are you there?", "I will wait",
                                                    "back, through B"]
            await alice.send(iid, "live on B")
            await alice.send(iid, "and once more")
            live = await receive(on_b, 2)
            assert [m["index"] for m in live] == [8, 9]  # nothing repeated in between
        transcript = await widget.messages()
        assert [m["index"] for m in transcript] == list(range(1, 10))
        assert (await alice.act(iid, "done"))["state"] == "done"
        await alice.presence("not-ready")
