"""The runtime: session registry, event routing, delayed sends and the scheduler.

A :class:`Runtime` owns one clock and any number of sessions (top-level ones and the children
they invoke). It is single-threaded: call it from one thread, typically the asyncio loop (with
:class:`~.clock.RealTimeClock`) or a test (with :class:`~.clock.SimulatedClock`). Every public
entry point processes queued events before returning, so after ``start`` / ``send_event`` /
``advance`` the sessions are stable (waiting for an external event or a timer).
"""

from __future__ import annotations

import logging
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from . import genesys
from .clock import Clock, SimulatedClock
from .ecmascript import ContextPool
from .events import (
    BASICHTTP_PROCESSOR,
    BASICHTTP_SEND_TYPES,
    EXTERNAL,
    SCXML_INVOKE_TYPES,
    SCXML_PROCESSOR,
    SCXML_SEND_TYPES,
    Event,
)
from .interpreter import Session
from .ioprocessors import BasicHttpProcessor, EventProcessor, ScxmlProcessor, http_event
from .model import Content, Document, ExtensionAction, Send
from .parser import load_document, parse_document, resolve_path

log = logging.getLogger(__name__)

HttpTransport = Callable[[str, bytes, Mapping[str, str]], None]
LogHook = Callable[[Session, str | None, Any], None]

DEFAULT_HTTP_BASE = "http://localhost/nexus/scxml/basichttp/"


