"""PurecloudIDP: OAuth client-credentials tokens for the Genesys Cloud APIs (Portico SMS and
email).

``POST {PurecloudIDP url}/oauth/token`` with ``Authorization: Basic base64(clientId:
clientSecret)`` and the form ``grant_type=client_credentials`` answers ``{"access_token",
"token_type": "bearer", "expires_in"}``. A token is reused until shortly before it expires
(``margin``: 60 s, or a tenth of its lifetime when that is shorter); one refresh runs at a
time (concurrent callers await the same request, and share its failure); a 401 from the API
invalidates the token it was sent with (:meth:`PurecloudTokenProvider.invalidate`), and the
caller retries once with a fresh one.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable

import httpx

from engine.channels.base import (
    PermanentSendError,
    SendError,
    basic_auth_header,
    classify_transport_error,
    json_body,
    raise_for_response,
)

PROVIDER = "PurecloudIDP"


class PurecloudTokenProvider:
    """Tokens of one OAuth client (one tenant's PurecloudIDP service)."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        login_url: str,
        client_id: str,
        client_secret: str,
        *,
        clock: Callable[[], float] = time.monotonic,
        timeout: float = 10.0,
        margin: float = 60.0,
    ) -> None:
        self.client = client
        self.token_url = login_url.rstrip("/") + "/oauth/token"
        self.client_id = client_id
        self._client_secret = client_secret
        self.clock = clock
        self.timeout = timeout
        self.margin = margin
        self._token: str | None = None
        self._expires_at = 0.0
        self._inflight: asyncio.Future[str] | None = None
        self.fetches = 0  # token requests made (observability and tests)

    def _fresh(self) -> str | None:
        if self._token is not None and self.clock() < self._expires_at:
            return self._token
        return None

    async def token(self) -> str:
        """A valid access token (cached, or fetched once for all concurrent callers)."""
        cached = self._fresh()
        if cached is not None:
            return cached
        if self._inflight is None:
            future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
            self._inflight = future
            try:
                token = await self._fetch()
            except BaseException as exc:
                future.set_exception(exc)
                future.exception()  # retrieved here: no "never retrieved" warning
                raise
            else:
                future.set_result(token)
                return token
            finally:
                self._inflight = None
        return await asyncio.shield(self._inflight)

    def invalidate(self, token: str) -> None:
        """Forget ``token`` (the API answered 401 to it); a newer token is kept."""
        if self._token == token:
            self._token = None
            self._expires_at = 0.0

    async def _fetch(self) -> str:
        self.fetches += 1
        try:
            response = await self.client.post(
                self.token_url,
                data={"grant_type": "client_credentials"},
                headers={
                    "Authorization": basic_auth_header(self.client_id, self._client_secret),
                    "Accept": "application/json",
                },
                timeout=self.timeout,
            )
        except httpx.HTTPError as exc:
            raise classify_transport_error(exc, PROVIDER) from exc
        try:
            raise_for_response(response, PROVIDER)
        except PermanentSendError as exc:
            raise PermanentSendError(
                f"PurecloudIDP refused the client credentials: {exc}",
                status_code=exc.status_code,
            ) from exc
        body = json_body(response)
        token = body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise PermanentSendError("PurecloudIDP answered without an access_token")
        try:
            lifetime = float(body.get("expires_in", 0))
        except (TypeError, ValueError):
            lifetime = 0.0
        margin = min(self.margin, lifetime / 10.0)
        self._token = token
        self._expires_at = self.clock() + max(0.0, lifetime - margin)
        return token


class PurecloudTokens:
    """The token providers of every tenant, keyed by login URL and client (shared by the
    Portico SMS and PorticoEmail adapters of a process)."""

    def __init__(
        self, client: httpx.AsyncClient, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.client = client
        self.clock = clock
        self._providers: dict[tuple[str, str, str], PurecloudTokenProvider] = {}

    def provider(
        self, login_url: str, client_id: str, client_secret: str, *, timeout: float = 10.0
    ) -> PurecloudTokenProvider:
        digest = hashlib.sha256(client_secret.encode("utf-8")).hexdigest()
        key = (login_url.rstrip("/"), client_id, digest)
        found = self._providers.get(key)
        if found is None:
            found = PurecloudTokenProvider(
                self.client, login_url, client_id, client_secret, clock=self.clock,
                timeout=timeout,
            )
            self._providers[key] = found
        return found


__all__ = ["PurecloudTokenProvider", "PurecloudTokens", "SendError"]
