"""The error envelope of API.md and the one handler that turns every exception into it.

``{"status": {"code": N, "message": "...", "field": "<name>"}}`` with the Nexus codes:

==== ==================================== ==========================================
code meaning                              HTTP status (as raised here)
==== ==================================== ==========================================
1    missing or malformed parameter       400 (also malformed JSON / form bodies)
2    invalid for the state / the request  400, 405 (method), 413 (body too large), 416
3    forbidden (no or bad credentials)    401
4    internal                             500, 502, 503, 504 (message never has details)
5    no permission                        403
6    not found                            404
7    partial success                      207
8    rate limited                         429 (with ``Retry-After``)
9    conflict (config-managed object)     409
==== ==================================== ==========================================

Raise the :class:`NexusError` subclasses from handlers; anything else that escapes becomes a
500 with code 4 and a generic message, the traceback going only to the log (with the trace id).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from sanic import HTTPResponse, Request
from sanic.exceptions import SanicException
from sanic.handlers import ErrorHandler
from sanic.response import json as json_response

log = logging.getLogger("nexus.errors")

MISSING_PARAMETER = 1
INVALID_STATE = 2
FORBIDDEN = 3
INTERNAL = 4
NO_PERMISSION = 5
NOT_FOUND = 6
PARTIAL_SUCCESS = 7
RATE_LIMITED = 8
CONFLICT = 9

#: Nexus code of an HTTP status, for exceptions that carry no code of their own.
STATUS_CODES: Mapping[int, int] = {
    400: MISSING_PARAMETER,
    401: FORBIDDEN,
    403: NO_PERMISSION,
    404: NOT_FOUND,
    405: INVALID_STATE,
    409: CONFLICT,
    413: INVALID_STATE,
    416: INVALID_STATE,
    429: RATE_LIMITED,
}
GENERIC_500 = "internal error"


class NexusError(SanicException):
    """An error answered with the envelope: ``status_code``, Nexus ``code``, ``field``."""

    status_code = 500
    code = INTERNAL
    message = GENERIC_500
    quiet = True

    def __init__(
        self,
        message: str | None = None,
        *,
        field: str | None = None,
        code: int | None = None,
        status_code: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(
            message or self.message, status_code=status_code or self.status_code,
            headers=dict(headers or {}),
        )
        self.message = message or self.message
        if code is not None:
            self.code = code
        self.field = field


class MissingParameter(NexusError):
    status_code = 400
    code = MISSING_PARAMETER
    message = "missing parameter"


class BadRequest(NexusError):
    """Malformed input (a body that is not JSON, a value of the wrong type)."""

    status_code = 400
    code = MISSING_PARAMETER
    message = "malformed request"


class InvalidState(NexusError):
    status_code = 400
    code = INVALID_STATE
    message = "invalid for the current state"


class Unauthorized(NexusError):
    status_code = 401
    code = FORBIDDEN
    message = "authentication required"


class NoPermission(NexusError):
    status_code = 403
    code = NO_PERMISSION
    message = "no permission"


class NotFound(NexusError):
    status_code = 404
    code = NOT_FOUND
    message = "not found"


class Conflict(NexusError):
    status_code = 409
    code = CONFLICT
    message = "conflict"


class ConfigManaged(Conflict):
    message = "the object is managed by the declarative config; change it there"


class PayloadTooLarge(NexusError):
    status_code = 413
    code = INVALID_STATE
    message = "request body too large"

    def __init__(self, message: str | None = None, *, field: str | None = "body") -> None:
        super().__init__(message, field=field)


class RateLimited(NexusError):
    status_code = 429
    code = RATE_LIMITED
    message = "rate limited"

    def __init__(self, retry_after: int, message: str | None = None) -> None:
        super().__init__(message, headers={"Retry-After": str(max(int(retry_after), 1))})
        self.retry_after = retry_after


class Unavailable(NexusError):
    status_code = 503
    code = INTERNAL
    message = "service unavailable"


def envelope(code: int, message: str, field: str | None = None) -> dict[str, Any]:
    status: dict[str, Any] = {"code": code, "message": message}
    if field:
        status["field"] = field
    return {"status": status}


def error_response(exc: BaseException, request: Request | None = None) -> HTTPResponse:
    """The envelope response for any exception (see the module docstring for the mapping)."""
    headers: dict[str, str] = {}
    if isinstance(exc, NexusError):
        status, code, message, field = exc.status_code, exc.code, exc.message, exc.field
        headers.update(exc.headers or {})
    elif isinstance(exc, SanicException):
        status = exc.status_code
        code = STATUS_CODES.get(status, INVALID_STATE if status < 500 else INTERNAL)
        message = _sanic_message(exc, status)
        field = "body" if status in (400, 413) else None
        headers.update(exc.headers or {})
    else:
        status, code, message, field = 500, INTERNAL, GENERIC_500, None
    if status >= 500:
        trace = getattr(getattr(request, "ctx", None), "trace_id", None)
        where = (getattr(request, "method", "-"), getattr(request, "path", "-"))
        if isinstance(exc, SanicException):
            log.warning("%s %s answered %d: %s", *where, status, exc, extra={"trace_id": trace})
        else:
            log.error(
                "unhandled %s on %s %s", type(exc).__name__, *where,
                exc_info=(type(exc), exc, exc.__traceback__), extra={"trace_id": trace},
            )
    headers.pop("content-type", None)
    headers.pop("Content-Type", None)
    return json_response(envelope(code, message, field), status=status, headers=headers)


def _sanic_message(exc: SanicException, status: int) -> str:
    if status == 404:
        return "no such resource"
    if status == 405:
        return "method not allowed"
    if status == 413:
        return "request body too large"
    if status >= 500:
        return GENERIC_500
    text = str(exc.args[0]) if exc.args else ""
    return text or exc.message or "bad request"


class EnvelopeErrorHandler(ErrorHandler):
    """Sanic's error handler, answering every exception with the envelope."""

    def default(self, request: Request, exception: Exception) -> HTTPResponse:
        return error_response(exception, request)