class Runtime:
    """Runs SCXML sessions. See the module docstring.

    Parameters: ``clock`` (default: a new :class:`SimulatedClock`), ``host`` (default Genesys
    host for sessions that don't name one), ``http_base`` (prefix of the Basic HTTP locations
    of this runtime's sessions), ``http_transport`` (callable ``(url, body, headers)`` used for
    Basic HTTP sends to other servers; without it they fail with ``error.communication``),
    ``on_log`` (receives ``<log>`` output), ``max_microsteps`` (per macrostep; a session
    exceeding it is aborted), ``reuse_contexts`` (recycle wiped ECMAScript contexts between
    sessions of the same document; see :mod:`.ecmascript`).
    """

    def __init__(
        self, clock: Clock | None = None, *, host: genesys.GenesysHost | None = None,
        http_base: str = DEFAULT_HTTP_BASE, http_transport: HttpTransport | None = None,
        on_log: LogHook | None = None, max_microsteps: int = 10_000,
        reuse_contexts: bool = True,
    ) -> None:
        self.clock: Clock = clock if clock is not None else SimulatedClock()
        self.host = host
        self.http_base = http_base if http_base.endswith("/") else http_base + "/"
        self.http_transport = http_transport
        self.on_log = on_log
        self.max_microsteps = max_microsteps
        self.sessions: dict[str, Session] = {}
        self.max_events_per_pump: int | None = None
        # Reuse of wiped QuickJS contexts between sessions of one document (None: no reuse).
        self.context_pool: ContextPool | None = ContextPool() if reuse_contexts else None
        self._runnable: deque[Session] = deque()
        self._queued: set[Session] = set()
        self._pumping = False
        self._scxml = ScxmlProcessor(self)
        self._http = BasicHttpProcessor(self)
        self._doc_cache: OrderedDict[str, Document] = OrderedDict()
        self._finished_hooks: list[Callable[[Session], None]] = []

    # --- starting sessions -------------------------------------------------------------------

    def start(
        self, document: Document | str | Path, *, host: genesys.GenesysHost | None = None,
        params: Mapping[str, Any] | None = None,
        interactions: Iterable[Mapping[str, Any]] = (), sessionid: str | None = None,
    ) -> Session:
        """Start a top-level session and run it until it waits for an event.

        ``document`` is a parsed :class:`Document` (parse once, start many) or a path.
        ``params`` override top-level ``<data>`` values. ``interactions`` are published in
        ``_genesys.ixn.interactions`` before the first macrostep (no events are raised for
        them; use :meth:`interaction_present` for that).
        """
        doc = document if isinstance(document, Document) else self.load(str(document))
        sid = sessionid or uuid.uuid4().hex
        session = Session(self, doc, sid, params=params, host=host or self.host)
        if interactions:
            session.extension_state["initial_interactions"] = {
                genesys.interaction_id(i): dict(i) for i in interactions
            }
        self.sessions[sid] = session
        session.start()
        self.pump()
        return session

    def bind_host(self, session: Session) -> None:
        genesys.bind(session, session.extension_state.pop("initial_interactions", None))

    def on_session_finished(self, hook: Callable[[Session], None]) -> None:
        """Register a callback run when any session (top-level or invoked) ends."""
        self._finished_hooks.append(hook)

    # --- injecting events ----------------------------------------------------------------------

    def send_event(
        self, session: Session | str, name: str, data: Any = None, *,
        origin: str | None = None, origintype: str | None = None, sendid: str | None = None,
    ) -> None:
        """Queue an external event on a session and process it."""
        target = self._session(session)
        target.enqueue(Event(name, EXTERNAL, data, sendid, origin, origintype))
        self.pump()

    def cancel(self, session: Session | str) -> None:
        """Stop a session now (its onexit handlers run; no done event is sent)."""
        self._session(session).cancel()
        self.pump()

    def interaction_added(self, session: Session | str, interaction: Mapping[str, Any]) -> None:
        self._interaction_event(session, "interaction.added", interaction)

    def interaction_present(self, session: Session | str, interaction: Mapping[str, Any]) -> None:
        self._interaction_event(session, "interaction.present", interaction)

    def interaction_deleted(self, session: Session | str, interactionid: str) -> None:
        target = self._session(session)
        target.enqueue(Event(
            "interaction.deleted", EXTERNAL, {"interactionid": interactionid},
            effect=lambda s: genesys.withdraw_interaction(s, interactionid),
        ))
        self.pump()

    def _interaction_event(
        self, session: Session | str, name: str, interaction: Mapping[str, Any],
    ) -> None:
        target = self._session(session)
        iid = genesys.interaction_id(interaction)
        snapshot = dict(interaction)
        target.enqueue(Event(
            name, EXTERNAL, {"interactionid": iid, "interaction": snapshot},
            effect=lambda s: genesys.publish_interaction(s, snapshot),
        ))
        self.pump()

    def complete(self, request: genesys.ActionRequest, data: Mapping[str, Any] | None = None,
                 ) -> None:
        """Answer a Genesys request with ``<action>.done``."""
        self._answer(request, request.done_event, {**(data or {}), "requestid": request.requestid})

    def fail(self, request: genesys.ActionRequest, error: str = "failed",
             description: str = "") -> None:
        """Answer a Genesys request with ``error.<action>``."""
        self._answer(request, request.error_event, {
            "requestid": request.requestid, "error": error, "description": description,
        })

    def _answer(self, request: genesys.ActionRequest, name: str, data: dict[str, Any]) -> None:
        session = self.sessions.get(request.sessionid)
        if session is None:
            return  # the session ended meanwhile
        session.extension_state.get("pending", {}).pop(request.requestid, None)
        session.enqueue(Event(name, EXTERNAL, data, sendid=request.requestid))
        self.pump()

    def _session(self, session: Session | str) -> Session:
        if isinstance(session, Session):
            return session
        return self.sessions[session]

    # --- time ----------------------------------------------------------------------------------

    def advance(self, seconds: float) -> int:
        """Simulated clock only: move virtual time on, firing due timers; returns count."""
        clock = self._sim()
        fired = clock.advance(seconds)
        self.pump()
        return fired

    def run_until_idle(self, max_seconds: float = 3600.0, max_timers: int = 100_000) -> bool:
        """Simulated clock only: fire timers until none is left (or the limits hit).

        Returns True when no timer is pending at the end.
        """
        clock = self._sim()
        horizon = clock.now() + max_seconds
        self.pump()
        for _ in range(max_timers):
            due = clock.next_due()
            if due is None:
                return True
            if due > horizon:
                return False
            clock.run_next()
            self.pump()
        return clock.next_due() is None

    def _sim(self) -> SimulatedClock:
        if not isinstance(self.clock, SimulatedClock):
            raise TypeError("this runtime does not use a SimulatedClock")
        return self.clock

    # --- scheduling ------------------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        """True while some session has queued events not processed yet."""
        return bool(self._runnable)

    def mark_runnable(self, session: Session) -> None:
        if session not in self._queued:
            self._queued.add(session)
            self._runnable.append(session)

    def pump(self) -> None:
        """Process queued events of all sessions, round-robin, until every queue is empty."""
        if self._pumping:
            return
        self._pumping = True
        budget = self.max_events_per_pump
        try:
            runnable = self._runnable
            while runnable:
                if budget is not None:
                    if budget <= 0:
                        break
                    budget -= 1
                session = runnable.popleft()
                self._queued.discard(session)
                try:
                    session.process()
                except Exception:  # noqa: BLE001 - one broken session must not stop the others
                    log.exception("session %s crashed", session.sessionid)
                    session.abort("internal error")
                if session.running and (session.external or session.internal):
                    self.mark_runnable(session)
        finally:
            self._pumping = False

    def session_finished(self, session: Session) -> None:
        self.sessions.pop(session.sessionid, None)
        self._queued.discard(session)
        parent = session.parent
        if parent is not None and session.final_state is not None and session.abort_reason is None:
            parent.child_finished(session)
        for hook in self._finished_hooks:
            hook(session)

    # --- <send> ---------------------------------------------------------------------------------

    def processor_for(self, type_uri: str) -> EventProcessor | None:
        if type_uri in SCXML_SEND_TYPES:
            return self._scxml
        if type_uri in BASICHTTP_SEND_TYPES:
            return self._http
        return None

    def send(
        self, session: Session, processor: EventProcessor, target: str | None, event: Event,
        delay: float, sendid: str, node: Send | None = None,
    ) -> None:
        if delay > 0:
            def fire() -> None:
                if session.delayed.pop(sendid, None) is None or not session.running:
                    return
                self._deliver(session, processor, target, event, sendid)
                self.pump()

            session.delayed[sendid] = self.clock.call_later(delay, fire)
        else:
            self._deliver(session, processor, target, event, sendid)

    def _deliver(
        self, session: Session, processor: EventProcessor, target: str | None, event: Event,
        sendid: str,
    ) -> None:
        if not processor.deliver(session, target, event):
            session.raise_error(
                "error.communication", f"cannot deliver {event.name!r} to {target!r}", sendid,
            )
            self.mark_runnable(session)

    def ioprocessors_for(self, session: Session) -> dict[str, Any]:
        scxml = {"location": session.origin}
        http = {"location": self.http_location(session)}
        return {
            "scxml": scxml, SCXML_PROCESSOR: scxml,
            "basichttp": http, BASICHTTP_PROCESSOR: http,
        }

    def http_location(self, session: Session) -> str:
        return self.http_base + session.sessionid

    def local_http_session(self, url: str) -> Session | None:
        if not url.startswith(self.http_base):
            return None
        return self.sessions.get(url[len(self.http_base):].split("?", 1)[0].strip("/"))

    def receive_http(
        self, sessionid: str, body: str, *, method: str = "POST", path: str = "/",
        headers: Mapping[str, str] | None = None,
    ) -> bool:
        """Entry point for a real HTTP endpoint of the Basic HTTP processor."""
        session = self.sessions.get(sessionid)
        if session is None or not session.running:
            return False
        session.enqueue(http_event(path, method, dict(headers or {}), body))
        self.pump()
        return True

    # --- logging & extensions -----------------------------------------------------------------

    def log(self, session: Session, label: str | None, value: Any) -> None:
        if self.on_log is not None:
            self.on_log(session, label, value)
        else:
            log.info("scxml %s %s: %r", session.sessionid, label or "log", value)

    def execute_extension(self, session: Session, node: ExtensionAction) -> None:
        genesys.execute_action(session, node)

    # --- documents & invoke --------------------------------------------------------------------

    def load(self, path: str, base: str | None = None) -> Document:
        """Load (and cache) a document by path, relative to ``base`` when not absolute."""
        resolved = resolve_path(path, base)
        doc = self._doc_cache.get(resolved)
        if doc is None:
            doc = load_document(resolved)
            self._remember(resolved, doc)
        return doc

    def _remember(self, key: str, doc: Document) -> None:
        self._doc_cache[key] = doc
        if len(self._doc_cache) > 256:
            self._doc_cache.popitem(last=False)

    def create_child(
        self, parent: Session, invokeid: str, itype: str | None, src: str | None,
        content: Content | None, content_value: Any, params: Mapping[str, Any],
    ) -> Session:
        kind = (itype or "scxml").rstrip("/")
        if kind not in SCXML_INVOKE_TYPES and kind + "/" not in SCXML_INVOKE_TYPES:
            raise ValueError(f"invoke type {itype!r} is not supported")
        if content is not None:
            if content.expr is None and content.document is not None:
                doc = content.document
            elif isinstance(content_value, str) and content_value.strip():
                key = "content:" + content_value
                cached = self._doc_cache.get(key)
                doc = cached or parse_document(content_value, base=parent.doc.base)
                if cached is None:
                    self._remember(key, doc)
            else:
                raise ValueError("<invoke> <content> is not an SCXML document")
        elif src:
            doc = self.load(src, parent.doc.base)
        else:
            raise ValueError("<invoke> needs src, srcexpr or <content>")
        sid = uuid.uuid4().hex
        child = Session(self, doc, sid, parent=parent, invokeid=invokeid, params=params,
                        host=parent.host)
        self.sessions[sid] = child
        return child
