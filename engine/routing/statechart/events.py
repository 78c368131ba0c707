"""SCXML events and the well-known event-processor identifiers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

SCXML_PROCESSOR = "http://www.w3.org/TR/scxml/#SCXMLEventProcessor"
BASICHTTP_PROCESSOR = "http://www.w3.org/TR/scxml/#BasicHTTPEventProcessor"

# Values of <send type> / <invoke type> that mean the SCXML processor / an SCXML session.
SCXML_SEND_TYPES = frozenset({SCXML_PROCESSOR, "scxml"})
BASICHTTP_SEND_TYPES = frozenset({BASICHTTP_PROCESSOR, "basichttp"})
SCXML_INVOKE_TYPES = frozenset({
    "scxml", "http://www.w3.org/TR/scxml", "http://www.w3.org/TR/scxml/", SCXML_PROCESSOR,
})

INTERNAL = "internal"
EXTERNAL = "external"
PLATFORM = "platform"


@dataclass(slots=True)
class Event:
    """An event as exposed to the datamodel as ``_event``.

    ``data`` is a plain JSON-compatible Python value (dict, list, str, number, bool or None);
    None means "no data" (``_event.data`` is undefined).
    """

    name: str
    type: str = EXTERNAL
    data: Any = None
    sendid: str | None = None
    origin: str | None = None
    origintype: str | None = None
    invokeid: str | None = None
    raw: str | None = None
    # Host hook run on the receiving session just before the event is processed (used to
    # update ``_genesys`` exactly when interaction.* events are seen, not when queued).
    effect: Callable[[Any], None] | None = None


CANCEL = Event("__nexus.cancel", PLATFORM)
