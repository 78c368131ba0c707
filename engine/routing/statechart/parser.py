"""Parse SCXML text (lxml) into the immutable :mod:`model`.

``parse_document`` raises :class:`DocumentError` on the first problem that makes the document
impossible to run; :func:`check_document` (used by ``nexus scxml validate``) collects every
problem as a :class:`Diagnostic` instead.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from lxml import etree

from .genesys_spec import GENESYS_ACTIONS, GENESYS_NAMESPACES, logical_attrs
from .model import (
    FINAL,
    HISTORY,
    ROOT,
    SCXML_NS,
    STATE,
    Assign,
    Cancel,
    Content,
    DataDecl,
    Document,
    DoneData,
    ExtensionAction,
    Foreach,
    If,
    IfBranch,
    Invoke,
    Location,
    Log,
    Param,
    Raise,
    Script,
    Send,
    StateNode,
    Transition,
)

SUPPORTED_DATAMODELS = ("null", "ecmascript")
_NS_PREFIX = "{" + SCXML_NS + "}"
_STATE_TAGS = {"state", "parallel", "final", "history"}
_USES_IN = re.compile(r"\bIn\s*\(")
_ID_RE = re.compile(r"^[A-Za-z_$][\w$]*$")


@dataclass(frozen=True, slots=True)
class Diagnostic:
    line: int
    column: int
    code: str
    message: str

    def format(self, path: str) -> str:
        return f"{path}:{self.line}:{self.column}: error: {self.code} {self.message}"


class DocumentError(Exception):
    """The document cannot be loaded; ``diagnostics`` holds every problem found."""

    def __init__(self, diagnostics: list[Diagnostic], path: str | None = None) -> None:
        self.diagnostics = diagnostics
        self.path = path
        first = diagnostics[0]
        super().__init__(f"{path or '<scxml>'}:{first.line}:{first.column}: {first.message}")


def normalize_space(text: str) -> str:
    return " ".join(text.split())


def decode_text(text: str) -> Any:
    """Inline content / fetched data: JSON when it parses, else a space-normalized string."""
    stripped = text.strip()
    if stripped:
        try:
            return json.loads(stripped)
        except ValueError:
            pass
    return normalize_space(text)


def read_source(src: str, base: str | None) -> str:
    """Read a ``src`` reference (relative path or ``file:`` URI) as text; raises OSError."""
    parsed = urlparse(src)
    if parsed.scheme in ("", "file"):
        raw = unquote(parsed.path if parsed.scheme == "file" else src)
        if parsed.scheme == "file" and parsed.netloc:
            raw = "/" + parsed.netloc + raw
        path = Path(raw)
        if not path.is_absolute() and base is not None:
            path = Path(base) / path
        return path.read_text(encoding="utf-8")
    raise OSError(f"unsupported URI scheme {parsed.scheme!r} in {src!r}")


def resolve_path(src: str, base: str | None) -> str:
    parsed = urlparse(src)
    raw = unquote(parsed.path) if parsed.scheme == "file" else src
    path = Path(raw)
    if not path.is_absolute() and base is not None:
        path = Path(base) / path
    return str(path.resolve())


@dataclass
class _Builder:
    base: str | None
    source_lines: list[str]
    diagnostics: list[Diagnostic] = field(default_factory=list)
    fetch: Callable[[str, str | None], str] = read_source
    uses_in: bool = False
    order: int = 0
    transition_order: int = 0
    generated: int = 0

    # --- diagnostics --------------------------------------------------------------------

    def where(self, el: Any) -> Location:
        line = el.sourceline or 0
        # libxml2 may report the line where a multi-line start tag ends: look back for "<tag".
        pattern = re.compile(r"<([\w.-]+:)?" + re.escape(el.tag.rsplit("}", 1)[-1]) + r"\b")
        for candidate in range(min(line, len(self.source_lines)), max(0, line - 30), -1):
            m = pattern.search(self.source_lines[candidate - 1])
            if m:
                return Location(candidate, m.start() + 1)
        return Location(line, 1)

    def error(self, el: Any, code: str, message: str) -> None:
        loc = self.where(el) if el is not None else Location(1, 1)
        self.diagnostics.append(Diagnostic(loc.line, loc.column, code, message))

    # --- helpers ------------------------------------------------------------------------

    @staticmethod
    def local(el: Any) -> str | None:
        tag = el.tag
        if not isinstance(tag, str):
            return None  # comment / processing instruction
        if tag.startswith(_NS_PREFIX):
            return tag[len(_NS_PREFIX):]
        if tag.startswith("{"):
            return None
        return tag

    def children(self, el: Any) -> list[Any]:
        return [c for c in el if isinstance(c.tag, str)]

    def exclusive(self, el: Any, *names: str, required: bool = False) -> None:
        present = [n for n in names if el.get(n) is not None]
        if len(present) > 1:
            self.error(el, "invalid-attribute",
                       f"<{self.local(el)}> must not have both {' and '.join(present)}")
        elif required and not present:
            self.error(el, "missing-attribute",
                       f"<{self.local(el)}> requires one of: {', '.join(names)}")

    # --- document -----------------------------------------------------------------------

    def build(self, el: Any, path: str | None, text: str | None) -> Document | None:
        if self.local(el) != "scxml":
            self.error(el, "not-scxml", f"root element is <{el.tag}>, expected <scxml>")
            return None
        datamodel = el.get("datamodel", "null")
        if datamodel not in SUPPORTED_DATAMODELS:
            self.error(el, "unsupported-datamodel",
                       f"datamodel {datamodel!r} is not supported (null, ecmascript)")
        binding = el.get("binding", "early")
        if binding not in ("early", "late"):
            self.error(el, "invalid-attribute", f"binding must be early or late, not {binding!r}")
        if el.get("version") not in (None, "1.0"):
            self.error(el, "invalid-attribute", "version must be 1.0")
        root = StateNode(ROOT, el.get("name") or "__scxml", None, self.where(el))
        nodes: list[StateNode] = []
        pending: list[tuple[StateNode, Any]] = []
        script: list[Any] = []
        data: list[DataDecl] = []
        self._build_state(el, root, nodes, pending, script, data, top=True)
        states: dict[str, StateNode] = {}
        for node in nodes:
            if node.is_root:
                continue
            if node.id in states:
                self.diagnostics.append(Diagnostic(
                    node.where.line, node.where.column, "duplicate-id",
                    f"duplicate state id {node.id!r}"))
            states[node.id] = node
        self._link(nodes, states, pending)
        extensions = frozenset(
            ns for ns in GENESYS_NAMESPACES
            if any(isinstance(t, str) and t.startswith("{" + ns + "}")
                   for t in (e.tag for e in el.iter()))
        )
        return Document(
            root=root, name=el.get("name"), datamodel=datamodel, binding=binding,
            states=states, all_nodes=tuple(nodes), script=tuple(script), base=self.base,
            path=path, source_text=text, all_data=tuple(data), extensions=extensions,
            uses_in=self.uses_in,
        )

    def _build_state(
        self, el: Any, node: StateNode, nodes: list[StateNode],
        pending: list[tuple[StateNode, Any]], script: list[Any], data: list[DataDecl],
        top: bool = False,
    ) -> None:
        node.order = self.order
        self.order += 1
        nodes.append(node)
        kind = node.kind
        children: list[StateNode] = []
        history: list[StateNode] = []
        onentry: list[tuple[Any, ...]] = []
        onexit: list[tuple[Any, ...]] = []
        invokes: list[Invoke] = []
        decls: list[DataDecl] = []
        transitions: list[Any] = []
        initial_el = None
        for child in self.children(el):
            name = self.local(child)
            if name is None:
                continue  # foreign-namespace elements outside executable content are ignored
            if name in _STATE_TAGS:
                if kind in (FINAL, HISTORY):
                    self.error(child, "unexpected-element", f"<{name}> is not allowed in <{kind}>")
                    continue
                if name == HISTORY and kind in (ROOT,):
                    self.error(child, "unexpected-element", "<history> is not allowed in <scxml>")
                    continue
                sid = child.get("id")
                generated = False
                if not sid:
                    self.generated += 1
                    sid = f"__{name}_{self.generated}"
                    generated = True
                sub = StateNode(name, sid, node, self.where(child))
                sub.generated_id = generated
                if name == HISTORY:
                    htype = child.get("type", "shallow")
                    if htype not in ("shallow", "deep"):
                        self.error(child, "invalid-attribute",
                                   f"history type must be shallow or deep, not {htype!r}")
                    sub.deep = htype == "deep"
                    history.append(sub)
                else:
                    children.append(sub)
                self._build_state(child, sub, nodes, pending, script, data)
            elif name == "transition":
                if kind == ROOT:
                    self.error(child, "unexpected-element", "<transition> not allowed in <scxml>")
                    continue
                transitions.append(child)
            elif name == "initial":
                if kind not in (STATE,):
                    self.error(child, "unexpected-element", f"<initial> not allowed in <{kind}>")
                    continue
                initial_el = child
            elif name == "onentry":
                onentry.append(self.block(child))
            elif name == "onexit":
                onexit.append(self.block(child))
            elif name == "invoke":
                invokes.append(self.invoke(child))
            elif name == "datamodel":
                for d in self.children(child):
                    if self.local(d) == "data":
                        decl = self.data(d)
                        decls.append(decl)
                        data.append(decl)
                    elif self.local(d) is not None:
                        self.error(d, "unexpected-element", f"<{self.local(d)}> in <datamodel>")
            elif name == "donedata":
                if kind != FINAL:
                    self.error(child, "unexpected-element", "<donedata> only allowed in <final>")
                node.donedata = self.donedata(child)
            elif name == "script" and top:
                script.append(self.script(child))
            else:
                self.error(child, "unknown-element", f"<{name}> is not allowed in <{kind}>")
        node.children = tuple(children)
        node.history = tuple(history)
        node.onentry = tuple(onentry)
        node.onexit = tuple(onexit)
        node.invokes = tuple(invokes)
        node.datamodel = tuple(decls)
        node.last = self.order - 1
        if kind == HISTORY:
            node.is_atomic = False
            if len(transitions) != 1:
                self.error(el, "missing-element", "<history> needs exactly one <transition>")
        else:
            node.is_atomic = kind == FINAL or (kind == STATE and not children)
            node.is_compound = kind in (STATE, ROOT) and bool(children)
        pending.append((node, (transitions, initial_el, el)))

    def _link(
        self, nodes: list[StateNode], states: dict[str, StateNode],
        pending: list[tuple[StateNode, Any]],
    ) -> None:
        for node in nodes:
            anc: list[StateNode] = []
            p = node.parent
            while p is not None:
                anc.append(p)
                p = p.parent
            node.ancestors = tuple(anc)
            node.depth = len(anc)
            node.chain = (node, *[a for a in anc if not a.is_root])

        def resolve(ids: tuple[str, ...], el: Any, what: str) -> tuple[StateNode, ...]:
            out = []
            for tid in ids:
                target = states.get(tid)
                if target is None:
                    self.error(el, "unknown-target", f"{what} {tid!r} does not exist")
                else:
                    out.append(target)
            return tuple(out)

        all_transitions: list[Transition] = []
        for node, (t_els, initial_el, el) in pending:
            transitions = []
            for t_el in t_els:
                t = self.transition(node, t_el)
                t.targets = resolve(t.target_ids, t_el, "transition target")
                if node.is_history:
                    if t.event_text or t.cond:
                        self.error(t_el, "invalid-attribute",
                                   "a history transition has no event or cond")
                    for target in t.targets:
                        if not target.is_descendant_of(node.parent):  # type: ignore[arg-type]
                            self.error(t_el, "invalid-target",
                                       f"history default {target.id!r} is outside its parent")
                transitions.append(t)
            node.transitions = tuple(transitions)
            node.event_transitions = tuple(t for t in transitions if t.events)
            node.eventless_transitions = tuple(t for t in transitions if not t.events)
            all_transitions.extend(transitions)
            if node.kind in (STATE, ROOT) and node.children:
                attr = el.get("initial")
                if attr is not None and initial_el is not None:
                    self.error(el, "invalid-attribute",
                               "a state must not have both initial= and <initial>")
                if initial_el is not None:
                    t_kids = [c for c in self.children(initial_el)
                              if self.local(c) == "transition"]
                    if len(t_kids) != 1 or not t_kids[0].get("target"):
                        self.error(initial_el, "missing-element",
                                   "<initial> needs one <transition> with a target")
                        t = Transition(node, (), None, None, False, (), -1, self.where(el))
                    else:
                        t = self.transition(node, t_kids[0])
                    t.targets = resolve(t.target_ids, initial_el, "initial state")
                elif attr is not None:
                    ids = tuple(attr.split())
                    t = Transition(node, ids, None, None, False, (), -1, self.where(el))
                    t.targets = resolve(ids, el, "initial state")
                else:
                    first = node.children[0]
                    t = Transition(node, (first.id,), None, None, False, (), -1, self.where(el))
                    t.targets = (first,)
                for target in t.targets:
                    if not target.is_descendant_of(node):
                        self.error(el, "invalid-initial",
                                   f"initial state {target.id!r} is not a descendant of "
                                   f"{node.id!r}")
                node.initial = t
                all_transitions.append(t)
            elif node.is_root:
                self.error(el, "missing-element", "<scxml> has no child state")
            elif el.get("initial") is not None and node.kind == STATE:
                self.error(el, "invalid-initial", "initial= on an atomic state")
        for t in all_transitions:
            t.has_history_target = any(s.is_history for s in t.targets)
            if not t.has_history_target:
                t.static_domain = static_domain(t)

    def transition(self, node: StateNode, el: Any) -> Transition:
        ttype = el.get("type", "external")
        if ttype not in ("internal", "external"):
            self.error(el, "invalid-attribute", "transition type must be internal or external")
        targets = tuple((el.get("target") or "").split())
        self.transition_order += 1
        t = Transition(
            node, targets, el.get("event"), el.get("cond"), ttype == "internal",
            self.block(el), self.transition_order, self.where(el),
        )
        if el.get("event") is not None and not t.events:
            self.error(el, "invalid-attribute", "empty event attribute")
        return t

    # --- executable content -------------------------------------------------------------

    def block(self, el: Any) -> tuple[Any, ...]:
        out = []
        for child in self.children(el):
            action = self.action(child)
            if action is not None:
                out.append(action)
        return tuple(out)

    def action(self, el: Any) -> Any:
        tag = el.tag
        if tag.startswith("{") and not tag.startswith(_NS_PREFIX):
            ns, local = tag[1:].split("}", 1)
            spec = GENESYS_ACTIONS.get((ns, local))
            if spec is None:
                if ns in GENESYS_NAMESPACES:
                    self.error(el, "unknown-element",
                               f"unknown action <{GENESYS_NAMESPACES[ns]}:{local}>")
                return None  # other foreign elements are ignored, as the Recommendation allows
            raw = {k: v for k, v in el.attrib.items() if not k.startswith("{")}
            logical = logical_attrs(raw)
            for req in spec.required:
                if req not in logical:
                    self.error(el, "missing-attribute",
                               f"<{GENESYS_NAMESPACES[ns]}:{local}> requires {req}= or "
                               f"{req}expr=")
            for key in logical:
                if key in raw and key + "expr" in raw:
                    self.error(el, "invalid-attribute",
                               f"<{GENESYS_NAMESPACES[ns]}:{local}> must not have both "
                               f"{key} and {key}expr")
            params = tuple(self.param(p) for p in self.children(el) if self.local(p) == "param")
            return ExtensionAction(spec.name, ns, raw, params, self.where(el))
        name = self.local(el)
        where = self.where(el)
        if name == "raise":
            if not el.get("event"):
                self.error(el, "missing-attribute", "<raise> requires event=")
            return Raise(el.get("event") or "", where)
        if name == "log":
            return Log(el.get("label"), el.get("expr"), where)
        if name == "assign":
            if not el.get("location"):
                self.error(el, "missing-attribute", "<assign> requires location=")
            content = self.inline_content(el) if el.get("expr") is None else None
            if el.get("expr") is not None and (len(el) or (el.text or "").strip()):
                self.error(el, "invalid-attribute", "<assign> must not have expr and children")
            return Assign(el.get("location") or "", el.get("expr"), content, where)
        if name == "script":
            return self.script(el)
        if name == "if":
            return self.if_(el)
        if name == "foreach":
            for req in ("array", "item"):
                if not el.get(req):
                    self.error(el, "missing-attribute", f"<foreach> requires {req}=")
            return Foreach(el.get("array") or "", el.get("item") or "", el.get("index"),
                           self.block(el), where)
        if name == "send":
            return self.send(el)
        if name == "cancel":
            self.exclusive(el, "sendid", "sendidexpr", required=True)
            return Cancel(el.get("sendid"), el.get("sendidexpr"), where)
        self.error(el, "unknown-element", f"<{name}> is not executable content")
        return None

    def if_(self, el: Any) -> If:
        if el.get("cond") is None:
            self.error(el, "missing-attribute", "<if> requires cond=")
        branches: list[IfBranch] = []
        cond: str | None = el.get("cond") or "false"
        body: list[Any] = []
        seen_else = False
        for child in self.children(el):
            name = self.local(child)
            if name in ("elseif", "else"):
                if seen_else:
                    self.error(child, "unexpected-element", f"<{name}> after <else>")
                branches.append(IfBranch(cond, tuple(body)))
                body = []
                if name == "else":
                    cond = None
                    seen_else = True
                else:
                    if child.get("cond") is None:
                        self.error(child, "missing-attribute", "<elseif> requires cond=")
                    cond = child.get("cond") or "false"
            else:
                action = self.action(child)
                if action is not None:
                    body.append(action)
        branches.append(IfBranch(cond, tuple(body)))
        return If(tuple(branches), self.where(el))

    def script(self, el: Any) -> Script:
        src = el.get("src")
        if src is not None:
            if (el.text or "").strip():
                self.error(el, "invalid-attribute", "<script> must not have src and content")
            try:
                return Script(self.fetch(src, self.base), self.where(el))
            except OSError as exc:
                self.error(el, "src-unavailable", f"cannot load script {src!r}: {exc}")
                return Script("", self.where(el))
        return Script(el.text or "", self.where(el))

    def param(self, el: Any) -> Param:
        if not el.get("name"):
            self.error(el, "missing-attribute", "<param> requires name=")
        self.exclusive(el, "expr", "location")
        expr, loc = el.get("expr"), el.get("location")
        if expr is None and loc is None:
            self.error(el, "missing-attribute", "<param> requires expr= or location=")
        return Param(el.get("name") or "", expr, loc)

    def inline_content(self, el: Any) -> Content | None:
        elements = self.children(el)
        if elements:
            doc = None
            if len(elements) == 1 and self.local(elements[0]) == "scxml":
                sub = _Builder(self.base, self.source_lines, self.diagnostics, self.fetch,
                               uses_in=self.uses_in)
                doc = sub.build(elements[0], None, None)
            value = "".join(
                etree.tostring(c, encoding="unicode", with_tail=False) for c in elements
            )
            return Content(value=value, has_value=True, document=doc)
        text = el.text or ""
        if not text.strip():
            return None
        return Content(value=decode_text(text), has_value=True)

    def content(self, el: Any) -> Content:
        expr = el.get("expr")
        if expr is not None:
            if len(self.children(el)) or (el.text or "").strip():
                self.error(el, "invalid-attribute", "<content> must not have expr and children")
            return Content(expr=expr)
        inline = self.inline_content(el)
        return inline if inline is not None else Content(value="", has_value=True)

    def send(self, el: Any) -> Send:
        self.exclusive(el, "event", "eventexpr")
        self.exclusive(el, "target", "targetexpr")
        self.exclusive(el, "type", "typeexpr")
        self.exclusive(el, "id", "idlocation")
        self.exclusive(el, "delay", "delayexpr")
        params = []
        content = None
        for child in self.children(el):
            name = self.local(child)
            if name == "param":
                params.append(self.param(child))
            elif name == "content":
                content = self.content(child)
            elif name is not None:
                self.error(child, "unexpected-element", f"<{name}> in <send>")
        namelist = tuple((el.get("namelist") or "").split())
        if content is not None and (params or namelist):
            self.error(el, "invalid-attribute", "<send> with <content> must not have params")
        if content is None and el.get("event") is None and el.get("eventexpr") is None:
            self.error(el, "missing-attribute", "<send> requires event=, eventexpr= or <content>")
        return Send(
            event=el.get("event"), eventexpr=el.get("eventexpr"), target=el.get("target"),
            targetexpr=el.get("targetexpr"), type=el.get("type"), typeexpr=el.get("typeexpr"),
            id=el.get("id"), idlocation=el.get("idlocation"), delay=el.get("delay"),
            delayexpr=el.get("delayexpr"), namelist=namelist, params=tuple(params),
            content=content, where=self.where(el),
        )

    def invoke(self, el: Any) -> Invoke:
        self.exclusive(el, "type", "typeexpr")
        self.exclusive(el, "src", "srcexpr")
        self.exclusive(el, "id", "idlocation")
        params = []
        content = None
        finalize: tuple[Any, ...] = ()
        for child in self.children(el):
            name = self.local(child)
            if name == "param":
                params.append(self.param(child))
            elif name == "content":
                content = self.content(child)
            elif name == "finalize":
                finalize = self.block(child)
            elif name is not None:
                self.error(child, "unexpected-element", f"<{name}> in <invoke>")
        if content is not None and (el.get("src") or el.get("srcexpr")):
            self.error(el, "invalid-attribute", "<invoke> must not have src and <content>")
        auto = el.get("autoforward", "false")
        if auto not in ("true", "false"):
            self.error(el, "invalid-attribute", "autoforward must be true or false")
        return Invoke(
            type=el.get("type"), typeexpr=el.get("typeexpr"), src=el.get("src"),
            srcexpr=el.get("srcexpr"), id=el.get("id"), idlocation=el.get("idlocation"),
            namelist=tuple((el.get("namelist") or "").split()), params=tuple(params),
            content=content, autoforward=auto == "true", finalize=finalize,
            where=self.where(el),
        )

    def data(self, el: Any) -> DataDecl:
        did = el.get("id")
        if not did:
            self.error(el, "missing-attribute", "<data> requires id=")
        src = el.get("src")
        expr = el.get("expr")
        has_children = bool(self.children(el)) or bool((el.text or "").strip())
        if sum(x for x in (src is not None, expr is not None, has_children)) > 1:
            self.error(el, "invalid-attribute", "<data> takes one of src=, expr= or content")
        src_text = src_error = None
        if src is not None:
            try:
                src_text = self.fetch(src, self.base)
            except OSError as exc:
                src_error = str(exc)
        content = self.inline_content(el) if has_children else None
        return DataDecl(did or "", expr, src, src_text, src_error, content, self.where(el))

    def donedata(self, el: Any) -> DoneData:
        params = []
        content = None
        for child in self.children(el):
            name = self.local(child)
            if name == "param":
                params.append(self.param(child))
            elif name == "content":
                content = self.content(child)
        if params and content is not None:
            self.error(el, "invalid-attribute", "<donedata> takes <content> or <param>, not both")
        return DoneData(tuple(params), content)


def static_domain(t: Transition) -> StateNode | None:
    """Transition domain when no target is a history state (it cannot change at runtime)."""
    targets = t.targets
    if not targets:
        return None
    src = t.source
    if t.internal and src.is_compound and all(s.is_descendant_of(src) for s in targets):
        return src
    return find_lcca((src, *targets))


def find_lcca(states: tuple[StateNode, ...] | list[StateNode]) -> StateNode:
    head, tail = states[0], states[1:]
    if head.is_root:
        return head
    for anc in head.ancestors:
        if anc.is_compound or anc.is_root:
            if all(s.is_descendant_of(anc) for s in tail):
                return anc
    return head.ancestors[-1]


_PARSER = etree.XMLParser(
    resolve_entities=False, no_network=True, remove_comments=True, remove_pis=True,
    huge_tree=False,
)


def _syntax_diagnostic(exc: etree.XMLSyntaxError) -> Diagnostic:
    line, col = exc.position if exc.position else (1, 1)
    return Diagnostic(line or 1, col or 1, "xml-syntax", exc.msg or str(exc))


def check_document(
    source: str | bytes, *, path: str | None = None, base: str | None = None,
) -> tuple[Document | None, list[Diagnostic]]:
    """Parse and return the document (None if unusable) with every diagnostic found."""
    data = source.encode("utf-8") if isinstance(source, str) else source
    text = data.decode("utf-8", errors="replace")
    if base is None and path is not None:
        base = str(Path(path).resolve().parent)
    try:
        root = etree.fromstring(data, _PARSER)
    except etree.XMLSyntaxError as exc:
        return None, [_syntax_diagnostic(exc)]
    builder = _Builder(base, text.splitlines(), uses_in=bool(_USES_IN.search(text)))
    doc = builder.build(root, path, text)
    diags = sorted(builder.diagnostics, key=lambda d: (d.line, d.column))
    return doc, diags


def parse_document(
    source: str | bytes, *, path: str | None = None, base: str | None = None,
) -> Document:
    """Parse SCXML text into a :class:`Document`; raises :class:`DocumentError`."""
    doc, diags = check_document(source, path=path, base=base)
    if diags or doc is None:
        raise DocumentError(diags or [Diagnostic(1, 1, "invalid", "invalid document")], path)
    return doc


def load_document(path: str | Path) -> Document:
    p = Path(path)
    return parse_document(p.read_bytes(), path=str(p))


def is_identifier(name: str) -> bool:
    return bool(_ID_RE.match(name))
