"""Authentication, tenant scope and per-key rate limits for every route of the engine.

:func:`install_security` adds one request middleware. Every request except the public paths
below must authenticate, by one of:

* ``x-api-key: <key>`` (and optionally ``x-ccid: <ccid>``): the key is looked up by its
  peppered hash (an in-process cache in front of the store, see :class:`ApiKeyCache`); a key
  of a tenant only works for that tenant, so an ``x-ccid`` naming another tenant is refused
  (403); a ``*`` key (cluster key) acts on the tenant its ``x-ccid`` names.
* ``Authorization: Bearer <token>``, or the bare token as the guide sends it
  (``Authorization: $outGWSAccessToken``), checked by the configured auth provider.

The principal is put on ``request.ctx.principal`` (and the key on ``request.ctx.apikey``);
handlers check permissions with :func:`require` / :func:`require_tenant`.

Browsers cannot set headers on a WebSocket (nor on an ``<img src>``): on the chat and agent
streams and the chat file downloads (:func:`query_credentials_allowed`) the credentials may
also come as query parameters, ``apikey`` (for ``x-api-key``) and ``access_token`` (a Bearer
token); headers win when both are present.

Public paths: ``/health``, ``/health/detail``, ``/auth/v3/oauth/token`` (it authenticates
the OAuth client itself) and ``/scxml/*``: orchestration servers fetch strategies by URL with
no way to add headers (a Queue's ``strategy.url``), so SCXML documents are served without
credentials, rate-limited per client IP (:data:`SCXML_CAPACITY` per :data:`SCXML_WINDOW` s).

Self-authenticated paths (:data:`SELF_AUTHENTICATED`): the provider webhooks of
``engine/api/messaging.py`` (``/nexus/v3/channels/{id}/messages|media``,
``/nexus/v3/sms/message|receipt``, ``/nexus/v3/sms/mgage/{ccid}``) carry no API key: the
handler verifies the HMAC signature or HTTP Basic credentials on the raw body before parsing.

Rate limits: each API key's ``capacity`` requests per ``frequency`` seconds, counted in the
live cache (Redis), so the limit holds across workers and pods; over it -> 429 code 8 with
``Retry-After`` (whole seconds, at least 1). When the cache is unreachable, requests are let
through (and a warning is logged): an outage of Redis degrades health to yellow, it does not
take the API down.

Key cache: entries live :data:`KEY_TTL` seconds; a change to a key (update, revoke, delete,
config apply) is published on the cache's ``apikeys:invalidate`` channel and every process
drops that key at once. Expiry is checked on every request, never cached.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sanic import Request, Sanic

from engine.api.auth_routes import authenticate_bearer
from engine.api.errors import (
    NoPermission,
    RateLimited,
    Unauthorized,
    Unavailable,
)
from engine.auth.principal import ALL_TENANTS, Principal

log = logging.getLogger("nexus.security")

PUBLIC_PATHS = frozenset({"/health", "/health/", "/health/detail", "/auth/v3/oauth/token"})
SCXML_PREFIX = "/scxml/"
SELF_AUTHENTICATED = re.compile(
    r"^/nexus/v3/(?:channels/[^/]+/(?:messages|media)|sms/(?:message|receipt|mgage/[^/]+))/?$"
)
SCXML_CAPACITY = 600
SCXML_WINDOW = 60
KEY_TTL = 10.0
KEY_CACHE_SIZE = 10_000
INVALIDATE_CHANNEL = "apikeys:invalidate"
CHAT_PREFIXES = ("/nexus/v3/chat/", "/chat/v3/")
AGENT_STREAM = "/nexus/v3/agent/stream"
ALL = "*"
_WARN_EVERY = 30.0


@dataclass(frozen=True)
class _Entry:
    key: Any  # an engine.store.ApiKey, or None for an unknown key
    until: float


class ApiKeyCache:
    """Peppered key hash -> the key record (or None: unknown), for :data:`KEY_TTL` seconds.

    Bounded: beyond ``size`` entries the oldest are dropped. ``invalidate(id)`` drops one key,
    ``invalidate("*")`` everything.
    """

    def __init__(self, ttl: float = KEY_TTL, size: int = KEY_CACHE_SIZE) -> None:
        self.ttl = ttl
        self.size = size
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    def get(self, key_hash: str, now: float) -> _Entry | None:
        entry = self._entries.get(key_hash)
        if entry is None:
            return None
        if entry.until <= now:
            del self._entries[key_hash]
            return None
        return entry

    def put(self, key_hash: str, key: Any, now: float) -> None:
        self._entries[key_hash] = _Entry(key, now + self.ttl)
        self._entries.move_to_end(key_hash)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def invalidate(self, key_id: str) -> None:
        if key_id == ALL:
            self._entries.clear()
            return
        for key_hash in [h for h, e in self._entries.items()
                         if e.key is not None and e.key.id == key_id]:
            del self._entries[key_hash]

    def __len__(self) -> int:
        return len(self._entries)


SERVICE_TTL = 10.0
SERVICE_PREFIX = "svc:"


class ServiceViewCache:
    """(ccid, service name) -> the service's public view, for :data:`SERVICE_TTL` seconds.

    Service definitions are read far more often than written (every provider call and every
    Designer/aggregator lookup reads one), so reads are served from memory. Every write
    invalidates here at once and in the other processes through the cache's pub/sub; the TTL
    bounds staleness if a message is lost.
    """

    def __init__(self, ttl: float = SERVICE_TTL, size: int = KEY_CACHE_SIZE) -> None:
        self.ttl = ttl
        self.size = size
        self._entries: OrderedDict[tuple[str, str], tuple[dict[str, Any], float]] = OrderedDict()

    def get(self, ccid: str, name: str, now: float) -> dict[str, Any] | None:
        entry = self._entries.get((ccid, name))
        if entry is None:
            return None
        if entry[1] <= now:
            del self._entries[(ccid, name)]
            return None
        return entry[0]

    def put(self, ccid: str, name: str, view: dict[str, Any], now: float) -> None:
        self._entries[(ccid, name)] = (view, now + self.ttl)
        self._entries.move_to_end((ccid, name))
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def invalidate(self, ccid: str, name: str = ALL) -> None:
        if ccid == ALL:
            self._entries.clear()
        elif name == ALL:
            for key in [k for k in self._entries if k[0] == ccid]:
                del self._entries[key]
        else:
            self._entries.pop((ccid, name), None)


async def invalidate_services(app: Sanic, ccid: str, name: str = ALL) -> None:
    """Drop a tenant's service (or all its services) from every process's view cache."""
    cache: ServiceViewCache | None = getattr(app.ctx, "service_cache", None)
    if cache is not None:
        cache.invalidate(ccid, name)
    live = getattr(app.ctx, "cache", None)
    if live is None:
        return
    try:
        await live.publish(INVALIDATE_CHANNEL, f"{SERVICE_PREFIX}{ccid}/{name}")
    except Exception as exc:  # noqa: BLE001 - the cache may be down; TTL bounds staleness
        log.warning("cannot publish service invalidation: %s", type(exc).__name__)


# ---------------------------------------------------------------------- permission helpers
def principal_of(request: Request) -> Principal:
    principal = getattr(request.ctx, "principal", None)
    if principal is None:  # a route outside the middleware's reach: never serve it anonymously
        raise Unauthorized("authentication required", field="x-api-key")
    return principal


def require(request: Request, permission: str) -> Principal:
    """The principal, if it holds ``permission`` (any tenant); else 403 code 5."""
    principal = principal_of(request)
    if not principal.has_permission(permission):
        raise NoPermission(f"{permission} is required", field="permissions")
    return principal


def require_tenant(request: Request, permission: str, ccid: str) -> Principal:
    """The principal, if it holds ``permission`` on tenant ``ccid``; else 403 code 5."""
    principal = require(request, permission)
    if not principal.can_access_tenant(ccid):
        raise NoPermission(f"no access to tenant {ccid}", field="ccid")
    return principal


def require_all_tenants(request: Request, permission: str) -> Principal:
    """The principal, if it holds ``permission`` on every tenant (cluster keys, environment
    admins); else 403 code 5."""
    principal = require(request, permission)
    if not principal.all_tenants:
        raise NoPermission("this needs an all-tenant (cluster) credential", field="tenant")
    return principal


def actor_of(principal: Principal) -> str:
    """Who did it, for audit rows and ``createdby``."""
    name = f"{principal.kind}:{principal.name}"
    return name if principal.all_tenants else f"{name}@{principal.tenant}"


# ---------------------------------------------------------------------- invalidation
async def invalidate_api_keys(app: Sanic, key_id: str) -> None:
    """Drop ``key_id`` (or ``"*"``) from every process's key cache: here at once, elsewhere
    through the cache's pub/sub (best effort: entries expire after KEY_TTL anyway)."""
    cache: ApiKeyCache | None = getattr(app.ctx, "apikey_cache", None)
    if cache is not None:
        cache.invalidate(key_id)
    live = getattr(app.ctx, "cache", None)
    if live is None:
        return
    try:
        await live.publish(INVALIDATE_CHANNEL, key_id)
    except Exception as exc:  # noqa: BLE001 - the cache may be down; TTL bounds staleness
        log.warning("cannot publish API key invalidation: %s", type(exc).__name__)


