"""Nexus store: the durable store (SQLite | PostgreSQL via ``databases``) and the live cache
(Redis via ``redis.asyncio``). Nothing outside this package imports ``databases``.

Names are imported lazily (PEP 562): `nexus lint` and `nexus --help` must not pay for
SQLAlchemy, databases and redis just because `nexus migrate` is registered.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "apply_config_objects": "engine.store.apply",
    "Cache": "engine.store.cache",
    "CacheState": "engine.store.cache",
    "PubSubMessage": "engine.store.cache",
    "RateLimit": "engine.store.cache",
    "Subscription": "engine.store.cache",
    "Store": "engine.store.db",
    "CacheError": "engine.store.errors",
    "CacheUnavailable": "engine.store.errors",
    "ConfigManaged": "engine.store.errors",
    "Conflict": "engine.store.errors",
    "InvalidCacheURL": "engine.store.errors",
    "InvalidDatabaseURL": "engine.store.errors",
    "MigrationError": "engine.store.errors",
    "NotFound": "engine.store.errors",
    "StoreError": "engine.store.errors",
    "StoreUnavailable": "engine.store.errors",
    "mask_secrets": "engine.store.masking",
    "ALL_TENANTS": "engine.store.models",
    "ApiKey": "engine.store.models",
    "ApplyCounts": "engine.store.models",
    "ApplyResult": "engine.store.models",
    "AuditEntry": "engine.store.models",
    "Gapi": "engine.store.models",
    "Service": "engine.store.models",
    "Tenant": "engine.store.models",
    "User": "engine.store.models",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # pragma: no cover - for type checkers and editors only
    from engine.store.apply import apply_config_objects  # noqa: F401
    from engine.store.cache import Cache, CacheState, PubSubMessage, RateLimit  # noqa: F401
    from engine.store.db import Store  # noqa: F401


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'engine.store' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
