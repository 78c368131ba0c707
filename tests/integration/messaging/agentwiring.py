"""The default wiring plus a test-only agent console (``/nexus/v3/test-agent/...``, admin
Bearer token): presence, offers, accept, agent messages, Done, and reads of the conversation
engine's state. It drives ``app.ctx.conversations`` / ``app.ctx.router`` of the real engine
process (the agent HTTP API belongs to the chat layer)."""

from __future__ import annotations

from typing import Any

from sanic import Blueprint, HTTPResponse, Request, Sanic

from engine.api.envelope import ok
from engine.api.errors import NotFound
from engine.api.security import require_all_tenants
from engine.settings import Settings
from engine.wiring import default_wiring

bp = Blueprint("test_agent", url_prefix="/nexus/v3/test-agent/<ccid>")


def _admin(request: Request) -> tuple[Any, Any]:
    require_all_tenants(request, "nexus:provisioning:*")
    return request.app.ctx.conversations, request.app.ctx.router


@bp.post("/<agent>/ready")
async def ready(request: Request, ccid: str, agent: str) -> HTTPResponse:
    _, router = _admin(request)
    return ok({"state": await router.set_presence(ccid, agent, "ready")})


@bp.get("/<agent>/interactions")
async def interactions(request: Request, ccid: str, agent: str) -> HTTPResponse:
    _, router = _admin(request)
    return ok([s.as_dict() for s in await router.agent_interactions(ccid, agent)])


@bp.post("/<agent>/accept/<iid>")
async def accept(request: Request, ccid: str, agent: str, iid: str) -> HTTPResponse:
    _, router = _admin(request)
    return ok((await router.accept(ccid, agent, iid)).as_dict())


@bp.post("/<agent>/messages/<iid>")
async def message(request: Request, ccid: str, agent: str, iid: str) -> HTTPResponse:
    service, _ = _admin(request)
    posted = await service.post_agent_message(ccid, iid, agent, request.json["text"])
    return ok(posted.as_dict())


@bp.post("/<agent>/done/<iid>")
async def done(request: Request, ccid: str, agent: str, iid: str) -> HTTPResponse:
    _, router = _admin(request)
    return ok((await router.done(ccid, agent, iid)).as_dict())


@bp.get("/segments/<iid>")
async def segment(request: Request, ccid: str, iid: str) -> HTTPResponse:
    service, _ = _admin(request)
    return ok((await service.get_interaction(ccid, iid)).as_dict())


@bp.get("/conversations/<cid>/messages")
async def messages(request: Request, ccid: str, cid: str) -> HTTPResponse:
    service, _ = _admin(request)
    return ok([m.as_dict() for m in await service.read_messages(ccid, cid)])


@bp.get("/by-provider-id/<pmid>")
async def by_provider_id(request: Request, ccid: str, pmid: str) -> HTTPResponse:
    service, _ = _admin(request)
    found = await service.repo.messages_by_provider_ids(ccid, [pmid])
    message = found.get(pmid)
    if message is None:
        raise NotFound(f"no message {pmid}")
    segment = await service.open_segment(ccid, message.conversation_id)
    return ok({"conversationId": message.conversation_id, "messageId": message.id,
               "interactionId": segment.id if segment else None})


def install_test_agent(app: Sanic) -> None:
    app.blueprint(bp)


def wiring(settings: Settings) -> dict[str, Any]:
    out = default_wiring(settings)
    out["setup"] = [*out["setup"], install_test_agent]
    return out
