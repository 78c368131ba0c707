"""A probe of the database's slow WAL flushes, run beside a benchmark.

Every acknowledged message waits for its commit's WAL fsync. On this project's test VM one
fsync now and then takes 85-300 ms (seen in ``pg_stat_activity``: one backend in
``IO/WALSync``, the others queued on ``LWLock/WALWrite``), and every commit in flight waits
with it: one such flush in a 10 s run decides the chat benchmark's p99. The probe is a
process with its own connection that reads ``pg_stat_activity`` every ``period`` seconds and
records each sample where a transaction of the benchmark's database has waited on the WAL
(``WALSync`` or ``WALWrite``) for ``threshold`` or more since it began; samples less than
``gap`` apart are one stall. Times are ``time.monotonic_ns()``, as in bench/_stalls.py, whose
:class:`~_stalls.Stalls` summary it shares. It costs one small query per period.
"""

from __future__ import annotations

import asyncio
import time
from multiprocessing.connection import Connection

from _stalls import ProbeProcess, answer_orders

_WAITING = (
    "SELECT coalesce(max(extract(epoch FROM clock_timestamp() - xact_start)), 0) "
    "FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() "
    "AND wait_event IN ('WALSync', 'WALWrite')"
)


def merge(samples: list[tuple[int, float]], gap_ns: int) -> list[tuple[int, float]]:
    """(sample time, seconds waited) -> one (start, ms) per stall: consecutive samples less
    than ``gap_ns`` apart are the same stall, which lasted at least its longest wait."""
    stalls: list[tuple[int, float]] = []
    last = None
    for at, waited in samples:
        start = at - int(waited * 1e9)
        if last is not None and at - last < gap_ns:
            begun, longest = stalls[-1]
            stalls[-1] = (min(begun, start), max(longest, waited * 1000.0))
        else:
            stalls.append((start, waited * 1000.0))
        last = at
    return stalls


async def _watch(conn: Connection, url: str, period: float, threshold: float) -> None:
    import asyncpg

    db = await asyncpg.connect(url)
    samples: list[tuple[int, float]] = []
    conn.send("ready")
    try:
        while not answer_orders(conn, samples):
            now = time.monotonic_ns()
            waited = float(await db.fetchval(_WAITING))
            if waited >= threshold:
                samples.append((now, waited))
            await asyncio.sleep(period)
    finally:
        await db.close()


def _probe(conn: Connection, url: str, period: float, threshold: float) -> None:
    asyncio.run(_watch(conn, url, period, threshold))


class WalStallProbe(ProbeProcess):
    """Commits of the database at ``url`` waiting ``threshold`` or more on the WAL."""

    what = "WAL stall probe"

    def __init__(self, url: str, period: float = 0.005, threshold: float = 0.020,
                 gap: float = 0.030) -> None:
        super().__init__()
        self.url = url
        self.period, self.threshold, self.gap = period, threshold, gap

    def start(self) -> WalStallProbe:
        self._start(_probe, self.url, self.period, self.threshold)
        return self

    def stalls(self) -> list[tuple[int, float]]:
        return merge(self.samples, int(self.gap * 1e9))
