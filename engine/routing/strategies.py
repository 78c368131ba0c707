"""SCXML strategies: Jinja2 templates in ``scxml/`` rendered from the config, then validated.

::

    catalog = StrategyCatalog()                          # scxml/ (or $NEXUS_SCXML_DIR)
    catalog.names()                                      # ('redirect_queue', 'undelivered')
    text = catalog.render("redirect_queue", model, {"fallback": "vq_x"})   # no checks
    problems = catalog.validate_rendered(text)           # [] when the document is good
    rendered = catalog.render_checked("redirect_queue", model, params)     # cached, checked
    rendered.text, rendered.body, rendered.etag

Rendering: a Jinja2 environment with XML autoescape and ``StrictUndefined``; compiled
templates are cached by Jinja2, checked renders by :class:`StrategyCatalog` per (template,
model object, normalized parameters), so serving or running a strategy is not per-request
work while nothing changed. Values reach the document only through the ``js`` filter (a JSON
literal, which is plain ES5) and autoescape: no config value or query text is written raw.

Parameters: the query parameters an orchestration server passes (``?fallback=...``) are
whitelisted (:data:`PARAMS`); unknown ones are ignored, a known one with a bad value raises
:class:`ParamError`. A queue-valued parameter may be a ``[UDATA.key]`` placeholder the
orchestration server left unsubstituted: the document then reads that user-data key of the
interaction at run time.

Validation (:func:`validate_rendered`): well-formed XML (lxml), the interpreter's static checks
(:func:`engine.routing.statechart.check_document`: ids unique, targets and initial states
resolve, Genesys actions carry their required attributes), every expression and script
compiles (QuickJS) and is plain ES5 (no ``let``/``const``/arrow functions/template literals/
classes), and the W3C XSD ``scxml.xsd``. The XSD is shared data beside the repository: found
through ``$NEXUS_SCXML_XSD_DIR`` or ``<repo>/../shared/scxml-xsd``; when it is not there the
engine skips only the XSD step (tests always pass the directory and require it). The XSD
validates the document as rendered, Genesys elements included: ``scxml.xsd`` admits elements
of other namespaces in executable content (``##other``, ``processContents="lax"``) and
attributes of other namespaces, so ``<ixn:redirect>``/``<session:fetch>`` pass unchecked by
the XSD; their attributes are checked by the interpreter's checks instead.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import quickjs
from lxml import etree

from engine.config.model import Model
from engine.routing.statechart import check_document

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_TEMPLATE_DIR = REPO_ROOT / "scxml"
DEFAULT_XSD_DIR = REPO_ROOT.parent / "shared" / "scxml-xsd"
TEMPLATE_SUFFIX = ".scxml.j2"
NAME_RE = re.compile(r"^[A-Za-z0-9_-]+$")
SCXML_NS = "http://www.w3.org/2005/07/scxml"

#: user-data key that carries the endpoint an interaction entered at
DEFAULT_ENDPOINT_KEY = "endpoint"
#: user-data key that counts the retries of an undelivered interaction
DEFAULT_ATTEMPTS_KEY = "undeliveredAttempts"
#: path (under the nexus url) of the retry request of undelivered.scxml
RETRY_PATH = "/nexus/v3/routing/undelivered/retry"
RENDER_CACHE_SIZE = 512


# ---- problems and errors ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a rendered document. ``check`` is the step that found it: ``xml``
    (not well-formed), ``scxml`` (interpreter checks), ``es`` (expressions and scripts),
    ``xsd`` (W3C schema), ``render`` (the template itself failed)."""

    line: int
    column: int
    check: str
    code: str
    message: str

    def __str__(self) -> str:
        return f"{self.line}:{self.column}: {self.check} {self.code}: {self.message}"


class StrategyError(Exception):
    """A strategy could not be rendered into a valid document."""

    def __init__(self, name: str, message: str, problems: Iterable[Problem] = ()) -> None:
        self.name = name
        self.problems = tuple(problems)
        detail = "; ".join(str(p) for p in self.problems[:5])
        super().__init__(f"{name}: {message}" + (f": {detail}" if detail else ""))


