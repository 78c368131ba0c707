"""The consumer chat API (``/nexus/v3/chat`` and, the same handlers, ``/chat/v3``).

Wire-compatible with the widgets' ``pureengage-v3-rest`` transport (API.md, "Consumer chat"):
every body may be JSON (``{"data": {...}}``) or the widgets' bracket form encoding
(``data[firstName]=...``); answers use the envelope (``status``, ``data``, ``operationId``).

Routes (``{prefix}`` is ``/nexus/v3/chat`` or ``/chat/v3``; ``selfUri`` answers under the
prefix the session was created with):

* ``POST {prefix}/sessions``: x-api-key with ``nexus:consumer:chat`` -> ``{"data": {"entity":
  {"id", "selfUri"}, "clientToken"}}``. Fields ``firstName, lastName, nickname, email, phone,
  endpoint, subject, stream`` and ``userData`` (an object); any other field is user data too.
* ``GET {selfUri}/messages?from=<index>[&limit=<n>]`` -> ``{"data": {"messages": [...]}}``.
* ``POST {selfUri}/messages``: ``type`` (Text, Notice, TypingStarted, TypingStopped), ``text``
  and optional ``clientMessageId`` (a retry with the same id is stored once).
* ``POST {selfUri}/files``: multipart, field ``file`` -> ``{"data": {"file", "message"}}``.
* ``GET {selfUri}/files/{fileId}``: the bytes, with the file's Content-Type,
  ``Content-Disposition`` (inline for images) and ``X-Content-Type-Options: nosniff``.
* ``DELETE {selfUri}``: the customer leaves (ParticipantLeft); the session stays open until an
  agent marks the interaction Done.
* ``GET {selfUri}/stream``: WebSocket; every message with ``index >= from`` (default 1), then
  every new one, as the same JSON objects (typing events have ``index: null``). Resume after a
  disconnect, on any engine process, with ``?from=<last index seen + 1>``.

Authentication of a session's routes: ``x-api-key`` (``nexus:consumer:chat``, the tenant is the
key's) and ``x-nexus-client-key: <clientToken>``. The client token is an HS256 JWT signed with
the engine secret (``NEXUS_SECRET``) whose claims bind it to one session and one tenant:
``sessionId``, ``transportId``, ``participantId``, ``ccid``, ``typ: "chat"`` and ``exp``.
Browsers cannot set headers on a WebSocket or an ``<img src>``: the stream and the file
download also take ``?apikey=<key>&clientToken=<token>`` (the security layer accepts
``apikey`` on exactly those paths).

Bots: a Designer key (``nexus:designer:chat``) of the session's tenant may ``POST
{selfUri}/messages`` without a client token: the message is a Bot's (``from[nickname]``,
default "Bot"; ``from[participantId]``, default "bot"); it may read the messages too.

Errors (``status.message`` carries the widget identifiers): no or invalid client token ->
401 code 3 ``AUTHENTICATION_REQUIRED``; a token of another session or tenant -> 403 code 5
``AUTHENTICATION_REQUIRED``; unknown or disabled tenant -> 404 ``INVALID_CONTACT_CENTER``;
``INVALID_ENDPOINT``, ``INVALID_NICKNAME`` (400); files: ``INVALID_FILE_TYPE`` (415),
``LIMIT_FILE_SIZE`` (413), ``LIMIT_FILE_COUNT`` (400); unknown session (of this tenant) ->
404 ``SESSION_NOT_FOUND``. WebSocket errors after the upgrade close the socket with code
``4000 + HTTP status`` and the identifier as the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from sanic import Blueprint, HTTPResponse, Request, Sanic
from sanic.response import raw

from engine.api.body import parse_body
from engine.api.envelope import ok
from engine.api.errors import BadRequest, MissingParameter, NexusError, Unavailable, error_response
from engine.api.openapi import describe
from engine.api.security import principal_of, require
from engine.auth.principal import ALL_TENANTS, Principal
from engine.auth.tokens import TokenError, VerifiedTokens, issue
from engine.routing.conversation_models import (
    ConversationError,
    FilePolicy,
    InvalidContactCenter,
    InvalidFileType,
    Message,
    MessageType,
)
from engine.routing.conversations import ConversationService

log = logging.getLogger("nexus.api.chat")

PREFIXES = {"nexus_chat": "/nexus/v3/chat", "chat_v3": "/chat/v3"}
CONSUMER = "nexus:consumer:chat"
DESIGNER = "nexus:designer:chat"
CLIENT_KEY_HEADER = "x-nexus-client-key"
CLIENT_TOKEN_QUERY = "clientToken"
TOKEN_TYPE = "chat"
CLIENT_TOKEN_TTL = 30 * 24 * 3600  # async sessions last days; the token must outlive them
AUTH_REQUIRED = "AUTHENTICATION_REQUIRED"
SESSION_FIELDS = frozenset({
    "firstName", "lastName", "nickname", "email", "phone", "endpoint", "subject", "userData",
})
MAX_USER_DATA = 100
#: env vars of the upload policy (read once per worker)
FILE_TYPES_ENV = "NEXUS_CHAT_FILE_TYPES"
FILE_MAX_SIZE_ENV = "NEXUS_CHAT_FILE_MAX_SIZE"
FILE_MAX_COUNT_ENV = "NEXUS_CHAT_FILE_MAX_COUNT"
#: HTTP status of the upload errors (the engine's own defaults, adjusted for the widget)
FILE_ERROR_STATUS = {InvalidFileType: 415}


@dataclass(frozen=True, slots=True)
class ChatRuntime:
    """What the handlers need, built once per worker (``app.ctx.chat``)."""

    service: ConversationService
    secret: str
    policy: FilePolicy
    token_ttl: int = CLIENT_TOKEN_TTL
    #: client tokens verified so far (every customer request presents one)
    tokens: VerifiedTokens = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "tokens", VerifiedTokens(self.secret, typ=TOKEN_TYPE))


@dataclass(frozen=True, slots=True)
class SessionAccess:
    """A request's right to a session: the tenant (ccid), the session id and who acts."""

    ccid: str
    session_id: str
    participant_id: str | None  # the customer (client token) or None (a Designer bot)


