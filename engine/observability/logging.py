"""Structured logs: JSON lines (or text for humans) on stdout, secrets masked in every record.

* :func:`configure_logging` installs one stdout handler on the root logger (Sanic's loggers
  propagate into it) with :class:`SecretFilter` and the JSON or text formatter.
* :class:`SecretFilter` masks the values of ``Authorization``, ``x-api-key``,
  ``x-nexus-client-key``, passwords, tokens and any ``*secret*`` field in the message, the
  arguments, the extra fields and the traceback, plus JWT-shaped strings and every value
  registered with :func:`register_secret` (the signing secret, the client secret, passwords in
  database/Redis URLs).
* :func:`trace_id_from` accepts an ``X-B3-TraceId`` of 16 or 32 hex characters or makes one.
* :func:`access_line` writes the one access line per request. In an event loop the lines of a
  short window (:data:`ACCESS_FLUSH_DELAY`) go out together, in writes of whole lines of at most
  ``PIPE_BUF`` bytes (so workers sharing one stdout pipe never interleave); the buffer is
  flushed by a timer, before any other record of this process, by :func:`flush_access_lines`
  (worker stop) and at exit.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import os
import re
import select
import sys
import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any, TextIO
from urllib.parse import parse_qsl, urlencode

from engine.ids import random_hex

MASK = "***"
ACCESS_LOGGER = "nexus.access"
_TRACE_RE = re.compile(r"[0-9a-fA-F]{16}|[0-9a-fA-F]{32}")
_SENSITIVE = (
    r"(?:proxy[-_])?authorization|(?:x[-_])?api[-_]?key|xapikey|x[-_]nexus[-_]client[-_]key"
    r"|[a-z_-]*password|passwd|pwd|[a-z_-]*secret[a-z_-]*|[a-z_-]*token|cookie|set-cookie"
)
# key, separator (quotes, ':' or '='), optional auth scheme, then the value.
_KV_RE = re.compile(
    rf"""(?ix)
    (?P<key>\b(?:{_SENSITIVE})\b)
    (?P<sep>["']?\s*[:=]\s*[\[(]?\s*(?:b?["'])?)
    (?P<scheme>(?:Bearer|Basic)\s+)?
    (?P<value>[^\s"'&,;)}}\]]+)
    """
)
_JWT_RE = re.compile(r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{10,}")
_SENSITIVE_KEY_RE = re.compile(rf"^(?:{_SENSITIVE})$", re.I)
_secrets: set[str] = set()
_secrets_re: re.Pattern[str] | None = None


def register_secret(*values: str | None) -> None:
    """Mask these literal values wherever they appear in a log record (6+ characters only)."""
    global _secrets_re
    added = {v for v in values if v and len(v) >= 6}
    if not added - _secrets:
        return
    _secrets.update(added)
    ordered = sorted(_secrets, key=len, reverse=True)
    _secrets_re = re.compile("|".join(re.escape(v) for v in ordered))


def mask(text: str) -> str:
    """``text`` with every secret value replaced by ``***``."""
    if _secrets_re is not None:
        text = _secrets_re.sub(MASK, text)
    text = _KV_RE.sub(lambda m: f"{m['key']}{m['sep']}{m['scheme'] or ''}{MASK}", text)
    return _JWT_RE.sub(MASK, text)


def mask_value(key: str, value: Any) -> Any:
    if isinstance(key, str) and _SENSITIVE_KEY_RE.match(key):
        return MASK
    if isinstance(value, str):
        return mask(value)
    if isinstance(value, dict):
        return {k: mask_value(k, v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [mask_value("", v) for v in value]
    return value


def mask_query(query: str) -> str:
    """A query string with sensitive parameters' values masked (for the access log)."""
    if not query:
        return ""
    pairs = parse_qsl(query, keep_blank_values=True)
    masked = [(k, MASK if _SENSITIVE_KEY_RE.match(k) else mask(v)) for k, v in pairs]
    return urlencode(masked, safe="*[]/:")


def trace_id_from(header: str | None) -> str:
    """A valid incoming ``X-B3-TraceId`` (lower-cased) or a fresh 32-hex-character one."""
    if header and _TRACE_RE.fullmatch(header):
        return header.lower()
    return _random_trace_id()


def _random_trace_id() -> str:
    """16 random bytes in hex (from the pooled ``os.urandom`` of :mod:`engine.ids`)."""
    return random_hex(16)


#: LogRecord attributes that are not "extra" fields.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class SecretFilter(logging.Filter):
    """Masks secrets in a record's message, arguments, extras and exception text."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_masked", False):
            return True  # built by access_line from already-masked parts (the hot path)
        try:
            message = record.getMessage()
        except Exception:  # a broken format string must still be logged
            message = f"{record.msg!r} {record.args!r}"
        record.msg = mask(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask(record.exc_text)
        record.exc_info = None
        for key, value in list(vars(record).items()):
            if key not in _STANDARD:
                setattr(record, key, mask_value(key, value))
        return True


_ISO_SECOND: list[Any] = [-1, ""]  # the last whole second formatted, and its text


def _iso(ts: float) -> str:
    """``2026-11-24T01:32:57.698Z``; the part up to the second is formatted once a second."""
    second = int(ts)
    if second != _ISO_SECOND[0]:
        _ISO_SECOND[0] = second
        _ISO_SECOND[1] = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{_ISO_SECOND[1]}.{int((ts - second) * 1000):03d}Z"


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {
        k: v
        for k, v in vars(record).items()
        if k not in _STANDARD and v is not None and not k.startswith("_")
    }


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": _iso(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "pid": record.process,
        }
        line.update(_extras(record))
        if record.exc_text:
            line["exc"] = record.exc_text
        return json.dumps(line, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extras = _extras(record)
        trace = extras.pop("trace_id", None)
        head = f"{_iso(record.created)} {record.levelname:<7} {record.name}"
        if trace:
            head += f" [{trace}]"
        tail = " ".join(f"{k}={v}" for k, v in extras.items())
        text = f"{head}: {record.getMessage()}" + (f" ({tail})" if tail else "")
        if record.exc_text:
            text += "\n" + record.exc_text
        return text


class StdoutHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to the current ``sys.stdout`` (so redirections and test capture work)."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)

    def emit(self, record: logging.LogRecord) -> None:
        _ACCESS_BUFFER.flush()  # this process's lines stay in the order they were made
        super().emit(record)

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return sys.stdout

    @stream.setter
    def stream(self, value: TextIO) -> None:
        return


_NEXUS_HANDLER = "nexus-stdout"


def configure_logging(fmt: str = "json", level: int | str = logging.INFO) -> logging.Handler:
    """Install (or replace) the single stdout handler of the root logger."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if handler.get_name() == _NEXUS_HANDLER:
            root.removeHandler(handler)
    handler = StdoutHandler()
    handler.set_name(_NEXUS_HANDLER)
    handler.addFilter(SecretFilter())
    handler.setFormatter(TextFormatter() if fmt == "text" else JsonFormatter())
    root.addHandler(handler)
    root.setLevel(level)
    for name in ("sanic.root", "sanic.error", "sanic.server", "sanic.websockets"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    # httpx logs every outbound request at INFO (URLs of auth and webhook calls): too chatty.
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # Nexus writes its own access lines; Sanic's would duplicate them.
    logging.getLogger("sanic.access").disabled = True
    return handler


_access = logging.getLogger(ACCESS_LOGGER)


_PID = os.getpid()  # each spawned worker imports this module afresh


def access_line(
    trace_id: str,
    method: str,
    route: str | None,
    path: str,
    query: str,
    status: int,
    started: float,
    remote: str,
) -> None:
    """The access line of a request that ended now (``started``: its ``perf_counter``)."""
    elapsed = time.perf_counter() - started
    if not _access.isEnabledFor(logging.INFO):
        return
    # Paths hold ids, never secrets; query values are masked by name and by value.
    shown = f"{path}?{mask_query(query)}" if query else path
    handler = _direct_handler()
    if handler is None:  # other handlers are attached (tests, embedding): go through logging
        fields = _access_fields(trace_id, method, route, shown, status,
                                round(elapsed * 1000.0, 3), remote)
        _access.info("%s %s %d", method, shown, status, extra={**fields, "_masked": True})
        return
    # The hot path: one access line per request, written straight to stdout, skipping
    # LogRecord creation, caller lookup and the secret filter (the parts are masked above),
    # which together cost more than the request itself. Only the fields are kept here: the
    # buffer formats its lines together, later (see AccessLineBuffer.add_fields).
    _ACCESS_BUFFER.add_fields((
        _text_access_tuple if isinstance(handler.formatter, TextFormatter)
        else _json_access_tuple,
        time.time(), trace_id, method, route, shown, status, elapsed, remote,
    ))


#: (formatter, time.time(), trace id, method, route, shown path, status, seconds, remote)
AccessFields = tuple[Callable[..., str], float, str, str, str | None, str, int, float, str]


def _json_access_tuple(f: AccessFields) -> str:
    _, ts, trace_id, method, route, shown, status, elapsed, remote = f
    return _json_access_line(trace_id, method, route, shown, status,
                             round(elapsed * 1000.0, 3), remote, ts)


def _text_access_tuple(f: AccessFields) -> str:
    _, ts, trace_id, method, route, shown, status, elapsed, remote = f
    return _text_access_line(_access_fields(trace_id, method, route, shown, status,
                                            round(elapsed * 1000.0, 3), remote), ts)


def _access_fields(
    trace_id: str, method: str, route: str | None, shown: str, status: int,
    duration_ms: float, remote: str,
) -> dict[str, Any]:
    return {
        "trace_id": trace_id,
        "method": method,
        "route": route,
        "path": shown,
        "status": status,
        "duration_ms": duration_ms,
        "remote": remote,
        "worker": _PID,
    }


def _text_access_line(fields: dict[str, Any], ts: float) -> str:
    """What TextFormatter gives for the access record."""
    message = f"{fields['method']} {fields['path']} {fields['status']}"
    tail = " ".join(f"{k}={v}" for k, v in fields.items() if k != "trace_id")
    head = f"{_iso(ts)} {'INFO':<7} {ACCESS_LOGGER} [{fields['trace_id']}]"
    return f"{head}: {message} ({tail})"


def _json_access_line(
    trace_id: str, method: str, route: str | None, shown: str, status: int,
    duration_ms: float, remote: str, ts: float,
) -> str:
    """What JsonFormatter (json.dumps, ensure_ascii=False) gives, without the generic encoder."""
    esc = _json_string
    message = f"{method} {shown} {status}"
    return (
        f'{{"ts": "{_iso(ts)}", "level": "info", "logger": "{ACCESS_LOGGER}", '
        f'"msg": {esc(message)}, "pid": {_PID}, "trace_id": {esc(trace_id)}, '
        f'"method": {esc(method)}, "route": {_json_value(route)}, "path": {esc(shown)}, '
        f'"status": {int(status)}, "duration_ms": {duration_ms!r}, '
        f'"remote": {esc(remote)}, "worker": {_PID}}}'
    )


def access_enabled() -> bool:
    """Whether :func:`access_line` writes anything (callers skip gathering its fields if not)."""
    return _access.isEnabledFor(logging.INFO)


def flush_access_lines() -> None:
    """Write the access lines still buffered (at worker stop; also run at exit)."""
    _ACCESS_BUFFER.flush()


#: How long an access line may wait for others to share its write.
ACCESS_FLUSH_DELAY = 0.05
#: Pipe writes up to this size are atomic: a batch never exceeds it.
PIPE_BUF: int = getattr(select, "PIPE_BUF", 512)
#: Access lines kept as fields before they are formatted together.
ACCESS_FIELDS_LIMIT = 64
_running_loop = asyncio._get_running_loop  # None outside a loop, where get_running_loop raises


class AccessLineBuffer:
    """Collects access lines and writes them to ``sys.stdout`` in batches of whole lines.

    In an event loop, the first line of a batch arms a timer of ``delay`` seconds; a line that
    would take the batch past ``limit`` bytes writes the batch first. Outside an event loop a
    line is written at once. ``write`` puts out one batch (default: to the current
    ``sys.stdout``, then a flush, so each batch is one write).

    :meth:`add_fields` takes a line's fields instead of its text: they are formatted when
    ``fields_limit`` of them wait, when the timer fires, or before anything else is added or
    flushed, so the order of lines is kept. Formatted together rather than one by one between
    requests, they cost less: about 4-5 us less engine CPU per request in the ingest
    benchmark, where the access line as a whole cost about 20 us.
    """

    def __init__(
        self,
        delay: float = ACCESS_FLUSH_DELAY,
        limit: int = PIPE_BUF,
        write: Callable[[str], None] | None = None,
        fields_limit: int = ACCESS_FIELDS_LIMIT,
    ) -> None:
        self.delay = delay
        self.limit = limit
        self.fields_limit = fields_limit
        self._write = write or _write_to_stdout
        self._lines: list[str] = []
        self._size = 0
        self._fields: list[AccessFields] = []
        # Other threads' log records flush too; re-entrant for a record logged by a signal
        # handler that interrupts this thread inside add().
        self._lock = threading.RLock()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_loop: asyncio.AbstractEventLoop | None = None

    def add(self, line: str) -> None:
        with self._lock:
            if self._fields:
                self._format_fields()
            self._add(line)
            self._arm_timer()

    def add_fields(self, fields: AccessFields) -> None:
        """A line to format later: ``fields[0](fields)`` gives its text (without the newline)."""
        with self._lock:
            pending = self._fields
            pending.append(fields)
            if len(pending) >= self.fields_limit:
                self._format_fields()
            loop = _running_loop()
            if loop is None or loop is not self._timer_loop:
                self._arm_timer()

    def flush(self) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = self._timer_loop = None
            self._write_all()

    def _add(self, line: str) -> None:
        size = len(line) if line.isascii() else len(line.encode("utf-8", "surrogatepass"))
        if self._lines and self._size + size > self.limit:
            self._write_batch()
        self._lines.append(line)
        self._size += size

    def _format_fields(self) -> None:
        pending, self._fields = self._fields, []
        add = self._add
        for fields in pending:
            add(fields[0](fields) + "\n")

    def _arm_timer(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop (a thread, a tool): nothing would flush later
            self._write_all()
            return
        if self._timer_loop is not loop:  # none armed, or armed in a loop that is gone
            self._timer = loop.call_later(self.delay, self._on_timer)
            self._timer_loop = loop

    def _on_timer(self) -> None:
        with self._lock:
            self._timer = self._timer_loop = None
            self._write_all()

    def forget_after_fork(self) -> None:
        """In a forked child: the parent writes its own pending lines."""
        self._lines = []
        self._size = 0
        self._fields = []
        self._lock = threading.RLock()
        self._timer = self._timer_loop = None

    def _write_all(self) -> None:
        """Format the fields waiting and write every line (under the lock)."""
        if self._fields:
            self._format_fields()
        self._write_batch()

    def _write_batch(self) -> None:
        if not self._lines:
            return
        text = "".join(self._lines)
        self._lines.clear()
        self._size = 0
        self._write(text)


def _write_to_stdout(text: str) -> None:
    try:
        out = sys.stdout
        out.write(text)
        out.flush()
    except (OSError, ValueError):  # stdout is gone: like logging, never fail the caller
        pass


_ACCESS_BUFFER = AccessLineBuffer()
atexit.register(flush_access_lines)
os.register_at_fork(after_in_child=lambda: _ACCESS_BUFFER.forget_after_fork())


_json_string = json.encoder.encode_basestring  # the C string escaper json.dumps uses


def _json_value(value: Any) -> str:
    return "null" if value is None else _json_string(str(value))


def _direct_handler() -> logging.Handler | None:
    """The Nexus stdout handler when it is the only place access lines go, else None."""
    handlers = logging.root.handlers
    if (
        len(handlers) == 1
        and handlers[0].get_name() == _NEXUS_HANDLER
        and not _access.handlers
        and _access.propagate
        and not _access.disabled
        and handlers[0].level <= logging.INFO
    ):
        return handlers[0]
    return None


def secrets_in_url(url: str) -> Iterable[str]:
    """The password of a ``scheme://user:password@host`` URL (to register as a secret)."""
    match = re.match(r"^[a-z][a-z0-9+.-]*://[^:/@]*:([^@/]+)@", url, re.I)
    if match:
        yield match.group(1)
