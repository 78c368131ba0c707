"""Provider webhooks in, and the undelivered strategy's retry contract.

* ``POST /nexus/v3/channels/{channelId}/messages`` (Async / Third-Party Messaging API):
  ``X-Hub-Signature`` (HMAC-SHA1) or ``X-Hub-Signature-256`` of the raw body with the
  channel's api secret, optional ``x-ccid`` (must be the channel's tenant: else 403) ->
  ``{"status": {"code": 0}, "data": {"ids": [...]}}`` (one id per message; a message id seen
  before gets the same id again and is not processed twice).
* ``POST /nexus/v3/channels/{channelId}/media`` (multipart, signed the same way) ->
  ``{mediaId, url: "genesys://nexus/<mediaId>", filename, mimetype, length}``.
* ``POST /nexus/v3/sms/message`` (Portico MO, and DRs) and ``POST /nexus/v3/sms/receipt``
  (Portico / PorticoEmail DRs): form bodies, HTTP Basic ``<ccid>:<api key>``.
* ``POST /nexus/v3/sms/mgage/{ccid}`` (Kaleyra MO and DR): form, HTTP Basic (the tenant's
  mGageSMS account, or ``<ccid>:<api key>``).

These routes are exempt from the API-key layer (:data:`engine.api.security.SELF_AUTHENTICATED`):
they verify the signature / credentials on the raw bytes before anything is parsed.
Bad or missing signature / credentials -> 401 (code 3); unknown channel -> 404 (code 6);
malformed body -> 400 naming the field.

* ``POST /nexus/v3/routing/undelivered/retry`` (``interactionid``, ``attempt``,
  ``maxAttempts`` as query parameters or a JSON / form body): called by an orchestration server
  running ``undelivered.scxml``; authenticated like every API call, with a cluster key
  (``nexus:cluster:*``) or a key/token of the interaction's tenant holding
  ``nexus:cluster:*`` / ``nexus:agent:*``. One resend: 200 when it went out, 502 when it failed
  again (the strategy's ``error.session.fetch``), 404 when nothing waits for a retry.
"""

from __future__ import annotations

from typing import Any

from sanic import Blueprint, HTTPResponse, Request
from sanic.response import json as json_response

from engine.api.body import parse_body
from engine.api.envelope import ok
from engine.api.errors import (
    BadRequest,
    MissingParameter,
    NexusError,
    NoPermission,
    NotFound,
    Unauthorized,
    Unavailable,
)
from engine.api.security import principal_of
from engine.channels.base import InboundInvalid, InboundRejected
from engine.messaging.inbound import TenantMismatch, UnknownChannel
from engine.messaging.outbound import RetryNotPossible
from engine.routing.conversation_models import ConversationError

bp = Blueprint("messaging")

MAX_MEDIA = 10 * 1024 * 1024


def _runtime(request: Request) -> Any:
    runtime = getattr(request.app.ctx, "messaging", None)
    if runtime is None:
        raise Unavailable("messaging is not running")
    return runtime


def _translate(exc: BaseException) -> NexusError:
    if isinstance(exc, InboundRejected):
        return Unauthorized(str(exc) or "invalid signature or credentials",
                            field="authorization")
    if isinstance(exc, TenantMismatch):
        return NoPermission(str(exc), field="x-ccid")
    if isinstance(exc, UnknownChannel):
        return NotFound(str(exc), field="channelId")
    if isinstance(exc, InboundInvalid):
        return BadRequest(str(exc), field=exc.field or "body")
    if isinstance(exc, ConversationError):
        return NexusError(str(exc) or exc.identifier, field=exc.field, code=exc.code,
                          status_code=exc.http_status)
    raise exc


def _ccid(request: Request) -> str | None:
    return (request.headers.get("x-ccid") or "").strip() or None