def file_policy_from_env(env: Mapping[str, str] | None = None) -> FilePolicy:
    """The upload policy: images by default; ``NEXUS_CHAT_FILE_TYPES`` (comma-separated MIME
    types, ``type/*`` allowed), ``NEXUS_CHAT_FILE_MAX_SIZE`` (bytes),
    ``NEXUS_CHAT_FILE_MAX_COUNT`` (files per session)."""
    env = os.environ if env is None else env
    default = FilePolicy()
    types = tuple(t.strip() for t in (env.get(FILE_TYPES_ENV) or "").split(",") if t.strip())
    try:
        size = int(env.get(FILE_MAX_SIZE_ENV) or default.max_size)
        count = int(env.get(FILE_MAX_COUNT_ENV) or default.max_count)
    except ValueError as exc:
        raise ValueError(f"{FILE_MAX_SIZE_ENV}/{FILE_MAX_COUNT_ENV} must be integers") from exc
    if size < 1 or count < 1:
        raise ValueError(f"{FILE_MAX_SIZE_ENV} and {FILE_MAX_COUNT_ENV} must be positive")
    return FilePolicy(types or default.allowed_types, size, count)


# ---------------------------------------------------------------------- errors
class ChatAuthError(NexusError):
    """AUTHENTICATION_REQUIRED: 401 code 3 (no/invalid token) or 403 code 5 (not this one's)."""

    status_code = 401
    code = 3
    message = AUTH_REQUIRED


def conversation_error(exc: ConversationError) -> NexusError:
    """The envelope error of an engine error: ``status.message`` is its identifier."""
    status = FILE_ERROR_STATUS.get(type(exc), exc.http_status)
    return NexusError(exc.identifier, field=exc.field, code=exc.code, status_code=status)


def conversation_error_response(request: Request, exc: Exception) -> HTTPResponse:
    assert isinstance(exc, ConversationError)
    if exc.http_status >= 500:
        log.warning("%s %s: %s", request.method, request.path, exc)
    return error_response(conversation_error(exc), request)


# ---------------------------------------------------------------------- helpers
def runtime_of(request: Request) -> ChatRuntime:
    chat: ChatRuntime | None = getattr(request.app.ctx, "chat", None)
    if chat is None:
        raise Unavailable("the conversation engine is not running in this process")
    return chat


