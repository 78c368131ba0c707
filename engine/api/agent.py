"""The agent API (``/nexus/v3/agent``): a Bearer token of a user with the ``agent`` role.

Tenant users log in as ``<ccid>\\<user>`` (``POST /auth/v3/oauth/token``); the token's tenant
is the agent's contact center, its subject the agent's username (a config ``User`` with the
agent role, its queues and capacity).

* ``GET|PUT /presence`` ``{"state": "ready"|"not-ready"}``. Presence lives in Redis with a TTL
  (60 s): the agent stream refreshes it while connected, and so do ``GET /presence`` and
  ``GET /interactions`` (a desktop polling those stays ready).
* ``GET /interactions``: the agent's offered and assigned interactions (each with its
  ``conversation``: customer, endpoint, contact id, subject, user data).
* ``POST /interactions/{iid}/accept|reject|hold|done``, ``POST .../transfer`` ``{"queue"}``.
  ``hold`` is async hold: the interaction parks in ``asynchold`` and the customer's next message
  wakes it through the ``redirect_queue`` strategy (the last agent is preferred).
* ``GET /interactions/{iid}/messages?from=`` (the whole conversation's transcript), ``POST
  .../messages`` ``{"type": "Text|Notice|TypingStarted|TypingStopped", "text"}``, ``POST
  .../files`` (multipart field ``file``, the chat upload policy).
* ``GET /contacts/{contactId}/history``: the contact's conversations, interactions, messages.
* ``GET /stream``: WebSocket of the agent's feed: first ``{"kind": "snapshot",
  "interactions": [...]}``, then ``offer``, ``offer-revoked``, ``assigned``, ``released`` and
  ``message`` events. The token comes in ``Authorization`` or, from a browser, as
  ``?access_token=``.
* ``GET /queues`` (supervisors, permission ``nexus:supervisor:queues``): per queue waiting,
  offered, assigned, held and agents ready.

An agent sees only their own interactions: one offered to them, assigned to them, or whose
conversation they were the last agent of (anything else is 404 ``INTERACTION_NOT_FOUND``).
A token of a user without the agent role gets 403 ``NOT_AN_AGENT``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from sanic import Blueprint, HTTPResponse, Request, Sanic

from engine.api.body import parse_body
from engine.api.chat import (
    close_with_error,
    conversation_error_response,
    index_param,
    limit_param,
    pump,
    runtime_of,
    tenant_of,
    text_field,
)
from engine.api.envelope import ok
from engine.api.errors import BadRequest, MissingParameter, NexusError, NoPermission
from engine.api.openapi import describe
from engine.api.security import require
from engine.routing.conversation_models import (
    ConversationError,
    InteractionNotFound,
    MessageType,
    Segment,
)
from engine.routing.conversations import ConversationService
from engine.routing.router import PRESENCE_STATES, Router

log = logging.getLogger("nexus.api.agent")

PREFIX = "/nexus/v3/agent"
AGENT = "nexus:agent:chat"
SUPERVISOR = "nexus:supervisor:queues"


def _service(request: Request) -> ConversationService:
    return runtime_of(request).service


def _router(request: Request) -> Router:
    return _service(request).router


def agent_of(request: Request) -> tuple[str, str]:
    """``(ccid, username)`` of the calling agent (403 NOT_AN_AGENT otherwise)."""
    principal = require(request, AGENT)
    if principal.kind != "user":
        raise NoPermission("the agent API needs an agent's Bearer token", field="Authorization")
    ccid = tenant_of(request, principal)
    user = _router(request).agent(ccid, principal.name)
    return ccid, user.username.lower()


async def their_segment(request: Request, ccid: str, agent: str, iid: str) -> Segment:
    """The interaction if it is (or was last) this agent's; 404 otherwise."""
    service = _service(request)
    segment = await service.get_interaction(ccid, iid)
    if agent in (segment.agent, segment.offered_to):
        return segment
    conversation = await service.get_conversation(ccid, segment.conversation_id)
    if (conversation.last_agent or "").lower() == agent:
        return segment
    raise InteractionNotFound(f"no interaction {iid!r}", field="iid")


