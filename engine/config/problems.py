"""Problems found by the schema checks, and how they become findings.

Both validators of document shapes (Cerberus in :mod:`engine.config.schema` and the
precompiled per-section checks in :mod:`engine.config.fastcheck`) describe what is wrong
as a :class:`Problem`: a path, a kind and the facts. :func:`report` turns one problem into
ONE finding with a stable code, on the line of the offending key (or of its parent for a
missing key), with a message that names the full path, the value found, what it must be
and what the user can do about it.
"""

from __future__ import annotations

import datetime as _dt
import difflib
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from engine.config.diagnostics import Findings, describe
from engine.config.loader import Document, dotted
from engine.config.refs import Ref

# Problem kind -> finding code (documented in docs/config.md).
CODES: dict[str, str] = {
    "envelope": "NX101",
    "unknown": "NX201",
    "required": "NX202",
    "type": "NX203",
    "allowed": "NX204",
    "format": "NX205",
    "range": "NX206",
    "empty": "NX206",
    "section": "NX207",
    "service": "NX208",
    "conflict": "NX209",
    "other": "NX299",
}

# Keys whose values are secrets: messages never print what they hold.
SECRET_KEYS = frozenset({"secret", "password", "token", "clientSecret", "apikey", "key"})

YAML11_BOOLEAN_WORDS = frozenset(
    {"y", "n", "yes", "no", "on", "off", "true", "false"}
)


@dataclass(slots=True)
class Problem:
    """One thing wrong with a document, before it is rendered as a finding."""

    path: tuple[Any, ...]
    kind: str
    value: Any = None
    expected: str = ""
    hint: str = ""
    candidates: tuple[str, ...] = ()
    at: str = "key"  # "key": the key's line; "parent": the parent's (missing keys)


# ---- formats (custom rule nexus_format) ------------------------------------------------

_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_SUFFIX = re.compile(r"^[A-Za-z0-9_-]+$")
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_DOMAIN = re.compile(
    r"^(?=.{1,253}$)(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}$"
)
SANDBOX_FLAGS = (
    "ALLOW-SCRIPTS",
    "ALLOW-FORMS",
    "ALLOW-POPUPS",
    "ALLOW-SAME-ORIGIN",
    "ALLOW-DOWNLOADS",
)


def is_uuid(text: str) -> bool:
    return bool(_UUID.match(text))


def is_url(text: str) -> bool:
    if any(c.isspace() for c in text):
        return False
    try:
        parts = urlsplit(text)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def _check_url(text: str) -> str:
    if is_url(text):
        return ""
    if "://" not in text:
        return "add the scheme, e.g. 'https://" + text.lstrip("/") + "'"
    return "use an http:// or https:// URL with a host"


def _check_url_or_na(text: str) -> str:
    return "" if text == "N/A" else _check_url(text)


def _check_uuid(text: str) -> str:
    if _UUID.match(text):
        return ""
    compact = text.replace("-", "").strip()
    if len(compact) == 32 and all(c in "0123456789abcdefABCDEF" for c in compact):
        return "write it with dashes, 8-4-4-4-12 hex digits"
    return "copy the contact center ID from GWS (8-4-4-4-12 hex digits)"


def _check_name(text: str) -> str:
    if _NAME.match(text):
        return ""
    if any(c.isspace() for c in text):
        return "names must not contain spaces: use '-' or '_'"
    return "use letters, digits, '_', '-' and '.', starting with a letter or digit"


def _check_channel_id(text: str) -> str:
    if text.strip() == text and not any(c.isspace() for c in text):
        return ""
    return "remove the spaces: a channel ID is a phone number, short code or domain"


def _check_email_domain(text: str) -> str:
    if _DOMAIN.match(text):
        return ""
    if "@" in text:
        return f"give only the domain, e.g. {describe(text.rsplit('@', 1)[-1])}"
    return "give the domain you send from, e.g. 'example.com'"


def _check_header_option(text: str) -> str:
    if not text.startswith("header:"):
        return "custom header options must start with 'header:', e.g. 'header:x-tenant'"
    if _TOKEN.match(text[len("header:") :]):
        return ""
    return "header names use letters, digits and !#$%&'*+-.^_`|~ only (no spaces or ':')"


