"""``/nexus/v3/provisioning``: tenants and their services (the guide's provisioning calls).

Tenants
  ``POST /nexus/v3/provisioning/tenants`` with the guide's body (``id, name, type,
  backendurl, username, token, genesystenantid``) creates the tenant and, in the same
  transaction, its tenant API key (permission ``nexus:consumer:chat``, "for creating chat"),
  answered once as ``{"status": {"code": 0}, "data": {"xapikey": <key>}, "operationId"}``.
  ``GET`` lists (``?limit=&cursor=``), ``GET/PUT/DELETE .../tenants/{ccid}`` read, change and
  delete one (deleting also deletes its services and API keys). The tenant's ``token`` is
  write-only (``"***"`` in answers).

Services
  ``POST/GET/PUT/DELETE /nexus/v3/provisioning/services/{ccid}/{name}`` and
  ``GET .../services/{ccid}``. The body ``{url, data, secret}`` is validated with the very
  schemas that validate a Tenant's ``services`` in config (``schemas/_fragments.yaml``,
  ``service:<name>``); here secrets are literal values, not ``${env:}`` references. Secrets
  are write-only: answers show every secret leaf as ``"***"``; a ``PUT`` without ``secret``
  keeps the stored one.

Who may call: environment admins and ``nexus:cluster:*`` keys everything; a tenant's admin
token, and that tenant's keys with ``nexus:provisioning:*``, only their own tenant (a tenant
principal may also create its own tenant, as the guide's tenant token does with GWS). A key
of tenant A is answered 403 on anything of tenant B. Objects from the declarative config
answer 409 (code 9) to changes. Every change writes an audit row naming the caller.

Answers use the success envelope; errors the error envelope (bad input: 400 naming the field).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

from sanic import Blueprint, HTTPResponse, Request

from engine.api.body import parse_body, parse_json
from engine.api.envelope import ok
from engine.api.errors import (
    BadRequest,
    ConfigManaged,
    Conflict,
    MissingParameter,
    NotFound,
    PayloadTooLarge,
    Unavailable,
)
from engine.api.openapi import describe
from engine.api.security import (
    actor_of,
    invalidate_api_keys,
    invalidate_services,
    require,
    require_tenant,
)

PROVISIONING = "nexus:provisioning:*"
TENANT_KEY_NAME = "Tenant API key"
TENANT_KEY_PERMISSIONS = ("nexus:consumer:chat",)
BODY_LIMIT = 64 * 1024
DEFAULT_LIMIT = 100
MAX_LIMIT = 500
MASK = "***"
_CCID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

bp = Blueprint("provisioning")
log = logging.getLogger("nexus.provisioning")


# ---------------------------------------------------------------------- shared helpers
def json_object(request: Request) -> dict[str, Any]:
    """The body as an object, *without* unwrapping ``{"data": ...}`` (services have a
    ``data`` field of their own). Form bodies use the bracket encoding."""
    raw = request.body or b""
    if len(raw) > BODY_LIMIT:
        raise PayloadTooLarge(f"request body larger than {BODY_LIMIT} bytes")
    if not raw.strip():
        return {}
    if not _looks_like_json(request):
        return parse_body(request)
    try:
        value = json.loads(raw)
    except UnicodeDecodeError:
        raise BadRequest("body is not UTF-8", field="body") from None
    except json.JSONDecodeError as exc:
        raise BadRequest(
            f"body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
            field="body",
        ) from None
    if not isinstance(value, dict):
        raise BadRequest("body must be a JSON object", field="body")
    return value


def _looks_like_json(request: Request) -> bool:
    """JSON by content type, or a form-typed body that is plainly a JSON object (``curl -d
    '{...}'`` without ``-H 'Content-Type: application/json'`` sends it as a form)."""
    ctype = (request.content_type or "").split(";", 1)[0].strip().lower()
    if ctype == "multipart/form-data":
        return False
    if ctype == "application/x-www-form-urlencoded":
        return (request.body or b"").lstrip().startswith(b"{")
    return True


def small_body(request: Request) -> dict[str, Any]:
    """The body (JSON, unwrapping ``{"data": {...}}``, or a form) within the provisioning
    size limit."""
    raw = request.body or b""
    if len(raw) > BODY_LIMIT:
        raise PayloadTooLarge(f"request body larger than {BODY_LIMIT} bytes")
    if raw.strip() and _looks_like_json(request):
        return parse_json(raw)
    return parse_body(request)


def reject_unknown(body: Mapping[str, Any], allowed: tuple[str, ...]) -> None:
    for key in body:
        if key not in allowed:
            raise BadRequest(
                f"unknown field {str(key)[:60]!r}; allowed: {', '.join(allowed)}",
                field=str(key)[:60],
            )


def paging(request: Request) -> tuple[int, str | None]:
    """``?limit=`` (1..500, default 100) and the opaque ``?cursor=``."""
    raw_limit = request.args.get("limit")
    limit = DEFAULT_LIMIT
    if raw_limit is not None:
        try:
            limit = int(raw_limit)
        except ValueError:
            raise BadRequest("limit must be an integer", field="limit") from None
        if not 1 <= limit <= MAX_LIMIT:
            raise BadRequest(f"limit must be 1..{MAX_LIMIT}", field="limit")
    cursor = request.args.get("cursor")
    after = None
    if cursor:
        try:
            padded = (cursor + "=" * (-len(cursor) % 4)).encode("ascii")
            after = base64.b64decode(padded, altchars=b"-_", validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            raise BadRequest("malformed cursor", field="cursor") from None
    return limit, after


def next_cursor(items: list[Any], limit: int, key: Callable[[Any], str]) -> str | None:
    if len(items) < limit or not items:
        return None
    return base64.urlsafe_b64encode(key(items[-1]).encode("utf-8")).decode("ascii").rstrip("=")


def iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def store_of(request: Request) -> Any:
    store = request.app.ctx.store
    if store is None:
        raise Unavailable("the store is not connected")
    return store


@asynccontextmanager
async def store_errors() -> AsyncIterator[None]:
    """Store errors as envelopes: 404, 409 (code 9), 503."""
    from engine.store import errors as se

    try:
        yield
    except se.ConfigManaged as exc:
        raise ConfigManaged(str(exc)) from None
    except se.NotFound as exc:
        raise NotFound(str(exc)) from None
    except se.Conflict as exc:
        raise Conflict(str(exc)) from None
    except se.StoreError as exc:  # unreachable, or failing under us (database dropped, ...)
        log.warning("store error: %s", exc)
        raise Unavailable("the store is unavailable") from None


def _string(body: Mapping[str, Any], name: str, *, required: bool, limit: int = 255,
            empty: bool = False) -> str | None:
    value = body.get(name)
    if value is None:
        if required:
            raise MissingParameter(f"{name} is required", field=name)
        return None
    if not isinstance(value, str):
        raise BadRequest(f"{name} must be a string", field=name)
    if not value.strip() and not empty:
        raise BadRequest(f"{name} must not be empty", field=name)
    if len(value) > limit:
        raise BadRequest(f"{name} is longer than {limit} characters", field=name)
    return value


# ---------------------------------------------------------------------- tenants
TENANT_FIELDS = ("id", "name", "type", "backendurl", "username", "token", "genesystenantid")


def _tenant_values(body: Mapping[str, Any], *, create: bool) -> dict[str, Any]:
    from engine.config.problems import is_url

    reject_unknown(body, TENANT_FIELDS)
    out: dict[str, Any] = {}
    name = _string(body, "name", required=create)
    if name is not None:
        out["name"] = name
    kind = _string(body, "type", required=False, limit=64)
    if kind is not None:
        if kind != "PureEngage":
            raise BadRequest("type must be 'PureEngage'", field="type")
        out["type"] = kind
    url = _string(body, "backendurl", required=False, limit=2048)
    if url is not None:
        if not is_url(url):
            raise BadRequest("backendurl must be an http(s) URL", field="backendurl")
        out["backendurl"] = url
    for field in ("username", "token"):
        value = _string(body, field, required=False, limit=4096)
        if value is not None:
            if field == "token" and value == MASK:
                raise BadRequest("token is write-only: send the real value or omit it",
                                 field="token")
            out[field] = value
    if "genesystenantid" in body:
        gid = body["genesystenantid"]
        if isinstance(gid, str) and gid.isdigit():
            gid = int(gid)
        if isinstance(gid, bool) or not isinstance(gid, int) or gid < 1:
            raise BadRequest("genesystenantid must be a positive integer",
                             field="genesystenantid")
        out["genesystenantid"] = str(gid)
    return out


def tenant_view(tenant: Any) -> dict[str, Any]:
    gid = tenant.genesystenantid
    return {
        "id": tenant.ccid,
        "name": tenant.name,
        "type": tenant.type,
        "backendurl": tenant.backendurl,
        "username": tenant.username,
        "token": MASK if tenant.token else None,
        "genesystenantid": int(gid) if isinstance(gid, str) and gid.isdigit() else gid,
        "configManaged": tenant.config_managed,
        "created": iso(tenant.created),
        "updated": iso(tenant.updated),
    }


def check_ccid(ccid: Any, field: str = "id") -> str:
    if not isinstance(ccid, str) or not _CCID.match(ccid):
        raise BadRequest(
            f"{field} must be a contact center id (letters, digits, '-', '_', '.'; "
            "at most 64 characters)", field=field,
        )
    return ccid


@bp.post("/nexus/v3/provisioning/tenants", name="tenant_create")
@describe("Create a tenant and its tenant API key (data.xapikey)", tags=["provisioning"],
          security=["bearer", "apiKey"],
          responses={201: "data.xapikey", 400: "bad input", 403: "no permission",
                     409: "exists"})
async def create_tenant(request: Request) -> HTTPResponse:
    body = small_body(request)
    if "id" not in body:
        raise MissingParameter("id is required", field="id")
    ccid = check_ccid(body["id"])
    principal = require_tenant(request, PROVISIONING, ccid)
    values = _tenant_values(body, create=True)
    store = store_of(request)
    actor = actor_of(principal)
    async with store_errors(), store.transaction():
        await store.tenants.create(ccid, actor=actor, **values)
        _, key = await store.apikeys.create(
            ccid, TENANT_KEY_NAME, TENANT_KEY_PERMISSIONS, createdby=actor, actor=actor
        )
    return ok({"xapikey": key}, status=201)


@bp.get("/nexus/v3/provisioning/tenants", name="tenant_list")
@describe("List tenants (?limit=&cursor=)", tags=["provisioning"],
          security=["bearer", "apiKey"], responses={200: "data.tenants, data.cursor"})
async def list_tenants(request: Request) -> HTTPResponse:
    principal = require(request, PROVISIONING)
    limit, after = paging(request)
    store = store_of(request)
    async with store_errors():
        if principal.all_tenants:
            tenants = await store.tenants.list(limit=limit, after=after)
        else:
            own = await store.tenants.get(principal.tenant)
            tenants = [own] if own is not None and (after is None or own.ccid > after) else []
    return ok({
        "tenants": [tenant_view(t) for t in tenants],
        "cursor": next_cursor(tenants, limit, lambda t: t.ccid),
    })


@bp.get("/nexus/v3/provisioning/tenants/<ccid>", name="tenant_get")
@describe("Read a tenant (token masked)", tags=["provisioning"],
          security=["bearer", "apiKey"], responses={200: "data: the tenant", 404: "no tenant"})
async def get_tenant(request: Request, ccid: str) -> HTTPResponse:
    require_tenant(request, PROVISIONING, ccid)
    async with store_errors():
        tenant = await store_of(request).tenants.get(ccid)
    if tenant is None:
        raise NotFound(f"tenant {ccid} not found", field="ccid")
    return ok(tenant_view(tenant))


@bp.put("/nexus/v3/provisioning/tenants/<ccid>", name="tenant_update")
@describe("Change a tenant's fields", tags=["provisioning"], security=["bearer", "apiKey"],
          responses={200: "data: the tenant", 404: "no tenant", 409: "config-managed"})
async def update_tenant(request: Request, ccid: str) -> HTTPResponse:
    principal = require_tenant(request, PROVISIONING, ccid)
    body = small_body(request)
    if "id" in body and body["id"] != ccid:
        raise BadRequest("id cannot be changed", field="id")
    values = _tenant_values(body, create=False)
    async with store_errors():
        tenant = await store_of(request).tenants.update(ccid, actor=actor_of(principal),
                                                        **values)
    return ok(tenant_view(tenant))


@bp.delete("/nexus/v3/provisioning/tenants/<ccid>", name="tenant_delete")
@describe("Delete a tenant with its services and API keys", tags=["provisioning"],
          security=["bearer", "apiKey"],
          responses={200: "data: the deleted tenant", 404: "no tenant", 409: "config-managed"})
async def delete_tenant(request: Request, ccid: str) -> HTTPResponse:
    principal = require_tenant(request, PROVISIONING, ccid)
    store = store_of(request)
    actor = actor_of(principal)
    async with store_errors(), store.transaction():
        tenant = await store.tenants.delete(ccid, actor=actor)
        for key in await store.apikeys.list(tenant=ccid, limit=100_000):
            await store.apikeys.delete(key.id, actor=actor)
    await invalidate_api_keys(request.app, "*")
    await invalidate_services(request.app, ccid)
    return ok(tenant_view(tenant))


# ---------------------------------------------------------------------- services
SERVICE_FIELDS = ("url", "data", "secret")


def service_problems(name: str, body: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Problems of a service body ``{url, data, secret}`` by the config's schema of service
    ``name``: ``[(field path, message)]``; empty when valid."""
    from engine.config.problems import Problem, message
    from engine.config.schema import (
        NexusValidator,
        _check_async_pairs,
        load_schemas,
        problems_from_errors,
        service_shape,
    )

    shape = service_shape(name)
    if shape is None:
        from engine.config.schema import _unknown_service

        problem = _unknown_service(("name",), name)
        return [("name", message(problem))]
    schema_set = load_schemas()
    schema = schema_set.schema_registry.get(shape)
    problems: list[Problem] = []
    validator = NexusValidator(
        schema,
        schema_registry=schema_set.schema_registry,
        rules_set_registry=schema_set.rules_set_registry,
        problems=problems,
        schema_set=schema_set,
    )
    validator.validate(dict(body), normalize=False)
    problems_from_errors(validator._errors, problems, schema, schema_set, 0)
    if shape == "service:Async":
        _check_async_pairs(dict(body), (), problems)
    return [(".".join(str(p) for p in problem.path) or "body", message(problem))
            for problem in problems]


