"""A real connection pool for the `databases` SQLite backend.

`databases` opens a new aiosqlite connection for every task that touches the database:
a new thread plus ``sqlite3.connect`` per request, which costs far more than the query.
This pool keeps a few idle connections and hands them out again. A connection is reused
only when it comes back with no transaction open; anything else is closed.
"""

from __future__ import annotations

import logging
from typing import Any

import aiosqlite
from databases.backends.sqlite import SQLitePool

log = logging.getLogger("nexus.store")


class PooledSQLitePool(SQLitePool):
    """Drop-in replacement for ``databases.backends.sqlite.SQLitePool`` with idle reuse."""

    def __init__(self, original: SQLitePool, max_idle: int = 8) -> None:
        # Take over the original's settings (database path, options, in-memory reference).
        self.__dict__.update(original.__dict__)
        self._idle: list[aiosqlite.Connection] = []
        self._max_idle = max_idle

    async def acquire(self) -> aiosqlite.Connection:
        while self._idle:
            connection = self._idle.pop()
            if connection._connection is not None:  # still open
                return connection
        return await super().acquire()

    async def release(self, connection: aiosqlite.Connection) -> None:
        reusable = (
            connection._connection is not None
            and not connection.in_transaction
            and len(self._idle) < self._max_idle
        )
        if reusable:
            self._idle.append(connection)
            return
        await super().release(connection)

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for connection in idle:
            try:
                await connection.close()
            except Exception:  # noqa: BLE001 - closing a broken connection is best effort
                log.debug("closing an idle sqlite connection failed", exc_info=True)


def install(database: Any, max_idle: int = 8) -> PooledSQLitePool | None:
    """Replace the SQLite backend's pool of a ``databases.Database``; None for other URLs."""
    backend = getattr(database, "_backend", None)
    pool = getattr(backend, "_pool", None)
    if not isinstance(pool, SQLitePool):
        return None
    if isinstance(pool, PooledSQLitePool):
        return pool
    pooled = PooledSQLitePool(pool, max_idle)
    backend._pool = pooled
    return pooled
