"""The provider adapter interface: one small contract every SMS / email provider implements.

An adapter turns a provider's inbound HTTP call (raw bytes + headers, never a Sanic request)
into normalised :class:`InboundMessage` / :class:`Receipt` objects, and an
:class:`OutboundMessage` into one HTTP call to the provider. Verification always runs on the
raw bytes *before* anything is parsed (DESIGN §4).

Send failures are classified once, here (:func:`raise_for_response`,
:func:`classify_transport_error`):

* :class:`TransientSendError`: connection errors, timeouts, HTTP 5xx, 408 and 429 (with the
  ``Retry-After`` delay when the provider gave one). Retried with backoff (:mod:`.retry`).
* :class:`PermanentSendError`: every other 4xx, 3xx (a wrong URL), a 2xx the provider says
  rejected the message, a missing or unusable provider configuration. Never retried: the
  interaction goes to the ``undelivered`` queue.
"""

from __future__ import annotations

import abc
import base64
import binascii
import email.utils
import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import httpx
from multidict import CIMultiDict, CIMultiDictProxy

from engine.config.model import Model, Secret, Service, Tenant
from engine.config.refs import RefError

# ---- errors ---------------------------------------------------------------------------


class ChannelError(Exception):
    """Base of every error an adapter raises."""


class InboundRejected(ChannelError):
    """An inbound call that must be refused before it is parsed (answer 401/403)."""


class SignatureInvalid(InboundRejected):
    """A missing, garbled or wrong HMAC signature."""


class AuthInvalid(InboundRejected):
    """Missing or wrong credentials (HTTP Basic, API key)."""


class InboundInvalid(ChannelError):
    """A verified inbound call whose body is malformed (answer 400, naming ``field``)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class SendError(ChannelError):
    """An outbound send failed. ``status_code`` is the provider's HTTP status, if any."""

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class TransientSendError(SendError):
    """Worth retrying later. ``retry_after``: seconds the provider asked us to wait."""

    def __init__(
        self, message: str, *, status_code: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message, status_code=status_code)
        self.retry_after = retry_after


class PermanentSendError(SendError):
    """Retrying cannot help (the message goes to the ``undelivered`` queue)."""


class ProviderNotConfigured(PermanentSendError):
    """The tenant lacks a service, URL or secret the provider needs."""


# ---- normalised messages -------------------------------------------------------------


class MessageType(StrEnum):
    TEXT = "Text"
    RICH_MEDIA = "RichMedia"
    RECEIPT = "Receipt"


class ReceiptStatus(StrEnum):
    DELIVERED = "Delivered"
    FAILED = "Failed"
    READ = "Read"


@dataclass(frozen=True, slots=True)
class Address:
    """A party of a message: a phone number, an email address or a gateway's user id."""

    id: str
    id_type: str | None = None  # 'Phone' | 'Email' | the gateway's own type
    first_name: str | None = None
    last_name: str | None = None
    nickname: str | None = None
    display_name: str | None = None


@dataclass(frozen=True, slots=True)
class Media:
    """An attachment: by ``url`` (the provider hosts it) or inline ``content`` bytes."""

    content_type: str | None = None
    url: str | None = None
    filename: str | None = None
    content: bytes | None = None


@dataclass(frozen=True, slots=True)
class InboundMessage:
    provider: str
    provider_message_id: str  # idempotency key of the ingest (per tenant)
    channel_id: str  # our number / short code / domain / gateway channel
    sender: Address  # the customer
    to: str
    type: MessageType
    text: str | None
    media: tuple[Media, ...] = ()
    timestamp: datetime | None = None
    carrier: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Receipt:
    provider: str
    provider_message_id: str  # idempotency key of this receipt
    ref_id: str  # the provider message id of the outbound message it reports on
    status: ReceiptStatus
    channel_id: str | None = None
    timestamp: datetime | None = None
    provider_status: str | None = None  # the provider's own state, e.g. 'DELIVRD'
    error_code: str | None = None


Inbound = InboundMessage | Receipt


@dataclass(frozen=True, slots=True)
class OutboundMessage:
    """One message to send. ``tenant`` is the tenant's config name; ``channel_id`` our
    sender (number, short code, Async channel or email domain); ``to`` the customer."""

    message_id: str  # ours; sent as the provider's client reference where it has one
    tenant: str
    channel_id: str
    to: str
    text: str | None = None
    type: MessageType = MessageType.TEXT
    media: tuple[Media, ...] = ()
    subject: str | None = None  # email
    html: str | None = None  # email
    from_address: str | None = None  # email: the full sender address (default noreply@domain)
    from_name: str | None = None
    to_name: str | None = None
    timestamp: datetime | None = None
    trace_id: str | None = None


@dataclass(frozen=True, slots=True)
class SendResult:
    provider_message_id: str | None
    status: str = "sent"  # 'sent' (accepted by the provider) | 'queued'


