"""StrategyRunner: run an SCXML strategy for one interaction and get its decisions.

The embedded router (issue #5) and messaging (#6) use it::

    runner = StrategyRunner(StrategyCatalog(), model, executor=my_executor)
    outcome = await runner.run("redirect_queue", InteractionInfo("ixn-1", udata={...}))
    outcome.actions        # (Redirect(queue='sms-support', ...),)
    outcome.final_state    # 'redirected' | 'error' | ... (None: stopped before a final state)

How a run goes: the strategy is rendered and checked (cached per template, model and
parameters) and parsed once per rendered text (cached by its sha256). A session starts in a
:class:`~engine.routing.statechart.Runtime` shared by all runs, receives ``interaction.added``
(or ``interaction.present``) with the interaction published in ``_genesys.ixn.interactions``,
and every Genesys action it requests becomes an :data:`Action` handed to the
:class:`ActionExecutor`. Its :class:`ActionResult` answers the session (``<action>.done`` or
``error.<action>``), which may request more actions, until the session ends, waits for an
event nobody will send, or an action is *deferred*.

Time (the design choice): by default (``clock=None``, production) the runner never makes its
caller wait. Strategy timers (``<send delay>``) run on virtual time that the runner
fast-forwards, so the undelivered strategy's "wait 30 s, then retry" immediately yields
``Retry(at=<epoch seconds>, attempt=N)``; the default executor *defers* retries, which ends the
run there: the caller (messaging) schedules the resend at ``at`` and, when it fails again,
stores ``udata.undeliveredAttempts = N`` and runs the strategy again (durable, pod-safe, no
session held in memory for minutes). An executor that performs the retry at once (answering
done or error) lets the same run go on to the next attempt or the give-up action, still in
virtual time. Each concurrent run gets its own virtual clock (a pooled "lane": a Runtime and a
SimulatedClock; QuickJS contexts are pooled across lanes), so one run's waits never leak into
another's. With ``clock=SimulatedClock(...)`` times are the same virtual ones, with ``at`` on
that clock's time line (``clock.now()`` at the start of the run + the waits): tests. With any
other clock (``RealTimeClock()``) the runner really waits for timers (``await
asyncio.sleep``) in one shared runtime, for callers that want that.

Single-threaded: call it from one event loop. Concurrent ``run`` calls interleave only while
an executor awaits.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from engine.config.model import Model
from engine.routing.statechart import (
    ActionRequest,
    Clock,
    Document,
    Runtime,
    Session,
    SimulatedClock,
    parse_document,
)
from engine.routing.statechart.ecmascript import ContextPool
from engine.routing.strategies import DEFAULT_ENDPOINT_KEY, StrategyCatalog

log = logging.getLogger(__name__)

INTERACTION_EVENTS = ("interaction.added", "interaction.present")
DOCUMENT_CACHE_SIZE = 64
MAX_ACTIONS = 1000
MAX_IDLE_LANES = 64


@dataclass(frozen=True, slots=True)
class InteractionInfo:
    """The interaction a strategy runs for. ``udata`` is its user data; ``endpoint`` and
    ``tenant`` are added to the user data (keys ``endpoint``/``tenant``) unless present."""

    id: str
    queue: str | None = None
    udata: Mapping[str, Any] = field(default_factory=dict)
    endpoint: str | None = None
    tenant: str | None = None
    media: str | None = None

    def published(self, endpoint_key: str = DEFAULT_ENDPOINT_KEY) -> dict[str, Any]:
        """The object published in ``_genesys.ixn.interactions[id]``."""
        udata = dict(self.udata)
        if self.endpoint is not None:
            udata.setdefault(endpoint_key, self.endpoint)
        if self.tenant is not None:
            udata.setdefault("tenant", self.tenant)
        out: dict[str, Any] = {"id": self.id, "udata": udata}
        if self.queue is not None:
            out["queue"] = self.queue
        if self.media is not None:
            out["media"] = self.media
        return out


# ---- actions -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Redirect:
    """``<ixn:redirect>``: move the interaction to ``queue``."""

    queue: str
    interaction_id: str | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Terminate:
    """``<ixn:terminate>``: stop the interaction."""

    reason: str | None = None
    interaction_id: str | None = None


@dataclass(frozen=True, slots=True)
class Submit:
    """``<queue:submit>``."""

    queue: str
    interaction_id: str | None = None


@dataclass(frozen=True, slots=True)
class Retry:
    """The undelivered strategy's ``<session:fetch>`` with param ``action="retry"``: resend the
    interaction's undelivered message, attempt number ``attempt``, at ``at`` (epoch seconds,
    or the given SimulatedClock's time); ``delay`` is the wait since the run started."""

    at: float
    attempt: int
    delay: float = 0.0
    interaction_id: str | None = None
    max_attempts: int | None = None