def tenant_of(request: Request, principal: Principal) -> str:
    """The ccid the request acts on (the key's tenant, or x-ccid for a cluster key)."""
    ccid = getattr(request.ctx, "ccid", None) or (
        None if principal.tenant == ALL_TENANTS else principal.tenant
    )
    if not ccid:
        raise conversation_error(InvalidContactCenter("no contact center", field="x-ccid"))
    return ccid


def text_field(body: Mapping[str, Any], name: str, *, limit: int = 1024) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        raise BadRequest(f"{name} must be a string", field=name)
    text = str(value).strip()
    if len(text) > limit:
        raise BadRequest(f"{name} is longer than {limit}", field=name)
    return text or None


def session_arguments(body: Mapping[str, Any]) -> dict[str, Any]:
    """``create_session`` keyword arguments from a create body (widget field names)."""
    user_data: dict[str, Any] = {}
    extra = body.get("userData")
    if extra is not None:
        if not isinstance(extra, Mapping):
            raise BadRequest("userData must be an object", field="userData")
        user_data.update(extra)
    for key, value in body.items():
        if key not in SESSION_FIELDS:
            user_data[key] = value
    if len(user_data) > MAX_USER_DATA:
        raise BadRequest(f"more than {MAX_USER_DATA} user data fields", field="userData")
    return {
        "endpoint": text_field(body, "endpoint", limit=255),
        "nickname": text_field(body, "nickname", limit=1024),
        "first_name": text_field(body, "firstName", limit=255),
        "last_name": text_field(body, "lastName", limit=255),
        "email": text_field(body, "email", limit=320),
        "phone": text_field(body, "phone", limit=64),
        "subject": text_field(body, "subject", limit=1024),
        "user_data": user_data,
    }


def index_param(request: Request, name: str = "from", default: int = 1) -> int:
    raw_value = request.args.get(name)
    if raw_value is None or raw_value == "":
        return default
    try:
        value = int(raw_value)
    except ValueError:
        raise BadRequest(f"{name} must be a positive integer", field=name) from None
    if value < 1:
        raise BadRequest(f"{name} must be a positive integer", field=name)
    return value


def limit_param(request: Request) -> int | None:
    if request.args.get("limit") in (None, ""):
        return None
    return min(index_param(request, "limit"), 10_000)


def issue_client_token(
    chat: ChatRuntime, *, ccid: str, session_id: str, participant_id: str
) -> str:
    token, _ = issue(
        chat.secret,
        sub=participant_id,
        typ=TOKEN_TYPE,
        ttl=chat.token_ttl,
        sessionId=session_id,
        transportId=str(uuid.uuid4()),
        participantId=participant_id,
        ccid=ccid,
    )
    return token


def check_client_token(chat: ChatRuntime, token: str | None, ccid: str, session_id: str) -> str:
    """The participant id of a client token valid for this session and tenant."""
    if not token:
        raise ChatAuthError(field=CLIENT_KEY_HEADER)
    try:
        claims = chat.tokens.verify(token.strip())
    except TokenError:
        raise ChatAuthError(field=CLIENT_KEY_HEADER) from None
    if claims.get("sessionId") != session_id or claims.get("ccid") != ccid:
        raise ChatAuthError(field=CLIENT_KEY_HEADER, code=5, status_code=403)
    participant = claims.get("participantId")
    if not isinstance(participant, str) or not participant:
        raise ChatAuthError(field=CLIENT_KEY_HEADER)
    return participant


def customer_access(request: Request, session_id: str, *, query: bool = False) -> SessionAccess:
    """A customer's access to the session (x-api-key + client token, see module doc)."""
    chat = runtime_of(request)
    principal = require(request, CONSUMER)
    ccid = tenant_of(request, principal)
    token = request.headers.get(CLIENT_KEY_HEADER)
    if token is None and query:
        token = request.args.get(CLIENT_TOKEN_QUERY)
    participant = check_client_token(chat, token, ccid, session_id)
    return SessionAccess(ccid, session_id, participant)


def reader_access(request: Request, session_id: str, *, query: bool = False) -> SessionAccess:
    """A customer's access, or (no client token) a Designer key's of the same tenant."""
    principal = principal_of(request)
    has_token = request.headers.get(CLIENT_KEY_HEADER) is not None or (
        query and request.args.get(CLIENT_TOKEN_QUERY) is not None
    )
    if not has_token and principal.has_permission(DESIGNER):
        runtime_of(request)
        return SessionAccess(tenant_of(request, principal), session_id, None)
    return customer_access(request, session_id, query=query)