def _contains_mask(value: Any) -> bool:
    if isinstance(value, Mapping):
        return any(_contains_mask(v) for v in value.values())
    if isinstance(value, list):
        return any(_contains_mask(v) for v in value)
    return value == MASK


def validate_service(name: str, body: Mapping[str, Any]) -> None:
    reject_unknown(body, SERVICE_FIELDS)
    if _contains_mask(body.get("secret")):
        raise BadRequest("secrets are write-only: send the real values or omit secret",
                         field="secret")
    problems = service_problems(name, body)
    if problems:
        field, text = problems[0]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise BadRequest(text + more, field=field)


def service_view(service: Any) -> dict[str, Any]:
    public = service.public()
    return {
        "tenant": service.tenant,
        "name": service.name,
        "url": service.url,
        "data": public["data"],
        "secret": public["secret"],
        "configManaged": service.config_managed,
        "created": iso(service.created),
        "updated": iso(service.updated),
    }


@bp.post("/nexus/v3/provisioning/services/<ccid>/<name>", name="service_create")
@describe("Create a tenant service ({url, data, secret}, validated like config)",
          tags=["provisioning"], security=["apiKey", "bearer"],
          body={"application/json": {"schema": {"type": "object", "properties": {
              "url": {"type": "string"}, "data": {"type": "object"},
              "secret": {"type": "object"}}}}},
          responses={201: "data: the service (secrets masked)", 400: "invalid body",
                     404: "no tenant", 409: "exists"})
