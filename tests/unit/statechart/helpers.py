"""Small helpers for statechart unit tests."""

from __future__ import annotations

from engine.routing.statechart import Document, parse_document

SCXML = "http://www.w3.org/2005/07/scxml"
GENESYS_NS = (
    'xmlns:ixn="http://www.genesyslab.com/modules/interaction" '
    'xmlns:queue="http://www.genesyslab.com/modules/queue" '
    'xmlns:session="http://www.genesyslab.com/modules/session"'
)


def doc(body: str, *, initial: str | None = None, datamodel: str = "ecmascript",
        extra: str = "") -> Document:
    init = f' initial="{initial}"' if initial else ""
    return parse_document(
        f'<scxml xmlns="{SCXML}" {GENESYS_NS} version="1.0" datamodel="{datamodel}"{init} '
        f'{extra}>{body}</scxml>'
    )
