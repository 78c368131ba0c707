"""One body parser for every handler: JSON (``{"data": {...}}`` or a plain object) or the
widgets' bracket form encoding (``data[firstName]=x&data[userData][k]=v``), into a dict.

* JSON: an object whose only key is ``data`` (an object) is unwrapped; any other object is
  returned as is. Anything that is not an object is a 400 naming ``body``.
* Forms (``application/x-www-form-urlencoded`` and the fields of ``multipart/form-data``):
  ``a[b][c]=v`` nests, ``a[]=v`` appends to a list, a repeated plain key keeps the last value;
  a top-level ``data`` wrapper is unwrapped as for JSON. Unbalanced brackets, a key that is
  both a value and an object, and nesting deeper than :data:`MAX_DEPTH` are a 400 naming the
  offending field.
* An empty body is ``{}``.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import parse_qsl

from sanic import Request

from engine.api.errors import BadRequest

MAX_DEPTH = 8
MAX_FIELDS = 1000
_KEY = re.compile(r"^([^\[\]]+)((?:\[[^\[\]]*\])*)$")
_PART = re.compile(r"\[([^\[\]]*)\]")


def unwrap(obj: dict[str, Any]) -> dict[str, Any]:
    if len(obj) == 1 and isinstance(obj.get("data"), dict):
        return obj["data"]
    return obj


def parse_json(raw: bytes) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except UnicodeDecodeError:
        raise BadRequest("body is not UTF-8", field="body") from None
    except json.JSONDecodeError as exc:
        raise BadRequest(
            f"body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
            field="body",
        ) from None
    if not isinstance(value, dict):
        raise BadRequest("body must be a JSON object", field="body")
    return unwrap(value)


def parse_pairs(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """Nest bracket-encoded ``(key, value)`` pairs."""
    if len(pairs) > MAX_FIELDS:
        raise BadRequest(f"more than {MAX_FIELDS} form fields", field="body")
    result: dict[str, Any] = {}
    for key, value in pairs:
        match = _KEY.match(key)
        if not match:
            raise BadRequest(f"malformed form field name {key[:80]!r}", field=key[:80])
        path = [match.group(1), *_PART.findall(match.group(2))]
        if len(path) > MAX_DEPTH:
            raise BadRequest(f"form field nested deeper than {MAX_DEPTH}", field=key[:80])
        _assign(result, path, value, key)
    return unwrap(result)


def _assign(target: dict[str, Any], path: list[str], value: str, key: str) -> None:
    node: Any = target
    for i, part in enumerate(path):
        last = i == len(path) - 1
        nxt = None if last else path[i + 1]
        if isinstance(node, list):
            if part != "":
                raise BadRequest(f"form field {key[:80]!r} mixes list and object", field=key[:80])
            if last:
                node.append(value)
                return
            child: Any = [] if nxt == "" else {}
            node.append(child)
            node = child
            continue
        if part == "":
            raise BadRequest(f"malformed form field name {key[:80]!r}", field=key[:80])
        if last:
            if isinstance(node.get(part), dict | list):
                raise BadRequest(f"form field {key[:80]!r} is also an object", field=key[:80])
            node[part] = value
            return
        existing = node.get(part)
        want_list = nxt == ""
        if existing is None:
            existing = node[part] = [] if want_list else {}
        elif isinstance(existing, str) or isinstance(existing, list) != want_list:
            raise BadRequest(f"form field {key[:80]!r} conflicts with another", field=key[:80])
        node = existing


def parse_body(request: Request) -> dict[str, Any]:
    """The request body as a dict (see the module docstring)."""
    raw = request.body or b""
    content_type = (request.content_type or "").split(";", 1)[0].strip().lower()
    if content_type == "multipart/form-data":
        form = request.form or {}
        return parse_pairs([(k, v) for k, values in form.items() for v in values])
    if not raw.strip():
        return {}
    if content_type == "application/x-www-form-urlencoded":
        try:
            text = raw.decode("utf-8")
            pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=True,
                              max_num_fields=MAX_FIELDS)
        except UnicodeDecodeError:
            raise BadRequest("form body is not UTF-8", field="body") from None
        except ValueError as exc:
            raise BadRequest(f"malformed form body: {exc}", field="body") from None
        return parse_pairs(pairs)
    return parse_json(raw)