def content_disposition(name: str, mime: str) -> str:
    kind = "inline" if mime.startswith("image/") else "attachment"
    ascii_name = "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "_" for c in name)
    return f"{kind}; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(name, safe='')}"


def message_json(message: Message) -> dict[str, Any]:
    return message.as_dict()


# ---------------------------------------------------------------------- handlers
@describe(
    "Start a chat session (the widget's form fields or JSON)",
    tags=["chat"],
    security=["apiKey"],
    responses={200: "entity {id, selfUri} and clientToken", 400: "INVALID_ENDPOINT, "
               "INVALID_NICKNAME", 404: "INVALID_CONTACT_CENTER"},
)
async def create_session(request: Request) -> HTTPResponse:
    """Start a chat session."""
    chat = runtime_of(request)
    principal = require(request, CONSUMER)
    ccid = tenant_of(request, principal)
    arguments = session_arguments(parse_body(request))
    conversation = await chat.service.create_session(ccid, **arguments)
    token = issue_client_token(
        chat, ccid=ccid, session_id=conversation.id, participant_id=conversation.customer_id
    )
    self_uri = f"{request.path.rstrip('/')}/{conversation.id}"
    return ok({"entity": {"id": conversation.id, "selfUri": self_uri}, "clientToken": token})


@describe("Messages of the session from an index", tags=["chat"], security=["apiKey"],
          responses={200: "messages", 401: AUTH_REQUIRED, 404: "SESSION_NOT_FOUND"})
async def read_messages(request: Request, session_id: str) -> HTTPResponse:
    """Messages of the session with index >= from."""
    access = reader_access(request, session_id)
    chat = runtime_of(request)
    messages = await chat.service.read_messages(
        access.ccid, session_id, index_param(request), limit=limit_param(request)
    )
    return ok({"messages": [message_json(m) for m in messages]})


@describe(
    "Post a message (customer: Text, Notice, TypingStarted, TypingStopped; Designer key: Bot)",
    tags=["chat"], security=["apiKey"],
    responses={200: "message", 400: "INVALID_MESSAGE", 401: AUTH_REQUIRED},
)
async def post_message(request: Request, session_id: str) -> HTTPResponse:
    """Post a message into the session."""
    access = reader_access(request, session_id)
    chat = runtime_of(request)
    body = parse_body(request)
    kind = text_field(body, "type", limit=32) or str(MessageType.TEXT)
    if kind not in {str(t) for t in MessageType}:
        raise BadRequest(f"unknown message type {kind[:32]!r}", field="type")
    text = body.get("text")
    if text is not None and not isinstance(text, str):
        raise BadRequest("text must be a string", field="text")
    if access.participant_id is None:  # a Designer application: a Bot participant
        sender = body.get("from") if isinstance(body.get("from"), Mapping) else {}
        message = await chat.service.post_bot_message(
            access.ccid, session_id, text,
            nickname=text_field(sender, "nickname", limit=255) or "Bot",
            participant_id=text_field(sender, "participantId", limit=255) or "bot",
            type=kind,
        )
        return ok({"message": message_json(message)})
    client_id = text_field(body, "clientMessageId", limit=128)
    message = await chat.service.post_customer_message(
        access.ccid, session_id, text, type=kind,
        provider_message_id=f"chat:{session_id}:{client_id}" if client_id else None,
    )
    return ok({"message": message_json(message)})


@describe("Upload a file (multipart field `file`)", tags=["chat"], security=["apiKey"],
          responses={200: "file and message", 400: "LIMIT_FILE_COUNT", 413: "LIMIT_FILE_SIZE",
                     415: "INVALID_FILE_TYPE"})
async def upload_file(request: Request, session_id: str) -> HTTPResponse:
    """Upload a file into the session."""
    access = customer_access(request, session_id)
    chat = runtime_of(request)
    upload = request.files.get("file") if request.files else None
    if upload is None:
        raise MissingParameter("a multipart field `file` is required", field="file")
    info, message = await chat.service.upload_file(
        access.ccid, session_id, name=upload.name or "file",
        mime=upload.type or "application/octet-stream", data=upload.body, policy=chat.policy,
    )
    return ok({"file": info.as_dict(), "message": message_json(message)})