class UnknownStrategy(StrategyError):
    """No template ``<name>.scxml.j2``."""


class ParamError(StrategyError):
    """A known parameter with a value it cannot take; ``field`` names it."""

    def __init__(self, name: str, field: str, message: str) -> None:
        self.field = field
        super().__init__(name, f"parameter {field}: {message}")


# ---- parameters ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class QueueRef:
    """A queue name, given literally (``value``) or read at run time from the interaction's
    user data under ``udata`` (a ``[UDATA.key]`` placeholder)."""

    value: str | None = None
    udata: str | None = None

    def to_json(self) -> dict[str, str | None]:
        return {"value": self.value, "udata": self.udata}


_UDATA_RE = re.compile(r"^\[UDATA\.([A-Za-z0-9_.-]{1,64})\]$")
_KEY_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_QUEUE_RE = re.compile(r"^[^\x00-\x1f\x7f]{1,255}$")
_TEXT_RE = re.compile(r"^[^\x00-\x1f\x7f]{1,255}$")


def _queue_param(value: str) -> QueueRef:
    placeholder = _UDATA_RE.match(value)
    if placeholder:
        return QueueRef(udata=placeholder.group(1))
    if not _QUEUE_RE.match(value) or not value.strip():
        raise ValueError("must be a queue name (1-255 printable characters) or [UDATA.key]")
    return QueueRef(value=value)


def _key_param(value: str) -> str:
    if not _KEY_RE.match(value):
        raise ValueError("must be a user-data key: 1-64 of A-Z a-z 0-9 _ . -")
    return value


def _attempts_param(value: str) -> int:
    if not value.isdigit() or not 0 <= int(value) <= 100:
        raise ValueError("must be a whole number from 0 to 100")
    return int(value)


def _give_up_param(value: str) -> str:
    if value not in ("park", "terminate"):
        raise ValueError("must be park or terminate")
    return value


def _text_param(value: str) -> str:
    if not _TEXT_RE.match(value):
        raise ValueError("must be 1-255 printable characters")
    return value


#: The query parameters strategies accept (any template sees them as ``params``); the rest is
#: ignored. Values are strings as they come from the query; the converter checks them.
PARAMS: Mapping[str, Any] = {
    "fallback": _queue_param,  # redirect_queue: fallback queue
    "userDataKey": _key_param,  # redirect_queue: user-data key naming the target queue
    "endpointKey": _key_param,  # redirect_queue: user-data key naming the endpoint
    "maxAttempts": _attempts_param,  # undelivered
    "onGiveUp": _give_up_param,  # undelivered
    "parkQueue": _queue_param,  # undelivered
    "reason": _text_param,  # undelivered: terminate reason
    "attemptsKey": _key_param,  # undelivered: user-data key of the attempt counter
}

ParamsKey = tuple[tuple[str, str], ...]


def normalize_params(params: Mapping[str, Any] | Iterable[tuple[str, Any]] | None) -> ParamsKey:
    """The whitelisted parameters, sorted, one value each (the last one given; lists, as in
    a parsed query string, count by their last element). Unknown names are dropped."""
    if not params:
        return ()
    items = params.items() if isinstance(params, Mapping) else params
    out: dict[str, str] = {}
    for key, value in items:
        if key not in PARAMS:
            continue
        if isinstance(value, (list, tuple)):
            if not value:
                continue
            value = value[-1]
        out[key] = "" if value is None else str(value)
    return tuple(sorted(out.items()))


def convert_params(name: str, params: ParamsKey) -> dict[str, Any]:
    converted: dict[str, Any] = {}
    for key, value in params:
        try:
            converted[key] = PARAMS[key](value)
        except ValueError as exc:
            raise ParamError(name, key, str(exc)) from None
    return converted


# ---- render context ----------------------------------------------------------------------