def _check_sandbox(text: str) -> str:
    flags = [f.strip() for f in text.split(",")]
    bad = [f for f in flags if f not in SANDBOX_FLAGS]
    if not bad:
        return ""
    close = difflib.get_close_matches(bad[0].upper(), SANDBOX_FLAGS, n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    return f"{hint}{describe(bad[0])} is not a sandbox flag"


def _check_path(text: str) -> str:
    return "" if text.startswith("/") else "start it with '/'"


def _check_endpoint(text: str) -> str:
    if text.startswith("chat.") and _SUFFIX.match(text[5:]):
        return ""
    if _SUFFIX.match(text):
        return f"write 'chat.{text}': endpoints are named by their NexusEndpoints section"
    return "write 'chat.<name>' where <name> uses letters, digits, '_' and '-'"


def _check_strategy(text: str) -> str:
    if text.endswith(".scxml.j2") or text.endswith(".scxml"):
        return f"give the template name without the extension: '{text.split('.scxml')[0]}'"
    return "" if _SUFFIX.match(text) else "use the template's name, e.g. 'redirect_queue'"


def _check_strategy_url(text: str) -> str:
    if text.startswith("$nexusURL/"):
        return ""
    return _check_url(text)


FORMATS: dict[str, tuple[Callable[[str], str], str]] = {
    "url": (_check_url, "an http:// or https:// URL"),
    "url-or-na": (_check_url_or_na, "an http:// or https:// URL or 'N/A'"),
    "uuid": (_check_uuid, "a UUID such as '578ec98e-f07c-46ad-9675-f36c22f3ba9f'"),
    "name": (_check_name, "a name of letters, digits, '_', '-' and '.'"),
    "channel-id": (_check_channel_id, "a channel ID without spaces"),
    "email-domain": (_check_email_domain, "an email domain such as 'example.com'"),
    "header-option": (_check_header_option, "'header:<name>' with an HTTP header name"),
    "sandbox": (
        _check_sandbox,
        "a comma-separated list of " + ", ".join(f"'{f}'" for f in SANDBOX_FLAGS),
    ),
    "path": (_check_path, "a path starting with '/'"),
    "endpoint": (_check_endpoint, "'chat.<name>', a section of NexusEndpoints"),
    "strategy": (_check_strategy, "the name of an SCXML template in scxml/"),
    "strategy-url": (_check_strategy_url, "an http(s) URL or one starting with '$nexusURL/'"),
}


def check_format(fmt: str, value: Any, path: tuple[Any, ...], sink: list[Problem]) -> None:
    """Append a problem when a (non-reference) string does not have format ``fmt``."""
    if not isinstance(value, str) or isinstance(value, Ref) or value == "":
        return  # references are checked once resolved; wrong types and "" elsewhere
    check, expected = FORMATS[fmt]
    hint = check(value)
    if hint:
        sink.append(Problem(path, "format", value, expected, hint))


# ---- rendering -----------------------------------------------------------------------

TYPE_PHRASES = {
    "string": "a string",
    "boolean": "a boolean (true or false)",
    "integer": "a whole number",
    "number": "a number",
    "dict": "a mapping",
    "list": "a list",
    "date": "a date",
    "datetime": "a date-time",
}


def type_phrase(types: str | Sequence[str]) -> str:
    if isinstance(types, str):
        return TYPE_PHRASES.get(types, types)
    return " or ".join(TYPE_PHRASES.get(t, t) for t in types)


def found(value: Any, secret: bool = False) -> str:
    """What was found, in words: 'the number 12', 'the string 'x'', 'a mapping'."""
    if isinstance(value, bool):
        return f"the boolean {describe(value)}"
    if value is None:
        return "nothing (null)"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if secret:
        return "a " + type(value).__name__.replace("str", "string").replace("int", "number")
    if isinstance(value, int | float):
        return f"the number {describe(value)}"
    if isinstance(value, _dt.datetime):
        return f"the date-time {describe(value.isoformat())}"
    if isinstance(value, _dt.date):
        return f"the date {describe(value.isoformat())}"
    return f"the string {describe(value)}"


def quoted_list(items: Iterable[Any], limit: int = 12) -> str:
    items = [str(i) for i in items]
    shown = ", ".join(f"'{i}'" for i in items[:limit])
    return shown + (f" (and {len(items) - limit} more)" if len(items) > limit else "")


def did_you_mean(word: Any, candidates: Iterable[Any]) -> str:
    if not isinstance(word, str):
        return ""
    options = [str(c) for c in candidates]
    for option in options:
        if option.lower() == word.lower() or option.replace("-", "") == word.replace("_", ""):
            return option
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    return close[0] if close else ""


def type_hint(expected: str | Sequence[str], value: Any, key: Any) -> str:
    types = [expected] if isinstance(expected, str) else list(expected)
    if isinstance(key, str) and key in SECRET_KEYS and value is not None:
        return "secrets must be references such as '${env:NAME}' or '${file:PATH}'"
    if "string" in types:
        if isinstance(value, bool):
            return (
                "YAML 1.1 reads unquoted yes/no/on/off/true/false as booleans: quote the "
                "value if you mean the text"
            )
        if isinstance(value, int | float):
            return f"quote it ({key}: '{value}') so YAML keeps it a string"
        if isinstance(value, _dt.date):
            return f"quote it ({key}: '{value.isoformat()}') so YAML keeps it a string"
    if "boolean" in types and isinstance(value, str):
        if value.strip().lower() in YAML11_BOOLEAN_WORDS:
            return "write true or false without quotes"
        return "write true or false"
    if ("integer" in types or "number" in types) and isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return "write a number"
        return "remove the quotes"
    if "integer" in types and isinstance(value, float):
        return "write a whole number, without a decimal part"
    if "date" in types and isinstance(value, str):
        return "write the date unquoted as YYYY-MM-DD"
    if value is None and ("dict" in types or "list" in types):
        return "the key has no value: indent its options under it, or remove the key"
    if "dict" in types:
        return "write its options as an indented mapping ('key: value' lines)"
    if "list" in types:
        return "write a YAML list ('- item' lines)"
    return ""


def message(problem: Problem) -> str:
    path = problem.path
    where = dotted(path)
    key = path[-1] if path else ""
    secret = isinstance(key, str) and key in SECRET_KEYS
    kind = problem.kind
    if kind == "unknown":
        parent = dotted(path[:-1]) or "the document"
        text = f"{parent}: unknown key {describe(key)}"
        guess = did_you_mean(key, problem.candidates)
        if guess:
            text += f"; did you mean '{guess}'?"
        if problem.candidates:
            text += f" The keys allowed here are {quoted_list(problem.candidates)}"
        elif not guess:
            text += "; no keys are allowed here: remove it"
        return text + (f" ({problem.hint})" if problem.hint else "")
    if kind == "required":
        parent = dotted(path[:-1]) or "the document"
        text = f"{parent}: required key '{key}' is missing"
        if problem.expected:
            text += f": add '{key}' with {problem.expected}"
        else:
            text += f": add '{key}'"
        return text + (f" ({problem.hint})" if problem.hint else "")
    if kind == "type":
        text = f"{where} must be {problem.expected}, found {found(problem.value, secret)}"
    elif kind == "allowed":
        text = f"{where} must be one of {quoted_list(problem.candidates)}, found " + found(
            problem.value, secret
        )
        guess = did_you_mean(problem.value, problem.candidates)
        if guess and not problem.hint:
            problem.hint = f"did you mean '{guess}'?"
    elif kind in ("format", "range", "section", "service", "conflict"):
        shown = "" if problem.value is None else f", found {found(problem.value, secret)}"
        text = f"{where} must be {problem.expected}{shown}"
    elif kind == "empty":
        text = f"{where} must not be empty"
    else:
        text = f"{where}: {problem.expected}"
    if problem.hint:
        text += f": {problem.hint}"
    return text


def report(doc: Document, problem: Problem, findings: Findings) -> None:
    """Render one problem as one error finding on the right line."""
    if problem.at == "parent":
        mark = doc.mark(problem.path[:-1])
    else:
        mark = doc.mark(problem.path)
    findings.error(mark, CODES.get(problem.kind, "NX299"), message(problem))
