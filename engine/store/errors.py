"""Errors raised by the store and the cache (no driver exception leaks past this package)."""

from __future__ import annotations


class StoreError(Exception):
    """Base class of the durable store's errors."""


class InvalidDatabaseURL(StoreError, ValueError):
    """The database URL is malformed or names an unsupported scheme."""


class StoreUnavailable(StoreError):
    """The database cannot be reached (connect failed, pool closed, ...)."""


class NotFound(StoreError, LookupError):
    """The object does not exist."""


class Conflict(StoreError):
    """The write collides with an existing object (duplicate name, key, ...)."""


class ConfigManaged(Conflict):
    """The object is config-managed: only `apply` may change or delete it."""


class MigrationError(StoreError):
    """A migration failed or the schema is newer than this engine knows."""


class CacheError(Exception):
    """Base class of the live cache's errors."""


class InvalidCacheURL(CacheError, ValueError):
    """The cache URL (or node list) is malformed or names an unsupported scheme."""


class CacheUnavailable(CacheError):
    """Redis cannot be reached right now; the cache is reconnecting in the background."""
