"""A probe of the machine's scheduling stalls, run beside a benchmark.

On a small shared VM a process that is ready to run may wait long for a CPU (on this
project's 2-vCPU machine, two plain busy loops saw gaps of up to 69 ms). Such a stall delays
every request in flight at once, so one of them in a 10 s run can decide a p99. The probe lets
a report tell those runs from slow code: a separate process sleeps ``period`` seconds at a
time and records each wake-up that came more than ``threshold`` late, stamped with
``time.monotonic_ns()`` (CLOCK_MONOTONIC, the clock the benchmarks use). It costs a few
hundred wake-ups per second and almost no CPU. (bench/_walstalls.py watches the other kind
of stall seen there: a slow WAL fsync of the database.)
"""

from __future__ import annotations

import multiprocessing as mp
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection


def _probe(conn: Connection, period: float, threshold: float) -> None:
    late: list[tuple[int, float]] = []
    conn.send("ready")
    while True:
        if conn.poll():
            order = conn.recv()
            conn.send(list(late))
            if order == "stop":
                return
        before = time.monotonic_ns()
        time.sleep(period)
        over = (time.monotonic_ns() - before) / 1e9 - period
        if over > threshold:
            late.append((before, over * 1000.0))


@dataclass(frozen=True)
class Stalls:
    """The late wake-ups of a window: how many, the longest and their sum (ms)."""

    count: int
    max_ms: float
    total_ms: float

    def as_dict(self) -> dict[str, float]:
        return {"count": self.count, "max_ms": round(self.max_ms, 1),
                "total_ms": round(self.total_ms, 1)}

    def __str__(self) -> str:
        if not self.count:
            return "no scheduling stalls"
        return (f"{self.count} scheduling stall(s), longest {self.max_ms:.0f} ms, "
                f"{self.total_ms:.0f} ms in all")


def window(late: list[tuple[int, float]], start_ns: int, end_ns: int) -> Stalls:
    """The stalls of ``late`` that began in ``[start_ns, end_ns)``."""
    inside = [ms for at, ms in late if start_ns <= at < end_ns]
    return Stalls(len(inside), max(inside, default=0.0), sum(inside))


class StallProbe:
    """``start()``, run the load, ``stop()``; then :func:`window` over ``late``."""

    def __init__(self, period: float = 0.002, threshold: float = 0.010) -> None:
        self.period = period
        self.threshold = threshold
        self.late: list[tuple[int, float]] = []
        self._conn: Connection | None = None
        self._proc: mp.process.BaseProcess | None = None

    def start(self) -> StallProbe:
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_probe, args=(child, self.period, self.threshold),
                                 daemon=True)
        self._proc.start()
        if not self._conn.poll(60) or self._conn.recv() != "ready":
            raise RuntimeError("the stall probe did not start")
        return self

    def stop(self) -> list[tuple[int, float]]:
        if self._conn is not None and self._proc is not None:
            self._conn.send("stop")
            self.late = self._conn.recv()
            self._proc.join(10)
            self._conn = self._proc = None
        return self.late

    def since(self, start_ns: int, end_ns: int | None = None) -> Stalls:
        """The stalls recorded (after :meth:`stop`) in ``[start_ns, end_ns)``."""
        return window(self.late, start_ns, end_ns or time.monotonic_ns())

    def late_between(self, start_ns: int) -> Stalls:
        """While running: the stalls from ``start_ns`` until now (asks the probe for its
        record so far, and it goes on)."""
        if self._conn is None:
            return self.since(start_ns)
        self._conn.send("report")
        late = self._conn.recv()
        return window(late, start_ns, time.monotonic_ns())
