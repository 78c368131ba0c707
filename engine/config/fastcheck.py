"""Precompiled checks for the many small, flat mappings of a big config.

Cerberus is thorough but slow (a fresh child validator per mapping, ~0.2 ms per small
section). A config with 10,000 channel sections must lint in well under two seconds, so
transaction sections and the Async service's channel lists are checked by closures
compiled once from the SAME schemas in ``schemas/`` (a subset of Cerberus' rules: type,
required, allowed, empty, min, max, minlength, schema, keysrules, valuesrules, and our
nexus_format / nexus_gt). The compiler refuses any rule it does not implement, and a unit
test checks that Cerberus and these closures report the same problems.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable, Mapping
from typing import Any

from engine.config.problems import Problem, check_format, type_hint, type_phrase

Check = Callable[[Any, tuple[Any, ...], list[Problem]], None]
Registry = Mapping[str, Any]

_TYPES: dict[str, Callable[[Any], bool]] = {
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "dict": lambda v: isinstance(v, dict),
    "list": lambda v: isinstance(v, list),
    "date": lambda v: isinstance(v, _dt.date) and not isinstance(v, _dt.datetime),
    "datetime": lambda v: isinstance(v, _dt.datetime),
}

# Rules that carry no check (documentation and normalization only).
_PASSIVE = frozenset({"default", "meta", "nullable"})
_SUPPORTED = frozenset(
    {
        "type",
        "required",
        "allowed",
        "empty",
        "min",
        "max",
        "minlength",
        "schema",
        "keysrules",
        "valuesrules",
        "nexus_format",
        "nexus_gt",
    }
)


class UnsupportedRule(ValueError):
    """A schema uses a rule the fast path does not implement."""


def _resolve_rules(rules: Any, rules_registry: Registry) -> dict[str, Any]:
    if isinstance(rules, str):
        return dict(rules_registry[rules])
    return dict(rules)


def _resolve_schema(schema: Any, schema_registry: Registry) -> dict[str, Any]:
    if isinstance(schema, str):
        return dict(schema_registry[schema])
    return dict(schema)


def compile_rules(rules: Any, schemas: Registry, rules_sets: Registry) -> Check:
    """Compile the rules of ONE value (a Cerberus rules set) into a check."""
    rules = _resolve_rules(rules, rules_sets)
    unknown = set(rules) - _SUPPORTED - _PASSIVE
    if unknown:
        raise UnsupportedRule(f"rules {sorted(unknown)} are not supported by the fast path")
    type_names = rules.get("type")
    if type_names is not None:
        names = [type_names] if isinstance(type_names, str) else list(type_names)
        tests = [_TYPES[n] for n in names]
        expected = type_phrase(names)
    else:
        names, tests, expected = [], [], ""
    if len(tests) == 1:
        single = tests[0]
        ok_type: Callable[[Any], bool] | None = single
    elif tests:

        def ok_type(value: Any) -> bool:
            return any(t(value) for t in tests)

    else:
        ok_type = None
    allowed = rules.get("allowed")
    empty = rules.get("empty", True)
    fmt = rules.get("nexus_format")
    low, high, gt = rules.get("min"), rules.get("max"), rules.get("nexus_gt")
    minlength = rules.get("minlength")
    numeric = low is not None or high is not None or gt is not None
    sub: Check | None = None
    if "schema" in rules:
        if "list" in names:
            item_check = compile_rules(rules["schema"], schemas, rules_sets)

            def sub(value: Any, path: tuple[Any, ...], sink: list[Problem]) -> None:
                for i, item in enumerate(value):
                    item_check(item, (*path, i), sink)

        else:
            sub = compile_mapping(rules["schema"], schemas, rules_sets)
    key_check = value_check = None
    if "keysrules" in rules:
        key_check = compile_rules(rules["keysrules"], schemas, rules_sets)
    if "valuesrules" in rules:
        value_check = compile_rules(rules["valuesrules"], schemas, rules_sets)

    def check(value: Any, path: tuple[Any, ...], sink: list[Problem]) -> None:
        if value is None:
            hint = type_hint(names, value, path[-1] if path else "")
            sink.append(Problem(path, "type", value, expected or "a value", hint))
            return
        if ok_type is not None and not ok_type(value):
            key = path[-1] if path else ""
            sink.append(Problem(path, "type", value, expected, type_hint(names, value, key)))
            return
        if not empty and isinstance(value, str | list | dict) and len(value) == 0:
            sink.append(Problem(path, "empty"))
            return
        if allowed is not None and value not in allowed:
            sink.append(Problem(path, "allowed", value, candidates=tuple(str(a) for a in allowed)))
            return
        if fmt is not None:
            check_format(fmt, value, path, sink)
        if numeric and isinstance(value, int | float) and not isinstance(value, bool):
            if low is not None and value < low:
                sink.append(Problem(path, "range", value, f"at least {low}"))
            if high is not None and value > high:
                sink.append(Problem(path, "range", value, f"at most {high}"))
            if gt is not None and value <= gt:
                sink.append(Problem(path, "range", value, f"greater than {gt}"))
        if minlength is not None and isinstance(value, list | dict) and len(value) < minlength:
            sink.append(
                Problem(path, "range", None, f"a list of at least {minlength} item(s)")
            )
        if sub is not None:
            sub(value, path, sink)
        if isinstance(value, dict):
            if key_check is not None:
                for key in value:
                    key_check(key, (*path, key), sink)
            if value_check is not None:
                for key, item in value.items():
                    value_check(item, (*path, key), sink)

    return check


def compile_mapping(schema: Any, schemas: Registry, rules_sets: Registry) -> Check:
    """Compile a mapping schema (field -> rules) into a check of a dict's keys and values."""
    schema = _resolve_schema(schema, schemas)
    fields = {name: compile_rules(rules, schemas, rules_sets) for name, rules in schema.items()}
    required = tuple(
        name
        for name, rules in schema.items()
        if _resolve_rules(rules, rules_sets).get("required", False)
    )
    known = tuple(schema)

    def check(value: Any, path: tuple[Any, ...], sink: list[Problem]) -> None:
        for key, item in value.items():
            field_check = fields.get(key)
            if field_check is None:
                sink.append(Problem((*path, key), "unknown", key, candidates=known))
            else:
                field_check(item, (*path, key), sink)
        for name in required:
            if name not in value:
                sink.append(Problem((*path, name), "required", at="parent"))

    return check
