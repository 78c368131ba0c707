"""Event I/O processors: the SCXML processor and the Basic HTTP processor.

The Basic HTTP processor delivers in-process when the target is one of this runtime's own
session URLs (``<http_base>/<sessionid>``), exactly as if the POST had come over the network;
other URLs go through the runtime's optional ``http_transport`` and otherwise fail with
``error.communication``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import parse_qsl, quote, unquote_plus, urlencode, urlparse

from .datamodel import DataModelError
from .events import BASICHTTP_PROCESSOR, EXTERNAL, INTERNAL, SCXML_PROCESSOR, Event

if TYPE_CHECKING:
    from .interpreter import Session
    from .runtime import Runtime


class EventProcessor(Protocol):
    type_uri: str

    def check_target(self, session: Session, target: str | None) -> None:
        """Raise :class:`DataModelError` (→ ``error.execution``) for an invalid target."""
        ...

    def deliver(self, session: Session, target: str | None, event: Event) -> bool:
        """Deliver now; False means it could not be delivered (→ ``error.communication``)."""
        ...


class ScxmlProcessor:
    """``http://www.w3.org/TR/scxml/#SCXMLEventProcessor`` (targets ``#_...``)."""

    type_uri = SCXML_PROCESSOR

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def check_target(self, session: Session, target: str | None) -> None:
        if target is not None and not target.startswith("#_"):
            raise DataModelError(f"invalid target {target!r} for the SCXML event processor")

    def deliver(self, session: Session, target: str | None, event: Event) -> bool:
        event.origin = session.origin
        event.origintype = SCXML_PROCESSOR
        if target is None:
            session.enqueue(event)
            return True
        if target == "#_internal":
            event.type = INTERNAL
            session.internal.append(event)
            self.runtime.mark_runnable(session)
            return True
        if target == "#_parent":
            parent = session.parent
            if parent is None or not parent.running:
                return False
            if session.cancelled:
                return True  # dropped on purpose: the invocation is over
            event.invokeid = session.invokeid
            parent.enqueue(event)
            return True
        if target.startswith("#_scxml_"):
            other = self.runtime.sessions.get(target[8:])
            if other is None or not other.running:
                return False
            other.enqueue(event)
            return True
        inv = session.invocations.get(target[2:])
        if inv is None or not inv.child.running:
            return False
        inv.child.enqueue(event)
        return True


class BasicHttpProcessor:
    """``http://www.w3.org/TR/scxml/#BasicHTTPEventProcessor`` (form-encoded POST)."""

    type_uri = BASICHTTP_PROCESSOR

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def check_target(self, session: Session, target: str | None) -> None:
        if not target:
            raise DataModelError("the Basic HTTP event processor needs a target URL")
        if urlparse(target).scheme not in ("http", "https"):
            raise DataModelError(f"invalid Basic HTTP target {target!r}")

    def deliver(self, session: Session, target: str | None, event: Event) -> bool:
        assert target is not None
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        if isinstance(event.data, dict):
            fields: list[tuple[str, str]] = []
            if event.name:
                fields.append(("_scxmleventname", event.name))
            fields.extend((k, _form_value(v)) for k, v in event.data.items())
            body = urlencode(fields, quote_via=quote)
        elif event.data is not None:
            # <content>: the body is the content itself (form-encoded so it survives transport).
            body = quote(_form_value(event.data), safe="")
            if event.name:
                headers["X-SCXML-Event-Name"] = event.name
        else:
            body = urlencode([("_scxmleventname", event.name)]) if event.name else ""
        headers["X-SCXML-Origin"] = self.runtime.http_location(session)
        local = self.runtime.local_http_session(target)
        if local is not None:
            if not local.running:
                return False
            local.enqueue(http_event(urlparse(target).path or "/", "POST", headers, body))
            return True
        transport = self.runtime.http_transport
        if transport is None:
            return False
        try:
            transport(target, body.encode("utf-8"), headers)
        except OSError:
            return False
        return True


def _form_value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def http_event(path: str, method: str, headers: Mapping[str, str], body: str) -> Event:
    """Build the event a Basic HTTP request produces (used for loopback and real requests)."""
    name = None
    data: Any
    if "=" in body:
        pairs = parse_qsl(body, keep_blank_values=True)
        fields = {}
        for k, v in pairs:
            if k == "_scxmleventname":
                name = v
            else:
                fields[k] = v
        data = fields or None
    else:
        data = unquote_plus(body) if body else None
    name = name or headers.get("X-SCXML-Event-Name") or f"HTTP.{method.upper()}"
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    raw = f"{method.upper()} {path} HTTP/1.1\r\n{head}Content-Length: {len(body)}\r\n\r\n{body}"
    return Event(
        name, EXTERNAL, data, origin=headers.get("X-SCXML-Origin"),
        origintype=BASICHTTP_PROCESSOR, raw=raw,
    )