@dataclass(frozen=True, slots=True)
class Fetch:
    """Any other ``<session:fetch>``."""

    url: str
    method: str = "get"
    params: Mapping[str, Any] = field(default_factory=dict)


Action = Redirect | Terminate | Submit | Retry | Fetch


@dataclass(frozen=True, slots=True)
class ActionResult:
    """What an executor did: ``ok`` (answer ``<action>.done`` with ``data``), not ok (answer
    ``error.<action>`` with ``error``/``description``), or ``deferred`` (the caller does it
    later: the run stops here)."""

    ok: bool = True
    data: Mapping[str, Any] = field(default_factory=dict)
    error: str = ""
    description: str = ""
    deferred: bool = False

    @classmethod
    def done(cls, data: Mapping[str, Any] | None = None) -> ActionResult:
        return cls(True, dict(data or {}))

    @classmethod
    def failed(cls, error: str = "failed", description: str = "") -> ActionResult:
        return cls(False, {}, error, description)

    @classmethod
    def defer(cls) -> ActionResult:
        return cls(True, {}, deferred=True)

    @property
    def status(self) -> str:
        return "deferred" if self.deferred else ("done" if self.ok else "error")


class ActionExecutor(Protocol):
    """Performs (or refuses) a strategy's actions. The router's executor redirects and
    terminates against real queues and may fail them (-> ``error.<action>`` events)."""

    async def execute(self, action: Action, interaction: InteractionInfo) -> ActionResult: ...


class AcceptAll:
    """The default executor: every action succeeds, except :class:`Retry`, which is deferred
    to the caller (see the module docstring)."""

    async def execute(self, action: Action, interaction: InteractionInfo) -> ActionResult:
        if isinstance(action, Retry):
            return DEFERRED
        return ACCEPTED


ACCEPTED = ActionResult()
DEFERRED = ActionResult.defer()


@dataclass(frozen=True, slots=True)
class StrategyOutcome:
    """The result of a run.

    ``actions``: every action the strategy requested, in order, with ``results`` (parallel);
    ``final_state``: the final state reached (None when the run stopped before one: deferred
    retry, or waiting for an event); ``error``: why the strategy failed (final state
    ``error``, or an aborted session), else None; ``done_data``: the final state's donedata.
    """

    name: str
    interaction_id: str
    actions: tuple[Action, ...]
    results: tuple[ActionResult, ...]
    final_state: str | None
    error: str | None = None
    done_data: Any = None

    @property
    def performed(self) -> tuple[Action, ...]:
        """Actions that were carried out (done) or left to the caller (deferred)."""
        return tuple(a for a, r in zip(self.actions, self.results, strict=True) if r.ok)

    @property
    def deferred(self) -> Action | None:
        if self.results and self.results[-1].deferred:
            return self.actions[-1]
        return None

    @property
    def finished(self) -> bool:
        return self.final_state is not None


# ---- the runner ----------------------------------------------------------------------------