# ---- contexts ------------------------------------------------------------------------

ApiKeyCheck = Callable[[str, str], Awaitable[bool]]


@dataclass(frozen=True, slots=True)
class SendContext:
    """What a send needs besides the message: the config model (the adapter reads the
    tenant's services from it) and the environment secrets resolve against."""

    model: Model
    env: Mapping[str, str] | None = None
    trace_id: str | None = None
    timeout: float | None = None  # default: model.environment.delivery.timeout_seconds

    def tenant(self, name: str) -> Tenant:
        tenant = self.model.tenant(name) or self.model.tenant_by_ccid(name)
        if tenant is None:
            raise ProviderNotConfigured(f"unknown tenant {name!r}")
        return tenant

    def service(self, tenant: Tenant, name: str) -> Service:
        service = tenant.service(name)
        if service is None:
            raise ProviderNotConfigured(f"tenant {tenant.name} has no {name} service")
        return service

    def secret(self, value: Any, what: str) -> str:
        if isinstance(value, Secret):
            try:
                return value.resolve(self.env)
            except RefError as exc:
                raise ProviderNotConfigured(f"{what} is not set: {exc}") from exc
        if isinstance(value, str) and value:
            return value
        raise ProviderNotConfigured(f"{what} is not configured")

    @property
    def request_timeout(self) -> float:
        if self.timeout is not None:
            return self.timeout
        return float(self.model.environment.delivery.timeout_seconds)


@dataclass(frozen=True, slots=True)
class InboundContext:
    """What verification needs. ``tenant``: the tenant the URL names (``x-ccid`` or the
    path), when known. ``channel_id``: the channel the URL names (Async).
    ``check_api_key(ccid, key)``: the caller's API-key check (Basic ``<ccid>:<api key>``)."""

    model: Model
    tenant: Tenant | None = None
    channel_id: str | None = None
    check_api_key: ApiKeyCheck | None = None
    env: Mapping[str, str] | None = None


# ---- the interface -------------------------------------------------------------------


class ProviderAdapter(abc.ABC):
    """One provider. Instances are long-lived (one per process): each holds one pooled
    ``httpx.AsyncClient``; call :meth:`aclose` at shutdown."""

    #: The provider's name as config spells it (``provider:`` option / registry key).
    name: str = ""
    #: 'sms' or 'email'.
    media: str = "sms"

    def __init__(self, client: httpx.AsyncClient | None = None) -> None:
        self._own_client = client is None
        self.client = client or httpx.AsyncClient(
            follow_redirects=False,
            limits=httpx.Limits(max_connections=100, max_keepalive_connections=20),
        )

    async def aclose(self) -> None:
        if self._own_client:
            await self.client.aclose()

    @abc.abstractmethod
    async def verify_inbound(
        self, raw_body: bytes, headers: Mapping[str, str], context: InboundContext
    ) -> str | None:
        """Check the caller before anything is parsed; raise :class:`SignatureInvalid` or
        :class:`AuthInvalid`. Returns the authenticated account (the Basic user name, e.g.
        the ccid) or None for signature-verified calls."""

    @abc.abstractmethod
    def parse_inbound(
        self, raw_body: bytes, headers: Mapping[str, str], content_type: str | None
    ) -> list[Inbound]:
        """Normalise a verified body; raise :class:`InboundInvalid` when malformed."""

    @abc.abstractmethod
    async def send(self, outbound: OutboundMessage, ctx: SendContext) -> SendResult:
        """Send one message; raise :class:`TransientSendError` / :class:`PermanentSendError`."""

    @abc.abstractmethod
    def map_receipt(self, provider_status: str) -> ReceiptStatus | None:
        """The normalised status of a provider's delivery state (None: an intermediate state
        such as 'sent' or 'enroute', which is acknowledged and otherwise ignored)."""

    # -- shared helpers ------------------------------------------------------------------

    async def post(self, url: str, ctx: SendContext, **kwargs: Any) -> httpx.Response:
        """POST with the send timeout; transport failures become :class:`TransientSendError`."""
        try:
            return await self.client.post(url, timeout=ctx.request_timeout, **kwargs)
        except httpx.HTTPError as exc:
            raise classify_transport_error(exc, self.name) from exc
        except httpx.InvalidURL as exc:
            raise PermanentSendError(f"{self.name}: invalid URL {url!r}: {exc}") from exc


# ---- classification ------------------------------------------------------------------

