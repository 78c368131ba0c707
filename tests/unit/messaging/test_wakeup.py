"""The background loops' schedule (engine.messaging.wakeup.QueueLoop): when a round runs and
how long the loop sleeps, driven by scripted rounds and due times. The loop never really
sleeps here: a scripted Wakeup records each sleep it was asked for and answers whether a
nudge ended it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from engine.messaging.wakeup import QueueLoop, Wakeup
from engine.store.errors import StoreError

POLL = 0.25
IDLE = 5.0


class ScriptedWakeup(Wakeup):
    """``wait`` returns at once: True when nudged (a real pending nudge, or the script says
    so), False for "the timeout passed". The loop stops when the script runs out."""

    def __init__(self, nudged: Iterable[bool]) -> None:
        super().__init__(None, "test")
        self.script = list(nudged)
        self.sleeps: list[float] = []
        self.loop: QueueLoop | None = None

    async def wait(self, timeout: float) -> bool:
        if self._event.is_set():
            return True
        self.sleeps.append(timeout)
        if not self.script:
            assert self.loop is not None
            self.loop.stop()
            return True
        return self.script.pop(0)


class Script:
    """Scripted rounds (how many rows each took) and due times (seconds, None: nothing)."""

    def __init__(self, taken: Iterable[int | Exception], due: Iterable[float | None]) -> None:
        self.taken = list(taken)
        self.due = list(due)
        self.calls: list[str] = []
        self.during_round: list[object] = []  # called inside the next round

    async def work(self) -> int:
        self.calls.append("round")
        if self.during_round:
            self.during_round.pop(0)()  # type: ignore[operator]
        outcome = self.taken.pop(0) if self.taken else 0
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    async def due_in(self) -> float | None:
        self.calls.append("due?")
        return self.due.pop(0) if self.due else None


async def run(script: Script, nudged: Iterable[bool]) -> ScriptedWakeup:
    wakeup = ScriptedWakeup(nudged)
    loop = QueueLoop("test", wakeup, script.work, script.due_in, poll_interval=POLL,
                     idle_interval=IDLE, logger=logging.getLogger("test"))
    wakeup.loop = loop
    await loop.run()
    return wakeup


async def test_a_round_at_start_then_sleeps_until_the_next_row_is_due() -> None:
    script = Script(taken=[0, 2, 0], due=[1.5, None])
    wakeup = await run(script, nudged=[False])
    # start: a round (crash recovery); the next row is due in 1.5 s: sleep that long, then a
    # round; it took rows, so another at once; then nothing waits: the safety poll
    assert script.calls == ["round", "due?", "round", "round", "due?"]
    assert wakeup.sleeps == [1.5, IDLE]


async def test_the_safety_poll_asks_when_work_is_due_before_claiming() -> None:
    script = Script(taken=[0, 0], due=[None, 30.0, 0.0, None])
    wakeup = await run(script, nudged=[False, False])
    # nothing known: sleep the safety interval, then only ask (cheap); a row due in 30 s:
    # sleep the safety interval again (capped); then one due now: a round
    assert script.calls == ["round", "due?", "due?", "due?", "round", "due?"]
    assert wakeup.sleeps == [IDLE, IDLE, IDLE]


async def test_a_nudge_runs_a_round_at_once() -> None:
    script = Script(taken=[0, 1, 0], due=[None, None])
    wakeup = await run(script, nudged=[True])
    assert script.calls == ["round", "due?", "round", "round", "due?"]
    assert wakeup.sleeps == [IDLE, IDLE]


async def test_a_nudge_during_a_round_is_not_lost() -> None:
    script = Script(taken=[0, 0], due=[None, None])
    wakeups: list[ScriptedWakeup] = []
    script.during_round.append(lambda: wakeups[0].notify())
    wakeup = ScriptedWakeup([])
    wakeups.append(wakeup)
    loop = QueueLoop("test", wakeup, script.work, script.due_in, poll_interval=POLL,
                     idle_interval=IDLE, logger=logging.getLogger("test"))
    wakeup.loop = loop
    await loop.run()
    # the round that saw the nudge took nothing (the row came after its claim): the loop
    # runs another one instead of sleeping
    assert script.calls == ["round", "due?", "round", "due?"]
    assert wakeup.sleeps == [IDLE]


async def test_due_work_held_elsewhere_is_looked_at_less_and_less_often() -> None:
    script = Script(taken=[0] * 8, due=[0.0] * 7 + [None])
    wakeup = await run(script, nudged=[False] * 7)
    # each round took nothing although a row was due (another process's claim or lock)
    assert script.calls.count("round") == 8
    assert wakeup.sleeps == [0.25, 0.5, 1.0, 2.0, 4.0, IDLE, IDLE, IDLE]


async def test_backoff_starts_over_once_rows_are_taken() -> None:
    script = Script(taken=[0, 0, 3, 0], due=[0.0, 0.0, 0.0, None])
    wakeup = await run(script, nudged=[False, False, False])
    assert wakeup.sleeps == [0.25, 0.5, 0.25, IDLE]


async def test_a_failing_round_is_retried_with_backoff() -> None:
    script = Script(taken=[StoreError("down"), StoreError("down"), RuntimeError("bug"), 0],
                    due=[None])
    wakeup = await run(script, nudged=[False, False, False])
    assert script.calls == ["round", "round", "round", "round", "due?"]
    assert wakeup.sleeps == [0.25, 0.5, 1.0, IDLE]


class Recording(Wakeup):
    """Records publishes instead of sending them (any cache object will do)."""

    def __init__(self) -> None:
        super().__init__(object(), "outbound")  # type: ignore[arg-type]
        self.published = 0
        self.changed = asyncio.Event()

    async def publish(self) -> None:
        self.published += 1
        self.changed.set()


async def test_notify_publishes_only_when_the_loop_cannot_take_the_work() -> None:
    wakeup = Recording()
    asleep = asyncio.ensure_future(wakeup.wait(60.0))
    await asyncio.sleep(0)  # the loop is asleep in wait()
    wakeup.notify()
    assert await asleep is True
    assert wakeup.published == 0  # this process's idle loop takes it
    wakeup.clear()
    wakeup.notify()  # the loop is busy (not in wait()): the other processes are nudged
    await asyncio.wait_for(wakeup.changed.wait(), 10)
    assert wakeup.published == 1
    await wakeup.stop()


async def test_nudges_within_the_gap_are_published_once_after_it() -> None:
    wakeup = Recording()
    for _ in range(5):
        wakeup.notify()  # busy loop: a burst of queued work
    await asyncio.wait_for(wakeup.changed.wait(), 10)
    wakeup.changed.clear()
    for _ in range(5):
        wakeup.notify()  # within the gap after the first publish
    await asyncio.wait_for(wakeup.changed.wait(), 10)
    await wakeup.stop()
    assert wakeup.published == 2  # the first at once, one more for the rest of the burst
