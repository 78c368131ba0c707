"""The durable store: one :class:`Store` per process over SQLite or PostgreSQL.

``databases`` is used here and nowhere else in the engine (see STYLE §4: it is retired, so it
stays behind this one seam). Callers get plain dicts and dataclasses, never driver records.

Connections and transactions
----------------------------
``databases`` (>= 0.8) gives each asyncio task its own connection, and a transaction covers
only the queries of the task that opened it. :meth:`Store.transaction` makes that safe: the
open transaction is kept in a :class:`contextvars.ContextVar`, so every query the store runs
while it is open, from the opening task *or any task it spawns* (child tasks copy the context),
goes through the transaction's one connection, serialised by that connection's query lock.
Nothing silently runs outside the transaction on another connection, and asyncpg never sees
two operations at once on one connection. Nested ``transaction()`` blocks are savepoints;
concurrent sibling savepoints take turns. (Plain statements that a sibling task issues while
another task's savepoint is open are undone if that savepoint rolls back: concurrent work in
one transaction should use savepoints or none.)

On SQLite a transaction starts with ``BEGIN IMMEDIATE``: it takes the write lock up front, so
two writers wait for each other (busy timeout) instead of failing on lock upgrade.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import aclosing, asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from time import perf_counter
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from databases import Database
from databases.core import Connection
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.ddl import DDLElement

from engine.store import sqlite_pool, statement_cache
from engine.store.errors import Conflict, StoreError, StoreUnavailable
from engine.store.metrics import DbMetrics
from engine.store.urls import DEFAULT_DB_URL, DatabaseSettings, parse_database_url

if TYPE_CHECKING:
    from engine.store.repos import (
        ApiKeyRepo,
        AuditRepo,
        GapiRepo,
        ServiceRepo,
        TenantRepo,
        UserRepo,
    )

log = logging.getLogger("nexus.store")

Query = ClauseElement | str

try:  # asyncpg is an optional driver: only needed for postgresql:// URLs
    import asyncpg
    import asyncpg.exceptions as _pg_exc

    _PG_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
        _pg_exc.PostgresConnectionError,
        _pg_exc.ConnectionDoesNotExistError,
        _pg_exc.CannotConnectNowError,
        _pg_exc.TooManyConnectionsError,
        asyncpg.InterfaceError,
    )
    _PG_INTEGRITY_ERRORS: tuple[type[BaseException], ...] = (
        _pg_exc.IntegrityConstraintViolationError,
    )
except ImportError:  # pragma: no cover - asyncpg is a declared dependency
    _PG_CONNECTION_ERRORS = ()
    _PG_INTEGRITY_ERRORS = ()

_CONNECTION_ERRORS = (OSError, TimeoutError, *_PG_CONNECTION_ERRORS)
#: what a raw asyncpg connection raises for the database's own reasons
_DRIVER_ERRORS: tuple[type[BaseException], ...] = (
    (asyncpg.PostgresError, *_CONNECTION_ERRORS) if _PG_CONNECTION_ERRORS else _CONNECTION_ERRORS
)
_INTEGRITY_ERRORS = (sqlite3.IntegrityError, *_PG_INTEGRITY_ERRORS)


def _command_of(query: Query) -> str:
    if isinstance(query, str):
        verb = query.lstrip().split(None, 1)[0].lower() if query.strip() else ""
        if verb in ("select", "insert", "update", "delete"):
            return verb
        if verb in ("create", "alter", "drop"):
            return "ddl"
        if verb in ("begin", "commit", "rollback", "savepoint", "release"):
            return "transaction"
        return "other"
    if isinstance(query, DDLElement):
        return "ddl"
    if isinstance(query, sa.Select | sa.CompoundSelect):
        return "select"
    if isinstance(query, sa.Insert):
        return "insert"
    if isinstance(query, sa.Update):
        return "update"
    if isinstance(query, sa.Delete):
        return "delete"
    return "other"


def error_code(exc: BaseException) -> str:
    """The ``code`` label of ``nexus_db_errors_total``: SQLSTATE, SQLite error name or type."""
    code = getattr(exc, "sqlstate", None) or getattr(exc, "sqlite_errorname", None)
    return str(code) if code else type(exc).__name__


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def translate_error(exc: Exception) -> StoreError:
    """Map a driver exception to the store's own errors."""
    if isinstance(exc, StoreError):
        return exc
    if isinstance(exc, _INTEGRITY_ERRORS):
        return Conflict(_describe(exc))
    if isinstance(exc, _CONNECTION_ERRORS):
        return StoreUnavailable(_describe(exc))
    return StoreError(_describe(exc))