async def create_service(request: Request, ccid: str, name: str) -> HTTPResponse:
    principal = require_tenant(request, PROVISIONING, ccid)
    body = json_object(request)
    validate_service(name, body)
    async with store_errors():
        service = await store_of(request).services.create(
            ccid, name, url=body.get("url"), data=body.get("data") or {},
            secret=body.get("secret") or {}, actor=actor_of(principal),
        )
    await invalidate_services(request.app, ccid, name)
    return ok(service_view(service), status=201)


@bp.get("/nexus/v3/provisioning/services/<ccid>", name="service_list")
@describe("List a tenant's services (?limit=&cursor=; secrets masked)", tags=["provisioning"],
          security=["apiKey", "bearer"], responses={200: "data.services, data.cursor"})
async def list_services(request: Request, ccid: str) -> HTTPResponse:
    require_tenant(request, PROVISIONING, ccid)
    limit, after = paging(request)
    store = store_of(request)
    async with store_errors():
        if await store.tenants.get(ccid) is None:
            raise NotFound(f"tenant {ccid} not found", field="ccid")
        services = [s for s in await store.services.list(ccid) if after is None or s.name > after]
    page = services[:limit]
    return ok({
        "services": [service_view(s) for s in page],
        "cursor": next_cursor(page, limit, lambda s: s.name) if len(services) > limit else None,
    })


