"""The success envelope: ``{"status": {"code": 0}, "data": ..., "operationId": "<uuid4>"}``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sanic import HTTPResponse
from sanic.response import json as json_response

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
    return json_response(envelope(data, operation_id), status=status, headers=dict(headers or {}))
