"""Database URL parsing: what `NEXUS_DB_URL` may say and what the driver is given."""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

from engine.store.errors import InvalidDatabaseURL

DEFAULT_DB_URL = "sqlite:///./var/nexus.db"

_PG_SCHEMES = {"postgresql", "postgres", "postgresql+asyncpg"}
_SQLITE_SCHEMES = {"sqlite", "sqlite+aiosqlite"}
_SSL_MODES = {"disable", "allow", "prefer", "require", "verify-ca", "verify-full"}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclass(frozen=True)
class DatabaseSettings:
    """A parsed database URL.

    ``driver_url`` is what ``databases.Database`` is given and ``driver_options`` its keyword
    arguments (pool sizes, TLS, timeouts for asyncpg; busy timeout for SQLite).
    """

    dialect: str  # "sqlite" | "postgresql"
    driver_url: str
    driver_options: dict[str, Any] = field(default_factory=dict)
    sqlite_path: str | None = None  # file path; None for PostgreSQL and in-memory SQLite
    memory: bool = False
    display: str = ""  # the URL with its password hidden, for messages

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"


def _hide_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    user = parts.username or ""
    return parts._replace(netloc=f"{user}:***@{host}").geturl()


def _int_option(options: dict[str, str], name: str, default: int | None) -> int | None:
    raw = options.pop(name, None)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise InvalidDatabaseURL(f"option {name} must be an integer, got {raw!r}") from exc
    if value < 0:
        raise InvalidDatabaseURL(f"option {name} must not be negative, got {value}")
    return value


def parse_database_url(
    url: str,
    *,
    min_size: int | None = None,
    max_size: int | None = None,
    connect_timeout: float = 10.0,
    busy_timeout: float = 30.0,
) -> DatabaseSettings:
    """Parse ``url``; keyword arguments are defaults that URL options override.

    PostgreSQL: ``postgresql://user:pass@host:port/db?ssl=true&min_size=1&max_size=10``
    (``ssl`` takes true/false or a libpq sslmode; ``connect_timeout`` in seconds).
    SQLite: ``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db``, or ``sqlite://``
    (also ``sqlite:///:memory:``) for a process-private in-memory database.
    """
    if not isinstance(url, str) or not url.strip():
        raise InvalidDatabaseURL("database URL is empty")
    url = url.strip()
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidDatabaseURL(f"malformed database URL {_hide_password(url)!r}: {exc}") from exc
    scheme = parts.scheme.lower()
    options = dict(parse_qsl(parts.query, keep_blank_values=True))

    if scheme in _SQLITE_SCHEMES:
        return _parse_sqlite(url, parts.netloc, parts.path, options, busy_timeout)
    if scheme not in _PG_SCHEMES:
        raise InvalidDatabaseURL(
            f"unsupported database URL scheme {parts.scheme!r} in {_hide_password(url)!r}: "
            "use postgresql://user:password@host:port/db or sqlite:///path/to/file.db"
        )
    if not parts.hostname:
        raise InvalidDatabaseURL(f"database URL {_hide_password(url)!r} names no host")
    database = unquote(parts.path.lstrip("/"))
    if not database or "/" in database:
        raise InvalidDatabaseURL(f"database URL {_hide_password(url)!r} names no database")

    min_size = _int_option(options, "min_size", min_size if min_size is not None else 1)
    max_size = _int_option(options, "max_size", max_size if max_size is not None else 10)
    if max_size < 1 or min_size > max_size:
        raise InvalidDatabaseURL(
            f"pool sizes must satisfy 0 <= min_size <= max_size and max_size >= 1, "
            f"got min_size={min_size} max_size={max_size}"
        )
    timeout_raw = options.pop("connect_timeout", None)
    if timeout_raw is not None:
        try:
            connect_timeout = float(timeout_raw)
        except ValueError as exc:
            raise InvalidDatabaseURL(
                f"connect_timeout must be a number, got {timeout_raw!r}"
            ) from exc
    ssl_raw = options.pop("ssl", options.pop("sslmode", None))
    driver_options: dict[str, Any] = {
        "min_size": min_size,
        "max_size": max_size,
        "timeout": connect_timeout,
    }
    if ssl_raw is not None:
        lowered = ssl_raw.lower()
        if lowered in _TRUE:
            driver_options["ssl"] = "require"
        elif lowered in _FALSE:
            driver_options["ssl"] = "disable"
        elif lowered in _SSL_MODES:
            driver_options["ssl"] = lowered
        else:
            raise InvalidDatabaseURL(
                f"ssl must be true, false or one of {sorted(_SSL_MODES)}, got {ssl_raw!r}"
            )
    if options:
        raise InvalidDatabaseURL(
            f"unknown database URL option(s) {sorted(options)}; known: ssl, min_size, "
            "max_size, connect_timeout"
        )
    userinfo = ""
    if parts.username:
        userinfo = quote(unquote(parts.username), safe="")
        if parts.password is not None:
            userinfo += ":" + quote(unquote(parts.password), safe="")
        userinfo += "@"
    netloc = f"{userinfo}{parts.hostname}" + (f":{port}" if port else "")
    driver_url = f"postgresql://{netloc}/{quote(database, safe='')}"
    return DatabaseSettings(
        dialect="postgresql",
        driver_url=driver_url,
        driver_options=driver_options,
        display=_hide_password(url),
    )


def _parse_sqlite(
    url: str, netloc: str, path: str, options: dict[str, str], busy_timeout: float
) -> DatabaseSettings:
    if netloc:
        raise InvalidDatabaseURL(
            f"sqlite URL {url!r} has a host; use sqlite:///relative.db or sqlite:////abs.db"
        )
    timeout_raw = options.pop("busy_timeout", None)
    if timeout_raw is not None:
        try:
            busy_timeout = float(timeout_raw)
        except ValueError as exc:
            raise InvalidDatabaseURL(
                f"busy_timeout must be a number, got {timeout_raw!r}"
            ) from exc
    if options:
        raise InvalidDatabaseURL(
            f"unknown sqlite URL option(s) {sorted(options)}; known: busy_timeout"
        )
    file_path = path[1:] if path.startswith("/") else path
    if file_path in ("", ":memory:"):
        name = f"nexus-mem-{uuid.uuid4().hex}"
        query = urlencode({"mode": "memory", "cache": "shared"})
        return DatabaseSettings(
            dialect="sqlite",
            driver_url=f"sqlite:///file:{name}?{query}",
            driver_options={"uri": True, "timeout": busy_timeout},
            memory=True,
            display=url,
        )
    file_path = os.path.normpath(file_path)
    return DatabaseSettings(
        dialect="sqlite",
        driver_url=f"sqlite:///{file_path}",
        driver_options={"timeout": busy_timeout},
        sqlite_path=file_path,
        display=url,
    )
