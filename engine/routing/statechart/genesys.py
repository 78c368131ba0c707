"""The Genesys orchestration extensions: actions, the host interface, and a simulated host.

Document side (namespaces in :mod:`.genesys_spec`)::

    <ixn:redirect interactionidexpr="_event.data.interactionid" queue="vq_sales"
                  requestid="myRequest"/>
    <ixn:terminate interactionid="..." reason="done"/>
    <queue:submit queueexpr="'vq_' + lang" interactionid="..."/>
    <session:fetch srcexpr="url" method="get"/>

Each action becomes an :class:`ActionRequest` handed to the session's :class:`GenesysHost`. The
host answers later (through :meth:`Runtime.complete` / :meth:`Runtime.fail`), which queues
``<action>.done`` or ``error.<action>`` on the session's external queue with ``_event.data``
``{"requestid": ..., ...}``. Interactions are published to the ECMAScript global
``_genesys.ixn.interactions`` (an object keyed by interaction id) by the host via
:meth:`Runtime.interaction_added` / ``interaction_present`` / ``interaction_deleted``, each of
which also queues the event of the same name.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from .datamodel import DataModelError
from .events import PLATFORM, Event
from .genesys_spec import GENESYS_ACTIONS, logical_attrs
from .model import ExtensionAction

if TYPE_CHECKING:
    from .interpreter import Session

_SPECS = {spec.name: spec for spec in GENESYS_ACTIONS.values()}
INTERACTIONS_PATH = ("_genesys", "ixn", "interactions")


@dataclass(frozen=True, slots=True)
class ActionRequest:
    """One Genesys action requested by a session.

    ``action`` is ``ixn.redirect``, ``ixn.terminate``, ``queue.submit`` or ``session.fetch``;
    ``attrs`` holds the evaluated attributes by logical name (``queue`` whether the document
    wrote ``queue=`` or ``queueexpr=``); ``params`` the ``<param>`` children.
    """

    action: str
    requestid: str
    sessionid: str
    attrs: Mapping[str, Any]
    params: Mapping[str, Any] = field(default_factory=dict)

    @property
    def interactionid(self) -> str | None:
        value = self.attrs.get("interactionid")
        return None if value is None else str(value)

    @property
    def queue(self) -> str | None:
        value = self.attrs.get("queue")
        return None if value is None else str(value)

    @property
    def done_event(self) -> str:
        return self.action + ".done"

    @property
    def error_event(self) -> str:
        return "error." + self.action


class GenesysHost(Protocol):
    """What the interpreter needs from the platform that owns interactions and queues.

    ``request`` must not block and must not call back into the session synchronously with a
    result; it records the request and answers later via ``session.runtime.complete(request,
    data)`` or ``session.runtime.fail(request, error, description)``. Raising an exception
    answers with ``error.<action>`` immediately.
    """

    def request(self, session: Session, request: ActionRequest) -> None: ...


def execute_action(session: Session, node: ExtensionAction) -> None:
    """Run a Genesys action element: evaluate attributes, hand the request to the host."""
    spec = _SPECS[node.name]
    dm = session.datamodel
    attrs: dict[str, Any] = {}
    for key, (text, is_expr) in logical_attrs(dict(node.attrs)).items():
        if key in spec.location_attrs:
            continue
        attrs[key] = dm.evaluate(text) if is_expr else text
    missing = [k for k in spec.required if attrs.get(k) in (None, "")]
    if missing:
        raise DataModelError(f"<{node.name}> has no value for {', '.join(missing)}")
    params = session.param_values(node.params, ()) or {}
    requestid = session.new_id(spec.name + ".")
    location = node.attrs.get("requestid")
    if location:
        dm.assign_value(location, requestid)
    request = ActionRequest(spec.name, requestid, session.sessionid, attrs, params)
    pending: dict[str, ActionRequest] = session.extension_state.setdefault("pending", {})
    pending[requestid] = request
    host = session.host
    if host is None:
        _error_now(session, request, "nohost", "no Genesys host is bound to this session")
        return
    try:
        host.request(session, request)
    except Exception as exc:  # noqa: BLE001 - a failing host answers with error.<action>
        _error_now(session, request, "host", str(exc))


def _error_now(session: Session, request: ActionRequest, error: str, description: str) -> None:
    session.extension_state.get("pending", {}).pop(request.requestid, None)
    session.internal.append(Event(
        request.error_event, PLATFORM,
        {"requestid": request.requestid, "error": error, "description": description},
        sendid=request.requestid,
    ))


def bind(session: Session, interactions: Mapping[str, Mapping[str, Any]] | None = None) -> None:
    """Create ``_genesys`` in the session's datamodel (called before the first macrostep)."""
    table = {k: dict(v) for k, v in (interactions or {}).items()}
    session.extension_state["interactions"] = table
    session.datamodel.set_path(("_genesys",), {
        "ixn": {"interactions": table},
        "session": {"id": session.sessionid},
    })


