"""``GET /nexus/v3/openapi.json``: an OpenAPI 3.1 document generated from the live router.

Every registered route appears (walked from ``app.router.routes`` at request time, so it is
always in step with the code). A handler may carry :func:`describe` for a summary, a request
body schema and response descriptions; undecorated routes get a summary from their docstring.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from sanic import Blueprint, Request, Sanic
from sanic.response import JSONResponse
from sanic.response import json as json_response

from engine import __version__

F = TypeVar("F", bound=Callable[..., Any])
_PARAM = re.compile(r"<([^:>]+)(?::[^>]*)?>")
ATTR = "__nexus_openapi__"
ERROR_SCHEMA = {
    "type": "object",
    "properties": {
        "status": {
            "type": "object",
            "properties": {
                "code": {"type": "integer"},
                "message": {"type": "string"},
                "field": {"type": "string"},
            },
            "required": ["code", "message"],
        }
    },
}


def describe(
    summary: str | None = None,
    *,
    body: Mapping[str, Any] | None = None,
    responses: Mapping[int | str, str] | None = None,
    tags: list[str] | None = None,
    security: list[str] | None = None,
) -> Callable[[F], F]:
    """Attach OpenAPI facts to a handler (order with the route decorator does not matter)."""

    def mark(handler: F) -> F:
        setattr(handler, ATTR, {
            "summary": summary, "body": body, "responses": responses, "tags": tags,
            "security": security,
        })
        return handler

    return mark


def _path(uri: str) -> tuple[str, list[str]]:
    names = _PARAM.findall(uri)
    path = _PARAM.sub(lambda m: "{" + m.group(1) + "}", uri)
    return ("/" + path.lstrip("/")), names


def _handler_facts(handler: Any) -> dict[str, Any]:
    target = handler
    for _ in range(5):  # unwrap decorators that kept __wrapped__
        if getattr(target, ATTR, None) is not None:
            break
        target = getattr(target, "__wrapped__", None)
        if target is None:
            break
    facts = dict(getattr(target, ATTR, None) or {}) if target is not None else {}
    if not facts.get("summary"):
        doc = (getattr(handler, "__doc__", None) or "").strip().splitlines()
        facts["summary"] = doc[0] if doc else getattr(handler, "__name__", "")
    return facts


def build_spec(app: Sanic) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for route in app.router.routes:
        path, params = _path(route.path)
        facts = _handler_facts(route.handler)
        for method in sorted(route.methods):
            if method in ("HEAD", "OPTIONS"):
                continue
            op: dict[str, Any] = {
                "operationId": f"{route.name}.{method.lower()}",
                "summary": facts.get("summary") or route.name,
                "responses": {
                    str(code): {"description": text}
                    for code, text in (facts.get("responses") or {200: "OK"}).items()
                },
            }
            op["responses"].setdefault(
                "default",
                {"description": "error envelope",
                 "content": {"application/json": {"schema": ERROR_SCHEMA}}},
            )
            if facts.get("tags"):
                op["tags"] = facts["tags"]
            if facts.get("security") is not None:
                op["security"] = [{name: []} for name in facts["security"]]
            if params:
                op["parameters"] = [
                    {"name": n, "in": "path", "required": True, "schema": {"type": "string"}}
                    for n in params
                ]
            if facts.get("body") and method in ("POST", "PUT", "PATCH"):
                op["requestBody"] = {"content": dict(facts["body"])}
            paths.setdefault(path, {})[method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "Nexus", "version": __version__},
        "paths": dict(sorted(paths.items())),
        "components": {
            "securitySchemes": {
                "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"},
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                "basic": {"type": "http", "scheme": "basic"},
            }
        },
    }


bp = Blueprint("openapi")


@bp.get("/nexus/v3/openapi.json", name="openapi")
@describe("This OpenAPI document, generated from the registered routes", tags=["meta"])
async def openapi(request: Request) -> JSONResponse:
    return json_response(build_spec(request.app))
