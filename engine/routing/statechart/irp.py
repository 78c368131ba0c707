"""Running W3C IRP-style test documents: pass means the top-level ``<final id="pass">``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lxml import etree

from .clock import SimulatedClock
from .parser import DocumentError, load_document
from .runtime import Runtime

# Bounds so a broken or looping test fails instead of hanging.
MAX_VIRTUAL_SECONDS = 3600.0
MAX_TIMERS = 10_000
MAX_EVENTS = 20_000  # per pump
MAX_PUMPS = 10


@dataclass(frozen=True, slots=True)
class TestOutcome:
    path: str
    passed: bool
    reason: str  # final state id reached, or why it did not finish

    __test__ = False  # not a pytest class


def is_helper_document(path: str | Path) -> bool:
    """True for a well-formed SCXML document with neither a 'pass' nor a 'fail' state.

    IRP folders hold child documents (``test216sub1.scxml``) beside the tests; a glob over
    the folder includes them. Anything unreadable or malformed is NOT a helper: it is run
    and reported as a failure.
    """
    try:
        root = etree.parse(str(path)).getroot()
    except (OSError, etree.XMLSyntaxError):
        return False
    if etree.QName(root).localname != "scxml":
        return False
    ids = set(root.xpath("//@id"))
    return "pass" not in ids and "fail" not in ids


def run_test_file(path: str | Path) -> TestOutcome:
    """Run one test document on a fresh simulated clock."""
    p = str(path)
    try:
        doc = load_document(p)
    except (OSError, DocumentError) as exc:
        return TestOutcome(p, False, f"cannot load: {exc}")
    runtime = Runtime(SimulatedClock(), on_log=lambda *_: None)
    runtime.max_events_per_pump = MAX_EVENTS
    session = runtime.start(doc)
    clock = runtime.clock
    assert isinstance(clock, SimulatedClock)
    pumps = 0
    for _ in range(MAX_TIMERS + MAX_PUMPS):
        if session.done:
            break
        if runtime.busy:
            # The per-pump event budget ran out: keep going, within an overall bound.
            pumps += 1
            if pumps > MAX_PUMPS:
                break
            runtime.pump()
            continue
        due = clock.next_due()
        if due is None or due > MAX_VIRTUAL_SECONDS:
            break
        clock.run_next()
    if not session.done:
        session.cancel()
        return TestOutcome(p, False, "stuck (no final state reached)")
    final = session.final_state.id if session.final_state is not None else "aborted"
    if session.abort_reason:
        return TestOutcome(p, False, f"aborted: {session.abort_reason}")
    return TestOutcome(p, final == "pass", final)
