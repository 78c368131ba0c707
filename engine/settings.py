"""Runtime settings of `nexus serve`: flags, then ``NEXUS_*`` environment variables, then defaults.

:class:`Settings` is a frozen, picklable dataclass: the main process builds it once and hands it
to every spawned worker (through the app factory), so all workers agree on every value,
including the generated signing secret.

Precedence: a flag given on the command line (a keyword of :meth:`Settings.from_env` that is not
``None``) wins over the environment, which wins over the default. Every invalid value raises
:class:`SettingsError` with a one-line message naming the flag or variable it came from.
"""

from __future__ import annotations

import errno
import hashlib
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

LOG_FORMATS = ("json", "text")
AUTH_PROVIDERS = ("embedded", "gws")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}

#: Where the metric files go by default when it is there: a RAM-backed file system. The
#: workers write them as memory maps on every request; on a disk, the kernel's periodic
#: writeback of those pages competes with PostgreSQL's WAL fsyncs when they share it
#: (docs/metrics.md).
SHARED_MEMORY = Path("/dev/shm")


def default_multiproc_dir(var: Path, shm: Path = SHARED_MEMORY) -> Path:
    """``<shm>/nexus-metrics-<uid>-<digest of the var dir>`` when ``shm`` is a writable
    directory (one per var dir, as ``<var>/prometheus`` was), else ``<var>/prometheus``."""
    if shm.is_dir() and os.access(shm, os.W_OK | os.X_OK):
        digest = hashlib.sha256(str(var.resolve()).encode()).hexdigest()[:12]
        return shm / f"nexus-metrics-{os.getuid()}-{digest}"
    return var / "prometheus"

#: Field name -> environment variable. Fields missing here have no variable.
ENV_VARS: dict[str, str] = {
    "host": "NEXUS_HOST",
    "port": "NEXUS_PORT",
    "metrics_port": "NEXUS_METRICS_PORT",
    "config_path": "NEXUS_CONFIG",
    "fqdn": "NEXUS_FQDN",
    "db_url": "NEXUS_DB_URL",
    "redis_url": "NEXUS_REDIS_URL",
    "redis_cluster": "NEXUS_REDIS_CLUSTER",
    "redis_tls": "NEXUS_REDIS_TLS",
    "redis_password": "NEXUS_REDIS_PASSWORD",
    "workers": "NEXUS_WORKERS",
    "log_format": "NEXUS_LOG_FORMAT",
    "secret": "NEXUS_SECRET",
    "client_secret": "NEXUS_CLIENT_SECRET",
    "auth": "NEXUS_AUTH",
    "auth_url": "NEXUS_AUTH_URL",
    "body_limit": "NEXUS_BODY_LIMIT",
    "var_dir": "NEXUS_VAR_DIR",
    "access_token_ttl": "NEXUS_ACCESS_TOKEN_TTL",
    "refresh_token_ttl": "NEXUS_REFRESH_TOKEN_TTL",
    "metrics_dir": "PROMETHEUS_MULTIPROC_DIR",
}

#: Field name -> the command-line flag that sets it (for error messages).
FLAGS: dict[str, str] = {
    "host": "--host",
    "port": "--port",
    "metrics_port": "--metrics-port",
    "config_path": "--config",
    "workers": "--workers",
    "db_url": "--db-url",
    "redis_url": "--redis-url",
    "log_format": "--log-format",
}

SECRET_FILE = "secret"


class SettingsError(ValueError):
    """An unusable setting; ``str()`` is one line naming the flag or variable."""


