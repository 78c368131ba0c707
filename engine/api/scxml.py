"""``GET /scxml/<name>.scxml``: the strategies, rendered from the config, for orchestration
servers (and the very documents Nexus runs itself).

- The config is ``request.app.ctx.config`` (a :class:`~engine.config.model.Model`); without one
  the answer is 503 with the error envelope (code 4).
- Query parameters are the whitelisted strategy parameters (``?fallback=...``, see
  :data:`engine.routing.strategies.PARAMS`); unknown ones are ignored, a bad value of a known
  one is a 400 naming the field (code 1).
- ``Content-Type: application/xml; charset=utf-8``, strong ``ETag`` (sha256 of the body),
  ``If-None-Match`` -> 304 without a body, ``Cache-Control: public, max-age=60``: an
  orchestration server fetches the strategy at every session start, so a minute of caching
  takes almost all of that load off, while a config reload reaches every server within a minute
  (and a revalidation after that costs a 304). The ETag changes with the config.
- Unknown name -> 404 (code 6). A document that does not render or fails validation is never
  served: 500 (code 4, generic message), the reason goes to the log.
- Rendering is cached by the catalog per (template, config model, normalized parameters):
  a request while nothing changed costs a dictionary lookup.

Wire it with ``app.blueprint(create_scxml_blueprint())``.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from sanic import Blueprint, HTTPResponse, Request
from sanic.response import json as json_response

from engine.config.model import Model
from engine.routing.strategies import (
    ParamError,
    StrategyCatalog,
    StrategyError,
    UnknownStrategy,
)

log = logging.getLogger("nexus.scxml")

CONTENT_TYPE = "application/xml; charset=utf-8"
CACHE_CONTROL = "public, max-age=60"
_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


def _error(status: int, code: int, message: str, field: str | None = None) -> HTTPResponse:
    body: dict[str, Any] = {"code": code, "message": message}
    if field is not None:
        body["field"] = field
    return json_response({"status": body}, status=status)


def _matches(header: str | None, etag: str) -> bool:
    if not header:
        return False
    if header.strip() == "*":
        return True
    tags = [t.strip() for t in header.split(",")]
    return etag in tags or f"W/{etag}" in tags


def create_scxml_blueprint(catalog: StrategyCatalog | None = None) -> Blueprint:
    """The ``/scxml`` blueprint. ``catalog`` defaults to ``StrategyCatalog()`` (templates in
    ``$NEXUS_SCXML_DIR`` or ``scxml/``), created on first use."""
    bp = Blueprint("scxml", url_prefix="/scxml")
    holder: dict[str, StrategyCatalog] = {}
    if catalog is not None:
        holder["catalog"] = catalog

    def get_catalog() -> StrategyCatalog:
        found = holder.get("catalog")
        if found is None:
            found = holder["catalog"] = StrategyCatalog()
        return found

    @bp.get("/<filename:str>", name="strategy")
    async def strategy(request: Request, filename: str) -> HTTPResponse:
        name = filename.removesuffix(".scxml")
        if name == filename or not _NAME.match(name):
            return _error(404, 6, "no such strategy")
        model = getattr(request.app.ctx, "config", None)
        if not isinstance(model, Model):
            return _error(503, 4, "the configuration is not loaded yet")
        try:
            rendered = get_catalog().render_checked(name, model, request.args)
        except UnknownStrategy:
            return _error(404, 6, f"no strategy {name}")
        except ParamError as exc:
            return _error(400, 1, str(exc).split(": ", 1)[-1], field=exc.field)
        except StrategyError as exc:
            log.error("GET /scxml/%s.scxml: not served: %s", name, exc)
            return _error(500, 4, "internal error")
        headers = {"ETag": rendered.etag, "Cache-Control": CACHE_CONTROL}
        if _matches(request.headers.get("if-none-match"), rendered.etag):
            return HTTPResponse(status=304, headers=headers)
        return HTTPResponse(rendered.body, status=200, headers=headers, content_type=CONTENT_TYPE)

    return bp