def endpoint_queues(model: Model) -> dict[str, str]:
    """Endpoint name -> queue: the Environment's endpoints by name, a tenant's as
    ``<tenant>/<name>`` (the document prefers the tenant's when the user data has ``tenant``).
    """
    out: dict[str, str] = {}
    for endpoint in model.endpoints:
        key = endpoint.name if endpoint.tenant is None else f"{endpoint.tenant}/{endpoint.name}"
        out[key] = endpoint.queue
    return dict(sorted(out.items()))


def build_context(name: str, model: Model, params: ParamsKey = ()) -> dict[str, Any]:
    """What a template sees: config values with the parameters applied."""
    given = convert_params(name, params)
    env = model.environment
    redirect = env.routing.redirect_queue
    undelivered = env.routing.undelivered
    fallback = given.get("fallback")
    if fallback is None and redirect.fallback_queue:
        fallback = QueueRef(value=redirect.fallback_queue)
    park = given.get("parkQueue")
    if park is None and undelivered.park_queue:
        park = QueueRef(value=undelivered.park_queue)
    return {
        "strategy": name,
        "nexus_url": env.nexus_url,
        "params": given,
        "queues": sorted({q.name for q in model.queues}),
        "endpoint_queues": endpoint_queues(model),
        "redirect": {
            "fallback": fallback,
            "user_data_key": given.get("userDataKey", redirect.user_data_key),
            "endpoint_key": given.get("endpointKey", DEFAULT_ENDPOINT_KEY),
        },
        "undelivered": {
            "max_attempts": given.get("maxAttempts", undelivered.max_attempts),
            "initial_delay_seconds": undelivered.initial_delay_seconds,
            "backoff_multiplier": undelivered.backoff_multiplier,
            "max_delay_seconds": undelivered.max_delay_seconds,
            "on_give_up": given.get("onGiveUp", undelivered.on_give_up),
            "park_queue": park,
            "terminate_reason": given.get("reason", undelivered.terminate_reason),
            "attempts_key": given.get("attemptsKey", DEFAULT_ATTEMPTS_KEY),
            "retry_url": env.nexus_url + RETRY_PATH,
        },
    }


def _json_default(value: Any) -> Any:
    if isinstance(value, QueueRef):
        return value.to_json()
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"{type(value).__name__} has no ES5 literal")


def js_literal(value: Any) -> str:
    """A value as an ES5 literal (JSON, ASCII only: no U+2028/U+2029 surprises). Not marked
    safe: autoescape still XML-escapes it."""
    return json.dumps(value, default=_json_default, ensure_ascii=True, allow_nan=False,
                      separators=(",", ":"))


# ---- XSD ---------------------------------------------------------------------------------


def find_xsd_dir() -> Path | None:
    """``$NEXUS_SCXML_XSD_DIR`` or ``<repo>/../shared/scxml-xsd``, if it holds scxml.xsd."""
    env = os.environ.get("NEXUS_SCXML_XSD_DIR")
    candidate = Path(env) if env else DEFAULT_XSD_DIR
    return candidate if (candidate / "scxml.xsd").is_file() else None


@functools.lru_cache(maxsize=4)
def load_schema(xsd_dir: Path) -> etree.XMLSchema:
    """``scxml.xsd`` of a directory, loaded once (lxml; the import of xml.xsd by URL is
    skipped by libxml2 without network access, which only matters for ``xml:*``
    attributes)."""
    return etree.XMLSchema(etree.parse(str(xsd_dir / "scxml.xsd")))


# ---- validation ----------------------------------------------------------------------------

# ES2015+ syntax the orchestration server's ES5 engine rejects (checked with string literals
# blanked out, so a queue named "let me" is no false alarm).
_ES6 = (
    (re.compile(r"=>"), "arrow function"),
    (re.compile(r"\blet\s"), "let"),
    (re.compile(r"\bconst\s"), "const"),
    (re.compile(r"`"), "template literal"),
    (re.compile(r"\bclass\s+[A-Za-z_$]"), "class"),
    (re.compile(r"\.\.\.[A-Za-z_$\[]"), "spread"),
)
_STRINGS = re.compile(r"'(?:[^'\\\n]|\\.)*'|\"(?:[^\"\\\n]|\\.)*\"")
_EXPR_ATTRS = {"expr", "cond", "array"}
_XML_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False)


