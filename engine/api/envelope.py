"""The success envelope: ``{"status": {"code": 0}, "data": ..., "operationId": "<uuid4>"}``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sanic import HTTPResponse
from sanic.response.types import BaseHTTPResponse

from engine.ids import uuid4


def envelope(data: Any, operation_id: str | None = None) -> dict[str, Any]:
    return {
        "status": {"code": 0},
        "data": data,
        "operationId": operation_id or uuid4(),
    }


def ok(
    data: Any = None,
    status: int = 200,
    *,
    headers: Mapping[str, str] | None = None,
    operation_id: str | None = None,
) -> HTTPResponse:
    # What sanic.response.json() sends (the app's JSON encoder, application/json), as a
    # plain HTTPResponse: every API answer goes through here, and JSONResponse's machinery
    # for editing the body afterwards costs more than the encoding
    return HTTPResponse(
        BaseHTTPResponse._dumps(envelope(data, operation_id)),
        status=status,
        headers=dict(headers) if headers else None,
        content_type="application/json",
    )
