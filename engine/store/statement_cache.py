"""Compiled-statement cache for the `databases` backends (PostgreSQL and SQLite).

`databases` compiles every SQLAlchemy statement on every execution
(``query.compile(dialect)``): for the small statements of the engine's hot paths that costs
several times more CPU than running them. SQLAlchemy's own compiled cache is not used by
`databases`, so this module adds one with the same key: a statement's
``_generate_cache_key()`` identifies its *shape* (tables, columns, operators, which values are
bound) independently of the bound values, and the cache key's extracted bind parameters give
this execution's values in the order the cached compilation expects them
(``compiled.construct_params(extracted_parameters=...)``, exactly what SQLAlchemy's engine
does).

Statements that cannot be cached fall back to the backend's own compilation: DDL, statements
without a cache key, and statements whose SQL depends on the values (expanding ``IN`` lists
and other post-compile parameters).

:func:`install` replaces ``database._backend.connection`` with a factory of caching
connections; :class:`StatementCache` (``store.statements``) counts hits and misses.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from databases.backends.common.records import Record, create_column_maps
from databases.backends.postgres import PostgresBackend, PostgresConnection
from databases.backends.sqlite import CompilationContext, SQLiteBackend, SQLiteConnection
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.ddl import DDLElement

log = logging.getLogger("nexus.store")

#: at most this many statement shapes are kept (the engine has a few hundred)
MAX_ENTRIES = 2000

_UNCACHEABLE = object()


@dataclass(slots=True)
class _Entry:
    compiled: Any
    sql: str  # the driver's SQL text ($n placeholders on PostgreSQL, ? on SQLite)
    names: tuple[str, ...]  # bind parameter names in placeholder order
    processors: dict[str, Any]
    result_columns: Any
    column_maps: Any
    expanding: bool = False  # has IN lists: the SQL is built per call (and memoised)
    expanded: dict[str, tuple[str, tuple[str, ...]]] = field(default_factory=dict)


@dataclass
class StatementCache:
    """Compiled statements by shape, per dialect. ``hits`` / ``misses`` / ``uncached``
    (compiled by the backend because the statement cannot be cached) are counters."""

    max_entries: int = MAX_ENTRIES
    hits: int = 0
    misses: int = 0
    uncached: int = 0
    _entries: dict[Any, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return sum(1 for e in self._entries.values() if e is not _UNCACHEABLE)

    def clear(self) -> None:
        self._entries.clear()

    def lookup(
        self, query: Any, dialect: Any, positional: bool
    ) -> tuple[_Entry, str, list[Any]] | None:
        """``(entry, sql, args)`` for ``query``, compiling it on a miss; None when it cannot
        be cached (the caller compiles it the usual way)."""
        if not isinstance(query, ClauseElement) or isinstance(query, DDLElement):
            self.uncached += 1
            return None
        key = query._generate_cache_key()
        if key is None:
            self.uncached += 1
            return None
        shape = key[0]
        entry = self._entries.get(shape)
        if entry is None:
            entry = self._compile(query, key, dialect, positional)
            if len(self._entries) >= self.max_entries:
                self._entries.clear()
            self._entries[shape] = entry
            if entry is not _UNCACHEABLE:
                self.misses += 1
        else:
            self.hits += 1
        if entry is _UNCACHEABLE:
            self.uncached += 1
            return None
        compiled = entry.compiled
        params = compiled.construct_params(extracted_parameters=key[1])
        if entry.expanding:  # IN lists: the SQL depends on how many values each one has
            state = compiled._process_parameters_for_postcompile(params)
            params = state.parameters
            processors = state.processors
            if positional:
                sql, names = state.statement, tuple(state.positiontup or ())
            else:
                found = entry.expanded.get(state.statement)
                if found is None:
                    names = tuple(sorted(params))
                    sql = state.statement % {n: f"${i}" for i, n in enumerate(names, start=1)}
                    if len(entry.expanded) < 64:
                        entry.expanded[state.statement] = (sql, names)
                else:
                    sql, names = found
        else:
            processors, sql, names = entry.processors, entry.sql, entry.names
        args = [
            processors[name](params[name]) if name in processors else params[name]
            for name in names
        ]
        return entry, sql, args

    @staticmethod
    def _compile(query: Any, key: Any, dialect: Any, positional: bool) -> Any:
        compiled = query._compiler(dialect, cache_key=key)
        if compiled.literal_execute_params:
            return _UNCACHEABLE
        expanding = bool(compiled.post_compile_params)
        if expanding and any(not b.expanding for b in compiled.post_compile_params):
            return _UNCACHEABLE
        if positional:  # SQLite: the dialect's own positional order and ? placeholders
            names = tuple(compiled.positiontup or ())
            sql = compiled.string
        else:  # PostgreSQL (pyformat): $1, $2, ... in sorted name order, like `databases`
            names = tuple(sorted(compiled.bind_names.values()))
            sql = compiled.string % {name: f"${i}" for i, name in enumerate(names, start=1)}
        result_columns = compiled._result_columns
        return _Entry(
            compiled=compiled,
            sql=sql,
            names=names,
            processors=dict(compiled._bind_processors),
            result_columns=result_columns,
            column_maps=create_column_maps(result_columns),
            expanding=expanding,
        )


class CachedPostgresConnection(PostgresConnection):
    statements: StatementCache

    def _compile(self, query: ClauseElement) -> tuple[str, list, tuple]:
        found = self.statements.lookup(query, self._dialect, positional=False)
        if found is None:
            return super()._compile(query)
        entry, sql, args = found
        return sql, args, entry.result_columns

    def _compiled(self, query: ClauseElement) -> tuple[str, list, Any, Any]:
        found = self.statements.lookup(query, self._dialect, positional=False)
        if found is None:
            sql, args, result_columns = super()._compile(query)
            return sql, args, result_columns, create_column_maps(result_columns)
        entry, sql, args = found
        return sql, args, entry.result_columns, entry.column_maps

    async def fetch_all(self, query: ClauseElement) -> list[Any]:
        assert self._connection is not None, "Connection is not acquired"
        sql, args, result_columns, column_maps = self._compiled(query)
        rows = await self._connection.fetch(sql, *args)
        dialect = self._dialect
        return [Record(row, result_columns, dialect, column_maps) for row in rows]

    async def fetch_one(self, query: ClauseElement) -> Any:
        assert self._connection is not None, "Connection is not acquired"
        sql, args, result_columns, column_maps = self._compiled(query)
        row = await self._connection.fetchrow(sql, *args)
        if row is None:
            return None
        return Record(row, result_columns, self._dialect, column_maps)


class CachedSQLiteConnection(SQLiteConnection):
    statements: StatementCache

    def _compile(self, query: ClauseElement) -> tuple[str, list, Any, Any]:
        found = self.statements.lookup(query, self._dialect, positional=True)
        if found is None:
            return super()._compile(query)
        entry, sql, args = found
        compiled = entry.compiled
        context = self._dialect.execution_ctx_cls()
        context.dialect = self._dialect
        context.result_column_struct = (
            compiled._result_columns,
            compiled._ordered_columns,
            compiled._textual_ordered_columns,
            compiled._ad_hoc_textual,
            compiled._loose_column_name_matching,
        )
        return sql, args, entry.result_columns, CompilationContext(context)


def install(database: Any, statements: StatementCache | None = None) -> StatementCache | None:
    """Make ``database``'s connections use a compiled-statement cache; returns it (None for
    a backend this module does not know)."""
    backend = getattr(database, "_backend", None)
    if isinstance(backend, PostgresBackend):
        cls: type = CachedPostgresConnection
    elif isinstance(backend, SQLiteBackend):
        cls = CachedSQLiteConnection
    else:
        return None
    cache = statements or StatementCache()
    connection_cls = type(f"{cls.__name__}ForStore", (cls,), {"statements": cache})

    def connection() -> Any:
        if cls is CachedSQLiteConnection:  # the pool is looked up now (it may be replaced)
            return connection_cls(backend._pool, backend._dialect)
        return connection_cls(backend, backend._dialect)

    backend.connection = connection
    return cache
