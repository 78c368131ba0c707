"""HTTP adapter to a tenant's UCS (the ``PlatformUCS`` service's ``url``).

The JSON contract (documented in docs/conversations.md) — all bodies ``application/json``,
header ``x-ccid: <tenant>`` on every call, ``X-B3-TraceId`` when given:

``POST {url}/contacts/identify``
    ``{"tenant": ccid, "attributes": {"firstName", "lastName", "nickname", "email",
    "phone"}}`` (email lower-cased, phone E.164, absent values null) ->
    ``200 {"contactId": "<id>", "created": true|false}``.
``POST {url}/contacts/{contactId}/interactions``
    ``{"tenant": ccid, "interaction": {"conversation": {...}, "interactions": [...],
    "messages": [...]}}`` (the engine's history entry of one finished interaction; UCS
    upserts by interaction id) -> any 2xx.
``GET {url}/contacts/{contactId}/history?tenant=<ccid>``
    -> ``200 {"interactions": [<history entry>, ...]}``; 404 = unknown contact.

Errors: a connection failure, a timeout or a 5xx raise :class:`UcsUnavailable`; a 404 on
history raises :class:`ContactNotFound`; any other non-2xx raises :class:`UcsUnavailable`
with the status. One ``httpx.AsyncClient`` (connection pool) per :class:`UcsClient`.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import quote

import httpx

from engine.routing.conversation_models import ContactNotFound, UcsUnavailable

log = logging.getLogger("nexus.routing.ucs")


class UcsClient:
    def __init__(
        self,
        *,
        timeout: float = 5.0,
        transport: httpx.AsyncBaseTransport | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self._timeout = timeout
        self._transport = transport
        self._headers = headers or {}
        self._client: httpx.AsyncClient | None = None

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=self._timeout, transport=self._transport, headers=self._headers
            )
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    async def _call(
        self,
        method: str,
        url: str,
        tenant: str,
        *,
        json: dict[str, Any] | None = None,
        params: dict[str, str] | None = None,
        trace_id: str | None = None,
    ) -> httpx.Response:
        headers = {"x-ccid": tenant}
        if trace_id:
            headers["X-B3-TraceId"] = trace_id
        try:
            response = await self._http().request(
                method, url, json=json, params=params, headers=headers
            )
        except httpx.HTTPError as exc:
            raise UcsUnavailable(f"UCS {method} {url}: {type(exc).__name__}: {exc}") from exc
        if response.status_code >= 500:
            raise UcsUnavailable(f"UCS {method} {url} answered {response.status_code}")
        return response

    @staticmethod
    def _base(url: str) -> str:
        return url.rstrip("/")

    async def identify(
        self, url: str, tenant: str, attributes: dict[str, Any], *, trace_id: str | None = None
    ) -> str:
        response = await self._call(
            "POST",
            f"{self._base(url)}/contacts/identify",
            tenant,
            json={"tenant": tenant, "attributes": attributes},
            trace_id=trace_id,
        )
        if response.status_code != 200:
            raise UcsUnavailable(f"UCS identify answered {response.status_code}")
        try:
            contact_id = response.json()["contactId"]
        except (ValueError, KeyError, TypeError) as exc:
            raise UcsUnavailable("UCS identify answered without contactId") from exc
        if not isinstance(contact_id, str) or not contact_id:
            raise UcsUnavailable("UCS identify answered an invalid contactId")
        return contact_id

    async def add_interaction(
        self,
        url: str,
        tenant: str,
        contact_id: str,
        interaction: dict[str, Any],
        *,
        trace_id: str | None = None,
    ) -> None:
        response = await self._call(
            "POST",
            f"{self._base(url)}/contacts/{quote(contact_id, safe='')}/interactions",
            tenant,
            json={"tenant": tenant, "interaction": interaction},
            trace_id=trace_id,
        )
        if not 200 <= response.status_code < 300:
            raise UcsUnavailable(f"UCS add interaction answered {response.status_code}")

    async def history(
        self, url: str, tenant: str, contact_id: str, *, trace_id: str | None = None
    ) -> list[dict[str, Any]]:
        response = await self._call(
            "GET",
            f"{self._base(url)}/contacts/{quote(contact_id, safe='')}/history",
            tenant,
            params={"tenant": tenant},
            trace_id=trace_id,
        )
        if response.status_code == 404:
            raise ContactNotFound(f"UCS knows no contact {contact_id!r}", field="contactId")
        if response.status_code != 200:
            raise UcsUnavailable(f"UCS history answered {response.status_code}")
        try:
            items = response.json()["interactions"]
        except (ValueError, KeyError, TypeError) as exc:
            raise UcsUnavailable("UCS history answered without interactions") from exc
        if not isinstance(items, list):
            raise UcsUnavailable("UCS history answered a non-list")
        return items
