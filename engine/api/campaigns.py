"""Campaign sends (``/nexus/v3/cxc``, permission ``nexus:cxc:*`` on the tenant).

* ``POST /nexus/v3/cxc/sms`` and ``POST /nexus/v3/cxc/email``: one message
  (``{"data": {"from", "to", "text", "externalId"?}}``; email: ``subject``, ``html`` and/or
  ``text``, ``fromName``?) or many (``{"data": {"messages": [...]}}``, at most 1000). ``from``
  is the channelId of a ``chat.*`` section (SMS) or a ``cxc.*`` domain / an address at it
  (email) of the tenant. The provider is the section's ``provider``, else the tenant's SMS /
  Email service's ``data.provider``. Every message gets an id at once:

  - all queued -> ``202 {"status": {"code": 0}, "data": {...}}``;
  - some refused (recipient opted out: ``status: refused, reason: OPTED_OUT``) or invalid
    (``status: invalid``, ``field``) -> ``207`` with ``status.code`` 7 (partial success) and
    the same data (a single message's refusal too: the data says why).

  ``data`` is the message's ``{id, status, externalId?, reason?}`` (single) or
  ``{"messages": [...]}`` (bulk, in request order).
* ``GET /nexus/v3/cxc/sms/{id}`` / ``GET /nexus/v3/cxc/email/{id}``: ``{id, status (queued |
  sending | sent | delivered | read | failed | refused), from, to, provider, externalId?,
  providerMessageId?, created, updated, sentAt?, reason?, error?}``; receipts update it.
"""

from __future__ import annotations

from typing import Any

from sanic import Blueprint, HTTPResponse, Request
from sanic.response import json as json_response

from engine.api.body import parse_body
from engine.api.envelope import envelope, ok
from engine.api.errors import (
    PARTIAL_SUCCESS,
    BadRequest,
    MissingParameter,
    NotFound,
    Unavailable,
)
from engine.api.security import require_tenant
from engine.messaging import queue as q
from engine.messaging.campaigns import MAX_BULK

bp = Blueprint("campaigns")
PERMISSION = "nexus:cxc:*"


def _tenant(request: Request) -> Any:
    ccid = getattr(request.ctx, "ccid", None)
    if not ccid:
        raise MissingParameter("x-ccid is required with an all-tenant credential",
                               field="x-ccid")
    require_tenant(request, PERMISSION, ccid)
    model = request.app.ctx.config
    tenant = model.tenant_by_ccid(ccid) if model is not None else None
    if tenant is None or not tenant.enabled:
        raise NotFound(f"unknown contact center {ccid}", field="x-ccid")
    return tenant


def _runtime(request: Request) -> Any:
    runtime = getattr(request.app.ctx, "messaging", None)
    if runtime is None:
        raise Unavailable("messaging is not running")
    return runtime


async def _send(request: Request, media: str) -> HTTPResponse:
    tenant = _tenant(request)
    runtime = _runtime(request)
    body = parse_body(request)
    if not body:
        raise MissingParameter("data is required", field="data")
    bulk = "messages" in body
    if bulk:
        items = body["messages"]
        if not isinstance(items, list) or not items:
            raise BadRequest("messages must be a non-empty list", field="messages")
        if len(items) > MAX_BULK:
            raise BadRequest(f"at most {MAX_BULK} messages per request", field="messages")
    else:
        items = [body]
    results = await runtime.campaigns.submit(tenant, media, items,
                                             trace_id=getattr(request.ctx, "trace_id", None))
    if any(r["status"] == q.QUEUED for r in results):
        runtime.sender.wake()
    if not bulk and results[0]["status"] == "invalid":
        raise BadRequest(results[0]["reason"], field=results[0]["field"])
    data: dict[str, Any] = {"messages": results} if bulk else results[0]
    queued = sum(1 for r in results if r["status"] == q.QUEUED)
    if queued == len(results):
        return ok(data, status=202)
    payload = envelope(data)
    payload["status"] = {
        "code": PARTIAL_SUCCESS,
        "message": f"{queued} of {len(results)} message(s) accepted",
    }
    return json_response(payload, status=207)


async def _get(request: Request, media: str, message_id: str) -> HTTPResponse:
    tenant = _tenant(request)
    runtime = _runtime(request)
    row = await runtime.campaigns.get(tenant.ccid, media, message_id)
    if row is None:
        raise NotFound(f"no {media} message {message_id}", field="id")
    return ok(row.to_dict())


@bp.post("/nexus/v3/cxc/sms")
async def send_sms(request: Request) -> HTTPResponse:
    return await _send(request, "sms")


@bp.post("/nexus/v3/cxc/email")
async def send_email(request: Request) -> HTTPResponse:
    return await _send(request, "email")


@bp.get("/nexus/v3/cxc/sms/<message_id>")
async def get_sms(request: Request, message_id: str) -> HTTPResponse:
    return await _get(request, "sms", message_id)


@bp.get("/nexus/v3/cxc/email/<message_id>")
async def get_email(request: Request, message_id: str) -> HTTPResponse:
    return await _get(request, "email", message_id)