@dataclass(slots=True)
class _Run:
    interaction: InteractionInfo
    clock_start: float  # on the runtime's clock
    base: float  # the time line of Retry.at at the start of the run
    queue: deque[tuple[ActionRequest, float]] = field(default_factory=deque)


class _RunnerHost:
    """The Genesys host of the runner's sessions: queues each request on its run."""

    __slots__ = ("runner",)

    def __init__(self, runner: StrategyRunner) -> None:
        self.runner = runner

    def request(self, session: Session, request: ActionRequest) -> None:
        run = self.runner._runs.get(request.sessionid)
        if run is None:
            raise RuntimeError("the session's run has ended")
        run.queue.append((request, session.runtime.clock.now()))


class StrategyRunner:
    """Runs strategies of a :class:`StrategyCatalog` with a config :class:`Model`.

    ``executor``: default :class:`AcceptAll`. ``clock``: see the module docstring.
    """

    def __init__(
        self, catalog: StrategyCatalog, model: Model, *, clock: Clock | None = None,
        executor: ActionExecutor | None = None, max_actions: int = MAX_ACTIONS,
    ) -> None:
        self.catalog = catalog
        self.model = model
        self.executor: ActionExecutor = executor if executor is not None else AcceptAll()
        self.max_actions = max_actions
        self.clock = clock
        self._virtual = clock is None or isinstance(clock, SimulatedClock)
        self._host = _RunnerHost(self)
        self._pool = ContextPool(per_document=32)
        self._lanes: list[Runtime] = []  # idle virtual-time runtimes
        self._shared: Runtime | None = None
        if not self._virtual:
            self._shared = Runtime(clock, host=self._host, on_log=self._log)
        self._active: set[Runtime] = set()
        self._runs: dict[str, _Run] = {}
        self._ids = itertools.count(1)
        self._documents: OrderedDict[str, Document] = OrderedDict()

    @property
    def sessions_running(self) -> int:
        """Sessions alive in the runner (0 between runs: every run drops its session)."""
        runtimes = self._active | set(self._lanes)
        if self._shared is not None:
            runtimes.add(self._shared)
        return sum(len(rt.sessions) for rt in runtimes)

    def _acquire(self) -> Runtime:
        if self._shared is not None:
            return self._shared
        runtime = self._lanes.pop() if self._lanes else None
        if runtime is None:
            runtime = Runtime(SimulatedClock(), host=self._host, on_log=self._log,
                              reuse_contexts=False)
            runtime.context_pool = self._pool
        self._active.add(runtime)
        return runtime

    def _release(self, runtime: Runtime) -> None:
        if runtime is self._shared:
            return
        self._active.discard(runtime)
        if len(self._lanes) < MAX_IDLE_LANES and not runtime.sessions:
            self._lanes.append(runtime)

    def set_model(self, model: Model) -> None:
        """Use a new config (after a reload); runs in progress keep their document."""
        self.model = model

    def document(self, name: str, params: Mapping[str, Any] | None = None) -> Document:
        """The parsed document of a strategy (raises StrategyError and subclasses)."""
        rendered = self.catalog.render_checked(name, self.model, params)
        doc = self._documents.get(rendered.sha256)
        if doc is None:
            doc = parse_document(rendered.text)
            self._documents[rendered.sha256] = doc
            if len(self._documents) > DOCUMENT_CACHE_SIZE:
                self._documents.popitem(last=False)
        return doc

    async def run(
        self, name: str, interaction: InteractionInfo, params: Mapping[str, Any] | None = None,
        event: str = "interaction.added",
    ) -> StrategyOutcome:
        """Run strategy ``name`` for ``interaction`` (see the module docstring)."""
        if event not in INTERACTION_EVENTS:
            raise ValueError(f"event must be one of {', '.join(INTERACTION_EVENTS)}")
        doc = self.document(name, params)
        runtime = self._acquire()
        clock = runtime.clock
        sid = f"nx{next(self._ids)}"
        base = self.clock.now() if isinstance(self.clock, SimulatedClock) else time.time()
        run = _Run(interaction, clock.now(), base)
        self._runs[sid] = run
        actions: list[Action] = []
        results: list[ActionResult] = []
        error: str | None = None
        session: Session | None = None
        try:
            session = runtime.start(doc, sessionid=sid)
            published = interaction.published()
            if event == "interaction.added":
                runtime.interaction_added(session, published)
            else:
                runtime.interaction_present(session, published)
            while True:
                if run.queue:
                    request, requested_at = run.queue.popleft()
                    if len(actions) >= self.max_actions:
                        error = f"more than {self.max_actions} actions"
                        break
                    action = self._action(request, run, requested_at)
                    result = await self._execute(action, interaction)
                    actions.append(action)
                    results.append(result)
                    if result.deferred or not session.running:
                        break
                    if result.ok:
                        runtime.complete(request, result.data)
                    else:
                        runtime.fail(request, result.error, result.description)
                    continue
                if not session.running:
                    break
                due = _next_due(session)
                if due is None:
                    break  # waits for an event this run will not send
                wait = max(0.0, due - clock.now())
                if self._virtual:
                    runtime.advance(wait)
                else:
                    await asyncio.sleep(wait)
                    runtime.pump()
        finally:
            self._runs.pop(sid, None)
            if session is not None and session.running:
                runtime.cancel(session)
            self._release(runtime)
        final_node = session.final_state if session is not None else None
        final = final_node.id if final_node is not None else None
        if session is not None and session.abort_reason is not None:
            final, error = None, f"aborted: {session.abort_reason}"
        done_data = session.done_data if session is not None else None
        if final == "error" and error is None:
            reason = done_data.get("reason") if isinstance(done_data, Mapping) else None
            error = str(reason) if reason else "the strategy ended in its error state"
        return StrategyOutcome(name, interaction.id, tuple(actions), tuple(results), final,
                               error, done_data)

    async def _execute(self, action: Action, interaction: InteractionInfo) -> ActionResult:
        try:
            return await self.executor.execute(action, interaction)
        except Exception as exc:  # noqa: BLE001 - a failing executor fails the action
            log.exception("executor failed on %r", action)
            return ActionResult.failed("executor", str(exc))

    def _action(self, request: ActionRequest, run: _Run, requested_at: float) -> Action:
        attrs = request.attrs
        iid = request.interactionid
        if request.action == "ixn.redirect":
            reason = attrs.get("reason")
            return Redirect(str(request.queue), iid, None if reason is None else str(reason))
        if request.action == "ixn.terminate":
            reason = attrs.get("reason")
            return Terminate(None if reason is None else str(reason), iid)
        if request.action == "queue.submit":
            return Submit(str(request.queue), iid)
        params = dict(request.params)
        if params.get("action") == "retry":
            delay = requested_at - run.clock_start
            at = run.base + delay
            maximum = params.get("maxAttempts")
            return Retry(at, _int(params.get("attempt")), delay,
                         None if params.get("interactionid") is None
                         else str(params["interactionid"]),
                         None if maximum is None else _int(maximum))
        return Fetch(str(attrs.get("src", "")), str(attrs.get("method", "get")).lower(), params)

    def _log(self, session: Session, label: str | None, value: Any) -> None:
        run = self._runs.get(session.sessionid)
        iid = run.interaction.id if run is not None else "?"
        log.warning("strategy %s (interaction %s): %s", label or session.doc.name, iid, value)


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def _next_due(session: Session) -> float | None:
    """When the session's next delayed ``<send>`` is due (on the runtime's clock)."""
    due: float | None = None
    for handle in session.delayed.values():
        when_attr = getattr(handle, "when", None)
        if when_attr is None:
            continue
        cancelled = getattr(handle, "cancelled", False)
        if cancelled() if callable(cancelled) else cancelled:
            continue
        when = when_attr() if callable(when_attr) else when_attr
        if due is None or when < due:
            due = float(when)
    return due
