"""Store lifecycle, in-memory SQLite, metrics and errors (no external servers)."""

from __future__ import annotations

import os

import pytest
import sqlalchemy as sa
from prometheus_client import REGISTRY

from engine.store import Store, StoreError, StoreUnavailable
from engine.store import metrics as m
from engine.store.db import _command_of, error_code
from engine.store.migrations import discover
from engine.store.tables import tenants


def _value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_in_memory_sqlite_store() -> None:
    store = Store("sqlite://", name="unit-mem")
    assert await store.connect() == [m.version for m in discover()]
    try:
        tenant = await store.tenants.create("c1", "acme")
        assert (await store.tenants.get("c1")) == tenant
        assert await store.ping()
        assert store.detail() == {"ready": True, "dialect": "sqlite", "url": "sqlite://"}
    finally:
        await store.disconnect()
    assert await store.ping() is False
    assert store.detail()["ready"] is False


async def test_sqlite_file_gets_its_folder_and_wal(tmp_path) -> None:
    path = tmp_path / "deep" / "er" / "nexus.db"
    async with Store(f"sqlite:///{path}") as store:
        assert os.path.exists(path)
        assert str(await store.fetch_val("PRAGMA journal_mode")).lower() == "wal"
        assert int(await store.fetch_val("PRAGMA busy_timeout")) == 30000


async def test_metrics_are_counted_with_the_guides_names(tmp_path) -> None:
    db = "unit-metrics"
    store = Store(f"sqlite:///{tmp_path}/m.db", name=db)
    await store.connect()
    try:
        requests = _value("nexus_db_request_total", db=db)
        selects = _value("nexus_db_success_total", db=db, command="select")
        inserts = _value("nexus_db_success_total", db=db, command="insert")
        connects = _value("nexus_db_connect_total", db=db)
        disconnects = _value("nexus_db_disconnect_total", db=db)
        fetches = _value("nexus_db_request_duration_milliseconds_count", db=db, method="fetch_one")
        await store.fetch_one(sa.select(tenants))
        now = sa.func.now()
        await store.execute(
            sa.insert(tenants).values(ccid="c", name="n", created=now, updated=now)
        )
        assert _value("nexus_db_request_total", db=db) == requests + 2
        assert _value("nexus_db_success_total", db=db, command="select") == selects + 1
        assert _value("nexus_db_success_total", db=db, command="insert") == inserts + 1
        assert _value("nexus_db_connect_total", db=db) == connects + 2
        assert _value("nexus_db_disconnect_total", db=db) == disconnects + 2
        assert (
            _value("nexus_db_request_duration_milliseconds_count", db=db, method="fetch_one")
            == fetches + 1
        )
        with pytest.raises(StoreError):
            await store.execute("SELECT * FROM missing_table")
        assert _value("nexus_db_errors_total", db=db, code="SQLITE_ERROR") >= 1
        async with store.transaction():
            await store.fetch_all(sa.select(tenants))
        assert _value("nexus_db_success_total", db=db, command="transaction") >= 1
    finally:
        await store.disconnect()


def test_metric_definitions() -> None:
    assert m.REDIS_READY._multiprocess_mode == "livesum"
    assert m.REDIS_RECONNECTING._multiprocess_mode == "livesum"
    assert m.REDIS_ESTABLISHED._multiprocess_mode == "livesum"
    assert m.DB_SUCCESS._labelnames == ("db", "command")
    assert m.DB_ERRORS._labelnames == ("db", "code")
    assert m.DB_REQUEST_DURATION._labelnames == ("db", "method")
    names = {metric.name: metric.type for metric in REGISTRY.collect()}
    expected = {
        "nexus_db_connect": "counter",
        "nexus_db_disconnect": "counter",
        "nexus_db_request": "counter",
        "nexus_db_success": "counter",
        "nexus_db_errors": "counter",
        "nexus_db_request_duration_milliseconds": "histogram",
        "nexus_redis_connections_established": "gauge",
        "nexus_redis_connections_reconnecting": "gauge",
        "nexus_redis_connections_ready": "gauge",
        "nexus_redis_duration_until_ready": "histogram",
        "nexus_redis_errors": "counter",
    }
    for name, kind in expected.items():
        assert names.get(name) == kind, name
    children = m.DbMetrics("unit-children")
    assert children.success["select"].target is m.DB_SUCCESS.labels(
        db="unit-children", command="select"
    )


def test_command_and_error_code_helpers() -> None:
    assert _command_of("  select 1") == "select"
    assert _command_of("CREATE TABLE x (a int)") == "ddl"
    assert _command_of("SAVEPOINT a") == "transaction"
    assert _command_of("VACUUM") == "other"
    assert _command_of(sa.delete(tenants)) == "delete"
    assert _command_of(sa.update(tenants)) == "update"

    class PgLike(Exception):
        sqlstate = "23505"

    assert error_code(PgLike()) == "23505"
    assert error_code(ValueError()) == "ValueError"


async def test_unreachable_postgresql_is_a_clear_error() -> None:
    store = Store("postgresql://nobody@127.0.0.1:1/nexus", connect_timeout=2)
    with pytest.raises(StoreUnavailable) as info:
        await store.connect()
    message = str(info.value)
    assert message.startswith("cannot connect to postgresql://nobody@127.0.0.1:1/nexus:")
    assert "\n" not in message
    assert await store.ping() is False
    with pytest.raises(StoreUnavailable):
        await store.fetch_all(sa.select(tenants))
    with pytest.raises(StoreUnavailable):
        async with store.transaction():
            pass


def test_default_url_comes_from_the_environment(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("NEXUS_DB_URL", f"sqlite:///{tmp_path}/env.db")
    assert Store().settings.sqlite_path == f"{tmp_path}/env.db"
    monkeypatch.delenv("NEXUS_DB_URL")
    assert Store().settings.sqlite_path == "var/nexus.db"