@describe("Download a file of the session", tags=["chat"], security=["apiKey"],
          responses={200: "the file's bytes", 404: "FILE_NOT_FOUND"})
async def download_file(request: Request, session_id: str, file_id: str) -> HTTPResponse:
    """A file of the session (its bytes)."""
    access = reader_access(request, session_id, query=True)
    chat = runtime_of(request)
    info, data = await chat.service.get_file(access.ccid, session_id, file_id)
    return raw(data, content_type=info.mime, headers={
        "Content-Disposition": content_disposition(info.name, info.mime),
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": "private, max-age=3600",
    })


@describe("The customer leaves (the session stays open until Done)", tags=["chat"],
          security=["apiKey"], responses={200: "the ParticipantLeft message"})
async def leave_session(request: Request, session_id: str) -> HTTPResponse:
    """The customer leaves the session."""
    access = customer_access(request, session_id)
    chat = runtime_of(request)
    message = await chat.service.customer_leave(access.ccid, session_id)
    return ok({"message": message_json(message)})


async def close_with_error(ws: Any, exc: BaseException) -> None:
    if isinstance(exc, ConversationError):
        exc = conversation_error(exc)
    if isinstance(exc, NexusError):
        code, reason = 4000 + int(exc.status_code), str(exc.message)[:120]
    else:
        code, reason = 1011, "internal error"
    with contextlib.suppress(Exception):
        await ws.close(code=code, reason=reason)


async def pump(ws: Any, source: Any) -> None:
    """Send each item of the async iterator ``source`` (JSON) until the client goes away:
    a receiving loop notices the close (and ignores what the client sends)."""

    async def send_all() -> None:
        async for item in source:
            payload = item.as_dict() if isinstance(item, Message) else item
            await ws.send(json.dumps(payload, separators=(",", ":")))

    sender = asyncio.create_task(send_all())
    receiver = asyncio.create_task(drain(ws))
    try:
        done, _ = await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_COMPLETED)
        if sender in done and sender.exception() is not None:
            raise sender.exception()  # type: ignore[misc]
    finally:
        for task in (sender, receiver):
            task.cancel()
        for task in (sender, receiver):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        with contextlib.suppress(Exception):
            await source.aclose()


async def drain(ws: Any) -> None:
    while True:
        if await ws.recv() is None:
            return


async def stream(request: Request, ws: Any, session_id: str) -> None:
    """WebSocket of the session's messages from ?from= on (see the module docstring)."""
    try:
        access = reader_access(request, session_id, query=True)
        chat = runtime_of(request)
        start = index_param(request)
        await chat.service.get_conversation(access.ccid, session_id)
        await pump(ws, chat.service.subscribe(access.ccid, session_id, start))
    except (NexusError, ConversationError) as exc:
        await close_with_error(ws, exc)
    except Exception as exc:  # noqa: BLE001 - the socket ends; the log says why
        log.exception("chat stream %s failed", session_id)
        await close_with_error(ws, exc)


# ---------------------------------------------------------------------- blueprints
def create_chat_blueprint(name: str, prefix: str) -> Blueprint:
    """The consumer chat routes under ``prefix`` (registered once per prefix)."""
    bp = Blueprint(name, url_prefix=prefix)
    session = "/sessions/<session_id:str>"
    bp.add_route(create_session, "/sessions", methods=["POST"], name="create_session")
    bp.add_route(read_messages, f"{session}/messages", methods=["GET"], name="read_messages")
    bp.add_route(post_message, f"{session}/messages", methods=["POST"], name="post_message")
    bp.add_route(upload_file, f"{session}/files", methods=["POST"], name="upload_file")
    bp.add_route(download_file, f"{session}/files/<file_id:str>", methods=["GET"],
                 name="download_file")
    bp.add_route(leave_session, session, methods=["DELETE"], name="leave_session")
    bp.add_websocket_route(stream, f"{session}/stream", name="stream")
    bp.exception(ConversationError)(conversation_error_response)
    return bp


def register(app: Sanic) -> None:
    for name, prefix in PREFIXES.items():
        app.blueprint(create_chat_blueprint(name, prefix))
