"""Versioned schema migrations.

Each migration is a module ``vNNNN_<name>.py`` in this package with ``VERSION`` (int, equal to
NNNN), ``NAME`` and ``statements(dialect) -> list`` of SQLAlchemy DDL constructs (or SQL
strings), so one definition gives the same schema on SQLite and PostgreSQL. The table
``schema_migrations(version, name, applied_at)`` records what ran.

:func:`migrate` is idempotent and safe when several processes start at once:

* PostgreSQL: one transaction takes ``pg_advisory_xact_lock`` (held until it commits), then
  reads the applied versions and applies the pending ones (DDL is transactional there, so a
  failing migration leaves nothing half-done).
* SQLite: everything runs in one ``BEGIN IMMEDIATE`` transaction, which holds the database's
  write lock, so a second migrator waits and then finds nothing left to do.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import ModuleType
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.schema import CreateTable

import engine.store.conversation_tables  # noqa: F401 - registers them on tables.metadata
import engine.store.messaging_tables  # noqa: F401 - registers them on tables.metadata
import engine.store.webhook_tables  # noqa: F401 - registers them on tables.metadata
from engine.store.errors import MigrationError
from engine.store.tables import schema_migrations

if TYPE_CHECKING:
    from engine.store.db import Store

log = logging.getLogger("nexus.store.migrations")

#: Key of the PostgreSQL advisory lock taken while migrating (stable, arbitrary).
ADVISORY_LOCK_KEY = 0x4E4558_5553_4D47  # "NEXUS" "MG"

_MODULE_RE = re.compile(r"^v(\d{4})_[a-z0-9_]+$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    statements: Callable[[str], Sequence[Any]]


def discover(package: ModuleType | None = None) -> list[Migration]:
    """All migrations of this package, ordered by version; checks numbering."""
    package = package or importlib.import_module(__name__)
    found: list[Migration] = []
    for info in pkgutil.iter_modules(package.__path__):
        match = _MODULE_RE.match(info.name)
        if not match:
            continue
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        version = int(module.VERSION)
        if version != int(match.group(1)):
            raise MigrationError(f"{info.name}: VERSION {version} does not match its file name")
        found.append(Migration(version, str(module.NAME), module.statements))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"duplicate migration versions: {versions}")
    return found


async def applied_versions(store: Store) -> set[int]:
    rows = await store.fetch_all(sa.select(schema_migrations.c.version))
    return {int(row["version"]) for row in rows}


async def _ensure_table(store: Store) -> None:
    await store.execute(CreateTable(schema_migrations, if_not_exists=True))


async def _apply(store: Store, migration: Migration) -> None:
    for statement in migration.statements(store.dialect):
        await store.execute(statement)
    await store.execute(
        sa.insert(schema_migrations).values(
            version=migration.version,
            name=migration.name,
            applied_at=datetime.now(UTC),
        )
    )


async def _pending(store: Store, migrations: list[Migration]) -> list[Migration]:
    done = await applied_versions(store)
    known = {m.version for m in migrations}
    unknown = sorted(done - known)
    if unknown:
        log.warning(
            "the database has migrations this engine does not know: %s (a newer engine "
            "migrated it); continuing",
            unknown,
        )
    return [m for m in migrations if m.version not in done]


async def migrate(store: Store, migrations: list[Migration] | None = None) -> list[int]:
    """Apply pending migrations; return the versions applied by this call."""
    migrations = discover() if migrations is None else migrations
    applied: list[int] = []
    if store.dialect == "sqlite":
        async with store.transaction():
            await _ensure_table(store)
            for migration in await _pending(store, migrations):
                await _apply(store, migration)
                applied.append(migration.version)
    else:
        async with store.transaction():
            await store.execute(
                "SELECT pg_advisory_xact_lock(:key)", {"key": ADVISORY_LOCK_KEY}
            )
            await _ensure_table(store)
            for migration in await _pending(store, migrations):
                await _apply(store, migration)
                applied.append(migration.version)
    for version in applied:
        log.info("applied migration %d", version)
    return applied
