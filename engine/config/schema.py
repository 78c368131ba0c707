"""Schema validation of one config document: the envelope, then its `spec` by kind.

The schemas are data, in ``schemas/*.yaml`` (Cerberus 1.3 syntax; shared pieces in
``schemas/_fragments.yaml`` are registered in a schema registry and a rules-set registry).
What Cerberus cannot say is a custom rule of :class:`NexusValidator` (``nexus_format``,
``nexus_gt``, ``nexus_expires``, ``nexus_services``, ``nexus_sections``, ``nexus_items``),
whose docstrings let Cerberus validate the schemas themselves.

Every Cerberus error is walked down to its leaves (mapping, sequence, keysrules and
valuesrules group errors) and becomes ONE finding (see :mod:`engine.config.problems`).
The hot paths (transaction sections, the Async service's channel lists) are checked by
closures precompiled from the same schemas (:mod:`engine.config.fastcheck`).
"""

from __future__ import annotations

import datetime as _dt
import os
import re
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from cerberus import Validator, errors
from cerberus.schema import Registry, RulesSetRegistry, SchemaRegistry

from engine.config.diagnostics import Findings, describe
from engine.config.fastcheck import Check, compile_mapping, compile_rules
from engine.config.loader import Document
from engine.config.problems import (
    FORMATS,
    Problem,
    check_format,
    did_you_mean,
    quoted_list,
    report,
    type_hint,
    type_phrase,
)

API_VERSION = "nexus/v1"
KINDS = ("Environment", "Tenant", "Transaction", "Queue", "User")
ENVELOPE_KEYS = ("apiVersion", "kind", "name", "tenant", "spec")
TRANSACTIONS = ("NexusEndpoints", "NexusServices", "DesignerEnv")
SERVICES = (
    "SMS",
    "mGageSMS",
    "Async",
    "PurecloudIDP",
    "PorticoSMS",
    "Email",
    "SparkPostEmail",
    "PorticoEmail",
    "PlatformUCS",
)
WEBHOOK_TARGET_PREFIX = "WebhookTransportTarget-"
# Sections of NexusServices named after a provider hold its `header:<name>` options.
PROVIDER_SECTIONS = ("Async", "Portico", "mGage", "SparkPost")
SECTION_SUFFIX = re.compile(r"^[A-Za-z0-9_-]+$")
_KIND_FILES = {
    "Environment": "environment.yaml",
    "Tenant": "tenant.yaml",
    "Transaction": "transaction.yaml",
    "Queue": "queue.yaml",
    "User": "user.yaml",
}
_REPO_SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


def schemas_dir() -> Path:
    """Where the schemas are: ``$NEXUS_SCHEMAS_DIR`` or ``<repo>/schemas``."""
    override = os.environ.get("NEXUS_SCHEMAS_DIR")
    return Path(override) if override else _REPO_SCHEMAS


# ---- the validator -------------------------------------------------------------------


