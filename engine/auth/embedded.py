"""The embedded OAuth 2 provider (``/auth/v3``), independent of Sanic.

It answers the guide's token calls as GWS would:

* ``grant_type=password`` with ``username=<ccid>\\<user>`` (a tenant user; the guide's shell
  quoting sends the backslash doubled, which is accepted too) or a plain ``username`` (an
  environment user, tenant ``"*"``);
* ``grant_type=client_credentials`` (no refresh token, like the guide's sample answer);
* ``grant_type=refresh_token`` (the pair is rotated; the user must still exist and be enabled).

The client ``nexus_client`` authenticates by HTTP Basic (``--user nexus_client:``) or by
``client_id``/``client_secret`` in the form or the query string; its secret is
``NEXUS_CLIENT_SECRET``, empty by default. Answers are
``{"access_token", "token_type": "bearer", "refresh_token", "expires_in", "scope": "*"}``;
errors are RFC 6749 ``{"error", "error_description"}`` raised as :class:`OAuthError`.

Users come from a :class:`UserDirectory`; :class:`InMemoryUserDirectory` serves tests and the
``kind: User`` documents of the config.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import inspect
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from engine.auth import AuthError
from engine.auth.principal import ALL_TENANTS, Principal
from engine.auth.tokens import TokenError, issue, verify

DEFAULT_CLIENT_ID = "nexus_client"
PasswordVerifier = Callable[[str], "bool | Awaitable[bool]"]


class OAuthError(Exception):
    """An RFC 6749 error answer: ``status`` (400 or 401), ``error`` and ``description``."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(f"{error}: {description}")
        self.error = error
        self.description = description
        self.status = status

    def body(self) -> dict[str, str]:
        return {"error": self.error, "error_description": self.description}


def plain_password(password: str) -> PasswordVerifier:
    """A verifier for a clear-text password (config users' ``${env:...}`` passwords).

    Only a SHA-256 digest is kept, and it is compared in constant time.
    """
    digest = hashlib.sha256(password.encode("utf-8")).digest()

    def check(candidate: str) -> bool:
        return hmac.compare_digest(hashlib.sha256(candidate.encode("utf-8")).digest(), digest)

    return check


def hashed_password(encoded: str) -> PasswordVerifier:
    """A verifier for a stored ``scrypt$...`` hash (engine.store.passwords), run off the loop."""

    async def check(candidate: str) -> bool:
        from engine.store.passwords import verify_password

        return await asyncio.to_thread(verify_password, candidate, encoded)

    return check


@dataclass(frozen=True)
class UserRecord:
    username: str
    tenant_ccid: str | None
    roles: frozenset[str] = frozenset()
    #: A callable ``(password) -> bool | Awaitable[bool]`` or an encoded ``scrypt$`` hash.
    password_verifier: PasswordVerifier | str = field(default="", repr=False)
    enabled: bool = True

    async def check_password(self, candidate: str) -> bool:
        verifier = self.password_verifier
        if isinstance(verifier, str):
            if not verifier:
                return False
            verifier = hashed_password(verifier)
        result = verifier(candidate)
        if inspect.isawaitable(result):
            result = await result
        return bool(result)


class UserDirectory(Protocol):
    async def find(self, tenant_ccid: str | None, username: str) -> UserRecord | None: ...


class InMemoryUserDirectory:
    """Users held in a dict keyed by ``(tenant ccid or None, lower-cased username)``."""

    def __init__(self, users: Iterable[UserRecord] = ()) -> None:
        self._users: dict[tuple[str | None, str], UserRecord] = {}
        self.replace(users)

    @classmethod
    def from_mapping(cls, users: Mapping[str, Mapping[str, Any]]) -> InMemoryUserDirectory:
        """Users from a dict ``{"<ccid>\\<user>" or "<user>": {"password", "roles", "enabled"}}``.

        ``password`` is clear text (resolved from ``${env:...}``) or a ``scrypt$`` hash.
        """
        records = []
        for key, spec in users.items():
            ccid, name = split_username(key)
            password = str(spec.get("password", ""))
            verifier: PasswordVerifier | str = (
                password if password.startswith("scrypt$") or not password
                else plain_password(password)
            )
            records.append(
                UserRecord(
                    username=name,
                    tenant_ccid=spec.get("tenant", ccid),
                    roles=frozenset(str(r).lower() for r in spec.get("roles", ())),
                    password_verifier=verifier,
                    enabled=bool(spec.get("enabled", True)),
                )
            )
        return cls(records)

    def replace(self, users: Iterable[UserRecord]) -> None:
        """Swap the whole set at once (config reload)."""
        self._users = {(u.tenant_ccid, u.username.lower()): u for u in users}

    def __len__(self) -> int:
        return len(self._users)

    async def find(self, tenant_ccid: str | None, username: str) -> UserRecord | None:
        return self._users.get((tenant_ccid, username.lower()))


def split_username(username: str) -> tuple[str | None, str]:
    """``"ccid\\user"`` (or the guide's doubled backslash) -> (ccid, user); else (None, name)."""
    ccid, sep, user = username.partition("\\")
    if not sep:
        return None, username
    return ccid, user.lstrip("\\")