@bp.get("/nexus/v3/provisioning/services/<ccid>/<name>", name="service_get")
@describe("Read a tenant service (secrets masked)", tags=["provisioning"],
          security=["apiKey", "bearer"], responses={200: "data: the service", 404: "none"})
async def get_service(request: Request, ccid: str, name: str) -> HTTPResponse:
    require_tenant(request, PROVISIONING, ccid)
    cache = getattr(request.app.ctx, "service_cache", None)
    now = time.monotonic()
    view = cache.get(ccid, name, now) if cache is not None else None
    if view is None:
        async with store_errors():
            service = await store_of(request).services.get(ccid, name)
        if service is None:
            raise NotFound(f"service {name} of tenant {ccid} not found", field="name")
        view = service_view(service)
        if cache is not None:
            cache.put(ccid, name, view, now)
    return ok(view)


@bp.put("/nexus/v3/provisioning/services/<ccid>/<name>", name="service_update")
@describe("Replace a tenant service (without secret: the stored secret is kept)",
          tags=["provisioning"], security=["apiKey", "bearer"],
          responses={200: "data: the service", 400: "invalid body", 404: "none",
                     409: "config-managed"})
async def update_service(request: Request, ccid: str, name: str) -> HTTPResponse:
    principal = require_tenant(request, PROVISIONING, ccid)
    body = json_object(request)
    store = store_of(request)
    async with store_errors():
        current = await store.services.get(ccid, name)
        if current is None:
            raise NotFound(f"service {name} of tenant {ccid} not found", field="name")
        if current.config_managed:
            raise ConfigManaged(
                f"service {name} of tenant {ccid} is managed by the declarative config; "
                "change it there"
            )
        full = dict(body)
        if "secret" not in full:
            reject_unknown(body, SERVICE_FIELDS)
            full["secret"] = current.secret
        validate_service(name, full)
        service = await store.services.update(
            ccid, name, url=full.get("url"), data=full.get("data") or {},
            secret=full.get("secret") or {}, actor=actor_of(principal),
        )
    await invalidate_services(request.app, ccid, name)
    return ok(service_view(service))


@bp.delete("/nexus/v3/provisioning/services/<ccid>/<name>", name="service_delete")
@describe("Delete a tenant service", tags=["provisioning"], security=["apiKey", "bearer"],
          responses={200: "data: the deleted service", 404: "none", 409: "config-managed"})
async def delete_service(request: Request, ccid: str, name: str) -> HTTPResponse:
    principal = require_tenant(request, PROVISIONING, ccid)
    async with store_errors():
        service = await store_of(request).services.delete(ccid, name, actor=actor_of(principal))
    await invalidate_services(request.app, ccid, name)
    return ok(service_view(service))