class NexusValidator(Validator):
    """Cerberus with Nexus' custom rules. Problems found by custom rules go to the shared
    ``problems`` list passed at construction (children share it)."""

    def _error(self, *args: Any) -> None:
        # Unknown keys: remember which keys WERE allowed, for "did you mean" hints.
        if len(args) == 2 and args[1] is errors.UNKNOWN_FIELD:
            super()._error(args[0], errors.UNKNOWN_FIELD, tuple(self.schema or ()))
            return
        super()._error(*args)

    @property
    def problems(self) -> list[Problem]:
        return self._config["problems"]

    @property
    def schema_set(self) -> SchemaSet:
        return self._config["schema_set"]

    def _path(self, *parts: Any) -> tuple[Any, ...]:
        return (*self.document_path, *parts)

    def _validate_nexus_format(self, constraint: str, field: str, value: Any) -> None:
        """Check a string's format (references are checked once resolved).

        The rule's arguments are validated against this schema:
        {'type': 'string', 'allowed': ['url', 'url-or-na', 'uuid', 'name', 'channel-id',
         'email-domain', 'header-option', 'sandbox', 'path', 'endpoint', 'strategy',
         'strategy-url']}
        """
        check_format(constraint, value, self._path(field), self.problems)

    def _validate_nexus_gt(self, constraint: float, field: str, value: Any) -> None:
        """The number must be greater than the constraint (an exclusive minimum).

        The rule's arguments are validated against this schema:
        {'type': 'number'}
        """
        if isinstance(value, int | float) and not isinstance(value, bool) and value <= constraint:
            self.problems.append(
                Problem(self._path(field), "range", value, f"greater than {constraint}")
            )

    def _validate_nexus_expires(self, constraint: bool, field: str, value: Any) -> None:
        """API key expiry: false (never) or a date or date-time.

        The rule's arguments are validated against this schema:
        {'type': 'boolean'}
        """
        if not constraint or value is False or isinstance(value, _dt.date):
            return
        hint = "write false, or an unquoted date such as 2027-01-31"
        if isinstance(value, str):
            try:
                _dt.date.fromisoformat(value)
                hint = "remove the quotes so YAML reads it as a date"
            except ValueError:
                pass
        self.problems.append(
            Problem(self._path(field), "type", value, "false or a date (YYYY-MM-DD)", hint)
        )

    def _validate_nexus_items(self, constraint: str, field: str, value: Any) -> None:
        """Check each item of a list with a precompiled mapping schema of the registry.

        The rule's arguments are validated against this schema:
        {'type': 'string'}
        """
        if not isinstance(value, list):
            return
        check = self.schema_set.mapping_check(constraint)
        for i, item in enumerate(value):
            path = self._path(field, i)
            if isinstance(item, dict):
                check(item, path, self.problems)
            else:
                self.problems.append(
                    Problem(path, "type", item, "a mapping", type_hint("dict", item, i))
                )

    def _validate_nexus_services(self, constraint: bool, field: str, value: Any) -> None:
        """Tenant services: each name picks its own shape ({url, data, secret}).

        The rule's arguments are validated against this schema:
        {'type': 'boolean'}
        """
        if not constraint or not isinstance(value, dict):
            return
        for name, body in value.items():
            path = self._path(field, name)
            shape = service_shape(name)
            if shape is None:
                self.problems.append(_unknown_service(path, name))
                continue
            if not isinstance(body, dict):
                hint = type_hint("dict", body, name) + " (url, data and secret)"
                self.problems.append(Problem(path, "type", body, "a mapping", hint))
                continue
            schema = self.schema_registry.get(shape)
            child = self._get_child_validator(document_crumb=(field, name), schema=schema)
            child.validate(body, normalize=False)
            problems_from_errors(
                child._errors, self.problems, schema, self.schema_set, len(self.schema_path)
            )
            if shape == "service:Async":
                _check_async_pairs(body, path, self.problems)

    def _validate_nexus_sections(self, constraint: bool, field: str, value: Any) -> None:
        """Transaction sections: the section's name and the transaction's name pick the
        schema of its options (checked by the precompiled fast path).

        The rule's arguments are validated against this schema:
        {'type': 'boolean'}
        """
        if not constraint or not isinstance(value, dict):
            return
        transaction = self._config.get("transaction")
        if transaction not in TRANSACTIONS:
            return  # the envelope check reported the name
        check_sections(transaction, value, self._path(field), self.problems, self.schema_set)


def service_shape(name: Any) -> str | None:
    """The registry name of a service's shape, or None for an unknown service."""
    if not isinstance(name, str):
        return None
    if name in SERVICES:
        return f"service:{name}"
    if name.startswith(WEBHOOK_TARGET_PREFIX) and SECTION_SUFFIX.match(
        name[len(WEBHOOK_TARGET_PREFIX) :]
    ):
        return "service:WebhookTransportTarget"
    return None