class EmbeddedAuthProvider:
    def __init__(
        self,
        *,
        secret: str,
        users: UserDirectory,
        client_id: str = DEFAULT_CLIENT_ID,
        client_secret: str = "",
        access_ttl: int = 43200,
        refresh_ttl: int = 2592000,
        leeway: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not secret:
            raise ValueError("the embedded auth provider needs a signing secret")
        self.secret = secret
        self.users = users
        self.client_id = client_id
        self._client_secret = client_secret.encode("utf-8")
        self.access_ttl = access_ttl
        self.refresh_ttl = refresh_ttl
        self.leeway = leeway
        self.clock = clock

    # -------------------------------------------------------------- client authentication
    def authenticate_client(
        self, params: Mapping[str, str], basic: tuple[str, str] | None
    ) -> str:
        """The authenticated client id (Basic wins; form/query ``client_id``/``client_secret``)."""
        form_id = params.get("client_id")
        if basic is not None:
            client_id, secret = basic
            if form_id and form_id != client_id:
                raise OAuthError("invalid_request", "client_id differs from the Basic credentials")
        elif form_id:
            client_id, secret = form_id, params.get("client_secret", "")
        else:
            raise OAuthError("invalid_client", "client authentication is required", 401)
        ok = client_id == self.client_id
        ok &= hmac.compare_digest(secret.encode("utf-8"), self._client_secret)
        if not ok:
            raise OAuthError("invalid_client", "unknown client or bad client secret", 401)
        return client_id

    # -------------------------------------------------------------- the token endpoint
    async def token(
        self, params: Mapping[str, str], basic: tuple[str, str] | None = None
    ) -> dict[str, Any]:
        client_id = self.authenticate_client(params, basic)
        grant = params.get("grant_type", "")
        if grant == "password":
            return await self._password_grant(params, client_id)
        if grant == "client_credentials":
            return self._answer(
                sub=client_id, tenant=ALL_TENANTS, roles=(), kind="client", client_id=client_id,
                refresh=False,
            )
        if grant == "refresh_token":
            return await self._refresh_grant(params, client_id)
        if not grant:
            raise OAuthError("invalid_request", "grant_type is required")
        raise OAuthError("unsupported_grant_type", f"grant_type {grant[:40]!r} is not supported")

    async def _password_grant(self, params: Mapping[str, str], client_id: str) -> dict[str, Any]:
        username = params.get("username", "")
        password = params.get("password", "")
        if not username or not password:
            raise OAuthError("invalid_request", "username and password are required")
        ccid, name = split_username(username)
        user = await self.users.find(ccid, name) if name else None
        if user is None or not user.enabled or not await user.check_password(password):
            raise OAuthError("invalid_grant", "bad credentials")
        return self._answer(
            sub=user.username, tenant=user.tenant_ccid or ALL_TENANTS, roles=user.roles,
            kind="user", client_id=client_id, refresh=True,
        )

    async def _refresh_grant(self, params: Mapping[str, str], client_id: str) -> dict[str, Any]:
        token = params.get("refresh_token", "")
        if not token:
            raise OAuthError("invalid_request", "refresh_token is required")
        try:
            claims = verify(token, self.secret, typ="refresh", leeway=self.leeway,
                            now=self.clock())
        except TokenError as exc:
            raise OAuthError("invalid_grant", f"refresh token {exc}") from None
        if claims.get("cid") != client_id:
            raise OAuthError("invalid_grant", "refresh token of another client")
        tenant = claims.get("ten", ALL_TENANTS)
        user = await self.users.find(None if tenant == ALL_TENANTS else tenant,
                                     str(claims.get("sub", "")))
        if user is None or not user.enabled:
            raise OAuthError("invalid_grant", "the user no longer exists or is disabled")
        return self._answer(
            sub=user.username, tenant=user.tenant_ccid or ALL_TENANTS, roles=user.roles,
            kind="user", client_id=client_id, refresh=True,
        )

    def _answer(
        self,
        *,
        sub: str,
        tenant: str,
        roles: Iterable[str],
        kind: str,
        client_id: str,
        refresh: bool,
    ) -> dict[str, Any]:
        now = self.clock()
        common = {"ten": tenant, "roles": sorted(roles), "knd": kind, "cid": client_id}
        access, _ = issue(self.secret, sub=sub, typ="access", ttl=self.access_ttl, now=now,
                          **common)
        answer: dict[str, Any] = {"access_token": access, "token_type": "bearer"}
        if refresh:
            answer["refresh_token"], _ = issue(
                self.secret, sub=sub, typ="refresh", ttl=self.refresh_ttl, now=now, **common
            )
        # Seconds left, rounded down, as GWS answers (43200 s lifetime -> 43199).
        answer["expires_in"] = max(self.access_ttl - 1, 0)
        answer["scope"] = "*"
        return answer

    # -------------------------------------------------------------- bearer tokens
    async def authenticate(self, token: str) -> Principal:
        """The principal of an access token (signature and expiry only; no directory lookup)."""
        try:
            claims = verify(token, self.secret, typ="access", leeway=self.leeway,
                            now=self.clock())
        except TokenError as exc:
            raise AuthError(f"invalid token: {exc}") from None
        kind = claims.get("knd", "user")
        roles = claims.get("roles", [])
        if kind not in ("user", "client") or not isinstance(roles, list):
            raise AuthError("invalid token: malformed claims")
        return Principal.build(kind, str(claims.get("sub", "")), claims.get("ten"), roles)


def userinfo(principal: Principal) -> dict[str, Any]:
    """The ``/auth/v3/userinfo`` answer (GWS field names plus Nexus's own)."""
    tenant = principal.tenant
    return {
        "user_name": principal.name,
        "username": principal.name,
        "kind": principal.kind,
        "contactCenterId": None if tenant == ALL_TENANTS else tenant,
        "tenant": tenant,
        "roles": sorted(principal.roles),
        "permissions": sorted(principal.permissions),
    }
