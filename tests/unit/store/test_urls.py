"""Database and cache URL parsing."""

from __future__ import annotations

import pytest

from engine.store.cache import parse_cache_url
from engine.store.errors import InvalidCacheURL, InvalidDatabaseURL
from engine.store.urls import DEFAULT_DB_URL, parse_database_url


def test_default_sqlite_url() -> None:
    settings = parse_database_url(DEFAULT_DB_URL)
    assert settings.dialect == "sqlite" and settings.is_sqlite
    assert settings.sqlite_path == "var/nexus.db"
    assert settings.driver_options["timeout"] == 30.0  # busy timeout
    assert not settings.memory


def test_absolute_sqlite_and_busy_timeout() -> None:
    settings = parse_database_url("sqlite:////data/nexus.db?busy_timeout=5")
    assert settings.sqlite_path == "/data/nexus.db"
    assert settings.driver_options == {"timeout": 5.0}


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:"])
def test_in_memory_sqlite_is_shared_cache_and_unique(url: str) -> None:
    a, b = parse_database_url(url), parse_database_url(url)
    assert a.memory and a.sqlite_path is None
    assert "mode=memory" in a.driver_url and "cache=shared" in a.driver_url
    assert a.driver_options["uri"] is True
    assert a.driver_url != b.driver_url  # one private database per Store


def test_postgresql_url_options() -> None:
    settings = parse_database_url(
        "postgresql://nexus:p%40ss@db.example:5433/nexus?ssl=true&min_size=2&max_size=7"
    )
    assert settings.dialect == "postgresql"
    assert settings.driver_url == "postgresql://nexus:p%40ss@db.example:5433/nexus"
    assert settings.driver_options == {
        "min_size": 2,
        "max_size": 7,
        "timeout": 10.0,
        "ssl": "require",
    }
    assert "p%40ss" not in settings.display and "***" in settings.display


@pytest.mark.parametrize(
    ("value", "mode"),
    [("false", "disable"), ("verify-full", "verify-full"), ("TRUE", "require")],
)
def test_postgresql_ssl_values(value: str, mode: str) -> None:
    settings = parse_database_url(f"postgres://h/db?ssl={value}")
    assert settings.driver_options["ssl"] == mode


def test_keyword_pool_sizes_are_defaults_the_url_overrides() -> None:
    assert parse_database_url("postgresql://h/db", min_size=3, max_size=4).driver_options[
        "max_size"
    ] == 4
    assert parse_database_url("postgresql://h/db?max_size=9", max_size=4).driver_options[
        "max_size"
    ] == 9


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("", "empty"),
        ("mysql://h/db", "unsupported database URL scheme"),
        ("postgresql:///db", "names no host"),
        ("postgresql://h", "names no database"),
        ("postgresql://h:99999/db", "malformed"),
        ("postgresql://h/db?ssl=maybe", "ssl must be"),
        ("postgresql://h/db?min_size=x", "must be an integer"),
        ("postgresql://h/db?min_size=5&max_size=2", "pool sizes"),
        ("postgresql://h/db?pool=3", "unknown database URL option"),
        ("sqlite://host/x.db", "has a host"),
        ("sqlite:///x.db?journal=wal", "unknown sqlite URL option"),
    ],
)
def test_invalid_database_urls(url: str, message: str) -> None:
    with pytest.raises(InvalidDatabaseURL, match=message):
        parse_database_url(url)


def test_cache_urls() -> None:
    assert parse_cache_url(None).kind == "memory"
    assert parse_cache_url("memory://named").memory_name == "named"
    plain = parse_cache_url("redis://:pw@r1:6379/0, r2:6380", password="x")
    assert plain.kind == "redis" and plain.nodes == ("redis://:pw@r1:6379/0", "redis://r2:6380")
    assert plain.password == "x" and not plain.tls
    assert plain.display_nodes()[0] == "redis://:***@r1:6379/0"
    tls = parse_cache_url("redis://r1:6379", tls=True)
    assert tls.tls and tls.nodes == ("rediss://r1:6379",)
    assert parse_cache_url("rediss://r1").tls
    cluster = parse_cache_url("redis://a:7000,redis://b:7001", cluster=True)
    assert cluster.kind == "cluster" and len(cluster.nodes) == 2


@pytest.mark.parametrize(
    ("url", "kwargs", "message"),
    [
        ("memory://", {"cluster": True}, "cannot be a Redis Cluster"),
        ("memory://a,memory://b", {}, "no node list"),
        ("http://r1", {}, "unsupported Redis URL scheme"),
        ("redis://", {}, "names no host"),
        (" , ", {}, "no Redis node"),
        ("redis://r1:notaport", {}, "malformed"),
    ],
)
def test_invalid_cache_urls(url: str, kwargs: dict, message: str) -> None:
    with pytest.raises(InvalidCacheURL, match=message):
        parse_cache_url(url, **kwargs)