def interaction_id(interaction: Mapping[str, Any]) -> str:
    value = interaction.get("id")
    if not value:
        raise ValueError("an interaction needs a non-empty 'id'")
    return str(value)


def publish_interaction(session: Session, interaction: Mapping[str, Any]) -> None:
    iid = interaction_id(interaction)
    session.extension_state.setdefault("interactions", {})[iid] = dict(interaction)
    session.datamodel.set_path((*INTERACTIONS_PATH, iid), dict(interaction))


def withdraw_interaction(session: Session, interactionid: str) -> None:
    session.extension_state.setdefault("interactions", {}).pop(interactionid, None)
    session.datamodel.delete_path((*INTERACTIONS_PATH, interactionid))


@dataclass
class RecordedAction:
    session: Session
    request: ActionRequest
    answered: str | None = None  # "done" / "error" once answered


class SimulatedHost:
    """An in-memory :class:`GenesysHost` for tests and benchmarks.

    Records every request in :attr:`requests`. With ``auto="done"`` (or ``"error"``) each
    request is answered as soon as it is made (the answer is queued, so it is processed after
    the current macrostep); ``auto_data`` is merged into successful answers. Otherwise answer
    with :meth:`succeed` / :meth:`reject`.
    """

    def __init__(self, auto: str | None = None, auto_data: Mapping[str, Any] | None = None):
        if auto not in (None, "done", "error"):
            raise ValueError("auto must be None, 'done' or 'error'")
        self.auto = auto
        self.auto_data = dict(auto_data or {})
        self.requests: list[RecordedAction] = []

    def request(self, session: Session, request: ActionRequest) -> None:
        record = RecordedAction(session, request)
        self.requests.append(record)
        if self.auto == "done":
            self._answer(record, True, self.auto_data)
        elif self.auto == "error":
            self._answer(record, False, {"error": "simulated", "description": "auto error"})

    @property
    def actions(self) -> list[ActionRequest]:
        return [r.request for r in self.requests]

    def pending(self, action: str | None = None) -> list[ActionRequest]:
        return [
            r.request for r in self.requests
            if r.answered is None and (action is None or r.request.action == action)
        ]

    def _find(self, request: ActionRequest | str) -> RecordedAction:
        rid = request if isinstance(request, str) else request.requestid
        for r in self.requests:
            if r.request.requestid == rid:
                return r
        raise KeyError(f"no recorded request {rid!r}")

    def succeed(self, request: ActionRequest | str, data: Mapping[str, Any] | None = None) -> None:
        self._answer(self._find(request), True, data or {})

    def reject(
        self, request: ActionRequest | str, error: str = "failed", description: str = "",
    ) -> None:
        self._answer(self._find(request), False, {"error": error, "description": description})

    def _answer(self, record: RecordedAction, ok: bool, data: Mapping[str, Any]) -> None:
        record.answered = "done" if ok else "error"
        runtime = record.session.runtime
        if ok:
            runtime.complete(record.request, data)
        else:
            runtime.fail(record.request, str(data.get("error", "failed")),
                         str(data.get("description", "")))
