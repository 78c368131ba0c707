"""``/nexus/v3/apikeys``: API keys, in the guide's shape.

The guide shows the answer to ``POST /nexus/v3/apikeys`` as a bare object (no envelope)::

    {"id", "tenant", "name", "permissions", "enabled", "created", "revoked", "expires",
     "createdby", "capacity", "frequency"}

so every answer of this resource is bare: the key object (create, read, change, delete) or,
for the list, ``{"apikeys": [...], "cursor": <next page or null>}``. Errors use the error
envelope. The creation answer adds ``key``, the secret itself, shown this once: only its
peppered hash is stored. ``expires`` is ``false`` (never) or an ISO 8601 date-time; a body may
give ``false``, ``null``, a date (``2027-12-31``: expires at 00:00 UTC that day) or a
date-time. ``capacity`` requests per ``frequency`` seconds (defaults 120 per 60) are enforced
per key by :mod:`engine.api.security`.

Body fields are checked with the config's ``apikey`` schema (``schemas/_fragments.yaml``:
name, permissions from the known list, capacity, frequency, enabled), plus ``tenant`` (a
tenant's ccid or ``*``) and, on ``PUT``, ``revoked`` (a revoked key cannot be restored).

Who may call: anyone holding ``nexus:provisioning:*`` on the key's tenant (environment admins,
cluster keys, the tenant's admin token as in the guide, the tenant's provisioning keys). Only
all-tenant callers may create ``*`` keys or grant ``nexus:cluster:*``. A key of another tenant
is answered 404. Keys from the declarative config answer 409 (code 9) to changes.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping
from typing import Any

from sanic import Blueprint, HTTPResponse, Request
from sanic.response import json as json_response

from engine.api.errors import BadRequest, MissingParameter, NoPermission, NotFound
from engine.api.openapi import describe
from engine.api.provisioning import (
    PROVISIONING,
    check_ccid,
    iso,
    next_cursor,
    paging,
    reject_unknown,
    small_body,
    store_errors,
    store_of,
)
from engine.api.security import actor_of, invalidate_api_keys, principal_of, require
from engine.auth.principal import ALL_TENANTS, CLUSTER_ALL, Principal

CREATE_FIELDS = ("tenant", "name", "permissions", "enabled", "expires", "capacity", "frequency")
UPDATE_FIELDS = (*CREATE_FIELDS, "revoked", "id", "created", "createdby")
SCHEMA_FIELDS = ("name", "permissions", "enabled", "capacity", "frequency")
NAME_LIMIT = 255

bp = Blueprint("apikeys")


def _schema(required: bool) -> dict[str, Any]:
    from engine.config.schema import load_schemas

    full = load_schemas().schema_registry.get("apikey")
    out: dict[str, Any] = {}
    for field in SCHEMA_FIELDS:
        rules = dict(full[field])
        rules.pop("default", None)
        if not required:
            rules.pop("required", None)
        out[field] = rules
    return out


def _schema_problems(body: Mapping[str, Any], required: bool) -> list[tuple[str, str]]:
    from engine.config.problems import Problem, message
    from engine.config.schema import NexusValidator, load_schemas, problems_from_errors

    schema_set = load_schemas()
    schema = _schema(required)
    problems: list[Problem] = []
    validator = NexusValidator(
        schema, schema_registry=schema_set.schema_registry,
        rules_set_registry=schema_set.rules_set_registry, problems=problems,
        schema_set=schema_set, allow_unknown=True,
    )
    validator.validate({k: v for k, v in body.items() if k in SCHEMA_FIELDS}, normalize=False)
    problems_from_errors(validator._errors, problems, schema, schema_set, 0)
    return [(".".join(str(p) for p in problem.path) or "body", message(problem))
            for problem in problems]


def parse_expires(value: Any) -> _dt.datetime | None:
    """``false``/``null`` -> never; an ISO date or date-time (UTC when no offset)."""
    if value is None or value is False:
        return None
    if isinstance(value, str) and value.strip():
        text = value.strip()
        try:
            if len(text) == 10:
                day = _dt.date.fromisoformat(text)
                return _dt.datetime(day.year, day.month, day.day, tzinfo=_dt.UTC)
            moment = _dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            pass
        else:
            return moment if moment.tzinfo else moment.replace(tzinfo=_dt.UTC)
    raise BadRequest("expires must be false or an ISO 8601 date (2027-12-31) or date-time",
                     field="expires")


def _values(body: Mapping[str, Any], *, create: bool) -> dict[str, Any]:
    reject_unknown(body, CREATE_FIELDS if create else UPDATE_FIELDS)
    problems = _schema_problems(body, create)
    if problems:
        field, text = problems[0]
        raise BadRequest(text, field=field)
    out = {k: body[k] for k in SCHEMA_FIELDS if k in body}
    if "name" in out:
        if len(out["name"]) > NAME_LIMIT:
            raise BadRequest(f"name is longer than {NAME_LIMIT} characters", field="name")
    if "permissions" in out:
        out["permissions"] = list(dict.fromkeys(out["permissions"]))
    if "expires" in body:
        out["expires"] = parse_expires(body["expires"])
    if not create and "revoked" in body:
        if not isinstance(body["revoked"], bool):
            raise BadRequest("revoked must be true or false", field="revoked")
        out["revoked"] = body["revoked"]
    return out


def key_view(key: Any, plaintext: str | None = None) -> dict[str, Any]:
    """The guide's fields, in the guide's order (``key`` only at creation)."""
    view: dict[str, Any] = {
        "id": key.id,
        "tenant": key.tenant,
        "name": key.name,
        "permissions": list(key.permissions),
        "enabled": key.enabled,
        "created": iso(key.created),
        "revoked": key.revoked,
        "expires": iso(key.expires) if key.expires is not None else False,
        "createdby": key.createdby or "",
        "capacity": key.capacity,
        "frequency": key.frequency,
    }
    if plaintext is not None:
        view["key"] = plaintext
    return view


def _may_grant(principal: Principal, tenant: str, permissions: list[str]) -> None:
    if not principal.has_permission(PROVISIONING, tenant if tenant != ALL_TENANTS else None):
        raise NoPermission(f"no permission to manage API keys of tenant {tenant}",
                           field="tenant")
    if (tenant == ALL_TENANTS or CLUSTER_ALL in permissions) and not principal.all_tenants:
        raise NoPermission("only an all-tenant (cluster) credential may create '*' keys or "
                           "grant nexus:cluster:*", field="permissions")


async def _visible_key(request: Request, key_id: str) -> tuple[Principal, Any]:
    principal = require(request, PROVISIONING)
    async with store_errors():
        key = await store_of(request).apikeys.get(key_id)
    if key is None or not principal.can_access_tenant(key.tenant):
        raise NotFound(f"API key {key_id} not found", field="id")
    return principal, key


@bp.post("/nexus/v3/apikeys", name="apikey_create")
@describe("Create an API key (the key is in the answer, this once)", tags=["apikeys"],
          security=["bearer", "apiKey"],
          responses={201: "the API key object with key", 400: "bad input",
                     403: "no permission", 404: "no tenant", 409: "name exists"})
async def create_key(request: Request) -> HTTPResponse:
    principal = principal_of(request)
    body = small_body(request)
    if "tenant" not in body:
        raise MissingParameter("tenant is required", field="tenant")
    tenant = body["tenant"]
    if tenant != ALL_TENANTS:
        tenant = check_ccid(tenant, "tenant")
    values = _values(body, create=True)
    _may_grant(principal, tenant, values["permissions"])
    actor = actor_of(principal)
    async with store_errors():
        key, plaintext = await store_of(request).apikeys.create(
            tenant, values.pop("name"), values.pop("permissions"), createdby=actor,
            actor=actor, **values,
        )
    return json_response(key_view(key, plaintext), status=201)


@bp.get("/nexus/v3/apikeys", name="apikey_list")
@describe("List API keys (?tenant=&limit=&cursor=)", tags=["apikeys"],
          security=["bearer", "apiKey"], responses={200: "{apikeys, cursor}"})
async def list_keys(request: Request) -> HTTPResponse:
    principal = require(request, PROVISIONING)
    limit, after = paging(request)
    tenant = request.args.get("tenant")
    if not principal.all_tenants:
        if tenant is not None and tenant != principal.tenant:
            raise NoPermission(f"no access to tenant {tenant}", field="tenant")
        tenant = principal.tenant
    async with store_errors():
        keys = await store_of(request).apikeys.list(tenant=tenant, limit=limit, after=after)
    return json_response({
        "apikeys": [key_view(k) for k in keys],
        "cursor": next_cursor(keys, limit, lambda k: k.id),
    })


@bp.get("/nexus/v3/apikeys/<key_id>", name="apikey_get")
@describe("Read an API key (never the key itself)", tags=["apikeys"],
          security=["bearer", "apiKey"], responses={200: "the API key object", 404: "none"})
async def get_key(request: Request, key_id: str) -> HTTPResponse:
    _, key = await _visible_key(request, key_id)
    return json_response(key_view(key))


@bp.put("/nexus/v3/apikeys/<key_id>", name="apikey_update")
@describe("Change an API key (name, permissions, enabled, revoked, expires, capacity, "
          "frequency)", tags=["apikeys"], security=["bearer", "apiKey"],
          responses={200: "the API key object", 400: "bad input", 404: "none",
                     409: "config-managed"})
async def update_key(request: Request, key_id: str) -> HTTPResponse:
    principal, current = await _visible_key(request, key_id)
    body = small_body(request)
    for field in ("tenant", "id"):
        if field in body and body[field] != getattr(current, field):
            raise BadRequest(f"{field} cannot be changed", field=field)
    values = _values(body, create=False)
    if current.revoked and values.get("revoked") is False:
        raise BadRequest("a revoked API key cannot be restored: create a new one",
                         field="revoked")
    _may_grant(principal, current.tenant, values.get("permissions", []))
    async with store_errors():
        key = await store_of(request).apikeys.update(key_id, actor=actor_of(principal),
                                                     **values)
    await invalidate_api_keys(request.app, key_id)
    return json_response(key_view(key))


@bp.delete("/nexus/v3/apikeys/<key_id>", name="apikey_delete")
@describe("Delete an API key", tags=["apikeys"], security=["bearer", "apiKey"],
          responses={200: "the deleted API key object", 404: "none", 409: "config-managed"})
async def delete_key(request: Request, key_id: str) -> HTTPResponse:
    principal, _ = await _visible_key(request, key_id)
    async with store_errors():
        key = await store_of(request).apikeys.delete(key_id, actor=actor_of(principal))
    await invalidate_api_keys(request.app, key_id)
    return json_response(key_view(key))
