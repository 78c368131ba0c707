"""The ECMAScript datamodel on QuickJS (the ``quickjs-ng`` package, imported as ``quickjs``).

One QuickJS context per running session. Values stay inside the context for assignments and
conditions; only values that must leave the session (event data, params, donedata, host
requests) round-trip through JSON.

Speed: expressions are compiled once per context into cached functions, and a
:class:`ContextPool` hands a finished session's context to the next session of the same
document after wiping every global the session created. A context whose globals cannot be
wiped (``var``/``function`` declarations in ``<script>`` are non-deletable) is discarded rather
than reused. QuickJS contexts are not thread-safe: a session, its datamodel and the pool must
be used from one thread.
"""

from __future__ import annotations

import json
import math
import re
import weakref
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import quickjs

from .datamodel import DataModelError
from .events import Event

# Per-context helpers, hidden from the document as non-enumerable, read-only globals.
_PRELUDE = r"""(function (g) {
  "use strict";
  var nx = {fe: [], cache: Object.create(null), size: 0};
  Object.defineProperty(g, "__nx", {value: nx});
  function ro(n, v) {
    Object.defineProperty(g, n, {value: v, writable: false, enumerable: true,
                                 configurable: true});
  }
  function opt(v) { return v === null ? undefined : v; }
  function compiled(key, args, body) {
    var f = nx.cache[key];
    if (f === undefined) {
      if (nx.size > 4096) { nx.cache = Object.create(null); nx.size = 0; }
      f = args === null ? new Function(body) : new Function(args, body);
      nx.cache[key] = f;
      nx.size++;
    }
    return f;
  }
  // In() is answered from a mirror of the configuration: QuickJS cannot call back into
  // Python while a time limit is set.
  nx.active = Object.create(null);
  Object.defineProperty(g, "In", {value: function (id) { return nx.active[id] === true; },
                                  enumerable: true});
  var fns = {
    sys: function (sid, name, io) {
      ro("_sessionid", sid); ro("_name", opt(name)); ro("_ioprocessors", JSON.parse(io));
      ro("_x", {});
    },
    ev: function (n, t, s, o, ot, i, d, r) {
      var e = {name: n, type: t, sendid: opt(s), origin: opt(o), origintype: opt(ot),
               invokeid: opt(i), data: d === null ? undefined : JSON.parse(d)};
      if (r !== null) e.raw = r;
      ro("_event", Object.freeze(e));
    },
    val: function (src) { return compiled("v" + src, null, "return (" + src + "\n);")(); },
    cond: function (src) { return !!compiled("c" + src, null, "return (" + src + "\n);")(); },
    assign: function (loc, src) {
      // Strict mode turns writes to undeclared or read-only names into errors.
      compiled("a" + loc + "\u0000" + src, null,
               '"use strict"; ' + loc + " = (" + src + "\n);")();
    },
    assignJson: function (loc, d) {
      compiled("j" + loc, "v", '"use strict"; ' + loc + " = v;")(JSON.parse(d));
    },
    init: function (id, src) {
      g[id] = compiled("v" + src, null, "return (" + src + "\n);")();
    },
    initJson: function (id, d) { g[id] = JSON.parse(d); },
    decl: function (id) { g[id] = undefined; },
    json: function (v) { return v === undefined ? null : JSON.stringify(v); },
    enter: function (id) { nx.active[id] = true; },
    exit: function (id) { delete nx.active[id]; },
    feBegin: function (src) {
      var a = compiled("v" + src, null, "return (" + src + "\n);")();
      if (!Array.isArray(a) && !ArrayBuffer.isView(a)) return -1;
      nx.fe.push(Array.prototype.slice.call(a));
      return nx.fe[nx.fe.length - 1].length;
    },
    feSet: function (item, index, i) {
      var arr = nx.fe[nx.fe.length - 1];
      g[item] = arr[i];
      if (index !== null) g[index] = i;
    },
    feEnd: function () { nx.fe.pop(); },
    setPath: function (path, d) {
      var o = g;
      for (var k = 0; k < path.length - 1; k++) {
        if (o[path[k]] === null || typeof o[path[k]] !== "object") o[path[k]] = {};
        o = o[path[k]];
      }
      o[path[path.length - 1]] = JSON.parse(d);
    },
    delPath: function (path) {
      var o = g;
      for (var k = 0; k < path.length - 1; k++) {
        o = o[path[k]];
        if (o === null || typeof o !== "object") return;
      }
      delete o[path[path.length - 1]];
    },
    reset: function () {
      var names = Object.getOwnPropertyNames(g), clean = true;
      for (var k = 0; k < names.length; k++) {
        var n = names[k];
        if (Object.prototype.hasOwnProperty.call(base, n)) {
          if (g[n] !== base[n]) {
            try { Object.defineProperty(g, n, {value: base[n]}); } catch (e) { clean = false; }
          }
        } else if (!delete g[n]) {
          clean = false;
        }
      }
      nx.active = Object.create(null);
      nx.fe = [];
      ro("_event", undefined);
      return clean;
    },
  };
  for (var name in fns) Object.defineProperty(g, "__nx_" + name, {value: fns[name]});
  var base = Object.create(null);
  Object.getOwnPropertyNames(g).forEach(function (n) { base[n] = g[n]; });
  ro("_event", undefined);  // bound (read-only) from the start, valued from the first event
  function ro(n, v) {
    Object.defineProperty(g, n, {value: v, writable: false, enumerable: true,
                                 configurable: true});
  }
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

_JSErrors = (quickjs.JSException, quickjs.StackOverflow)


def _to_json(value: Any) -> str:
    try:
        return json.dumps(value, default=str, allow_nan=False)
    except ValueError:  # NaN / Infinity have no JSON form
        return "null"


def _expr(text: str) -> str:
    """An expression as written, minus trailing semicolons (``expr="new Foo();"``)."""
    return text.strip().rstrip(";").rstrip()


def _message(exc: Exception) -> str:
    return str(exc).split("\n", 1)[0]


class JsContext:
    """A QuickJS context with the helper functions fetched once."""

    __slots__ = (
        "ctx", "sys", "ev", "val", "cond", "assign", "assign_json", "init", "init_json", "decl",
        "json", "enter", "exit", "fe_begin", "fe_set", "fe_end", "set_path", "del_path", "reset",
        "reusable",
    )

    def __init__(self, time_limit: float, memory_limit: int) -> None:
        ctx = quickjs.Context()
        ctx.set_time_limit(time_limit)
        ctx.set_memory_limit(memory_limit)
        ctx.eval(_PRELUDE)
        get = ctx.get
        self.ctx = ctx
        self.sys = get("__nx_sys")
        self.ev = get("__nx_ev")
        self.val = get("__nx_val")
        self.cond = get("__nx_cond")
        self.assign = get("__nx_assign")
        self.assign_json = get("__nx_assignJson")
        self.init = get("__nx_init")
        self.init_json = get("__nx_initJson")
        self.decl = get("__nx_decl")
        self.json = get("__nx_json")
        self.enter = get("__nx_enter")
        self.exit = get("__nx_exit")
        self.fe_begin = get("__nx_feBegin")
        self.fe_set = get("__nx_feSet")
        self.fe_end = get("__nx_feEnd")
        self.set_path = get("__nx_setPath")
        self.del_path = get("__nx_delPath")
        self.reset = get("__nx_reset")
        self.reusable = True


class ContextPool:
    """Recycles contexts between sessions of the same document (keyed weakly by document)."""

    def __init__(
        self, per_document: int = 8, time_limit: float = DEFAULT_TIME_LIMIT,
        memory_limit: int = DEFAULT_MEMORY_LIMIT,
    ) -> None:
        self.per_document = per_document
        self.time_limit = time_limit
        self.memory_limit = memory_limit
        self._free: weakref.WeakKeyDictionary[Any, list[JsContext]] = (
            weakref.WeakKeyDictionary()
        )

    def acquire(self, key: Any) -> JsContext:
        free = self._free.get(key)
        if free:
            return free.pop()
        return JsContext(self.time_limit, self.memory_limit)

    def release(self, key: Any, js: JsContext) -> None:
        if not js.reusable:
            return
        try:
            clean = bool(js.reset())
        except _JSErrors:
            clean = False
        if not clean:
            return
        free = self._free.setdefault(key, [])
        if len(free) < self.per_document:
            free.append(js)


class _Closed:
    """Stands in for the context after the session ended (it may serve another session)."""

    def __getattr__(self, name: str) -> Any:
        raise DataModelError("the session has ended; its datamodel is gone")


_CLOSED: Any = _Closed()


class EcmaScriptDataModel:
    name = "ecmascript"

    __slots__ = ("_js", "_pool", "_key")

    def __init__(self, pool: ContextPool | None = None, key: Any = None) -> None:
        self._pool = pool
        self._key = key
        if pool is not None and key is not None:
            self._js = pool.acquire(key)
        else:
            self._js = JsContext(DEFAULT_TIME_LIMIT, DEFAULT_MEMORY_LIMIT)

    # --- setup ---------------------------------------------------------------------------

    def bind_system(
        self, sessionid: str, name: str | None, ioprocessors: Mapping[str, Any],
        in_state: Callable[[str], bool],
    ) -> None:
        self._call(self._js.sys, sessionid, name, json.dumps(ioprocessors))

    def state_entered(self, state_id: str) -> None:
        self._js.enter(state_id)

    def state_exited(self, state_id: str) -> None:
        self._js.exit(state_id)

    # --- data ------------------------------------------------------------------------------

    def declare(self, id: str) -> None:
        self._call(self._js.decl, id)

    def init_data(self, id: str, expr: str) -> None:
        self._call(self._js.init, id, _expr(expr))

    def assign(self, location: str, expr: str) -> None:
        self._call(self._js.assign, location.strip(), _expr(expr))

    def assign_value(self, location: str, value: Any) -> None:
        self._call(self._js.assign_json, location.strip(), _to_json(value))

    def evaluate(self, expr: str) -> Any:
        return self._to_python(self._call(self._js.val, _expr(expr)))

    def _to_python(self, value: Any) -> Any:
        if isinstance(value, quickjs.Object):
            text = self._call(self._js.json, value)
            return None if text is None else json.loads(text)
        if isinstance(value, float):
            if value.is_integer() and abs(value) < 2**53:
                return int(value)
            if math.isnan(value) or math.isinf(value):
                return None
        return value

    def evaluate_cond(self, expr: str) -> bool:
        return bool(self._call(self._js.cond, _expr(expr)))

    def execute_script(self, source: str) -> None:
        # Global code (not a cached function) so declarations become globals.
        try:
            self._js.ctx.eval(source)
        except _JSErrors as exc:
            raise DataModelError(_message(exc)) from exc

    def is_legal_location(self, location: str) -> bool:
        if _IDENT.match(location):
            return location not in _RESERVED
        try:
            self._js.ctx.eval(f'(function(){{"use strict"; {location} = {location};}})')
        except _JSErrors:
            return False
        return True

    def set_event(self, event: Event) -> None:
        data = None if event.data is None else _to_json(event.data)
        self._call(self._js.ev, event.name, event.type, event.sendid, event.origin,
                   event.origintype, event.invokeid, data, event.raw)

    def foreach(self, array: str, item: str, index: str | None) -> Iterator[None]:
        if not _IDENT.match(item) or item in _RESERVED:
            raise DataModelError(f"foreach item {item!r} is not a legal variable name")
        if index is not None and (not _IDENT.match(index) or index in _RESERVED):
            raise DataModelError(f"foreach index {index!r} is not a legal variable name")
        js = self._js
        length = self._call(js.fe_begin, _expr(array))
        if length is None or length < 0:
            raise DataModelError(f"foreach array {array!r} is not an array")
        try:
            for i in range(int(length)):
                self._call(js.fe_set, item, index, i)
                yield None
        finally:
            js.fe_end()

    def set_path(self, path: tuple[str, ...], value: Any) -> None:
        self._call(self._js.set_path, self._js.ctx.parse_json(json.dumps(list(path))),
                   _to_json(value))

    def delete_path(self, path: tuple[str, ...]) -> None:
        self._call(self._js.del_path, self._js.ctx.parse_json(json.dumps(list(path))))

    def close(self) -> None:
        """Return the context to the pool (wiped) or let it be freed."""
        if self._pool is not None and self._key is not None:
            self._pool.release(self._key, self._js)
            self._pool = None
            self._js = _CLOSED

    # --- plumbing --------------------------------------------------------------------------

    def _call(self, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except _JSErrors as exc:
            raise DataModelError(_message(exc)) from exc
        except (TypeError, ValueError, OverflowError) as exc:
            raise DataModelError(str(exc)) from exc
