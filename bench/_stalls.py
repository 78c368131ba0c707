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
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection


def answer_orders(conn: Connection, samples: list[tuple[int, float]]) -> bool:
    """In a probe's process: answer a waiting order ("report" or "stop") with the samples so
    far; True when it was "stop"."""
    if not conn.poll():
        return False
    order = conn.recv()
    conn.send(list(samples))
    return order == "stop"


def _probe(conn: Connection, period: float, threshold: float) -> None:
    late: list[tuple[int, float]] = []
    conn.send("ready")
    while not answer_orders(conn, late):
        before = time.monotonic_ns()
        time.sleep(period)
        over = (time.monotonic_ns() - before) / 1e9 - period
        if over > threshold:
            late.append((before, over * 1000.0))


@dataclass(frozen=True)
class Stalls:
    """The stalls of a window: how many, the longest and their sum (ms)."""

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


def window(stalls: list[tuple[int, float]], start_ns: int, end_ns: int) -> Stalls:
    """The ``(start, ms)`` stalls that began in ``[start_ns, end_ns)``."""
    inside = [ms for at, ms in stalls if start_ns <= at < end_ns]
    return Stalls(len(inside), max(inside, default=0.0), sum(inside))


class ProbeProcess:
    """A probe in a process of its own (spawned): ``target(conn, *args)`` sends "ready",
    then keeps samples and answers orders with :func:`answer_orders`. ``start()``, run the
    load, ``since(start_ns)`` while it runs or after ``stop()``."""

    what = "probe"

    def __init__(self) -> None:
        self.samples: list[tuple[int, float]] = []
        self._conn: Connection | None = None
        self._proc: mp.process.BaseProcess | None = None

    def _start(self, target: Callable[..., None], *args: object) -> None:
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=target, args=(child, *args), daemon=True)
        self._proc.start()
        if not self._conn.poll(60) or self._conn.recv() != "ready":
            raise RuntimeError(f"the {self.what} did not start")

    def _ask(self, order: str) -> None:
        if self._conn is not None:
            self._conn.send(order)
            self.samples = self._conn.recv()

    def stop(self) -> None:
        self._ask("stop")
        if self._proc is not None:
            self._proc.join(10)
        self._conn = self._proc = None

    def stalls(self) -> list[tuple[int, float]]:
        """``(start, ms)`` of each stall in :attr:`samples`."""
        return self.samples

    def since(self, start_ns: int, end_ns: int | None = None) -> Stalls:
        """The stalls that began in ``[start_ns, end_ns)`` (end: now); a running probe is
        asked for its samples so far, and goes on."""
        self._ask("report")
        return window(self.stalls(), start_ns, end_ns or time.monotonic_ns())


class StallProbe(ProbeProcess):
    """Wake-ups more than ``threshold`` late after sleeping ``period`` seconds."""

    what = "stall probe"

    def __init__(self, period: float = 0.002, threshold: float = 0.010) -> None:
        super().__init__()
        self.period, self.threshold = period, threshold

    def start(self) -> StallProbe:
        self._start(_probe, self.period, self.threshold)
        return self