async def _listen(app: Sanic) -> None:
    """Apply invalidations published by other processes (resubscribing after outages)."""
    keys: ApiKeyCache = app.ctx.apikey_cache
    backoff = 0.1
    while True:
        live = app.ctx.cache
        if live is None:
            return
        try:
            sub = await live.subscribe(INVALIDATE_CHANNEL)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - not reachable now: retry with backoff
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)
            continue
        backoff = 0.1
        keys.invalidate(ALL)  # anything published while we were not listening is lost
        services: ServiceViewCache = app.ctx.service_cache
        services.invalidate(ALL)
        try:
            async for message in sub:
                data = message.data
                if data.startswith(SERVICE_PREFIX):
                    ccid, _, name = data[len(SERVICE_PREFIX):].partition("/")
                    services.invalidate(ccid, name or ALL)
                else:
                    keys.invalidate(data)
        finally:
            await sub.close()


# ---------------------------------------------------------------------- authentication
class _Warnings:
    def __init__(self) -> None:
        self.last = 0.0

    def rate_limit_unavailable(self, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self.last >= _WARN_EVERY:
            self.last = now
            log.warning("rate limits not enforced: the cache is unavailable (%s)",
                        type(exc).__name__)


async def _lookup_key(app: Sanic, presented: str) -> Any:
    store = app.ctx.store
    if store is None:
        raise Unavailable("the store is not connected")
    cache: ApiKeyCache = app.ctx.apikey_cache
    key_hash = store.apikeys.hash_key(presented)
    now = time.monotonic()
    entry = cache.get(key_hash, now)
    if entry is not None:
        return entry.key
    from engine.store import StoreError

    try:
        key = await store.apikeys.find_by_key(presented, usable_only=False)
    except StoreError as exc:
        raise Unavailable("the store is unavailable") from exc
    cache.put(key_hash, key, now)
    return key


def _check_usable(key: Any) -> None:
    if key.revoked:
        raise Unauthorized("the API key has been revoked", field="x-api-key")
    if key.expires is not None and datetime.now(UTC) >= key.expires:
        raise Unauthorized(
            f"the API key expired at {key.expires.isoformat()}", field="x-api-key"
        )
    if not key.enabled:
        raise NoPermission("the API key is disabled", field="x-api-key")


def query_credentials_allowed(path: str) -> bool:
    """Paths that take credentials from the query string (WebSockets, file downloads)."""
    if path == AGENT_STREAM:
        return True
    return path.startswith(CHAT_PREFIXES) and (path.endswith("/stream") or "/files/" in path)


async def _query_bearer(request: Request, token: str) -> Principal:
    """The principal of a Bearer token passed as ``?access_token=`` (see module doc)."""
    from engine.auth import AuthError, AuthUnavailable
    from engine.auth.gws import GwsAuthProvider

    provider = request.app.ctx.auth
    try:
        if isinstance(provider, GwsAuthProvider):
            return await provider.authenticate(token, trace_id=request.ctx.trace_id)
        return await provider.authenticate(token)
    except AuthError as exc:
        raise Unauthorized(str(exc), field="access_token") from None
    except AuthUnavailable as exc:
        raise Unavailable(str(exc)) from None


async def authenticate(request: Request) -> Principal:
    """The request's principal from ``x-api-key`` or ``Authorization`` (see module doc)."""
    app = request.app
    presented = request.headers.get("x-api-key")
    query_ok = query_credentials_allowed(request.path)
    if presented is None and query_ok:
        presented = request.args.get("apikey")
    ccid = (request.headers.get("x-ccid") or "").strip() or None
    if presented is not None:
        presented = presented.strip()
        key = await _lookup_key(app, presented) if presented else None
        if key is None:
            raise Unauthorized("unknown API key", field="x-api-key")
        _check_usable(key)
        if key.tenant != ALL_TENANTS and ccid is not None and ccid != key.tenant:
            raise NoPermission("x-ccid names another tenant than the API key's",
                               field="x-ccid")
        request.ctx.apikey = key
        principal = Principal.build("apikey", key.id, key.tenant, (), key.permissions)
    elif request.headers.get("authorization") or (query_ok and request.args.get("access_token")):
        if request.headers.get("authorization"):
            principal = await authenticate_bearer(request)
        else:
            principal = await _query_bearer(request, request.args.get("access_token", ""))
        if not principal.all_tenants and ccid is not None and ccid != principal.tenant:
            raise NoPermission("x-ccid names another tenant than the token's", field="x-ccid")
    else:
        raise Unauthorized(
            "authentication required: an x-api-key header or an Authorization bearer token",
            field="x-api-key",
        )
    request.ctx.ccid = ccid if ccid is not None else (
        None if principal.all_tenants else principal.tenant
    )
    return principal


async def _limit(request: Request, bucket: str, capacity: int, window: int) -> None:
    live = request.app.ctx.cache
    if live is None:
        return
    from engine.store import CacheError

    try:
        allowed, retry_after = await live.hit(bucket, capacity, window)
    except CacheError as exc:
        request.app.ctx.security_warnings.rate_limit_unavailable(exc)
        return
    if not allowed:
        raise RateLimited(max(1, int(retry_after + 0.999)),
                          f"rate limit of {capacity} requests per {window} s exceeded")


def install_security(app: Sanic) -> None:
    """Add the authentication middleware and the key-invalidation listener to ``app``."""
    app.ctx.apikey_cache = ApiKeyCache()
    app.ctx.service_cache = ServiceViewCache()
    app.ctx.security_warnings = _Warnings()
    app.ctx.invalidation_task = None

    @app.on_request(priority=900)
    def authenticate_request(request: Request) -> Awaitable[None] | None:
        # a plain function: the routes that authenticate themselves (provider webhooks, the
        # busiest) and the public ones cost no coroutine; the rest get one to await
        path = request.path
        request.ctx.principal = None
        if path in PUBLIC_PATHS:
            return None
        if path.startswith(SCXML_PREFIX):
            return _limit(request, f"ip:{request.remote_addr or request.ip}", SCXML_CAPACITY,
                          SCXML_WINDOW)
        if request.method == "OPTIONS" or SELF_AUTHENTICATED.match(path):
            return None
        return _authenticate_request(request)

    async def _authenticate_request(request: Request) -> None:
        principal = await authenticate(request)
        request.ctx.principal = principal
        key = getattr(request.ctx, "apikey", None)
        if key is not None:
            await _limit(request, f"key:{key.id}", key.capacity, key.frequency)

    @app.after_server_start
    async def start_listener(app: Sanic) -> None:
        if app.ctx.cache is not None:
            app.ctx.invalidation_task = asyncio.get_running_loop().create_task(
                _listen(app), name="apikey-invalidation"
            )

    @app.before_server_stop
    async def stop_listener(app: Sanic) -> None:
        task = app.ctx.invalidation_task
        app.ctx.invalidation_task = None
        if task is not None:
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - stopping anyway
                pass