async def _keep_session(connection: Any) -> None:
    """The asyncpg pool's ``reset``: nothing to undo (see :class:`Store`)."""


@dataclass(eq=False)
class _Tx:
    conn: Connection
    owner: asyncio.Task[Any] | None
    active: bool = True


@dataclass(eq=False)
class _Scope:
    """The root transaction or one savepoint in it. Savepoints opened directly inside a scope
    (from several tasks at once) take turns on ``child_lock``: savepoints are a stack on the
    one connection, so siblings must not interleave."""

    tx: _Tx
    child_lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class Store:
    """The durable store.

    ``Store(url)``; ``await store.connect()`` (runs the migrations unless ``migrate=False``);
    the repositories ``store.tenants``, ``store.services``, ``store.apikeys``, ``store.gapis``,
    ``store.users`` and ``store.audit``; ``async with store.transaction(): ...``;
    ``await store.ping()``; ``await store.disconnect()``.

    ``pepper`` is the server-side secret mixed into API-key hashes (HMAC-SHA256 key).
    ``name`` is the ``db`` label of the ``nexus_db_*`` metrics (default: the dialect).
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        min_size: int | None = None,
        max_size: int | None = None,
        connect_timeout: float = 10.0,
        busy_timeout: float = 30.0,
        pepper: str | bytes = b"",
        name: str | None = None,
    ) -> None:
        raw = url or os.environ.get("NEXUS_DB_URL") or DEFAULT_DB_URL
        self.settings: DatabaseSettings = parse_database_url(
            raw,
            min_size=min_size,
            max_size=max_size,
            connect_timeout=connect_timeout,
            busy_timeout=busy_timeout,
        )
        self.dialect = self.settings.dialect
        self.pepper = pepper.encode("utf-8") if isinstance(pepper, str) else bytes(pepper)
        self.metrics = DbMetrics(name or self.dialect)
        options = dict(self.settings.driver_options)
        if self.dialect == "postgresql":
            # asyncpg's default pool reset sends "SELECT pg_advisory_unlock_all(); CLOSE ALL;
            # UNLISTEN *; RESET ALL" on every release, i.e. one more round trip for every
            # statement run outside a transaction. The engine keeps no session state (advisory
            # locks are transaction-scoped, no LISTEN, no SET, no cursors outside a
            # transaction), and asyncpg still rolls back a transaction left open before
            # calling this reset.
            options.setdefault("reset", _keep_session)
        self._db = Database(self.settings.driver_url, **options)
        self._sqlite_pool = sqlite_pool.install(self._db)
        #: compiled SQL by statement shape (see :mod:`engine.store.statement_cache`)
        self.statements = statement_cache.install(self._db)
        self._scope: ContextVar[_Scope | None] = ContextVar(
            f"nexus_store_scope_{id(self):x}", default=None
        )

        from engine.store.repos import (
            ApiKeyRepo,
            AuditRepo,
            GapiRepo,
            ServiceRepo,
            TenantRepo,
            UserRepo,
        )

        self.tenants: TenantRepo = TenantRepo(self)
        self.services: ServiceRepo = ServiceRepo(self)
        self.apikeys: ApiKeyRepo = ApiKeyRepo(self)
        self.gapis: GapiRepo = GapiRepo(self)
        self.users: UserRepo = UserRepo(self)
        self.audit: AuditRepo = AuditRepo(self)

    def __repr__(self) -> str:
        return f"Store({self.settings.display!r})"

    # -- lifecycle -----------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._db.is_connected

    async def connect(self, *, migrate: bool = True) -> list[int]:
        """Open the pool (and create the SQLite file's folder, enable WAL); then migrate.

        Returns the migration versions applied now. Raises :class:`StoreUnavailable` with a
        one-line reason when the database cannot be reached.
        """
        if not self._db.is_connected:
            path = self.settings.sqlite_path
            if path:
                parent = os.path.dirname(os.path.abspath(path))
                try:
                    await asyncio.to_thread(os.makedirs, parent, exist_ok=True)
                except OSError as exc:
                    raise StoreUnavailable(
                        f"cannot create the folder of {self.settings.display}: {_describe(exc)}"
                    ) from exc
            try:
                await self._db.connect()
            except Exception as exc:  # driver errors vary: refused, auth, DNS, TLS, timeout
                raise StoreUnavailable(
                    f"cannot connect to {self.settings.display}: {_describe(exc)}"
                ) from exc
            self.metrics.connect.inc()
            try:
                if path:
                    mode = await self.fetch_val("PRAGMA journal_mode=WAL")
                    if str(mode).lower() != "wal":
                        log.warning("sqlite journal_mode is %s, not wal", mode)
                else:
                    await self.fetch_val("SELECT 1")
            except StoreError as exc:
                await self._close_quietly()
                raise StoreUnavailable(
                    f"cannot use {self.settings.display}: {exc}"
                ) from exc
        if migrate:
            return await self.migrate()
        return []

    async def _close_quietly(self) -> None:
        try:
            await self._db.disconnect()
        except Exception:  # noqa: BLE001 - best effort after a failed connect
            log.debug("disconnect after failed connect failed", exc_info=True)

    async def disconnect(self) -> None:
        if self._db.is_connected:
            await self._db.disconnect()
            if self._sqlite_pool is not None:
                await self._sqlite_pool.close()
            self.metrics.disconnect.inc()

    async def __aenter__(self) -> Store:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.disconnect()

    async def ping(self, timeout: float = 2.0) -> bool:
        """Health probe: True when ``SELECT 1`` answers within ``timeout`` seconds."""
        if not self._db.is_connected:
            return False
        try:
            return await asyncio.wait_for(self.fetch_val("SELECT 1"), timeout) == 1
        except (TimeoutError, StoreError):
            return False

    def detail(self) -> dict[str, Any]:
        """What /health/detail shows about the store (no I/O)."""
        return {
            "ready": self._db.is_connected,
            "dialect": self.dialect,
            "url": self.settings.display,
        }

    async def migrate(self) -> list[int]:
        """Apply pending migrations (under a lock); returns the versions applied now."""
        from engine.store.migrations import migrate

        return await migrate(self)

    # -- queries -------------------------------------------------------------------------

    def _active_tx(self) -> _Tx | None:
        scope = self._scope.get()
        if scope is None or not scope.tx.active:
            return None
        return scope.tx

    @property
    def in_transaction(self) -> bool:
        return self._active_tx() is not None

    async def _run(self, method: str, query: Query, values: Mapping[str, Any] | None) -> Any:
        metrics = self.metrics
        metrics.request.inc()
        start = perf_counter()
        tx = self._active_tx()
        try:
            if tx is not None:
                result = await getattr(tx.conn, method)(query, values)
            else:
                if not self._db.is_connected:
                    raise StoreUnavailable("the store is not connected")
                conn = self._db.connection()
                metrics.connect.inc()
                try:
                    async with conn:
                        result = await getattr(conn, method)(query, values)
                finally:
                    metrics.disconnect.inc()
        except Exception as exc:
            metrics.error(error_code(exc))
            raise translate_error(exc) from exc
        metrics.success[_command_of(query)].inc()
        metrics.duration[method].observe((perf_counter() - start) * 1000.0)
        return result

    @staticmethod
    def _as_dict(record: Any) -> dict[str, Any]:
        return {key: record[key] for key in record.keys()}  # noqa: SIM118 - Record API

    async def fetch_one(
        self, query: Query, values: Mapping[str, Any] | None = None
    ) -> dict[str, Any] | None:
        record = await self._run("fetch_one", query, values)
        return None if record is None else self._as_dict(record)

    async def fetch_all(
        self, query: Query, values: Mapping[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        records = await self._run("fetch_all", query, values)
        return [self._as_dict(record) for record in records]

    async def iterate(
        self, query: Query, values: Mapping[str, Any] | None = None, *, chunk: int = 500
    ) -> AsyncIterator[list[dict[str, Any]]]:
        """The rows of ``query`` in lists of at most ``chunk``, read from a cursor as the
        caller takes them, so that a large result never holds the event loop for long:
        :meth:`fetch_all` decodes every row before it returns (20,000 open segments took
        130-190 ms). The cursor lives in a read transaction of its own, open until the last
        chunk is taken: close the iterator (``contextlib.aclosing``) when leaving early.
        Inside a transaction the rows are read at once (in that transaction) and handed out
        in chunks all the same."""
        if chunk < 1:
            raise ValueError("chunk must be at least 1")
        metrics = self.metrics
        metrics.request.inc()
        start = perf_counter()
        tx = self._active_tx()
        try:
            if tx is not None:
                records = await tx.conn.fetch_all(query, values)
                for first in range(0, len(records), chunk):
                    yield [self._as_dict(r) for r in records[first : first + chunk]]
            else:
                if not self._db.is_connected:
                    raise StoreUnavailable("the store is not connected")
                conn = self._db.connection()
                metrics.connect.inc()
                try:
                    async with conn, aclosing(self._chunks(conn, query, values, chunk)) as rows:
                        async for part in rows:
                            yield part
                finally:
                    metrics.disconnect.inc()
        except StoreError:
            raise
        except Exception as exc:
            metrics.error(error_code(exc))
            raise translate_error(exc) from exc
        metrics.success[_command_of(query)].inc()
        metrics.duration["iterate"].observe((perf_counter() - start) * 1000.0)

    async def _chunks(
        self, conn: Connection, query: Query, values: Mapping[str, Any] | None, chunk: int
    ) -> AsyncIterator[list[dict[str, Any]]]:
        # every generator is closed explicitly: left to the garbage collector, the cursor
        # and its transaction would stay open on the task's connection
        rows: list[dict[str, Any]] = []
        async with aclosing(conn.iterate(query, values)) as records:
            async for record in records:
                rows.append(self._as_dict(record))
                if len(rows) >= chunk:
                    yield rows
                    rows = []
        if rows:
            yield rows

    async def fetch_val(self, query: Query, values: Mapping[str, Any] | None = None) -> Any:
        return await self._run("fetch_val", query, values)

    async def execute(self, query: Query, values: Mapping[str, Any] | None = None) -> Any:
        return await self._run("execute", query, values)

    # -- transactions --------------------------------------------------------------------

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Store]:
        """One atomic unit: commit on success, roll back on any exception (or cancellation).

        Nested blocks (in the same task or a child task) become savepoints; sibling
        savepoints opened concurrently by several child tasks take turns. Yields the store.
        """
        scope = self._scope.get()
        if scope is not None and scope.tx.active:
            async with scope.child_lock, self._savepoint(scope.tx):
                yield self
            return
        metrics = self.metrics
        async with self._transaction_connection() as conn:
            backend_tx = None
            try:
                if self.dialect == "sqlite":
                    await conn.execute("BEGIN IMMEDIATE")
                else:
                    backend_tx = conn.transaction()
                    await backend_tx.start()
            except Exception as exc:
                metrics.error(error_code(exc))
                raise translate_error(exc) from exc
            tx = _Tx(conn=conn, owner=asyncio.current_task())
            token = self._scope.set(_Scope(tx))
            try:
                yield self
            except BaseException:
                tx.active = False
                await self._end(conn, backend_tx, commit=False)
                raise
            else:
                tx.active = False
                await self._end(conn, backend_tx, commit=True)
            finally:
                tx.active = False
                self._scope.reset(token)

    @asynccontextmanager
    async def _transaction_connection(self) -> AsyncIterator[Connection]:
        """A pooled connection for one transaction, counted in the ``nexus_db_*`` metrics
        (connect/disconnect, and the transaction's success and duration when it ends well)."""
        if not self._db.is_connected:
            raise StoreUnavailable("the store is not connected")
        metrics = self.metrics
        start = perf_counter()
        conn = self._db.connection()
        metrics.connect.inc()
        try:
            async with conn:
                yield conn
        finally:
            metrics.disconnect.inc()
        metrics.success["transaction"].inc()
        metrics.duration["transaction"].observe((perf_counter() - start) * 1000.0)

    @asynccontextmanager
    async def raw_connection(self) -> AsyncIterator[Any]:
        """PostgreSQL only: a pooled asyncpg connection, for hot paths that run prebuilt SQL
        (``$n`` placeholders, array parameters) without the `databases` layer; open a
        transaction on it with ``async with conn.transaction():``. Driver errors are
        translated like every other query's (:class:`Conflict`, ...)."""
        if self.dialect != "postgresql":
            raise StoreError("raw connections need PostgreSQL")
        # straight from asyncpg's pool: the `databases` connection wrappers (a per-task
        # connection registry, two context managers) cost more than the pool itself on the
        # group commit's path, which takes a connection per batch
        pool = getattr(getattr(self._db, "_backend", None), "_pool", None)
        if pool is None or not self._db.is_connected:
            raise StoreUnavailable("the store is not connected")
        metrics = self.metrics
        start = perf_counter()
        metrics.connect.inc()
        try:
            async with pool.acquire() as conn:
                try:
                    yield conn
                except _DRIVER_ERRORS as exc:  # the caller's own errors pass through as they are
                    metrics.error(error_code(exc))
                    raise translate_error(exc) from exc
        except _CONNECTION_ERRORS as exc:
            metrics.error(error_code(exc))  # acquiring (or releasing) the connection failed
            raise translate_error(exc) from exc
        finally:
            metrics.disconnect.inc()
        metrics.success["transaction"].inc()
        metrics.duration["transaction"].observe((perf_counter() - start) * 1000.0)

    async def _end(self, conn: Connection, backend_tx: Any, *, commit: bool) -> None:
        try:
            if backend_tx is not None:
                await (backend_tx.commit() if commit else backend_tx.rollback())
            else:
                await conn.execute("COMMIT" if commit else "ROLLBACK")
        except Exception as exc:
            self.metrics.error(error_code(exc))
            if commit:
                if backend_tx is None:
                    try:
                        await conn.execute("ROLLBACK")
                    except Exception:  # noqa: BLE001 - already failed; keep the first error
                        log.debug("rollback after failed commit failed", exc_info=True)
                raise translate_error(exc) from exc
            log.warning("rollback failed: %s", _describe(exc))

    @asynccontextmanager
    async def _savepoint(self, tx: _Tx) -> AsyncIterator[None]:
        name = f"nexus_sp_{uuid.uuid4().hex}"
        await self.execute(f"SAVEPOINT {name}")
        token = self._scope.set(_Scope(tx))
        try:
            yield
        except BaseException:
            self._scope.reset(token)
            await self.execute(f"ROLLBACK TO SAVEPOINT {name}")
            await self.execute(f"RELEASE SAVEPOINT {name}")
            raise
        else:
            self._scope.reset(token)
            await self.execute(f"RELEASE SAVEPOINT {name}")

    # -- introspection -------------------------------------------------------------------

    # (no "%" in these raw queries: the databases backends %-format the compiled SQL)

    async def schema(self) -> dict[str, dict[str, bool]]:
        """The live schema: table -> column -> nullable (for tests and /health/detail)."""
        out: dict[str, dict[str, bool]] = {}
        if self.dialect == "sqlite":
            tables = await self.fetch_all(
                "SELECT name FROM sqlite_master WHERE type = 'table' "
                "AND substr(name, 1, 7) <> 'sqlite_' ORDER BY name"
            )
            for row in tables:
                name = row["name"]
                cols = await self.fetch_all(f'PRAGMA table_info("{name}")')
                out[name] = {c["name"]: not (c["notnull"] or c["pk"]) for c in cols}
            return out
        rows = await self.fetch_all(
            "SELECT table_name, column_name, is_nullable FROM information_schema.columns "
            "WHERE table_schema = current_schema() ORDER BY table_name, ordinal_position"
        )
        for row in rows:
            out.setdefault(row["table_name"], {})[row["column_name"]] = (
                row["is_nullable"] == "YES"
            )
        return out

    async def indexes(self) -> dict[str, set[str]]:
        """Named indexes and unique constraints per table (without implicit pk indexes)."""
        out: dict[str, set[str]] = {}
        if self.dialect == "sqlite":
            rows = await self.fetch_all(
                "SELECT tbl_name, name FROM sqlite_master WHERE type = 'index' "
                "AND substr(name, 1, 17) <> 'sqlite_autoindex_'"
            )
            for row in rows:
                out.setdefault(row["tbl_name"], set()).add(row["name"])
            # unique constraints are implicit indexes on SQLite: read their names from the DDL
            tables = await self.fetch_all(
                "SELECT name, sql FROM sqlite_master WHERE type = 'table'"
            )
            for row in tables:
                for part in (row["sql"] or "").split("CONSTRAINT ")[1:]:
                    cname, _, rest = part.partition(" ")
                    if rest.startswith("UNIQUE"):
                        out.setdefault(row["name"], set()).add(cname)
            return out
        rows = await self.fetch_all(
            "SELECT tablename, indexname FROM pg_indexes WHERE schemaname = current_schema() "
            "AND right(indexname, 5) <> '_pkey'"
        )
        for row in rows:
            out.setdefault(row["tablename"], set()).add(row["indexname"])
        return out