@dataclass(frozen=True)
class Settings:
    host: str = "0.0.0.0"
    port: int = 8080
    metrics_port: int = 4004
    config_path: str = "./config"
    fqdn: str = "http://localhost:8080"
    db_url: str = field(default="sqlite:///./var/nexus.db", repr=False)
    redis_url: str = field(default="memory://", repr=False)
    redis_cluster: bool = False
    redis_tls: bool = False
    redis_password: str = field(default="", repr=False)
    workers: int = 1
    log_format: str = "json"
    #: HS256 signing key of access/refresh/client tokens. Never logged (repr=False).
    secret: str = field(default="", repr=False)
    #: Secret of the OAuth client ``nexus_client`` ("" = the guide's ``--user nexus_client:``).
    client_secret: str = field(default="", repr=False)
    auth: str = "embedded"
    auth_url: str = ""
    #: Largest accepted request body, bytes (Sanic's REQUEST_MAX_SIZE); larger -> 413.
    body_limit: int = 10 * 1024 * 1024
    var_dir: str = "./var"
    #: Lifetime of an access token (the guide's accessTokenExpirationTimeout, 43200 s).
    access_token_ttl: int = 43200
    #: Lifetime of a refresh token (the guide's refreshTokenExpirationTimeout, 2592000 s).
    refresh_token_ttl: int = 2592000
    #: prometheus-client multiprocess directory; "" = ``<var_dir>/prometheus``.
    metrics_dir: str = ""

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str] | None = None,
        *,
        generate_secret: bool = True,
        **flags: Any,
    ) -> Settings:
        """Build settings from ``env`` (default ``os.environ``) and flag overrides.

        A flag whose value is ``None`` counts as not given. When no secret is configured it is
        read from ``<var_dir>/secret``, created there (mode 0600) on first use, unless
        ``generate_secret`` is false.
        """
        env = os.environ if env is None else env
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(flags) - known)
        if unknown:
            raise SettingsError(f"unknown setting(s): {', '.join(unknown)}")
        raw: dict[str, tuple[Any, str]] = {}
        for name, var in ENV_VARS.items():
            if var in env:
                raw[name] = (env[var], var)
        for name, value in flags.items():
            if value is not None:
                raw[name] = (value, FLAGS.get(name, name))
        values: dict[str, Any] = {}
        defaults = cls()
        for f in fields(cls):
            if f.name not in raw:
                continue
            value, source = raw[f.name]
            values[f.name] = _convert(f.name, value, source, type(getattr(defaults, f.name)))
        settings = cls(**values)
        settings._check(raw)
        if generate_secret and not settings.secret:
            settings = replace(settings, secret=load_or_create_secret(settings.var_path))
        return settings

    def _check(self, raw: Mapping[str, tuple[Any, str]]) -> None:
        def src(name: str) -> str:
            return raw[name][1] if name in raw else ENV_VARS.get(name, FLAGS.get(name, name))

        for name in ("port", "metrics_port"):
            port = getattr(self, name)
            if not 0 <= port <= 65535:
                raise SettingsError(f"{src(name)}: port must be 0..65535, got {port}")
        if self.workers < 1:
            raise SettingsError(f"{src('workers')}: must be at least 1, got {self.workers}")
        if self.log_format not in LOG_FORMATS:
            raise SettingsError(
                f"{src('log_format')}: must be json or text, got {self.log_format!r}"
            )
        if self.auth not in AUTH_PROVIDERS:
            raise SettingsError(f"{src('auth')}: must be embedded or gws, got {self.auth!r}")
        if self.auth == "gws" and not self.auth_url.startswith(("http://", "https://")):
            raise SettingsError(
                "NEXUS_AUTH_URL: must be the http(s) URL of the auth service when NEXUS_AUTH=gws"
            )
        if self.body_limit < 1024:
            raise SettingsError(f"{src('body_limit')}: must be at least 1024 bytes")
        for name in ("access_token_ttl", "refresh_token_ttl"):
            if getattr(self, name) < 60:
                raise SettingsError(f"{src(name)}: must be at least 60 seconds")
        if self.workers > 1 and self.redis_url.startswith("memory://"):
            raise SettingsError(
                f"{src('workers')}: {self.workers} workers need a shared Redis; the in-process "
                "cache (NEXUS_REDIS_URL=memory://) works with one worker only: set "
                "--redis-url redis://host:6379 or run --workers 1"
            )

    # ------------------------------------------------------------------ derived values
    @property
    def var_path(self) -> Path:
        return Path(self.var_dir)

    @property
    def multiproc_dir(self) -> Path:
        return Path(self.metrics_dir) if self.metrics_dir else default_multiproc_dir(
            self.var_path
        )

    @property
    def api_url(self) -> str:
        host = "localhost" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://{host}:{self.port}"

    @property
    def metrics_url(self) -> str:
        host = "localhost" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://{host}:{self.metrics_port}/metrics"


def _convert(name: str, value: Any, source: str, kind: type) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise SettingsError(f"{source}: must be true or false, got {value!r}")
    if kind is int:
        if isinstance(value, bool):
            raise SettingsError(f"{source}: must be an integer, got {value!r}")
        if isinstance(value, int):
            return value
        try:
            return int(str(value).strip())
        except ValueError:
            raise SettingsError(f"{source}: must be an integer, got {value!r}") from None
    text = str(value)
    if name == "log_format" or name == "auth":
        text = text.strip().lower()
    return text


def load_or_create_secret(var_dir: Path) -> str:
    """The persistent signing secret in ``var_dir/secret``, created once with mode 0600.

    The secret is written to a private temporary file and then hard-linked into place, which
    fails if the file exists: concurrent first starts agree on one secret, and nobody ever reads
    a half-written file.
    """
    path = var_dir / SECRET_FILE
    existing = _read_secret(path)
    if existing:
        return existing
    secret = secrets.token_urlsafe(48)
    tmp = var_dir / f".{SECRET_FILE}.{os.getpid()}.{secrets.token_hex(4)}"
    try:
        var_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(secret + "\n")
        try:
            os.link(tmp, path)
        except FileExistsError:
            return _read_secret(path) or secret
        finally:
            tmp.unlink(missing_ok=True)
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
            raise SettingsError(
                f"NEXUS_SECRET: not set and {path} cannot be created ({exc.strerror}); "
                "set NEXUS_SECRET or make NEXUS_VAR_DIR writable"
            ) from None
        raise
    return secret


def _read_secret(path: Path) -> str:
    try:
        return path.read_text("utf-8").strip()
    except FileNotFoundError:
        return ""
    except OSError as exc:
        raise SettingsError(f"NEXUS_SECRET: cannot read {path}: {exc.strerror}") from None
