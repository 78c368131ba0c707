"""Nexus store: the durable store (SQLite | PostgreSQL via ``databases``) and the live cache
(Redis via ``redis.asyncio``). Nothing outside this package imports ``databases``."""

from engine.store.apply import apply_config_objects
from engine.store.cache import Cache, CacheState, PubSubMessage, RateLimit, Subscription
from engine.store.db import Store
from engine.store.errors import (
    CacheError,
    CacheUnavailable,
    ConfigManaged,
    Conflict,
    InvalidCacheURL,
    InvalidDatabaseURL,
    MigrationError,
    NotFound,
    StoreError,
    StoreUnavailable,
)
from engine.store.masking import mask_secrets
from engine.store.models import (
    ALL_TENANTS,
    ApiKey,
    ApplyCounts,
    ApplyResult,
    AuditEntry,
    Gapi,
    Service,
    Tenant,
    User,
)

__all__ = [
    "ALL_TENANTS",
    "ApiKey",
    "ApplyCounts",
    "ApplyResult",
    "AuditEntry",
    "Cache",
    "CacheError",
    "CacheState",
    "CacheUnavailable",
    "ConfigManaged",
    "Conflict",
    "Gapi",
    "InvalidCacheURL",
    "InvalidDatabaseURL",
    "MigrationError",
    "NotFound",
    "PubSubMessage",
    "RateLimit",
    "Service",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "Subscription",
    "Tenant",
    "User",
    "apply_config_objects",
    "mask_secrets",
]