TRANSIENT_4XX = frozenset({408, 429})


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """``Retry-After`` as seconds: delta-seconds or an HTTP date (None when absent/bad)."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def raise_for_response(response: httpx.Response, provider: str) -> None:
    """Raise the classified error for a non-2xx answer (do nothing on 2xx)."""
    status = response.status_code
    if 200 <= status < 300:
        return
    detail = f"{provider} answered HTTP {status}"
    snippet = response.text[:200].strip() if response.content else ""
    if snippet:
        detail = f"{detail}: {snippet}"
    if status >= 500 or status in TRANSIENT_4XX:
        raise TransientSendError(
            detail,
            status_code=status,
            retry_after=parse_retry_after(response.headers.get("retry-after")),
        )
    raise PermanentSendError(detail, status_code=status)


def classify_transport_error(exc: httpx.HTTPError, provider: str) -> SendError:
    """Timeouts and connection errors are transient; a malformed URL is permanent."""
    if isinstance(exc, httpx.UnsupportedProtocol):
        return PermanentSendError(f"{provider}: unusable URL: {exc}")
    if isinstance(exc, httpx.TimeoutException):
        return TransientSendError(f"{provider}: no answer in time ({type(exc).__name__})")
    if isinstance(exc, httpx.TransportError):
        return TransientSendError(f"{provider}: {type(exc).__name__}: {exc}")
    return PermanentSendError(f"{provider}: {type(exc).__name__}: {exc}")


def json_body(response: httpx.Response) -> Any:
    """The answer's JSON, or None when it has none."""
    if not response.content:
        return None
    try:
        return response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


# ---- inbound helpers -----------------------------------------------------------------


_CASE_INSENSITIVE = (CIMultiDict, CIMultiDictProxy)


def header(headers: Mapping[str, str], name: str) -> str | None:
    """A header by case-insensitive name (works on plain dicts and multidicts)."""
    value = headers.get(name)
    if value is not None or isinstance(headers, _CASE_INSENSITIVE):
        return value  # a request's headers (Sanic's are a CIMultiDict) need no second look
    lowered = name.lower()
    for key, item in headers.items():
        if key.lower() == lowered:
            return item
    return None


def basic_credentials(headers: Mapping[str, str]) -> tuple[str, str]:
    """(user, password) of an ``Authorization: Basic`` header; :class:`AuthInvalid` if
    missing or malformed."""
    value = header(headers, "authorization")
    if not value:
        raise AuthInvalid("missing Authorization header")
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "basic" or not token.strip():
        raise AuthInvalid("Authorization must be HTTP Basic")
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise AuthInvalid("malformed Basic credentials") from exc
    user, sep, password = decoded.partition(":")
    if not sep or not user:
        raise AuthInvalid("malformed Basic credentials")
    return user, password


def basic_auth_header(user: str, password: str) -> str:
    token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    return f"Basic {token}"


def parse_timestamp(value: Any, field_name: str = "timestamp") -> datetime | None:
    """ISO-8601 text or epoch seconds/milliseconds -> aware UTC datetime (None if absent)."""
    if value is None or value == "":
        return None
    try:
        if isinstance(value, int | float) or (isinstance(value, str) and value.isdigit()):
            number = float(value)
            if number > 1e11:  # milliseconds
                number /= 1000.0
            return datetime.fromtimestamp(number, UTC)
        if isinstance(value, str):
            text = value.strip()
            if text.endswith("Z"):
                text = text[:-1] + "+00:00"
            parsed = datetime.fromisoformat(text)
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=UTC)
            return parsed.astimezone(UTC)
    except (ValueError, OverflowError, OSError) as exc:
        raise InboundInvalid(f"{field_name} is not a valid timestamp", field_name) from exc
    raise InboundInvalid(f"{field_name} is not a valid timestamp", field_name)


def media_type_of(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def form_fields(raw_body: bytes) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body (last value wins)."""
    from urllib.parse import parse_qsl

    try:
        text = raw_body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InboundInvalid("the body is not UTF-8") from exc
    try:
        return dict(parse_qsl(text, keep_blank_values=True, strict_parsing=False))
    except ValueError as exc:
        raise InboundInvalid(f"malformed form body: {exc}") from exc


def require(fields: Mapping[str, str], name: str) -> str:
    value = fields.get(name)
    if value is None or str(value).strip() == "":
        raise InboundInvalid(f"{name} is required", name)
    return str(value)


def address_kind(value: str) -> str:
    return "Email" if "@" in value else "Phone"


def email_sender(outbound: OutboundMessage) -> str:
    """The sender address of an email: ``from_address``, else ``noreply@<domain>``."""
    return outbound.from_address or f"noreply@{outbound.channel_id}"


__all__: Sequence[str] = (
    "Address",
    "AuthInvalid",
    "ChannelError",
    "Inbound",
    "InboundContext",
    "InboundInvalid",
    "InboundMessage",
    "InboundRejected",
    "Media",
    "MessageType",
    "OutboundMessage",
    "PermanentSendError",
    "ProviderAdapter",
    "ProviderNotConfigured",
    "Receipt",
    "ReceiptStatus",
    "SendContext",
    "SendError",
    "SendResult",
    "SignatureInvalid",
    "TransientSendError",
    "basic_credentials",
    "classify_transport_error",
    "parse_retry_after",
    "raise_for_response",
)
