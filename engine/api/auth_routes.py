"""``/auth/v3``: the embedded OAuth token endpoint and ``userinfo``.

``POST /auth/v3/oauth/token`` takes its parameters from the form body and the query string (the
guide's client_credentials call puts them in the query; form values win on conflicts) and the
client from HTTP Basic or ``client_id``/``client_secret``. Its errors are RFC 6749 bodies
(``{"error", "error_description"}``), which OAuth clients expect, not the Nexus envelope.

``GET /auth/v3/userinfo`` answers for a Bearer token through ``app.ctx.auth`` (the embedded
provider or GWS).
"""

from __future__ import annotations

from urllib.parse import parse_qsl

from sanic import Blueprint, Request
from sanic.response import JSONResponse
from sanic.response import json as json_response

from engine.api.errors import NotFound, Unauthorized, Unavailable
from engine.api.openapi import describe
from engine.auth import AuthError, AuthUnavailable, Principal
from engine.auth.embedded import EmbeddedAuthProvider, OAuthError, userinfo
from engine.auth.gws import GwsAuthProvider
from engine.auth.headers import MalformedCredentials, basic_credentials, bearer_token

bp = Blueprint("auth")
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
MAX_PARAMS = 50


def _oauth_error(exc: OAuthError) -> JSONResponse:
    headers = dict(_NO_STORE)
    if exc.status == 401:
        headers["WWW-Authenticate"] = 'Basic realm="nexus"'
    return json_response(exc.body(), status=exc.status, headers=headers)


def _token_params(request: Request) -> dict[str, str]:
    params: dict[str, str] = {}
    try:
        for key, value in parse_qsl(request.query_string, keep_blank_values=True,
                                    max_num_fields=MAX_PARAMS):
            params.setdefault(key, value)
        ctype = (request.content_type or "").split(";", 1)[0].strip().lower()
        body = request.body or b""
        if body.strip():
            if ctype not in ("application/x-www-form-urlencoded", ""):
                raise OAuthError("invalid_request",
                                 "the body must be application/x-www-form-urlencoded")
            for key, value in parse_qsl(body.decode("utf-8"), keep_blank_values=True,
                                        strict_parsing=True, max_num_fields=MAX_PARAMS):
                params[key] = value
    except (UnicodeDecodeError, ValueError) as exc:
        if isinstance(exc, OAuthError):
            raise
        raise OAuthError("invalid_request", "malformed form body") from None
    return params


@bp.post("/auth/v3/oauth/token", name="oauth_token")
@describe(
    "OAuth 2 token: password, client_credentials and refresh_token grants",
    tags=["auth"],
    security=["basic"],
    body={"application/x-www-form-urlencoded": {"schema": {
        "type": "object",
        "properties": {k: {"type": "string"} for k in (
            "grant_type", "username", "password", "client_id", "client_secret",
            "refresh_token", "scope")},
        "required": ["grant_type"],
    }}},
    responses={200: "access_token, token_type, refresh_token, expires_in, scope",
               400: "OAuth error", 401: "invalid_client"},
)
async def oauth_token(request: Request) -> JSONResponse:
    provider: EmbeddedAuthProvider | None = request.app.ctx.embedded_auth
    if provider is None:
        raise NotFound("the embedded auth provider is off (NEXUS_AUTH=gws): ask the auth service")
    try:
        basic = basic_credentials(request.headers.get("authorization"))
        answer = await provider.token(_token_params(request), basic)
    except MalformedCredentials:
        return _oauth_error(OAuthError("invalid_client", "malformed Basic credentials", 401))
    except OAuthError as exc:
        return _oauth_error(exc)
    return json_response(answer, headers=_NO_STORE)


async def authenticate_bearer(request: Request) -> Principal:
    """The principal of the request's Bearer token, or a 401/503 envelope error."""
    token = bearer_token(request.headers.get("authorization"))
    if not token:
        raise Unauthorized("a Bearer token is required", field="Authorization")
    provider = request.app.ctx.auth
    try:
        if isinstance(provider, GwsAuthProvider):  # the trace id travels to the auth service
            return await provider.authenticate(token, trace_id=request.ctx.trace_id)
        return await provider.authenticate(token)
    except AuthError as exc:
        raise Unauthorized(str(exc), field="Authorization") from None
    except AuthUnavailable as exc:
        raise Unavailable(str(exc)) from None


@bp.get("/auth/v3/userinfo", name="userinfo")
@describe("The user, tenant and roles of a Bearer token", tags=["auth"], security=["bearer"],
          responses={200: "user_name, tenant, contactCenterId, roles", 401: "bad token"})
async def get_userinfo(request: Request) -> JSONResponse:
    return json_response(userinfo(await authenticate_bearer(request)))