def _es_sources(root: Any) -> Iterable[tuple[int, str, str, bool]]:
    """(line, what, source, is_expression) of every expression and script in a document."""
    for el in root.iter():
        if not isinstance(el.tag, str):
            continue
        local = etree.QName(el).localname
        if local == "script" and etree.QName(el).namespace == SCXML_NS:
            yield el.sourceline or 1, "<script>", el.text or "", False
            continue
        for attr, value in el.attrib.items():
            if attr.startswith("{"):
                continue
            if attr in _EXPR_ATTRS or (attr.endswith("expr") and attr != "expr"):
                yield el.sourceline or 1, f"<{local} {attr}>", value, True


def _es_problems(root: Any) -> list[Problem]:
    problems: list[Problem] = []
    ctx: quickjs.Context | None = None
    for line, what, source, is_expr in _es_sources(root):
        code = _STRINGS.sub("''", source)
        for pattern, label in _ES6:
            if pattern.search(code):
                problems.append(Problem(line, 1, "es", "not-es5",
                                        f"{what} uses {label}, which is not ES5"))
        if ctx is None:
            ctx = quickjs.Context()
        body = f"return ({source.strip().rstrip(';')}\n);" if is_expr else source
        try:
            ctx.eval("(function () {\n" + body + "\n})")  # compiled, not run
        except quickjs.JSException as exc:
            message = str(exc).split("\n", 1)[0]
            problems.append(Problem(line, 1, "es", "syntax", f"{what}: {message}"))
    return problems


def validate_rendered(
    text: str | bytes, *, schema: etree.XMLSchema | None = None,
) -> list[Problem]:
    """Every problem of a rendered document; empty when it may be served and run."""
    data = text.encode("utf-8") if isinstance(text, str) else text
    try:
        root = etree.fromstring(data, _XML_PARSER)
    except etree.XMLSyntaxError as exc:
        line, column = exc.position if exc.position else (1, 1)
        return [Problem(line or 1, column or 1, "xml", "xml-syntax", exc.msg or str(exc))]
    problems = [
        Problem(d.line, d.column, "scxml", d.code, d.message)
        for d in check_document(data)[1]
    ]
    problems.extend(_es_problems(root))
    if schema is not None and not schema.validate(root):
        problems.extend(
            Problem(max(1, e.line), max(1, e.column), "xsd", "xsd", e.message)
            for e in schema.error_log
        )
    return sorted(problems, key=lambda p: (p.line, p.column, p.check))


# ---- the catalog ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RenderedStrategy:
    """A checked document: ``text``, its UTF-8 ``body``, ``sha256`` and strong ``etag``."""

    name: str
    text: str
    body: bytes
    sha256: str

    @property
    def etag(self) -> str:
        return f'"{self.sha256}"'


@dataclass(slots=True)
class _Entry:
    model: Model
    result: RenderedStrategy | StrategyError


