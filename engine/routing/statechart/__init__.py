"""A W3C SCXML 1.0 interpreter (Appendix D algorithm) with the Genesys orchestration extensions.

Parse once, run many::

    from engine.routing.statechart import Runtime, SimulatedClock, SimulatedHost, parse_document

    doc = parse_document(text)                      # immutable, shareable
    host = SimulatedHost()
    rt = Runtime(SimulatedClock(), host=host)
    s = rt.start(doc)                               # runs until it waits
    rt.interaction_added(s, {"id": "i1", "udata": {"lang": "en"}})
    rt.complete(host.pending("ixn.redirect")[0])    # -> ixn.redirect.done
    rt.advance(5)                                   # fire delayed <send>s in virtual time
    s.done, s.final_state_ids, s.active_states()
"""

from .clock import Clock, RealTimeClock, SimulatedClock
from .datamodel import DataModel, DataModelError, NullDataModel, create_datamodel
from .events import Event
from .genesys import ActionRequest, GenesysHost, SimulatedHost
from .interpreter import Session
from .irp import TestOutcome, run_test_file
from .model import Document
from .parser import Diagnostic, DocumentError, check_document, load_document, parse_document
from .runtime import Runtime

__all__ = [
    "ActionRequest",
    "Clock",
    "DataModel",
    "DataModelError",
    "Diagnostic",
    "Document",
    "DocumentError",
    "Event",
    "GenesysHost",
    "NullDataModel",
    "RealTimeClock",
    "Runtime",
    "Session",
    "SimulatedClock",
    "SimulatedHost",
    "TestOutcome",
    "check_document",
    "create_datamodel",
    "load_document",
    "parse_document",
    "run_test_file",
]
