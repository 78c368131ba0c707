"""Queries whose plan must not depend on statistics.

A table that has never been analysed (a new database, or PostgreSQL with autovacuum off)
gives the planner no statistics: every equality is guessed at 0.5% of the rows, so an index
on (tenant, state) looks as selective as the primary key, and a plan that picks it reads every
open row of the tenant. Prepared statements (asyncpg) and PL/pgSQL keep the plan they chose
for the life of the connection, so a plan made on a small table stays as the table grows.

``by_key_only`` keeps the checks of a lookup by primary key out of the planner's index
matching: ``(checks) IS TRUE`` is evaluated on the row the key found, with the same meaning
for NOT NULL columns, and no index can answer it.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa


def by_key_only(*checks: Any) -> Any:
    """The ``checks`` as one condition that no index can serve (see the module's docstring)."""
    return sa.and_(*checks).is_(sa.true())