class StrategyCatalog:
    """The templates of a directory (default ``$NEXUS_SCXML_DIR`` or ``<repo>/scxml``).

    ``xsd_dir``: where ``scxml.xsd`` is (default :func:`find_xsd_dir`); ``require_xsd=True``
    makes a missing XSD an error instead of a skipped step. Single-threaded (one event loop).
    """

    def __init__(
        self, template_dir: str | os.PathLike[str] | None = None, *,
        xsd_dir: str | os.PathLike[str] | None = None, require_xsd: bool = False,
        cache_size: int = RENDER_CACHE_SIZE,
    ) -> None:
        if template_dir is None:
            template_dir = os.environ.get("NEXUS_SCXML_DIR") or DEFAULT_TEMPLATE_DIR
        self.template_dir = Path(template_dir)
        found = Path(xsd_dir) if xsd_dir is not None else find_xsd_dir()
        if found is not None and not (found / "scxml.xsd").is_file():
            found = None
        if found is None and require_xsd:
            raise FileNotFoundError(f"scxml.xsd not found (xsd_dir={xsd_dir!r})")
        self.xsd_dir = found
        self.schema = load_schema(found.resolve()) if found is not None else None
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(str(self.template_dir)),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            keep_trailing_newline=True,
            auto_reload=True,
            cache_size=64,
        )
        self.env.filters["js"] = js_literal
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple[str, int, ParamsKey], _Entry] = OrderedDict()

    def names(self) -> tuple[str, ...]:
        """Template names (``<name>.scxml.j2``), sorted."""
        if not self.template_dir.is_dir():
            return ()
        return tuple(sorted(
            p.name[: -len(TEMPLATE_SUFFIX)] for p in self.template_dir.glob("*" + TEMPLATE_SUFFIX)
            if NAME_RE.match(p.name[: -len(TEMPLATE_SUFFIX)])
        ))

    def exists(self, name: str) -> bool:
        if not NAME_RE.match(name):
            return False
        return (self.template_dir / (name + TEMPLATE_SUFFIX)).is_file()

    def render(self, name: str, model: Model, params: Mapping[str, Any] | None = None) -> str:
        """Render without validation (raises UnknownStrategy, ParamError, StrategyError)."""
        return self._render(name, model, normalize_params(params))

    def _render(self, name: str, model: Model, params: ParamsKey) -> str:
        if not self.exists(name):
            raise UnknownStrategy(name, f"no template {name}{TEMPLATE_SUFFIX} in "
                                        f"{self.template_dir}")
        context = build_context(name, model, params)
        try:
            template = self.env.get_template(name + TEMPLATE_SUFFIX)
            return template.render(context)
        except jinja2.TemplateSyntaxError as exc:
            raise StrategyError(name, "template syntax error", [
                Problem(exc.lineno or 1, 1, "render", "template-syntax", exc.message or str(exc))
            ]) from exc
        except jinja2.TemplateError as exc:
            raise StrategyError(name, "template error", [
                Problem(1, 1, "render", "template", str(exc))
            ]) from exc

    def validate_rendered(self, text: str | bytes) -> list[Problem]:
        """:func:`validate_rendered` with this catalog's XSD (if any)."""
        return validate_rendered(text, schema=self.schema)

    def render_checked(
        self, name: str, model: Model, params: Mapping[str, Any] | None = None,
    ) -> RenderedStrategy:
        """A rendered and validated document, cached per (template, model, parameters).

        Raises :class:`UnknownStrategy`, :class:`ParamError` (neither cached) or
        :class:`StrategyError` with the problems (cached: a broken template is not re-rendered
        on every request; a new model renders afresh, :meth:`clear` forgets everything)."""
        key = normalize_params(params)
        cache_key = (name, id(model), key)
        entry = self._cache.get(cache_key)
        if entry is not None and entry.model is model:
            self._cache.move_to_end(cache_key)
            if isinstance(entry.result, StrategyError):
                raise entry.result
            return entry.result
        try:
            text = self._render(name, model, key)
        except (UnknownStrategy, ParamError):
            raise
        except StrategyError as exc:
            self._store(cache_key, model, exc)
            log.error("strategy %s does not render: %s", name, exc)
            raise
        problems = self.validate_rendered(text)
        if problems:
            error = StrategyError(name, "rendered document is invalid", problems)
            self._store(cache_key, model, error)
            log.error("strategy %s renders an invalid document: %s", name, error)
            raise error
        body = text.encode("utf-8")
        result = RenderedStrategy(name, text, body, hashlib.sha256(body).hexdigest())
        self._store(cache_key, model, result)
        return result

    def _store(self, key: tuple[str, int, ParamsKey], model: Model,
               result: RenderedStrategy | StrategyError) -> None:
        self._cache[key] = _Entry(model, result)
        self._cache.move_to_end(key)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def clear(self) -> None:
        """Forget rendered documents (after editing templates in place)."""
        self._cache.clear()