async def interaction_json(service: ConversationService, ccid: str, segment: Segment) -> dict:
    conversation = await service.get_conversation(ccid, segment.conversation_id)
    return {
        **segment.as_dict(),
        "conversation": {
            "id": conversation.id,
            "customer": {"participantId": conversation.customer_id, **conversation.customer},
            "endpoint": conversation.endpoint,
            "contactId": conversation.contact_id,
            "subject": conversation.subject,
            "userData": dict(conversation.user_data),
            "lastIndex": conversation.last_index,
            "lastAgent": conversation.last_agent,
            "state": str(conversation.state),
        },
    }


# ---------------------------------------------------------------------- presence
@describe("The agent's presence", tags=["agent"], security=["bearer"])
async def get_presence(request: Request) -> HTTPResponse:
    """The agent's presence (refreshes its TTL)."""
    ccid, agent = agent_of(request)
    state = await _router(request).heartbeat(ccid, agent)
    return ok({"state": state})


@describe("Set the agent's presence", tags=["agent"], security=["bearer"],
          body={"application/json": {"schema": {"type": "object", "properties": {
              "state": {"enum": ["ready", "not-ready"]}}, "required": ["state"]}}})
async def put_presence(request: Request) -> HTTPResponse:
    """Set the agent's presence: ready or not-ready."""
    ccid, agent = agent_of(request)
    state = text_field(parse_body(request), "state", limit=32)
    if state is None:
        raise MissingParameter("state is required", field="state")
    if state not in PRESENCE_STATES:
        raise BadRequest(f"state must be one of {', '.join(PRESENCE_STATES)}", field="state")
    return ok({"state": await _router(request).set_presence(ccid, agent, state)})


# ---------------------------------------------------------------------- interactions
@describe("The agent's offered and assigned interactions", tags=["agent"], security=["bearer"])
async def list_interactions(request: Request) -> HTTPResponse:
    """The agent's offered and assigned interactions."""
    ccid, agent = agent_of(request)
    router, service = _router(request), _service(request)
    await router.heartbeat(ccid, agent)
    segments = await router.agent_interactions(ccid, agent)
    return ok({"interactions": [await interaction_json(service, ccid, s) for s in segments]})


def _action(name: str, summary: str) -> Any:
    @describe(summary, tags=["agent"], security=["bearer"],
              responses={200: "the interaction", 404: "INTERACTION_NOT_FOUND",
                         409: "INVALID_STATE"})
    async def handler(request: Request, iid: str) -> HTTPResponse:
        ccid, agent = agent_of(request)
        router = _router(request)
        await their_segment(request, ccid, agent, iid)
        if name == "accept":
            segment = await router.accept(ccid, agent, iid)
        elif name == "reject":
            segment = await router.reject(ccid, agent, iid)
        elif name == "hold":
            segment = await router.hold(ccid, agent, iid)
        elif name == "done":
            segment = await router.done(ccid, agent, iid)
        else:
            queue = text_field(parse_body(request), "queue", limit=255)
            if queue is None:
                raise MissingParameter("queue is required", field="queue")
            segment = await router.transfer(ccid, agent, iid, queue)
        return ok({"interaction": segment.as_dict()})

    handler.__name__ = f"interaction_{name}"
    handler.__doc__ = summary
    return handler


@describe("Messages of the interaction's conversation from an index", tags=["agent"],
          security=["bearer"])
async def read_messages(request: Request, iid: str) -> HTTPResponse:
    """The conversation's messages with index >= from."""
    ccid, agent = agent_of(request)
    segment = await their_segment(request, ccid, agent, iid)
    messages = await _service(request).read_messages(
        ccid, segment.conversation_id, index_param(request), limit=limit_param(request)
    )
    return ok({"messages": [m.as_dict() for m in messages]})


@describe("Post a message as the agent", tags=["agent"], security=["bearer"],
          body={"application/json": {"schema": {"type": "object", "properties": {
              "type": {"enum": ["Text", "Notice", "TypingStarted", "TypingStopped"]},
              "text": {"type": "string"}}}}})
async def post_message(request: Request, iid: str) -> HTTPResponse:
    """Post a message in the interaction."""
    ccid, agent = agent_of(request)
    await their_segment(request, ccid, agent, iid)
    body = parse_body(request)
    kind = text_field(body, "type", limit=32) or str(MessageType.TEXT)
    if kind not in {str(t) for t in MessageType}:
        raise BadRequest(f"unknown message type {kind[:32]!r}", field="type")
    text = body.get("text")
    if text is not None and not isinstance(text, str):
        raise BadRequest("text must be a string", field="text")
    message = await _service(request).post_agent_message(ccid, iid, agent, text, type=kind)
    return ok({"message": message.as_dict()})


