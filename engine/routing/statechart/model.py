"""The parsed, immutable document model of an SCXML document.

The parser builds these objects once per document; sessions only read them, so one parsed
document can back any number of concurrent sessions. Per-session state (configuration, history
values, first-entry flags) lives in the interpreter, never here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

SCXML_NS = "http://www.w3.org/2005/07/scxml"


@dataclass(frozen=True, slots=True)
class Location:
    """Where a node came from, for diagnostics: 1-based line and column (0 when unknown)."""

    line: int = 0
    column: int = 0


# --- executable content --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Param:
    name: str
    expr: str | None = None
    location: str | None = None


@dataclass(frozen=True, slots=True)
class Content:
    """``<content>``: either an expression, or inline children (text/JSON or serialized XML)."""

    expr: str | None = None
    # Inline value already decoded at parse time (JSON object, normalized string or XML text).
    value: Any = None
    has_value: bool = False
    # Inline child <scxml> document, pre-parsed for <invoke> (None otherwise).
    document: Document | None = None


@dataclass(frozen=True, slots=True)
class Raise:
    event: str
    where: Location = Location()


@dataclass(frozen=True, slots=True)
class Log:
    label: str | None
    expr: str | None
    where: Location = Location()


@dataclass(frozen=True, slots=True)
class Assign:
    location: str
    expr: str | None
    content: Content | None
    where: Location = Location()


@dataclass(frozen=True, slots=True)
class Script:
    source: str
    where: Location = Location()


@dataclass(frozen=True, slots=True)
class IfBranch:
    cond: str | None  # None for <else>
    body: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class If:
    branches: tuple[IfBranch, ...]
    where: Location = Location()


@dataclass(frozen=True, slots=True)
class Foreach:
    array: str
    item: str
    index: str | None
    body: tuple[Any, ...]
    where: Location = Location()


@dataclass(frozen=True, slots=True)
class Send:
    event: str | None = None
    eventexpr: str | None = None
    target: str | None = None
    targetexpr: str | None = None
    type: str | None = None
    typeexpr: str | None = None
    id: str | None = None
    idlocation: str | None = None
    delay: str | None = None
    delayexpr: str | None = None
    namelist: tuple[str, ...] = ()
    params: tuple[Param, ...] = ()
    content: Content | None = None
    where: Location = Location()


@dataclass(frozen=True, slots=True)
class Cancel:
    sendid: str | None
    sendidexpr: str | None
    where: Location = Location()


@dataclass(frozen=True, slots=True)
class ExtensionAction:
    """An action from a foreign namespace bound by an extension (the Genesys modules).

    ``attrs`` holds the raw attribute values (``queue``, ``queueexpr``...); ``name`` is the
    qualified action name such as ``ixn.redirect``.
    """

    name: str
    namespace: str
    attrs: Mapping[str, str]
    params: tuple[Param, ...] = ()
    where: Location = Location()


Block = tuple[Any, ...]


# --- structure ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DataDecl:
    id: str
    expr: str | None = None
    src: str | None = None
    # Text fetched from ``src`` at parse time (None when not fetched or the fetch failed).
    src_text: str | None = None
    src_error: str | None = None
    content: Content | None = None
    where: Location = Location()


@dataclass(frozen=True, slots=True)
class DoneData:
    params: tuple[Param, ...] = ()
    content: Content | None = None


@dataclass(frozen=True, slots=True)
class Invoke:
    type: str | None = None
    typeexpr: str | None = None
    src: str | None = None
    srcexpr: str | None = None
    id: str | None = None
    idlocation: str | None = None
    namelist: tuple[str, ...] = ()
    params: tuple[Param, ...] = ()
    content: Content | None = None
    autoforward: bool = False
    finalize: Block = ()
    where: Location = Location()


class Transition:
    """A ``<transition>`` (also the synthetic initial transitions). Immutable after parsing."""

    __slots__ = (
        "source", "targets", "target_ids", "events", "event_text", "cond", "internal",
        "content", "order", "static_domain", "has_history_target", "where",
    )

    def __init__(
        self, source: StateNode, target_ids: tuple[str, ...], event_text: str | None,
        cond: str | None, internal: bool, content: Block, order: int, where: Location,
    ) -> None:
        self.source = source
        self.target_ids = target_ids
        self.targets: tuple[StateNode, ...] = ()
        self.event_text = event_text
        self.events = _event_descriptors(event_text)
        self.cond = cond
        self.internal = internal
        self.content = content
        self.order = order
        self.static_domain: StateNode | None = None
        self.has_history_target = False
        self.where = where

    def matches(self, name: str) -> bool:
        for d in self.events:
            if d == "*" or name == d or name.startswith(d + "."):
                return True
        return False

    def __repr__(self) -> str:
        return f"<Transition {self.source.id} -> {' '.join(self.target_ids)} on {self.event_text}>"


def _event_descriptors(text: str | None) -> tuple[str, ...]:
    if not text:
        return ()
    out = []
    for token in text.split():
        # "foo.*" and "foo." mean the same prefix as "foo".
        while token.endswith(".*"):
            token = token[:-2]
        token = token.rstrip(".")
        out.append(token or "*")
    return tuple(out)


STATE = "state"
PARALLEL = "parallel"
FINAL = "final"
HISTORY = "history"
ROOT = "scxml"


class StateNode:
    """A state-like node (``scxml`` root, ``state``, ``parallel``, ``final``, ``history``)."""

    __slots__ = (
        "id", "kind", "parent", "children", "history", "order", "last", "depth",
        "ancestors", "chain", "initial", "transitions", "event_transitions",
        "eventless_transitions", "onentry", "onexit", "invokes", "datamodel", "donedata",
        "deep", "is_atomic", "is_compound", "is_parallel", "is_final", "is_history",
        "is_root", "where", "generated_id",
    )

    def __init__(self, kind: str, id: str, parent: StateNode | None, where: Location) -> None:
        self.id = id
        self.kind = kind
        self.parent = parent
        self.children: tuple[StateNode, ...] = ()
        self.history: tuple[StateNode, ...] = ()
        self.order = 0
        self.last = 0  # highest document order among descendants
        self.depth = 0
        self.ancestors: tuple[StateNode, ...] = ()  # proper ancestors, nearest first, incl. root
        self.chain: tuple[StateNode, ...] = ()  # self then proper ancestors, root excluded
        self.initial: Transition | None = None
        self.transitions: tuple[Transition, ...] = ()
        self.event_transitions: tuple[Transition, ...] = ()
        self.eventless_transitions: tuple[Transition, ...] = ()
        self.onentry: tuple[Block, ...] = ()
        self.onexit: tuple[Block, ...] = ()
        self.invokes: tuple[Invoke, ...] = ()
        self.datamodel: tuple[DataDecl, ...] = ()
        self.donedata: DoneData | None = None
        self.deep = False
        self.is_atomic = False
        self.is_compound = False
        self.is_parallel = kind == PARALLEL
        self.is_final = kind == FINAL
        self.is_history = kind == HISTORY
        self.is_root = kind == ROOT
        self.where = where
        self.generated_id = False

    def is_descendant_of(self, other: StateNode) -> bool:
        return other.order < self.order <= other.last

    def __repr__(self) -> str:
        return f"<{self.kind} {self.id}>"


@dataclass(slots=True, eq=False, weakref_slot=True)
class Document:
    """A parsed SCXML document; treat as immutable once :func:`parse_document` returns it."""

    root: StateNode
    name: str | None
    datamodel: str
    binding: str
    states: Mapping[str, StateNode]
    all_nodes: tuple[StateNode, ...]  # every node in document order (root first)
    script: Block = ()
    base: str | None = None  # directory or URL that relative ``src`` resolve against
    path: str | None = None
    source_text: str | None = None
    all_data: tuple[DataDecl, ...] = ()
    extensions: frozenset[str] = field(default_factory=frozenset)
    uses_in: bool = False  # some expression may call In(): mirror the configuration

    @property
    def initial_transition(self) -> Transition:
        assert self.root.initial is not None
        return self.root.initial
