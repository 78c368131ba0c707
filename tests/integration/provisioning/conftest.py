"""One real engine per backend for the whole package: SQLite + memory:// (one worker) and
PostgreSQL + Redis (two workers). Tests use their own tenants, so they do not interfere."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.provisioning.harness import Engine, copy_config, make_backend, start_engine

BACKENDS = ["sqlite", "pg"]


@pytest.fixture(scope="package", params=BACKENDS)
def engine(request, tmp_path_factory) -> Iterator[Engine]:
    tmp = tmp_path_factory.mktemp(f"engine-{request.param}")
    if request.param == "pg":
        backend = make_backend("pg", tmp, request.getfixturevalue("pg_url"),
                               request.getfixturevalue("redis_url"))
    else:
        backend = make_backend("sqlite", tmp)
    try:
        eng = start_engine(tmp, backend, copy_config(tmp))
        try:
            yield eng
        finally:
            eng.stop()
    finally:
        backend.close()


@pytest.fixture(scope="package")
def admin(engine: Engine) -> dict[str, str]:
    """Headers of the environment admin `nexus` (Bearer token)."""
    return {"Authorization": f"Bearer {engine.admin_token()}"}