@describe("Upload a file as the agent (multipart field `file`)", tags=["agent"],
          security=["bearer"])
async def upload_file(request: Request, iid: str) -> HTTPResponse:
    """Upload a file into the interaction's conversation."""
    ccid, agent = agent_of(request)
    segment = await their_segment(request, ccid, agent, iid)
    upload = request.files.get("file") if request.files else None
    if upload is None:
        raise MissingParameter("a multipart field `file` is required", field="file")
    chat = runtime_of(request)
    info, message = await chat.service.upload_file(
        ccid, segment.conversation_id, name=upload.name or "file",
        mime=upload.type or "application/octet-stream", data=upload.body,
        policy=chat.policy, agent=agent,
    )
    return ok({"file": info.as_dict(), "message": message.as_dict()})


@describe("A contact's history: conversations, interactions, transcripts", tags=["agent"],
          security=["bearer"])
async def contact_history(request: Request, contact_id: str) -> HTTPResponse:
    """The contact's history."""
    ccid, _ = agent_of(request)
    history = await _service(request).contacts.history(ccid, contact_id)
    return ok({"contactId": contact_id, "history": history})


@describe("Queue statistics (supervisors)", tags=["agent"], security=["bearer"])
async def queue_stats(request: Request) -> HTTPResponse:
    """Per queue: waiting, offered, assigned, held, agents ready."""
    principal = require(request, SUPERVISOR)
    ccid = tenant_of(request, principal)
    stats = await _router(request).stats(ccid)
    return ok({"queues": [q.as_dict() for q in stats]})


# ---------------------------------------------------------------------- the feed
async def _heartbeats(router: Router, ccid: str, agent: str) -> None:
    interval = max(1.0, router.presence_ttl / 3)
    while True:
        await asyncio.sleep(interval)
        try:
            await router.heartbeat(ccid, agent)
        except Exception as exc:  # noqa: BLE001 - the cache may be down for a while
            log.warning("presence heartbeat of %s failed: %s", agent, type(exc).__name__)


async def agent_stream(request: Request, ws: Any) -> None:
    """WebSocket of the agent's offers, assignment changes and messages."""
    beats: asyncio.Task[None] | None = None
    try:
        ccid, agent = agent_of(request)
        router = _router(request)
        await router.heartbeat(ccid, agent)
        beats = asyncio.create_task(_heartbeats(router, ccid, agent))
        await pump(ws, router.agent_feed(ccid, agent))
    except (NexusError, ConversationError) as exc:
        await close_with_error(ws, exc)
    except Exception as exc:  # noqa: BLE001 - the socket ends; the log says why
        log.exception("agent stream failed")
        await close_with_error(ws, exc)
    finally:
        if beats is not None:
            beats.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beats


# ---------------------------------------------------------------------- blueprint
def create_agent_blueprint() -> Blueprint:
    bp = Blueprint("agent", url_prefix=PREFIX)
    bp.add_route(get_presence, "/presence", methods=["GET"], name="presence_get")
    bp.add_route(put_presence, "/presence", methods=["PUT"], name="presence_put")
    bp.add_route(list_interactions, "/interactions", methods=["GET"], name="interactions")
    interaction = "/interactions/<iid:str>"
    for action, summary in (
        ("accept", "Accept an offered interaction"),
        ("reject", "Reject an offered interaction"),
        ("transfer", "Transfer the interaction to another queue"),
        ("hold", "Async hold: park the interaction in asynchold"),
        ("done", "Mark the interaction Done"),
    ):
        bp.add_route(_action(action, summary), f"{interaction}/{action}", methods=["POST"],
                     name=f"interaction_{action}")
    bp.add_route(read_messages, f"{interaction}/messages", methods=["GET"], name="messages_get")
    bp.add_route(post_message, f"{interaction}/messages", methods=["POST"], name="messages_post")
    bp.add_route(upload_file, f"{interaction}/files", methods=["POST"], name="files_post")
    bp.add_route(contact_history, "/contacts/<contact_id:str>/history", methods=["GET"],
                 name="contact_history")
    bp.add_route(queue_stats, "/queues", methods=["GET"], name="queues")
    bp.add_websocket_route(agent_stream, "/stream", name="stream")
    bp.exception(ConversationError)(conversation_error_response)
    return bp


def register(app: Sanic) -> None:
    app.blueprint(create_agent_blueprint())