@bp.post("/nexus/v3/channels/<channel_id>/messages")
async def async_messages(request: Request, channel_id: str) -> HTTPResponse:
    runtime = _runtime(request)
    raw = request.body or b""
    try:
        tenant = await runtime.inbound.verify_async(channel_id, _ccid(request), raw,
                                                    request.headers)
        adapter = runtime.registry.get("Async")
        items = adapter.parse_inbound(raw, request.headers, request.content_type)
        ids = await runtime.inbound.ingest(tenant, items, channel_id=channel_id)
    except (InboundRejected, TenantMismatch, UnknownChannel, InboundInvalid,
            ConversationError) as exc:
        raise _translate(exc) from exc
    return ok({"ids": ids})


@bp.post("/nexus/v3/channels/<channel_id>/media")
async def async_media(request: Request, channel_id: str) -> HTTPResponse:
    runtime = _runtime(request)
    raw = request.body or b""
    try:
        tenant = await runtime.inbound.verify_async(channel_id, _ccid(request), raw,
                                                    request.headers)
    except (InboundRejected, TenantMismatch, UnknownChannel) as exc:
        raise _translate(exc) from exc
    # only now, with the signature checked, is the multipart body parsed
    files = request.files or {}
    upload = None
    for values in files.values():
        if values:
            upload = values[0]
            break
    if upload is None:
        raise MissingParameter("a file part is required", field="file")
    if len(upload.body) > MAX_MEDIA:
        raise BadRequest(f"the file is larger than {MAX_MEDIA} bytes", field="file")
    info = await runtime.inbound.save_media(tenant, channel_id, upload.name or "file",
                                            upload.type or "application/octet-stream",
                                            upload.body)
    return json_response(info.as_dict(), status=201)


async def _basic(request: Request, provider: str, ccid: str | None = None) -> HTTPResponse:
    runtime = _runtime(request)
    raw = request.body or b""
    adapter = runtime.registry.get(provider)
    try:
        tenant = await runtime.inbound.verify_basic(adapter, raw, request.headers, ccid)
        items = adapter.parse_inbound(raw, request.headers, request.content_type)
        ids = await runtime.inbound.ingest(tenant, items)
    except (InboundRejected, TenantMismatch, UnknownChannel, InboundInvalid,
            ConversationError) as exc:
        raise _translate(exc) from exc
    return ok({"ids": ids})


@bp.post("/nexus/v3/sms/message")
async def portico_mo(request: Request) -> HTTPResponse:
    return await _basic(request, "Portico")


@bp.post("/nexus/v3/sms/receipt")
async def portico_receipt(request: Request) -> HTTPResponse:
    return await _basic(request, "Portico")


@bp.post("/nexus/v3/sms/mgage/<ccid>")
async def mgage_mo(request: Request, ccid: str) -> HTTPResponse:
    return await _basic(request, "mGage", ccid)


def _param(request: Request, body: dict[str, Any], name: str) -> str | None:
    value = request.args.get(name)
    if value is None:
        value = body.get(name)
    return None if value is None else str(value)


@bp.post("/nexus/v3/routing/undelivered/retry")
async def undelivered_retry(request: Request) -> HTTPResponse:
    principal = principal_of(request)
    body = parse_body(request) if request.body else {}
    interaction_id = _param(request, body, "interactionid")
    if not interaction_id:
        raise MissingParameter("interactionid is required", field="interactionid")
    raw_attempt = _param(request, body, "attempt") or "1"
    try:
        attempt = int(raw_attempt)
    except ValueError:
        raise BadRequest("attempt must be a number", field="attempt") from None
    if attempt < 1:
        raise BadRequest("attempt must be at least 1", field="attempt")
    if principal.all_tenants:
        if not principal.has_permission("nexus:cluster:*"):
            raise NoPermission("nexus:cluster:* is required", field="permissions")
        tenant = request.ctx.ccid
    else:
        if not (principal.has_permission("nexus:cluster:*")
                or principal.has_permission("nexus:agent:*")):
            raise NoPermission("nexus:cluster:* is required", field="permissions")
        tenant = principal.tenant
    runtime = _runtime(request)
    try:
        delivered = await runtime.outbound.resend_now(tenant, interaction_id, attempt)
    except RetryNotPossible as exc:
        raise NotFound(str(exc), field="interactionid") from exc
    if not delivered:
        raise NexusError("the message could not be delivered", status_code=502)
    return ok({"interactionId": interaction_id, "attempt": attempt, "delivered": True})
