"""One SCXML session: the algorithm of the Recommendation's Appendix D.

The blocking ``mainEventLoop`` of Appendix D is split so a host can drive many sessions from
one thread: :meth:`Session.start` runs ``interpret()`` up to the first wait for an external
event, and :meth:`Session.process_external` runs one iteration of the outer loop (one external
event, then the macrostep it starts, then pending invokes). The :class:`~.runtime.Runtime`
calls these as events arrive.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from . import executor
from .datamodel import DataModel, DataModelError, create_datamodel
from .events import CANCEL, EXTERNAL, PLATFORM, SCXML_PROCESSOR, Event
from .model import Block, Content, DataDecl, Document, Invoke, Param, StateNode, Transition
from .parser import decode_text, find_lcca

if TYPE_CHECKING:
    from .clock import TimerHandle
    from .runtime import Runtime

log = logging.getLogger(__name__)


def _order(s: StateNode) -> int:
    return s.order


class Invocation:
    """A running ``<invoke>``: the child session and what started it."""

    __slots__ = ("invokeid", "node", "state", "child")

    def __init__(self, invokeid: str, node: Invoke, state: StateNode, child: Session) -> None:
        self.invokeid = invokeid
        self.node = node
        self.state = state
        self.child = child


class Session:
    """The state of one running SCXML session (see module docstring for the driving model).

    Read-only views for hosts: :attr:`sessionid`, :attr:`running`, :attr:`done`,
    :meth:`active_states`, :attr:`final_state`, :attr:`done_data`.
    """

    def __init__(
        self, runtime: Runtime, document: Document, sessionid: str, *,
        parent: Session | None = None, invokeid: str | None = None,
        params: Mapping[str, Any] | None = None, host: Any = None,
    ) -> None:
        self.runtime = runtime
        self.doc = document
        self.sessionid = sessionid
        self.parent = parent
        self.invokeid = invokeid
        self.params = dict(params) if params else {}
        self.host = host
        self.datamodel: DataModel = create_datamodel(
            document.datamodel, runtime.context_pool, document,
        )
        self.configuration: set[StateNode] = set()
        self.internal: deque[Event] = deque()
        self.external: deque[Event] = deque()
        self.history_value: dict[str, list[StateNode]] = {}
        self.states_to_invoke: set[StateNode] = set()
        self.data_initialized: set[StateNode] = set()
        self.invocations: dict[str, Invocation] = {}
        self.delayed: dict[str, TimerHandle] = {}
        self.running = False
        self.done = False
        self.final_state: StateNode | None = None
        self.done_data: Any = None
        self.abort_reason: str | None = None
        self.cancelled = False  # cancelled by the invoking session
        self.extension_state: dict[str, Any] = {}  # per-session state of host bindings
        self.origin = "#_scxml_" + sessionid
        self._atomic: list[StateNode] | None = None
        self._ids = 0
        self._microsteps = 0

    # --- public views ------------------------------------------------------------------

    def active_states(self) -> list[str]:
        """Ids of the states in the configuration, in document order."""
        return [s.id for s in sorted(self.configuration, key=_order)]

    def in_state(self, state_id: str) -> bool:
        for s in self.configuration:
            if s.id == state_id:
                return True
        return False

    @property
    def final_state_ids(self) -> list[str]:
        return [self.final_state.id] if self.final_state is not None else []

    def new_id(self, prefix: str = "") -> str:
        self._ids += 1
        return f"{prefix}{self.sessionid}.{self._ids}"

    # --- event queues -------------------------------------------------------------------

    def raise_internal(self, name: str, data: Any = None, type: str = "internal") -> None:
        self.internal.append(Event(name, type, data))

    def raise_error(self, name: str, message: str, sendid: str | None = None) -> None:
        log.debug("session %s: %s: %s", self.sessionid, name, message)
        self.internal.append(Event(name, PLATFORM, None, sendid=sendid))

    def enqueue(self, event: Event) -> None:
        """Put an event on the external queue and ask the runtime to process it."""
        if not self.running:
            return
        self.external.append(event)
        self.runtime.mark_runnable(self)

    # --- interpret() --------------------------------------------------------------------

    def start(self) -> None:
        doc = self.doc
        dm = self.datamodel
        self.running = True
        ioprocessors = self.runtime.ioprocessors_for(self)
        try:
            dm.bind_system(self.sessionid, doc.name, ioprocessors, self.in_state)
        except DataModelError as exc:
            self.raise_error("error.execution", str(exc))
        if self.host is not None or doc.extensions:
            self.runtime.bind_host(self)
        if doc.all_data:
            for decl in doc.all_data:
                try:
                    dm.declare(decl.id)
                except DataModelError as exc:
                    self.raise_error("error.execution", str(exc))
            if doc.binding == "early":
                for decl in doc.all_data:
                    self._init_data(decl)
                self.data_initialized.update(doc.all_nodes)
            else:
                self._init_state_data(doc.root)
        if doc.script:
            self.run_block(doc.script)
        self._enter_states([doc.initial_transition])
        self._run_to_stable()

    def _init_state_data(self, state: StateNode) -> None:
        self.data_initialized.add(state)
        for decl in state.datamodel:
            self._init_data(decl)

    def _init_data(self, decl: DataDecl) -> None:
        dm = self.datamodel
        try:
            if decl.id in self.params and any(d is decl for d in self.doc.root.datamodel):
                # Values passed by the invoking session override top-level data.
                dm.assign_value(decl.id, self.params[decl.id])
            elif decl.expr is not None:
                dm.init_data(decl.id, decl.expr)
            elif decl.src is not None:
                if decl.src_text is None:
                    raise DataModelError(f"cannot load data src {decl.src!r}: {decl.src_error}")
                dm.assign_value(decl.id, decode_text(decl.src_text))
            elif decl.content is not None:
                dm.assign_value(decl.id, decl.content.value)
        except DataModelError as exc:
            self.raise_error("error.execution", f"<data id={decl.id!r}>: {exc}")

    # --- the event loop, split in resumable pieces ---------------------------------------

    def _run_to_stable(self) -> None:
        """Inner loop of mainEventLoop: eventless + internal events, then invokes."""
        limit = self.runtime.max_microsteps
        dm = self.datamodel
        while True:
            steps = 0
            while self.running:
                enabled = self._select_eventless()
                if not enabled:
                    if not self.internal:
                        break
                    event = self.internal.popleft()
                    try:
                        dm.set_event(event)
                    except DataModelError as exc:
                        self.raise_error("error.execution", str(exc))
                    enabled = self._select(event)
                if enabled:
                    steps += 1
                    if steps > limit:
                        self.abort(f"more than {limit} microsteps in one macrostep")
                        return
                    self._microstep(enabled)
            if not self.running:
                self._exit_interpreter()
                return
            if self.states_to_invoke:
                pending = sorted(self.states_to_invoke, key=_order)
                self.states_to_invoke.clear()
                for state in pending:
                    for inv in state.invokes:
                        self._start_invoke(state, inv)
                if self.internal:
                    continue
            return

    def process(self) -> None:
        """Runtime entry point: one external event, or internal events queued while idle."""
        if self.external:
            self.process_external()
        elif self.running and self.internal:
            self._run_to_stable()

    def process_external(self) -> None:
        """Take one event off the external queue and run the macrostep it triggers."""
        if not self.running or not self.external:
            return
        event = self.external.popleft()
        if event is CANCEL:
            self.running = False
            self._exit_interpreter()
            return
        if event.effect is not None:
            event.effect(self)
        try:
            self.datamodel.set_event(event)
        except DataModelError as exc:
            self.raise_error("error.execution", str(exc))
        if self.invocations:
            for inv in list(self.invocations.values()):
                if inv.invokeid == event.invokeid and inv.node.finalize:
                    self.run_block(inv.node.finalize)
                if inv.node.autoforward and inv.child.running:
                    inv.child.enqueue(Event(
                        event.name, event.type, event.data, event.sendid, event.origin,
                        event.origintype, event.invokeid, event.raw,
                    ))
        enabled = self._select(event)
        if enabled:
            self._microstep(enabled)
        self._run_to_stable()

    def cancel(self) -> None:
        """Stop the session now (the parent left the invoking state, or the host ended it)."""
        if self.running:
            self.running = False
            self._exit_interpreter()

    def abort(self, reason: str) -> None:
        log.warning("session %s aborted: %s", self.sessionid, reason)
        self.abort_reason = reason
        self.cancel()

    def _exit_interpreter(self) -> None:
        for s in sorted(self.configuration, key=_order, reverse=True):
            for block in s.onexit:
                self.run_block(block)
            for inv in s.invokes:
                self._cancel_invoke(s, inv)
            self.configuration.discard(s)
            if s.is_final and s.parent is not None and s.parent.is_root:
                self.final_state = s
                self.done_data = self._donedata(s)
        self._atomic = None
        self.done = True
        for timer in self.delayed.values():
            timer.cancel()
        self.delayed.clear()
        self.internal.clear()
        self.external.clear()
        self.runtime.session_finished(self)
        self.datamodel.close()

    # --- transition selection -------------------------------------------------------------

    def _atomic_states(self) -> list[StateNode]:
        atomic = self._atomic
        if atomic is None:
            atomic = sorted((s for s in self.configuration if s.is_atomic), key=_order)
            self._atomic = atomic
        return atomic

    def _cond(self, t: Transition) -> bool:
        if t.cond is None:
            return True
        try:
            return self.datamodel.evaluate_cond(t.cond)
        except DataModelError as exc:
            self.raise_error("error.execution", f"cond {t.cond!r}: {exc}")
            return False

    def _select_eventless(self) -> list[Transition]:
        enabled: list[Transition] = []
        for state in self._atomic_states():
            for s in state.chain:
                found = None
                for t in s.eventless_transitions:
                    if self._cond(t):
                        found = t
                        break
                if found is not None:
                    if found not in enabled:
                        enabled.append(found)
                    break
        if len(enabled) > 1:
            return self._remove_conflicts(enabled)
        return enabled

    def _select(self, event: Event) -> list[Transition]:
        name = event.name
        enabled: list[Transition] = []
        for state in self._atomic_states():
            for s in state.chain:
                found = None
                for t in s.event_transitions:
                    if t.matches(name) and self._cond(t):
                        found = t
                        break
                if found is not None:
                    if found not in enabled:
                        enabled.append(found)
                    break
        if len(enabled) > 1:
            return self._remove_conflicts(enabled)
        return enabled

    def _remove_conflicts(self, enabled: list[Transition]) -> list[Transition]:
        filtered: list[Transition] = []
        exit_sets: dict[int, set[StateNode]] = {}

        def exit_set(t: Transition) -> set[StateNode]:
            key = id(t)
            es = exit_sets.get(key)
            if es is None:
                es = self._compute_exit_set((t,))
                exit_sets[key] = es
            return es

        for t1 in enabled:
            preempted = False
            to_remove = []
            for t2 in filtered:
                if exit_set(t1) & exit_set(t2):
                    if t1.source.is_descendant_of(t2.source):
                        to_remove.append(t2)
                    else:
                        preempted = True
                        break
            if not preempted:
                for t3 in to_remove:
                    filtered.remove(t3)
                filtered.append(t1)
        return filtered

    # --- microstep ------------------------------------------------------------------------

    def _microstep(self, enabled: list[Transition]) -> None:
        self._exit_states(enabled)
        for t in enabled:
            if t.content:
                self.run_block(t.content)
        self._enter_states(enabled)

    def _effective_targets(self, t: Transition) -> list[StateNode]:
        if not t.has_history_target:
            return list(t.targets)
        out: list[StateNode] = []
        for s in t.targets:
            if s.is_history:
                stored = self.history_value.get(s.id)
                if stored is not None:
                    items: Iterable[StateNode] = stored
                else:
                    items = self._effective_targets(s.transitions[0])
                for x in items:
                    if x not in out:
                        out.append(x)
            elif s not in out:
                out.append(s)
        return out

    def _domain(self, t: Transition) -> StateNode | None:
        if not t.has_history_target:
            return t.static_domain
        targets = self._effective_targets(t)
        if not targets:
            return None
        src = t.source
        if t.internal and src.is_compound and all(s.is_descendant_of(src) for s in targets):
            return src
        return find_lcca([src, *targets])

    def _compute_exit_set(self, transitions: Iterable[Transition]) -> set[StateNode]:
        out: set[StateNode] = set()
        for t in transitions:
            if not t.targets:
                continue
            domain = self._domain(t)
            if domain is None:
                continue
            lo, hi = domain.order, domain.last
            for s in self.configuration:
                if lo < s.order <= hi:
                    out.add(s)
        return out

    def _exit_states(self, enabled: list[Transition]) -> None:
        to_exit = self._compute_exit_set(enabled)
        if not to_exit:
            return
        self.states_to_invoke.difference_update(to_exit)
        ordered = sorted(to_exit, key=_order, reverse=True)
        config = self.configuration
        for s in ordered:
            for h in s.history:
                if h.deep:
                    lo, hi = s.order, s.last
                    value = [x for x in config if x.is_atomic and lo < x.order <= hi]
                else:
                    value = [x for x in config if x.parent is s]
                value.sort(key=_order)
                self.history_value[h.id] = value
        track = self.doc.uses_in
        for s in ordered:
            for block in s.onexit:
                self.run_block(block)
            for inv in s.invokes:
                self._cancel_invoke(s, inv)
            config.discard(s)
            if track:
                self.datamodel.state_exited(s.id)
        self._atomic = None

    def _enter_states(self, enabled: list[Transition]) -> None:
        to_enter: dict[StateNode, None] = {}
        default_entry: set[StateNode] = set()
        default_history: dict[str, Block] = {}
        for t in enabled:
            for s in t.targets:
                self._add_descendants(s, to_enter, default_entry, default_history)
            ancestor = self._domain(t)
            for s in self._effective_targets(t):
                self._add_ancestors(s, ancestor, to_enter, default_entry, default_history)
        late = self.doc.binding == "late"
        track = self.doc.uses_in
        for s in sorted(to_enter, key=_order):
            self.configuration.add(s)
            self._atomic = None
            if track:
                self.datamodel.state_entered(s.id)
            if s.invokes:
                self.states_to_invoke.add(s)
            if late and s not in self.data_initialized:
                self._init_state_data(s)
            for block in s.onentry:
                self.run_block(block)
            if s in default_entry and s.initial is not None and s.initial.content:
                self.run_block(s.initial.content)
            content = default_history.get(s.id)
            if content:
                self.run_block(content)
            if s.is_final:
                parent = s.parent
                assert parent is not None
                if parent.is_root:
                    self.running = False
                else:
                    self.internal.append(
                        Event("done.state." + parent.id, PLATFORM, self._donedata(s))
                    )
                    grandparent = parent.parent
                    if grandparent is not None and grandparent.is_parallel:
                        if all(self._in_final(c) for c in grandparent.children):
                            self.internal.append(Event("done.state." + grandparent.id, PLATFORM))

    def _add_descendants(
        self, state: StateNode, to_enter: dict[StateNode, None], default_entry: set[StateNode],
        default_history: dict[str, Block],
    ) -> None:
        if state.is_history:
            parent = state.parent
            assert parent is not None
            stored = self.history_value.get(state.id)
            if stored is not None:
                for s in stored:
                    self._add_descendants(s, to_enter, default_entry, default_history)
                for s in stored:
                    self._add_ancestors(s, parent, to_enter, default_entry, default_history)
            else:
                t = state.transitions[0]
                default_history[parent.id] = t.content
                for s in t.targets:
                    self._add_descendants(s, to_enter, default_entry, default_history)
                for s in t.targets:
                    self._add_ancestors(s, parent, to_enter, default_entry, default_history)
            return
        to_enter[state] = None
        if state.is_compound:
            default_entry.add(state)
            init = state.initial
            assert init is not None
            for s in init.targets:
                self._add_descendants(s, to_enter, default_entry, default_history)
            for s in init.targets:
                self._add_ancestors(s, state, to_enter, default_entry, default_history)
        elif state.is_parallel:
            for child in state.children:
                if not any(s.is_descendant_of(child) for s in to_enter):
                    self._add_descendants(child, to_enter, default_entry, default_history)

    def _add_ancestors(
        self, state: StateNode, ancestor: StateNode | None, to_enter: dict[StateNode, None],
        default_entry: set[StateNode], default_history: dict[str, Block],
    ) -> None:
        for anc in state.ancestors:
            if anc is ancestor:
                break
            if anc.is_root:
                break
            to_enter[anc] = None
            if anc.is_parallel:
                for child in anc.children:
                    if not any(s.is_descendant_of(child) for s in to_enter):
                        self._add_descendants(child, to_enter, default_entry, default_history)

    def _in_final(self, s: StateNode) -> bool:
        if s.is_compound:
            return any(c.is_final and c in self.configuration for c in s.children)
        if s.is_parallel:
            return all(self._in_final(c) for c in s.children)
        return False

    # --- executable content ---------------------------------------------------------------

    def run_block(self, block: Block) -> None:
        """Run one block; an error stops the block and raises ``error.execution``."""
        try:
            for action in block:
                executor.execute(self, action)
        except DataModelError as exc:
            self.raise_error("error.execution", str(exc), getattr(exc, "sendid", None))

    def _donedata(self, final: StateNode) -> Any:
        dd = final.donedata
        if dd is None:
            return None
        try:
            if dd.content is not None:
                return self.content_value(dd.content)
            return self.param_values(dd.params, ())
        except DataModelError as exc:
            self.raise_error("error.execution", f"<donedata>: {exc}")
            return None

    def content_value(self, content: Content) -> Any:
        if content.expr is not None:
            return self.datamodel.evaluate(content.expr)
        return content.value

    def param_values(self, params: tuple[Param, ...], namelist: tuple[str, ...]) -> Any:
        """Evaluate ``namelist`` then ``<param>``s into a dict (None when both are empty)."""
        if not params and not namelist:
            return None
        dm = self.datamodel
        out: dict[str, Any] = {}
        for name in namelist:
            out[name] = dm.evaluate(name)
        for p in params:
            out[p.name] = dm.evaluate(p.expr if p.expr is not None else p.location or "")
        return out

    # --- invoke -----------------------------------------------------------------------------

    def _start_invoke(self, state: StateNode, node: Invoke) -> None:
        dm = self.datamodel
        invokeid = node.id
        try:
            if invokeid is None:
                invokeid = self.new_id(state.id + ".")
                if node.idlocation:
                    dm.assign_value(node.idlocation, invokeid)
            itype = node.type
            if itype is None and node.typeexpr is not None:
                itype = str(dm.evaluate(node.typeexpr))
            src = node.src
            if src is None and node.srcexpr is not None:
                src = str(dm.evaluate(node.srcexpr))
            params = self.param_values(node.params, node.namelist)
            content = self.content_value(node.content) if node.content is not None else None
        except DataModelError as exc:
            self.raise_error("error.execution", f"<invoke>: {exc}")
            return
        try:
            child = self.runtime.create_child(
                self, invokeid, itype, src, node.content, content, params or {},
            )
        except Exception as exc:  # noqa: BLE001 - any load failure is an execution error
            self.raise_error("error.execution", f"<invoke> {invokeid}: {exc}")
            return
        self.invocations[invokeid] = Invocation(invokeid, node, state, child)
        child.start()

    def _cancel_invoke(self, state: StateNode, node: Invoke) -> None:
        for inv_id, inv in list(self.invocations.items()):
            if inv.state is state and inv.node is node:
                del self.invocations[inv_id]
                # Events the child sends while being cancelled must never reach us.
                inv.child.cancelled = True
                inv.child.cancel()

    def child_finished(self, child: Session) -> None:
        """Called by the runtime when an invoked child ends on its own (top-level final)."""
        invokeid = child.invokeid
        if invokeid is None or invokeid not in self.invocations:
            return
        self.enqueue(Event(
            "done.invoke." + invokeid, EXTERNAL, child.done_data, origin=child.origin,
            origintype=SCXML_PROCESSOR, invokeid=invokeid,
        ))
