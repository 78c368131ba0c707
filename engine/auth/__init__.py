"""Authentication: HS256 tokens, the embedded OAuth provider, the GWS provider, principals."""

from __future__ import annotations

from typing import Protocol

from engine.auth.principal import Principal


class AuthError(Exception):
    """A bearer token that does not authenticate anyone (HTTP 401)."""


class AuthUnavailable(Exception):
    """The auth service could not be asked (HTTP 503): not the caller's fault."""


class AuthProvider(Protocol):
    """What handlers need from any provider: a bearer token -> the :class:`Principal`."""

    async def authenticate(self, token: str) -> Principal: ...


__all__ = ["AuthError", "AuthProvider", "AuthUnavailable", "Principal"]
