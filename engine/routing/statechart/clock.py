"""Clocks for delayed ``<send>``: a simulated one tests fast-forward, and a real-time one.

A clock only schedules callbacks; the :class:`~.runtime.Runtime` callback it receives enqueues
the event and processes it. Both clocks are single-threaded: call them from the thread (event
loop) that owns the sessions.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from typing import Protocol


class TimerHandle(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    def now(self) -> float:
        """Seconds on this clock's time line."""
        ...

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        """Run ``callback`` once, ``delay`` seconds from now; the handle can cancel it."""
        ...


class _SimTimer:
    __slots__ = ("when", "seq", "callback", "cancelled")

    def __init__(self, when: float, seq: int, callback: Callable[[], None]) -> None:
        self.when = when
        self.seq = seq
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True

    def __lt__(self, other: _SimTimer) -> bool:
        return (self.when, self.seq) < (other.when, other.seq)


class SimulatedClock:
    """Virtual time: nothing fires until :meth:`advance` / :meth:`run_next` moves time on.

    Timers due at the same instant fire in the order they were scheduled.
    """

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._heap: list[_SimTimer] = []
        self._seq = itertools.count()

    def now(self) -> float:
        return self._now

    def call_later(self, delay: float, callback: Callable[[], None]) -> _SimTimer:
        timer = _SimTimer(self._now + max(0.0, delay), next(self._seq), callback)
        heapq.heappush(self._heap, timer)
        return timer

    def next_due(self) -> float | None:
        """Virtual time of the next live timer, or None if nothing is scheduled."""
        while self._heap and self._heap[0].cancelled:
            heapq.heappop(self._heap)
        return self._heap[0].when if self._heap else None

    @property
    def pending(self) -> int:
        return sum(1 for t in self._heap if not t.cancelled)

    def run_next(self) -> bool:
        """Jump to the next timer and fire it; False if none is pending."""
        due = self.next_due()
        if due is None:
            return False
        timer = heapq.heappop(self._heap)
        self._now = max(self._now, timer.when)
        timer.callback()
        return True

    def advance(self, seconds: float) -> int:
        """Move time forward by ``seconds``, firing every timer due on the way; returns count."""
        target = self._now + seconds
        fired = 0
        while True:
            due = self.next_due()
            if due is None or due > target:
                break
            self.run_next()
            fired += 1
        self._now = max(self._now, target)
        return fired


class RealTimeClock:
    """Wall-clock timers on an asyncio event loop (the running loop unless one is given)."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop

    def _get_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    def now(self) -> float:
        return self._get_loop().time()

    def call_later(self, delay: float, callback: Callable[[], None]) -> asyncio.TimerHandle:
        return self._get_loop().call_later(max(0.0, delay), callback)
