"""Database and cache fixtures of the store tests: a throwaway PostgreSQL database per test
and a fresh SQLite file (``db_url``, ``store``), memory:// and real Redis (``cache``)."""

from __future__ import annotations

from tests.integration.store.conftest import (  # noqa: F401 - fixtures
    cache,
    cache_url,
    db_url,
    pg_database,
    store,
)
