"""Interaction-webhook deliveries of a tenant (the outbox of :mod:`engine.webhooks`).

Permission ``nexus:provisioning:*`` on the tenant (tenant admins, provisioning keys of the
tenant, cluster keys and environment admins); another tenant's deliveries are 404 / 403.

* ``GET /nexus/v3/webhooks/{ccid}/deliveries?status=pending|delivering|delivered|dead&limit=
  &cursor=`` -> ``{"deliveries": [...], "cursor": <next or null>}`` (newest first);
* ``GET /nexus/v3/webhooks/{ccid}/deliveries/{id}`` -> the delivery;
* ``POST /nexus/v3/webhooks/{ccid}/deliveries/{id}/replay`` -> the delivery, pending again
  (due now, attempts reset); 409 (code 9) while it is pending or being delivered.

The :class:`~engine.webhooks.dispatcher.WebhookDispatcher` itself runs in every worker
(started by :mod:`engine.messaging.wiring`); a replay wakes this worker's dispatcher.
"""

from __future__ import annotations

from typing import Any

from sanic import Blueprint, HTTPResponse, Request

from engine.api.envelope import ok
from engine.api.errors import BadRequest, Conflict, NotFound, Unavailable
from engine.api.security import require_tenant
from engine.store.errors import Conflict as StoreConflict
from engine.store.errors import NotFound as StoreNotFound
from engine.webhooks.outbox import STATUSES, get_delivery, list_deliveries, replay

bp = Blueprint("webhooks")
PERMISSION = "nexus:provisioning:*"


def _store(request: Request) -> Any:
    store = request.app.ctx.store
    if store is None:
        raise Unavailable("the store is not connected")
    return store


@bp.get("/nexus/v3/webhooks/<ccid>/deliveries")
async def deliveries(request: Request, ccid: str) -> HTTPResponse:
    require_tenant(request, PERMISSION, ccid)
    status = request.args.get("status")
    if status is not None and status not in STATUSES:
        raise BadRequest(f"status must be one of {', '.join(STATUSES)}", field="status")
    try:
        limit = int(request.args.get("limit", "50"))
    except ValueError:
        raise BadRequest("limit must be a number", field="limit") from None
    if not 1 <= limit <= 500:
        raise BadRequest("limit must be between 1 and 500", field="limit")
    try:
        items, cursor = await list_deliveries(_store(request), ccid, status=status, limit=limit,
                                              cursor=request.args.get("cursor") or None)
    except ValueError as exc:
        raise BadRequest(str(exc), field="cursor") from exc
    return ok({"deliveries": [d.to_dict() for d in items], "cursor": cursor})


@bp.get("/nexus/v3/webhooks/<ccid>/deliveries/<delivery_id>")
async def delivery(request: Request, ccid: str, delivery_id: str) -> HTTPResponse:
    require_tenant(request, PERMISSION, ccid)
    found = await get_delivery(_store(request), ccid, delivery_id)
    if found is None:
        raise NotFound(f"no webhook delivery {delivery_id}", field="id")
    return ok(found.to_dict())


@bp.post("/nexus/v3/webhooks/<ccid>/deliveries/<delivery_id>/replay")
async def replay_delivery(request: Request, ccid: str, delivery_id: str) -> HTTPResponse:
    require_tenant(request, PERMISSION, ccid)
    try:
        replayed = await replay(_store(request), ccid, delivery_id)
    except StoreNotFound as exc:
        raise NotFound(str(exc), field="id") from exc
    except StoreConflict as exc:
        raise Conflict(str(exc), field="id") from exc
    runtime = getattr(request.app.ctx, "messaging", None)
    if runtime is not None:
        runtime.dispatcher.wake()
    return ok(replayed.to_dict())