def _unknown_service(path: tuple[Any, ...], name: Any) -> Problem:
    expected = (
        f"a service name: one of {quoted_list(SERVICES)} or "
        f"'{WEBHOOK_TARGET_PREFIX}<name>' (<name>: letters, digits, '_' and '-')"
    )
    guess = did_you_mean(name, SERVICES)
    if isinstance(name, str) and name.lower().startswith(WEBHOOK_TARGET_PREFIX.lower()):
        suffix = re.sub(r"[^A-Za-z0-9_-]", "-", name[len(WEBHOOK_TARGET_PREFIX) :]) or "name"
        guess = WEBHOOK_TARGET_PREFIX + suffix
    hint = f"did you mean '{guess}'?" if guess else "see the provisioning guide's service names"
    return Problem(path, "service", name, expected, hint)


def _channel_ids(channels: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    if isinstance(channels, list):
        for i, item in enumerate(channels):
            if isinstance(item, dict) and isinstance(item.get("channelId"), str):
                out.setdefault(item["channelId"], i)
    return out


def _check_async_pairs(body: dict[str, Any], path: tuple[Any, ...], sink: list[Problem]) -> None:
    """Every channel of data.channels has its secrets in secret.channels, and vice versa."""
    data, secret = body.get("data"), body.get("secret")
    if not isinstance(data, dict) or not isinstance(secret, dict):
        return
    plain = _channel_ids(data.get("channels"))
    secrets = _channel_ids(secret.get("channels"))
    for side, other, other_name in (("data", secrets, "secret"), ("secret", plain, "data")):
        channels = body[side].get("channels")
        seen: set[str] = set()
        for i, item in enumerate(channels if isinstance(channels, list) else ()):
            if not isinstance(item, dict) or not isinstance(item.get("channelId"), str):
                continue
            channel_id = item["channelId"]
            item_path = (*path, side, "channels", i, "channelId")
            if channel_id in seen:
                sink.append(
                    Problem(
                        item_path,
                        "service",
                        channel_id,
                        f"unique in {side}.channels",
                        "each channel is listed once",
                    )
                )
                continue
            seen.add(channel_id)
            if channel_id not in other:
                what = "its webhook and api secrets" if side == "data" else "its webhook url"
                sink.append(
                    Problem(
                        item_path,
                        "service",
                        channel_id,
                        f"listed in {other_name}.channels too",
                        f"add an entry with channelId {describe(channel_id)} and {what}",
                    )
                )


# ---- sections of List transactions (the hot path) -------------------------------------


def section_schema(transaction: str, name: Any) -> tuple[str | None, str]:
    """The section schema for a section name, or (None, hint) when the name is invalid."""
    if not isinstance(name, str):
        return None, f"quote it ('{name}') and give it a prefix, e.g. 'chat.{name}'"
    if transaction == "DesignerEnv":
        if SECTION_SUFFIX.match(name):
            return "designer", ""
        return None, "use letters, digits, '_' and '-' (no spaces or dots), e.g. 'nexus'"
    prefixes = ("chat.",) if transaction == "NexusEndpoints" else ("chat.", "cxc.")
    for prefix in prefixes:
        if name.startswith(prefix):
            suffix = name[len(prefix) :]
            if SECTION_SUFFIX.match(suffix):
                return ("endpoint" if transaction == "NexusEndpoints" else prefix[:-1]), ""
            fixed = re.sub(r"[^A-Za-z0-9_-]+", "_", suffix).strip("_") or "name"
            return None, (
                f"after '{prefix}' use letters, digits, '_' and '-' only (no spaces or dots), "
                f"e.g. '{prefix}{fixed}'"
            )
    if transaction == "NexusServices" and name in PROVIDER_SECTIONS:
        return "headers", ""
    lowered = name.lower()
    for prefix in prefixes:
        if lowered.startswith(prefix) or lowered.startswith(prefix[:-1] + " "):
            rest = name[len(prefix) :].strip()
            return None, f"did you mean '{prefix}{re.sub(r'[^A-Za-z0-9_-]+', '_', rest)}'?"
    if transaction == "NexusServices":
        guess = did_you_mean(name, PROVIDER_SECTIONS)
        if guess:
            return None, f"did you mean '{guess}'?"
    rest = name.split(".", 1)[1] if "." in name else name
    fixed = re.sub(r"[^A-Za-z0-9_-]+", "_", rest).strip("_") or "name"
    return None, f"the 'chat.' prefix is required: did you mean 'chat.{fixed}'?"


def _section_expected(transaction: str) -> str:
    if transaction == "NexusEndpoints":
        return "'chat.<name>' (<name>: letters, digits, '_' and '-')"
    if transaction == "NexusServices":
        return (
            "'chat.<name>' (an SMS channel), 'cxc.<name>' (an email domain) or a provider "
            f"name holding header options ({quoted_list(PROVIDER_SECTIONS)})"
        )
    return "a section name of letters, digits, '_' and '-'"


def check_sections(
    transaction: str,
    sections: dict[Any, Any],
    path: tuple[Any, ...],
    sink: list[Problem],
    schema_set: SchemaSet,
) -> None:
    if transaction == "DesignerEnv" and len(sections) > 1:
        for extra in list(sections)[1:]:
            sink.append(
                Problem(
                    (*path, extra),
                    "section",
                    extra,
                    "the only section of DesignerEnv",
                    "DesignerEnv holds one section (e.g. 'nexus'): merge the options into it",
                )
            )
    checks = schema_set.section_checks
    for name, options in sections.items():
        section_path = (*path, name)
        kind, hint = section_schema(transaction, name)
        if kind is None:
            sink.append(
                Problem(section_path, "section", name, _section_expected(transaction), hint)
            )
            continue
        if kind == "headers":
            checks[kind](options, section_path, sink)
            continue
        if not isinstance(options, dict):
            hint = type_hint("dict", options, name)
            sink.append(Problem(section_path, "type", options, "a mapping of options", hint))
            continue
        checks[kind](options, section_path, sink)


# ---- the schemas, loaded once ---------------------------------------------------------


@dataclass
class SchemaSet:
    """The loaded schemas: per-kind spec schemas, registries and precompiled checks."""

    directory: Path
    specs: dict[str, dict[str, Any]]
    sections: dict[str, Any]
    schema_registry: SchemaRegistry
    rules_set_registry: RulesSetRegistry
    section_checks: dict[str, Check]
    _mapping_checks: dict[str, Check]

    def mapping_check(self, name: str) -> Check:
        check = self._mapping_checks.get(name)
        if check is None:
            check = compile_mapping(name, _registry_dict(self.schema_registry), self.rules)
            self._mapping_checks[name] = check
        return check

    @property
    def rules(self) -> dict[str, Any]:
        return _registry_dict(self.rules_set_registry)

    def validator(self, kind: str, problems: list[Problem], **config: Any) -> NexusValidator:
        return NexusValidator(
            self.specs[kind],
            schema_registry=self.schema_registry,
            rules_set_registry=self.rules_set_registry,
            problems=problems,
            schema_set=self,
            **config,
        )


def _registry_dict(registry: Registry) -> dict[str, Any]:
    return dict(registry.all())


def _read_yaml(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as handle:
        data = yaml.load(handle, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a schema file must be a mapping")
    return data


_LOCK = threading.Lock()


def _inline_rules_sets(schema: dict[str, Any], rules: dict[str, Any]) -> dict[str, Any]:
    """Replace a mapping schema's top-level rules-set names by their rules.

    Cerberus 1.3 checks top-level rules-set references of a schema against its *global*
    rules_set_registry instead of the validator's (``DefinitionSchema._validate``), so a
    schema handed to a Validator must not use them at its top level; nested references
    (inside ``schema:``) resolve through the validator's own registry and stay as written.
    """
    return {
        field: dict(rules[definition]) if isinstance(definition, str) else definition
        for field, definition in schema.items()
    }


@lru_cache(maxsize=4)
def _load(directory: str) -> SchemaSet:
    base = Path(directory)
    fragments = _read_yaml(base / "_fragments.yaml")
    rules_dict = dict(fragments.get("rules", {}))
    rules_sets = RulesSetRegistry()
    rules_sets.extend(rules_dict.items())
    schemas = SchemaRegistry()
    schemas.extend(
        (name, _inline_rules_sets(schema, rules_dict))
        for name, schema in fragments.get("schemas", {}).items()
    )
    specs: dict[str, dict[str, Any]] = {}
    sections: dict[str, Any] = {}
    for kind, file in _KIND_FILES.items():
        data = _read_yaml(base / file)
        specs[kind] = _inline_rules_sets(data["spec"], rules_dict)
        if kind == "Transaction":
            sections = {
                name: schema if name == "headers" else _inline_rules_sets(schema, rules_dict)
                for name, schema in data.get("sections", {}).items()
            }
    schema_dict = _registry_dict(schemas)
    section_checks: dict[str, Check] = {}
    for name, schema in sections.items():
        if name == "headers":
            section_checks[name] = compile_rules(schema, schema_dict, rules_dict)
        else:
            section_checks[name] = compile_mapping(schema, schema_dict, rules_dict)
    return SchemaSet(base, specs, sections, schemas, rules_sets, section_checks, {})


def load_schemas(directory: Path | None = None) -> SchemaSet:
    """The schemas of ``directory`` (default :func:`schemas_dir`), loaded and compiled once."""
    with _LOCK:
        return _load(str((directory or schemas_dir()).resolve()))


# ---- Cerberus errors -> problems ------------------------------------------------------


def _rules_at(schema: Any, schema_path: tuple[Any, ...], registries: SchemaSet | None) -> Any:
    """The rules set at a Cerberus schema path (best effort, for friendlier messages)."""
    node: Any = schema
    try:
        for part in schema_path:
            if isinstance(node, str) and registries is not None:
                node = registries.rules.get(node) or _registry_dict(
                    registries.schema_registry
                ).get(node)
            node = node[part]
        if isinstance(node, str) and registries is not None:
            node = registries.rules.get(node)
        return node if isinstance(node, dict) else None
    except (KeyError, TypeError, IndexError):
        return None


def problems_from_errors(
    errs: Any,
    sink: list[Problem],
    schema: Any,
    schema_set: SchemaSet | None,
    strip: int = 0,
) -> None:
    """Walk a Cerberus error list down to its leaves and append one problem per leaf."""
    for error in errs:
        if error.is_logic_error:
            for child in error.definitions_errors.values():
                problems_from_errors(child, sink, schema, schema_set, strip)
            continue
        if error.is_group_error:
            problems_from_errors(error.child_errors, sink, schema, schema_set, strip)
            continue
        sink.append(_leaf(error, schema, strip, schema_set))


def _leaf(error: Any, schema: Any, strip: int, schema_set: SchemaSet | None) -> Problem:
    path = tuple(error.document_path)
    code = error.code
    value = error.value
    key = path[-1] if path else ""
    schema_path = tuple(error.schema_path)[strip:] if isinstance(error.schema_path, tuple) else ()
    if code == errors.UNKNOWN_FIELD.code:
        candidates = tuple(str(k) for k in error.info[0]) if error.info else ()
        return Problem(path, "unknown", key, candidates=candidates)
    if code == errors.REQUIRED_FIELD.code:
        rules = _rules_at(schema, schema_path[:-1], schema_set)
        expected = ""
        if rules and "type" in rules:
            expected = type_phrase(rules["type"])
            if rules.get("nexus_format") in FORMATS:
                expected = FORMATS[rules["nexus_format"]][1]
            elif rules.get("allowed"):
                expected = "one of " + quoted_list(rules["allowed"])
        return Problem(path, "required", expected=expected, at="parent")
    if code == errors.BAD_TYPE.code:
        types = error.constraint
        return Problem(path, "type", value, type_phrase(types), type_hint(types, value, key))
    if code == errors.NOT_NULLABLE.code:
        rules = _rules_at(schema, schema_path[:-1], schema_set)
        types = rules.get("type") if rules else None
        expected = type_phrase(types) if types else "a value"
        hint = type_hint(types, None, key) if types else ""
        return Problem(path, "type", None, expected, hint or "give it a value or remove the key")
    if code in (errors.UNALLOWED_VALUE.code, errors.UNALLOWED_VALUES.code):
        return Problem(path, "allowed", value, candidates=tuple(str(a) for a in error.constraint))
    if code == errors.MIN_VALUE.code:
        return Problem(path, "range", value, f"at least {error.constraint}")
    if code == errors.MAX_VALUE.code:
        return Problem(path, "range", value, f"at most {error.constraint}")
    if code == errors.EMPTY_NOT_ALLOWED.code:
        return Problem(path, "empty")
    if code == errors.MIN_LENGTH.code:
        return Problem(path, "range", None, f"a list of at least {error.constraint} item(s)")
    rule = error.rule or "a rule"
    return Problem(path, "other", value, f"breaks the schema's '{rule}' rule")


# ---- the envelope ---------------------------------------------------------------------


def _envelope(doc: Document, findings: Findings) -> bool:
    """Check apiVersion, kind, name, tenant and spec. True when the spec can be validated."""
    data = doc.data
    if not isinstance(data, dict):
        findings.error(
            doc.value_mark(()),
            "NX101",
            f"a config document must be a mapping with 'apiVersion', 'kind', 'name' and "
            f"'spec', found {'a list' if isinstance(data, list) else describe(data)}",
        )
        return False
    ok = True
    for key in data:
        if key not in ENVELOPE_KEYS:
            guess = did_you_mean(key, ENVELOPE_KEYS)
            hint = f"; did you mean '{guess}'?" if guess else ""
            findings.error(
                doc.mark((key,)),
                "NX201",
                f"the document: unknown key {describe(key)}{hint} The keys allowed here are "
                f"{quoted_list(ENVELOPE_KEYS)} (options belong under 'spec')",
            )
    api = data.get("apiVersion")
    if api != API_VERSION:
        where = doc.mark(("apiVersion",)) if "apiVersion" in data else doc.mark(())
        what = "is missing" if "apiVersion" not in data else f"is {describe(api)}"
        findings.error(
            where,
            "NX101",
            f"apiVersion {what}: it must be '{API_VERSION}' (add 'apiVersion: {API_VERSION}' "
            "as the document's first line)",
        )
        ok = False
    kind = data.get("kind")
    if kind not in KINDS:
        where = doc.mark(("kind",)) if "kind" in data else doc.mark(())
        if "kind" not in data:
            text = f"kind is missing: it must be one of {quoted_list(KINDS)}"
        else:
            guess = did_you_mean(kind, KINDS)
            text = f"kind must be one of {quoted_list(KINDS)}, found {describe(kind)}"
            if guess:
                text += f": did you mean '{guess}'?"
        findings.error(where, "NX101", text)
        ok = False
    name = data.get("name")
    if "name" not in data:
        findings.error(
            doc.mark(()), "NX101", "name is missing: every document needs a 'name'"
        )
    elif not isinstance(name, str) or not name:
        hint = f": quote it (name: '{name}')" if isinstance(name, int | float) else ""
        findings.error(
            doc.mark(("name",)), "NX101", f"name must be a non-empty string, found "
            f"{describe(name)}{hint}"
        )
    elif kind == "Transaction":
        if name not in TRANSACTIONS:
            guess = did_you_mean(name, TRANSACTIONS)
            findings.error(
                doc.mark(("name",)),
                "NX204",
                f"name of a Transaction must be one of {quoted_list(TRANSACTIONS)}, found "
                f"{describe(name)}" + (f": did you mean '{guess}'?" if guess else ""),
            )
    elif FORMATS["name"][0](name):
        check, expected = FORMATS["name"]
        findings.error(
            doc.mark(("name",)),
            "NX101",
            f"name must be {expected}, found {describe(name)}: {check(name)}",
        )
    if "tenant" in data:
        tenant = data["tenant"]
        if kind in ("Environment", "Tenant"):
            findings.error(
                doc.mark(("tenant",)),
                "NX101",
                f"tenant must not be set on a{'n' if kind == 'Environment' else ''} {kind}: "
                "only Transaction, Queue and User documents belong to a tenant; remove it",
            )
        elif not isinstance(tenant, str) or not tenant:
            findings.error(
                doc.mark(("tenant",)),
                "NX101",
                f"tenant must be the name of a Tenant document, found {describe(tenant)}"
                + (": quote it" if isinstance(tenant, int | float) else ""),
            )
    if "spec" not in data:
        findings.error(doc.mark(()), "NX101", "spec is missing: every document needs a 'spec'")
        return False
    if not isinstance(data["spec"], dict):
        hint = type_hint("dict", data["spec"], "spec")
        findings.error(
            doc.mark(("spec",)),
            "NX101",
            f"spec must be a mapping, found {describe(data['spec'])}: {hint}",
        )
        return False
    return ok


# ---- kind-specific shape rules Cerberus cannot express --------------------------------


def _post_checks(kind: str, spec: dict[str, Any], sink: list[Problem]) -> None:
    base = ("spec",)
    if kind == "User":
        roles = spec.get("roles")
        roles = roles if isinstance(roles, list) else []
        if "agent" in roles and "agent" not in spec:
            sink.append(
                Problem(
                    (*base, "agent"),
                    "required",
                    expected="its queues and capacity (users with the role 'agent' need them)",
                    at="parent",
                )
            )
        if "agent" in spec and "agent" not in roles and isinstance(spec.get("roles"), list):
            sink.append(
                Problem(
                    (*base, "agent"),
                    "conflict",
                    None,
                    "set only for users with the role 'agent'",
                    "add 'agent' to roles, or remove the agent settings",
                )
            )
    elif kind == "Environment":
        routing = spec.get("routing")
        if isinstance(routing, dict) and isinstance(routing.get("undelivered"), dict):
            undelivered = routing["undelivered"]
            if undelivered.get("onGiveUp") == "park" and "parkQueue" not in undelivered:
                sink.append(
                    Problem(
                        (*base, "routing", "undelivered", "parkQueue"),
                        "required",
                        expected="the Queue to park in (onGiveUp is 'park')",
                        at="parent",
                    )
                )
            _check_delays(undelivered, (*base, "routing", "undelivered"), sink)
        if isinstance(spec.get("delivery"), dict):
            _check_delays(spec["delivery"], (*base, "delivery"), sink)


def _check_delays(policy: dict[str, Any], path: tuple[Any, ...], sink: list[Problem]) -> None:
    low, high = policy.get("initialDelaySeconds"), policy.get("maxDelaySeconds")
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (low, high))
    if numbers and high < low:
        sink.append(
            Problem(
                (*path, "maxDelaySeconds"),
                "range",
                high,
                f"at least initialDelaySeconds ({low})",
                "the longest delay between attempts cannot be shorter than the first",
            )
        )


# ---- entry point ----------------------------------------------------------------------


def validate_document(
    doc: Document, findings: Findings, schema_set: SchemaSet | None = None
) -> None:
    """Validate one document's envelope and spec; append findings."""
    if not _envelope(doc, findings):
        return
    schema_set = schema_set or load_schemas()
    kind = doc.data["kind"]
    spec = doc.data["spec"]
    problems: list[Problem] = []
    validator = schema_set.validator(kind, problems, transaction=doc.data.get("name"))
    validator.document_path = ("spec",)
    validator.validate(spec, normalize=False)
    problems_from_errors(validator._errors, problems, schema_set.specs[kind], schema_set)
    _post_checks(kind, spec, problems)
    for problem in problems:
        report(doc, problem, findings)
