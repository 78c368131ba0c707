"""AppendBatcher's linger: under load a batch waits a moment for more messages; at a light
load nothing waits. The database call is replaced (``_store``): these tests are about which
messages go into which batch, not about PostgreSQL (tests/integration/conversations/
test_group_commit.py covers that)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from engine.routing.append_batcher import AppendBatcher


class _Store:
    dialect = "postgresql"


class RecordingBatcher(AppendBatcher):
    """Records each batch's texts; each "commit" waits until the test releases it."""

    def __init__(self, **kw: Any) -> None:
        async def publish(*_: Any) -> None:
            return None

        super().__init__(_Store(), publish, time.time, **kw)  # type: ignore[arg-type]
        self.batches_seen: list[list[str | None]] = []
        self.release = asyncio.Event()
        self.started = asyncio.Event()

    async def _store(self, batch: list[Any]) -> list[Any]:
        self.batches_seen.append([r.text for r in batch])
        self.started.set()
        await self.release.wait()
        return []  # nothing stored: every caller is told to take the general path


def _send(batcher: AppendBatcher, text: str) -> asyncio.Task[Any]:
    return asyncio.get_running_loop().create_task(
        batcher.append_by_id("t", "c", text)
    )


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_busy_batcher_waits_for_more_messages_before_the_next_batch() -> None:
    batcher = RecordingBatcher(linger=0.2, linger_from=4, linger_target=10)
    first = [_send(batcher, f"a{i}") for i in range(5)]
    await batcher.started.wait()  # the first batch (5: a busy process) is in flight
    second = [_send(batcher, f"b{i}") for i in range(2)]
    await _settle()
    batcher.release.set()  # the first batch commits; two messages wait
    await asyncio.sleep(0.05)  # within the linger: more arrive
    third = [_send(batcher, f"c{i}") for i in range(3)]
    results = await asyncio.wait_for(asyncio.gather(*first, *second, *third), 5)
    assert results == [None] * 10
    assert batcher.batches_seen == [
        [f"a{i}" for i in range(5)],
        ["b0", "b1", "c0", "c1", "c2"],  # one batch, not two
    ]


async def test_a_lightly_loaded_batcher_takes_the_next_batch_at_once() -> None:
    batcher = RecordingBatcher(linger=5.0, linger_from=4, linger_target=10)
    first = [_send(batcher, f"a{i}") for i in range(3)]  # fewer than linger_from
    await batcher.started.wait()
    second = [_send(batcher, f"b{i}") for i in range(2)]
    await _settle()
    began = time.monotonic()
    batcher.release.set()
    await asyncio.wait_for(asyncio.gather(*first, *second), 2)  # far less than the linger
    assert time.monotonic() - began < 1.0
    assert batcher.batches_seen == [["a0", "a1", "a2"], ["b0", "b1"]]


async def test_no_wait_once_enough_messages_are_waiting() -> None:
    batcher = RecordingBatcher(linger=5.0, linger_from=4, linger_target=6)
    first = [_send(batcher, f"a{i}") for i in range(5)]
    await batcher.started.wait()
    second = [_send(batcher, f"b{i}") for i in range(6)]  # the target: nothing to wait for
    await _settle()
    batcher.release.set()
    await asyncio.wait_for(asyncio.gather(*first, *second), 2)
    assert batcher.batches_seen[1] == [f"b{i}" for i in range(6)]


async def test_close_during_a_linger_answers_every_waiter() -> None:
    """A shutdown that cancels the batch task while it lingers cancels the callers too:
    none is left waiting for an answer that never comes."""
    batcher = RecordingBatcher(linger=30.0, linger_from=2, linger_target=10)
    first = [_send(batcher, f"a{i}") for i in range(3)]
    await batcher.started.wait()
    second = [_send(batcher, f"b{i}") for i in range(2)]
    await _settle()
    batcher.release.set()
    assert await asyncio.wait_for(asyncio.gather(*first), 2) == [None] * 3
    await _settle()  # the batch task now lingers for the second batch
    (task,) = batcher._tasks
    task.cancel()
    for waiter in second:
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(waiter, 2)
    assert batcher.batches_seen == [["a0", "a1", "a2"]]
    assert not batcher._pending
