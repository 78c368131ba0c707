"""The ECMAScript datamodel on QuickJS (the ``quickjs-ng`` package, imported as ``quickjs``).

One QuickJS context per session. Values stay inside the context for assignments and
conditions; only values that must leave the session (event data, params, donedata, host
requests) round-trip through JSON. QuickJS contexts are not thread-safe: a session and its
datamodel must be used from one thread.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import quickjs

from .datamodel import DataModelError
from .events import Event

# Per-context helpers, hidden from the document as a non-enumerable, read-only global.
_PRELUDE = r"""(function (g) {
  "use strict";
  var nx = {fe: []};
  Object.defineProperty(g, "__nx", {value: nx});
  function ro(n, v) {
    Object.defineProperty(g, n, {value: v, writable: false, enumerable: true,
                                 configurable: true});
  }
  function opt(v) { return v === null ? undefined : v; }
  nx.sys = function (sid, name, io) {
    ro("_sessionid", sid); ro("_name", opt(name)); ro("_ioprocessors", JSON.parse(io));
    ro("_x", {});
  };
  ro("_event", undefined);  // bound (read-only) from the start, valued from the first event
  nx.ev = function (n, t, s, o, ot, i, d, r) {
    var e = {name: n, type: t, sendid: opt(s), origin: opt(o), origintype: opt(ot),
             invokeid: opt(i), data: d === null ? undefined : JSON.parse(d)};
    if (r !== null) e.raw = r;
    ro("_event", Object.freeze(e));
  };
  // In() is answered from a mirror of the configuration: QuickJS cannot call back into
  // Python while a time limit is set.
  nx.active = Object.create(null);
  nx.enter = function (id) { nx.active[id] = true; };
  nx.exit = function (id) { delete nx.active[id]; };
  ro("In", function (id) { return nx.active[id] === true; });
  nx.decl = function (id) { g[id] = undefined; };
  nx.feBegin = function (a) {
    if (!Array.isArray(a) && !ArrayBuffer.isView(a)) return -1;
    nx.fe.push(Array.prototype.slice.call(a));
    return nx.fe[nx.fe.length - 1].length;
  };
  nx.feSet = function (item, index, i) {
    var arr = nx.fe[nx.fe.length - 1];
    g[item] = arr[i];
    if (index !== null) g[index] = i;
  };
  nx.feEnd = function () { nx.fe.pop(); };
  nx.setPath = function (path, d) {
    var o = g;
    for (var k = 0; k < path.length - 1; k++) {
      if (o[path[k]] === null || typeof o[path[k]] !== "object") o[path[k]] = {};
      o = o[path[k]];
    }
    o[path[path.length - 1]] = JSON.parse(d);
  };
  nx.delPath = function (path) {
    var o = g;
    for (var k = 0; k < path.length - 1; k++) {
      o = o[path[k]];
      if (o === null || typeof o !== "object") return;
    }
    delete o[path[path.length - 1]];
  };
  nx.json = function (v) { return v === undefined ? null : JSON.stringify(v); };
  return nx;
})(globalThis)"""

_RESERVED = frozenset("""
break case catch class const continue debugger default delete do else enum export extends
false finally for function if import in instanceof new null return super switch this throw
true try typeof var void while with yield let static implements interface package private
protected public await arguments eval undefined NaN Infinity
""".split())
_IDENT = re.compile(r"^[A-Za-z_$][\w$]*$")

# Default per-evaluation CPU limit, so a runaway script cannot hang the host.
DEFAULT_TIME_LIMIT = 5.0
DEFAULT_MEMORY_LIMIT = 64 * 1024 * 1024


def _to_json(value: Any) -> str:
    return json.dumps(value, default=str, allow_nan=False) if _finite(value) else "null"


def _finite(value: Any) -> bool:
    return not (isinstance(value, float) and (math.isnan(value) or math.isinf(value)))


def _expr(text: str) -> str:
    """An expression as written, minus trailing semicolons (``expr="new Foo();"``)."""
    return text.strip().rstrip(";")


def _message(exc: Exception) -> str:
    return str(exc).split("\n", 1)[0]


class EcmaScriptDataModel:
    name = "ecmascript"

    __slots__ = ("_ctx", "_nx_ev", "_nx_json", "_nx_feset", "_nx_decl", "_nx_enter", "_nx_exit")

    def __init__(
        self, time_limit: float = DEFAULT_TIME_LIMIT, memory_limit: int = DEFAULT_MEMORY_LIMIT,
    ) -> None:
        ctx = quickjs.Context()
        ctx.set_time_limit(time_limit)
        ctx.set_memory_limit(memory_limit)
        self._ctx = ctx
        nx = ctx.eval(_PRELUDE)
        self._nx_ev = ctx.eval("__nx.ev")
        self._nx_json = ctx.eval("__nx.json")
        self._nx_feset = ctx.eval("__nx.feSet")
        self._nx_decl = ctx.eval("__nx.decl")
        self._nx_enter = ctx.eval("__nx.enter")
        self._nx_exit = ctx.eval("__nx.exit")
        del nx

    # --- setup ---------------------------------------------------------------------------

    def bind_system(
        self, sessionid: str, name: str | None, ioprocessors: Mapping[str, Any],
        in_state: Callable[[str], bool],
    ) -> None:
        self._ctx.eval("__nx.sys")(sessionid, name, json.dumps(ioprocessors))

    def state_entered(self, state_id: str) -> None:
        self._nx_enter(state_id)

    def state_exited(self, state_id: str) -> None:
        self._nx_exit(state_id)

    # --- data ------------------------------------------------------------------------------

    def declare(self, id: str) -> None:
        self._call(self._nx_decl, id)

    def init_data(self, id: str, expr: str) -> None:
        self._eval(f"globalThis[{json.dumps(id)}] = ({_expr(expr)}\n)")

    def assign(self, location: str, expr: str) -> None:
        # Strict mode turns writes to undeclared or read-only names into errors.
        self._eval(f'(function(){{"use strict"; {location} = ({_expr(expr)}\n);}})()')

    def assign_value(self, location: str, value: Any) -> None:
        self.assign(location, _to_json(value))

    def evaluate(self, expr: str) -> Any:
        value = self._eval(f"({_expr(expr)}\n)")
        return self._to_python(value)

    def _to_python(self, value: Any) -> Any:
        if isinstance(value, quickjs.Object):
            try:
                text = self._nx_json(value)
            except quickjs.JSException as exc:
                raise DataModelError(_message(exc)) from exc
            return None if text is None else json.loads(text)
        if isinstance(value, float):
            if value.is_integer() and abs(value) < 2**53:
                return int(value)
            if not _finite(value):
                return None
        return value

    def evaluate_cond(self, expr: str) -> bool:
        return bool(self._eval(f"!!({_expr(expr)}\n)"))

    def execute_script(self, source: str) -> None:
        self._eval(source)

    def is_legal_location(self, location: str) -> bool:
        if _IDENT.match(location):
            return location not in _RESERVED
        try:
            self._ctx.eval(f'(function(){{"use strict"; {location} = {location};}})')
        except quickjs.JSException:
            return False
        return True

    def set_event(self, event: Event) -> None:
        data = None if event.data is None else _to_json(event.data)
        self._call(self._nx_ev, event.name, event.type, event.sendid, event.origin,
                   event.origintype, event.invokeid, data, event.raw)

    def foreach(self, array: str, item: str, index: str | None) -> Iterator[None]:
        if not _IDENT.match(item) or item in _RESERVED:
            raise DataModelError(f"foreach item {item!r} is not a legal variable name")
        if index is not None and (not _IDENT.match(index) or index in _RESERVED):
            raise DataModelError(f"foreach index {index!r} is not a legal variable name")
        length = self._eval(f"__nx.feBegin(({_expr(array)}\n))")
        if length is None or length < 0:
            raise DataModelError(f"foreach array {array!r} is not an array")
        try:
            for i in range(int(length)):
                self._call(self._nx_feset, item, index, i)
                yield None
        finally:
            self._ctx.eval("__nx.feEnd()")

    def set_path(self, path: tuple[str, ...], value: Any) -> None:
        self._eval(f"__nx.setPath({json.dumps(list(path))}, {json.dumps(_to_json(value))})")

    def delete_path(self, path: tuple[str, ...]) -> None:
        self._eval(f"__nx.delPath({json.dumps(list(path))})")

    def close(self) -> None:
        self._ctx.gc()

    # --- plumbing --------------------------------------------------------------------------

    def _eval(self, source: str) -> Any:
        try:
            return self._ctx.eval(source)
        except (quickjs.JSException, quickjs.StackOverflow) as exc:
            raise DataModelError(_message(exc)) from exc
        except (TypeError, ValueError, OverflowError) as exc:
            raise DataModelError(str(exc)) from exc

    def _call(self, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except (quickjs.JSException, quickjs.StackOverflow) as exc:
            raise DataModelError(_message(exc)) from exc
