"""Static description of the Genesys orchestration actions (shared by parser and validator).

Every logical attribute ``x`` may be written literally (``x="..."``) or as an expression
(``xexpr="..."``); ``required`` lists the logical attributes that must be present one way or the
other. ``location`` attributes (``requestid``) name a datamodel location that receives the
generated request id, like ``<send idlocation>``.
"""

from __future__ import annotations

from dataclasses import dataclass

IXN_NS = "http://www.genesyslab.com/modules/interaction"
QUEUE_NS = "http://www.genesyslab.com/modules/queue"
SESSION_NS = "http://www.genesyslab.com/modules/session"

GENESYS_NAMESPACES = {IXN_NS: "ixn", QUEUE_NS: "queue", SESSION_NS: "session"}


@dataclass(frozen=True, slots=True)
class ActionSpec:
    name: str  # qualified action name, also the prefix of its result events
    required: tuple[str, ...]
    optional: tuple[str, ...] = ()
    location_attrs: tuple[str, ...] = ("requestid",)


GENESYS_ACTIONS: dict[tuple[str, str], ActionSpec] = {
    (IXN_NS, "redirect"): ActionSpec(
        "ixn.redirect", ("interactionid", "queue"), ("reason", "priority", "timeout")
    ),
    (IXN_NS, "terminate"): ActionSpec("ixn.terminate", ("interactionid",), ("reason",)),
    (QUEUE_NS, "submit"): ActionSpec(
        "queue.submit", ("queue",), ("interactionid", "priority", "timeout", "route")
    ),
    (SESSION_NS, "fetch"): ActionSpec(
        "session.fetch", ("src",), ("method", "type", "body", "timeout", "headers")
    ),
}


def logical_attrs(raw: dict[str, str]) -> dict[str, tuple[str, bool]]:
    """Map raw attributes to logical ones: ``{"queue": (text, is_expr)}``."""
    out: dict[str, tuple[str, bool]] = {}
    for key, value in raw.items():
        if key.endswith("expr") and len(key) > 4:
            out[key[:-4]] = (value, True)
        else:
            out.setdefault(key, (value, False))
    return out
