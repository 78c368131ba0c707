"""A provider that trusts an external auth service (GWS): ``GET {auth_url}/auth/v3/userinfo``.

Positive answers are cached for a short TTL keyed by the SHA-256 of the token (the token itself
is never kept), concurrent look-ups of one token share one request, and the httpx client is
pooled for the life of the provider. A 401/403 answer means the token is bad
(:class:`~engine.auth.AuthError`); no answer in time, a 5xx or an unreadable body means the
service is unavailable (:class:`~engine.auth.AuthUnavailable`), so callers answer 503, not 401.

GWS userinfo fields understood: ``user_name``/``username``/``userName``, ``contactCenterId``
/``contact_center_id``/``tenant``, ``roles`` or ``authorities`` (``ROLE_AGENT`` -> ``agent``).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import httpx

from engine.auth import AuthError, AuthUnavailable
from engine.auth.principal import ALL_TENANTS, Principal

DEFAULT_TTL = 30.0
DEFAULT_TIMEOUT = 10.0
MAX_ENTRIES = 10_000


def principal_from_userinfo(info: Mapping[str, Any]) -> Principal:
    name = info.get("user_name") or info.get("username") or info.get("userName")
    if not isinstance(name, str) or not name:
        raise AuthUnavailable("the auth service answered userinfo without a user name")
    tenant = info.get("contactCenterId") or info.get("contact_center_id") or info.get("tenant")
    raw_roles = info.get("roles") or info.get("authorities") or []
    roles = []
    for role in raw_roles if isinstance(raw_roles, list) else []:
        text = role.get("authority", "") if isinstance(role, Mapping) else str(role)
        text = text.lower()
        roles.append(text[5:] if text.startswith("role_") else text)
    permissions = info.get("permissions") or []
    kind = "client" if info.get("kind") == "client" else "user"
    return Principal.build(
        kind,
        name,
        str(tenant) if tenant else ALL_TENANTS,
        roles,
        [p for p in permissions if isinstance(p, str)] if isinstance(permissions, list) else [],
    )


class GwsAuthProvider:
    def __init__(
        self,
        auth_url: str,
        *,
        ttl: float = DEFAULT_TTL,
        timeout: float = DEFAULT_TIMEOUT,
        client: httpx.AsyncClient | None = None,
        max_entries: int = MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.userinfo_url = auth_url.rstrip("/") + "/auth/v3/userinfo"
        self.ttl = ttl
        self.max_entries = max_entries
        self.clock = clock
        self._own_client = client is None
        self._client = client or httpx.AsyncClient(
            timeout=httpx.Timeout(timeout),
            limits=httpx.Limits(max_connections=100, max_keepalive_connections=20),
        )
        self._cache: OrderedDict[bytes, tuple[float, Principal]] = OrderedDict()
        self._inflight: dict[bytes, asyncio.Future[Principal]] = {}
        #: Requests actually sent to the auth service (tests and debugging).
        self.lookups = 0

    async def aclose(self) -> None:
        if self._own_client:
            await self._client.aclose()

    async def authenticate(self, token: str, *, trace_id: str | None = None) -> Principal:
        if not token:
            raise AuthError("missing token")
        key = hashlib.sha256(token.encode("utf-8")).digest()
        hit = self._cache.get(key)
        now = self.clock()
        if hit is not None:
            if hit[0] > now:
                return hit[1]
            del self._cache[key]
        pending = self._inflight.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[Principal] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            principal = await self._lookup(token, trace_id)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning when nobody waits
            raise
        finally:
            self._inflight.pop(key, None)
        future.set_result(principal)
        self._cache[key] = (self.clock() + self.ttl, principal)
        while len(self._cache) > self.max_entries:
            self._cache.popitem(last=False)
        return principal

    async def _lookup(self, token: str, trace_id: str | None) -> Principal:
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        if trace_id:
            headers["X-B3-TraceId"] = trace_id
        self.lookups += 1
        try:
            response = await self._client.get(self.userinfo_url, headers=headers)
        except httpx.HTTPError as exc:
            raise AuthUnavailable(f"auth service unreachable: {type(exc).__name__}") from None
        if response.status_code in (401, 403):
            raise AuthError("token rejected by the auth service")
        if response.status_code != 200:
            raise AuthUnavailable(f"auth service answered HTTP {response.status_code}")
        try:
            info = response.json()
        except ValueError:
            raise AuthUnavailable("auth service answered invalid JSON") from None
        if not isinstance(info, Mapping):
            raise AuthUnavailable("auth service answered a non-object")
        data = info.get("data")
        if isinstance(data, Mapping) and "user_name" not in info and "username" not in info:
            info = data
        return principal_from_userinfo(info)
