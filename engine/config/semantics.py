"""Cross-document rules: references, uniqueness, provider consistency, the guide's fixed
objects, GWS options and secrets.

Runs after schema validation over every document that has a valid envelope; it reads the
documents defensively (a value of the wrong type was already reported by the schema and is
skipped here). Every finding is on the line of the key or value that refers to something.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

from engine.config.diagnostics import Findings, Mark, describe
from engine.config.loader import Document, dotted
from engine.config.problems import did_you_mean, is_uuid, quoted_list
from engine.config.refs import Ref, RefError, check_syntax, resolve
from engine.config.schema import KINDS, PROVIDER_SECTIONS, SECTION_SUFFIX

Mode = Literal["lint", "serve"]
BUILTIN_STRATEGIES = ("redirect_queue", "undelivered")
SCXML_DIR = Path(__file__).resolve().parents[2] / "scxml"
GUIDE_QUEUES = {"asynchold": "redirect_queue", "undelivered": "undelivered"}
# Which services each provider needs in the owning tenant.
SMS_PROVIDER_SERVICES = {
    "Portico": ("PorticoSMS", "PurecloudIDP"),
    "Async": ("Async",),
    "mGage": ("mGageSMS",),
}
EMAIL_PROVIDER_SERVICES = {
    "SparkPost": ("SparkPostEmail",),
    "Portico": ("PorticoEmail", "PurecloudIDP"),
    "Async": ("Async",),
}
SUBTYPE_ATTRIBUTE = "Interaction Subtype"
Path_ = tuple[Any, ...]


def available_strategies(scxml_dir: Path | None = None) -> tuple[str, ...]:
    """Strategy templates an endpoint may name: the built-in two plus any in scxml/."""
    names = set(BUILTIN_STRATEGIES)
    directory = scxml_dir or Path(os.environ.get("NEXUS_SCXML_DIR") or SCXML_DIR)
    if directory.is_dir():
        names.update(p.name[: -len(".scxml.j2")] for p in directory.glob("*.scxml.j2"))
    return tuple(sorted(names))


def is_valid(doc: Document) -> bool:
    """Documents semantics looks at: a mapping with a known kind and a name. (A wrong
    apiVersion or spec was reported by the schema check; such a document still counts as
    defined, so its references do not cascade into more errors.)"""
    data = doc.data
    return (
        isinstance(data, dict) and data.get("kind") in KINDS and isinstance(data.get("name"), str)
    )


def _spec(doc: Document) -> dict[Any, Any]:
    spec = doc.data.get("spec")
    return spec if isinstance(spec, dict) else {}


def scope_of(doc: Document) -> str | None:
    tenant = doc.data.get("tenant")
    return tenant if isinstance(tenant, str) else None


def _dict(value: Any) -> dict[Any, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def sms_provider(service: Any) -> str | None:
    """The provider an SMS service selects (tokenProvider Purecloud means Portico)."""
    data = _dict(_dict(service).get("data"))
    provider = _str(data.get("provider"))
    if provider is None and data.get("tokenProvider") == "Purecloud":
        return "Portico"
    return provider


def async_channel_ids(service: Any) -> list[tuple[int, str]]:
    channels = _list(_dict(_dict(service).get("data")).get("channels"))
    return [
        (i, c["channelId"])
        for i, c in enumerate(channels)
        if isinstance(c, dict) and isinstance(c.get("channelId"), str)
    ]


@dataclass
class Index:
    """What the documents define, by scope (None = the Environment)."""

    docs: list[Document]
    environment: Document | None = None
    tenants: dict[str, Document] = field(default_factory=dict)
    queues: dict[tuple[str | None, str], Document] = field(default_factory=dict)
    endpoints: dict[tuple[str | None, str], tuple[Document, Path_]] = field(default_factory=dict)
    # Async service channel id -> owning tenant name (first definition wins)
    async_owner: dict[str, str] = field(default_factory=dict)
    # scopes whose NexusEndpoints has invalid section names (their endpoints are unknown)
    broken_endpoints: set[str | None] = field(default_factory=set)
    # names of documents whose kind is missing or unknown (already reported)
    unknown_names: set[str] = field(default_factory=set)

    def services(self, tenant: str) -> dict[Any, Any]:
        doc = self.tenants.get(tenant)
        return _dict(_spec(doc).get("services")) if doc else {}

    def visible(self, table: Mapping[tuple[str | None, str], Any], scope: str | None) -> list[str]:
        return sorted({name for (s, name) in table if s is None or s == scope})

    def find(
        self, table: Mapping[tuple[str | None, str], Any], scope: str | None, name: str
    ) -> tuple[bool, list[str]]:
        """(found, tenants that define it elsewhere). An Environment reference resolves to
        an Environment object, or to one that every tenant defines."""
        if (None, name) in table or (scope is not None and (scope, name) in table):
            return True, []
        owners = sorted(s for (s, n) in table if n == name and s is not None)
        if scope is None and self.tenants and set(owners) >= set(self.tenants):
            return True, []
        return False, owners


def build_index(docs: list[Document], all_docs: list[Document] | None = None) -> Index:
    index = Index(docs)
    for doc in all_docs or ():
        data = doc.data
        if isinstance(data, dict) and data.get("kind") not in KINDS:
            if isinstance(data.get("name"), str):
                index.unknown_names.add(data["name"])
    for doc in docs:
        kind, name, scope = doc.data["kind"], doc.data["name"], scope_of(doc)
        spec = _spec(doc)
        if kind == "Environment" and index.environment is None:
            index.environment = doc
        elif kind == "Tenant":
            index.tenants.setdefault(name, doc)
        elif kind == "Queue":
            index.queues.setdefault((scope, name), doc)
        elif kind == "Transaction" and name == "NexusEndpoints":
            for section in _dict(spec.get("sections")):
                if isinstance(section, str) and section.startswith("chat."):
                    path = ("spec", "sections", section)
                    index.endpoints.setdefault((scope, section), (doc, path))
                if not (
                    isinstance(section, str)
                    and section.startswith("chat.")
                    and SECTION_SUFFIX.match(section[5:])
                ):
                    index.broken_endpoints.add(scope)
    for tenant_name, doc in index.tenants.items():
        service = _dict(_spec(doc).get("services")).get("Async")
        for _, channel_id in async_channel_ids(service):
            index.async_owner.setdefault(channel_id, tenant_name)
    return index


class Checker:
    def __init__(
        self,
        docs: list[Document],
        findings: Findings,
        mode: Mode,
        env: Mapping[str, str] | None,
        strategies: tuple[str, ...],
        all_docs: list[Document] | None = None,
    ) -> None:
        self.docs = docs
        self.findings = findings
        self.mode = mode
        self.env = env
        self.strategies = strategies
        self.index = build_index(docs, all_docs)
        self.nexus_url: str | None = None
        env_doc = self.index.environment
        if env_doc is not None:
            url = _dict(_dict(_spec(env_doc).get("options")).get("nexus")).get("url")
            if isinstance(url, str) and not isinstance(url, Ref):
                self.nexus_url = url.rstrip("/")
        # providers used per scope, for header sections
        self.used_providers: dict[str | None, set[str]] = defaultdict(set)
        # (owners, provider) -> whether some owner has the provider's services
        self._complete: dict[tuple[tuple[str, ...], str], bool] = {}

    # -- helpers --

    def error(self, mark: Mark, code: str, text: str) -> None:
        self.findings.error(mark, code, text)

    def _where(self, scope: str | None) -> str:
        return f"tenant '{scope}'" if scope else "the Environment"

    def _ref_problem(
        self,
        doc: Document,
        path: Path_,
        what: str,
        name: str,
        table: Mapping[tuple[str | None, str], Any],
        scope: str | None,
        code: str,
        how: str,
    ) -> bool:
        """Report a dangling or cross-tenant reference. True when it resolves."""
        found, owners = self.index.find(table, scope, name)
        if found or name in self.index.unknown_names:
            return True
        if what == "endpoint" and (
            scope in self.index.broken_endpoints or None in self.index.broken_endpoints
        ):
            return True  # its NexusEndpoints has invalid section names (already reported)
        mark = doc.value_mark(path)
        if owners and scope is not None:
            self.error(
                mark,
                "NX308",
                f"{dotted(path)} names the {what} {describe(name)} of tenant "
                f"{describe(owners[0])}: a tenant may only use its own or the Environment's "
                f"{what}s; define {describe(name)} in {self._where(scope)} or in the Environment",
            )
            return False
        if owners and scope is None:
            missing = sorted(set(self.index.tenants) - set(owners))
            self.error(
                mark,
                "NX308",
                f"{dotted(path)} names the {what} {describe(name)}, which only tenant(s) "
                f"{quoted_list(owners)} define: an Environment reference must name an "
                f"Environment {what} or one every tenant defines (missing in "
                f"{quoted_list(missing)})",
            )
            return False
        visible = self.index.visible(table, scope)
        guess = did_you_mean(name, visible)
        hint = f"did you mean '{guess}'?" if guess else how
        known = f" (known: {quoted_list(visible)})" if visible else ""
        self.error(
            mark,
            code,
            f"{dotted(path)} names the {what} {describe(name)}, which is not defined in "
            f"{self._where(scope)}{' or the Environment' if scope else ''}{known}: {hint}",
        )
        return False

    # -- rules --

    def run(self) -> None:
        self.check_identity()
        self.check_tenants()
        self.check_transactions()
        self.check_queues()
        self.check_users()
        self.check_environment()
        self.check_secrets()

    def check_identity(self) -> None:
        environments = [d for d in self.docs if d.data["kind"] == "Environment"]
        if not environments and self.docs:
            first = self.docs[0]
            self.error(
                first.mark(("kind",)),
                "NX301",
                "the config has no Environment document: add exactly one (kind: Environment, "
                "with spec.options.nexus.url); see docs/config.md",
            )
        for extra in environments[1:]:
            first = environments[0]
            self.error(
                extra.mark(("kind",)),
                "NX301",
                f"a second Environment document: the config must have exactly one (the first "
                f"is {first.file}:{first.mark(('kind',)).line}); merge them",
            )
        seen: dict[tuple[str, str | None, str], Document] = {}
        ccids: dict[str, Document] = {}
        for doc in self.docs:
            kind, name, scope = doc.data["kind"], doc.data["name"], scope_of(doc)
            if kind == "Environment":
                continue
            key = (kind, scope, name)
            first = seen.get(key)
            if first is None:
                seen[key] = doc
            else:
                where = f"{first.file}:{first.mark(('name',)).line}"
                if kind == "Tenant":
                    self.error(
                        doc.mark(("name",)),
                        "NX401",
                        f"name: tenant {describe(name)} is already defined at {where}: tenant "
                        "names must be unique; rename one of them",
                    )
                else:
                    self.error(
                        doc.mark(("name",)),
                        "NX302",
                        f"name: {kind} {describe(name)} of {self._where(scope)} is already "
                        f"defined at {where}: each (kind, tenant, name) must be unique; rename "
                        "or merge them",
                    )
            if scope is not None and kind in ("Transaction", "Queue", "User"):
                if scope not in self.index.tenants:
                    guess = did_you_mean(scope, self.index.tenants)
                    hint = (
                        f"did you mean '{guess}'?"
                        if guess
                        else "add a Tenant document with this name, or remove 'tenant' to make "
                        "it an Environment object"
                    )
                    self.error(
                        doc.value_mark(("tenant",)),
                        "NX303",
                        f"tenant {describe(scope)} is not a Tenant document's name: {hint}",
                    )
            if kind == "Tenant":
                ccid = _spec(doc).get("ccid")
                if isinstance(ccid, str) and ccid:
                    other = ccids.get(ccid.lower())
                    if other is None:
                        ccids[ccid.lower()] = doc
                    elif first is None:
                        self.error(
                            doc.mark(("spec", "ccid")),
                            "NX402",
                            f"spec.ccid {describe(ccid)} is already the ccid of tenant "
                            f"{describe(other.data['name'])} "
                            f"({other.file}:{other.mark(('spec', 'ccid')).line}): each "
                            "contact center ID must be unique",
                        )

    def check_tenants(self) -> None:
        async_seen: dict[str, tuple[str, Document]] = {}
        for name, doc in self.index.tenants.items():
            spec = _spec(doc)
            services = _dict(spec.get("services"))
            base = ("spec", "services")
            sms = services.get("SMS")
            if isinstance(sms, dict):
                data = _dict(sms.get("data"))
                provider = sms_provider(sms)
                if provider is None and isinstance(sms.get("data"), dict):
                    self.error(
                        doc.mark((*base, "SMS", "data")),
                        "NX503",
                        "spec.services.SMS.data must select a provider: add 'provider: Portico', "
                        "'provider: Async' or 'provider: mGage' (or 'tokenProvider: Purecloud' "
                        "for Genesys Cloud)",
                    )
                elif provider in SMS_PROVIDER_SERVICES:
                    key = "provider" if "provider" in data else "tokenProvider"
                    self._needs(doc, (*base, "SMS", "data", key), name, provider,
                                SMS_PROVIDER_SERVICES[provider], "the SMS service")
            email = services.get("Email")
            if isinstance(email, dict):
                provider = _str(_dict(email.get("data")).get("provider"))
                if provider in EMAIL_PROVIDER_SERVICES:
                    self._needs(doc, (*base, "Email", "data", "provider"), name, provider,
                                EMAIL_PROVIDER_SERVICES[provider], "the Email service")
            for i, channel_id in async_channel_ids(services.get("Async")):
                first = async_seen.get(channel_id)
                if first is None:
                    async_seen[channel_id] = (name, doc)
                elif first[0] != name:
                    self.error(
                        doc.mark((*base, "Async", "data", "channels", i, "channelId")),
                        "NX403",
                        f"channelId {describe(channel_id)} is already a channel of tenant "
                        f"{describe(first[0])}'s Async service: a channel belongs to one tenant",
                    )
            names: dict[str, int] = {}
            for i, key in enumerate(_list(spec.get("apikeys"))):
                key_name = _str(_dict(key).get("name"))
                if key_name is None:
                    continue
                if key_name in names:
                    self.error(
                        doc.mark(("spec", "apikeys", i, "name")),
                        "NX404",
                        f"spec.apikeys[{i}].name {describe(key_name)} is already the name of "
                        f"spec.apikeys[{names[key_name]}]: API key names must be unique per "
                        "tenant",
                    )
                else:
                    names[key_name] = i
            if sms_provider(sms) is not None:
                self.used_providers[name].add(sms_provider(sms) or "")
            email_provider = _str(_dict(_dict(email).get("data")).get("provider"))
            if email_provider:
                self.used_providers[name].add(email_provider)

    def _needs(
        self,
        doc: Document,
        path: Path_,
        tenant: str,
        provider: str,
        needed: tuple[str, ...],
        who: str,
    ) -> None:
        have = self.index.services(tenant)
        missing = [s for s in needed if s not in have]
        if missing:
            self.error(
                doc.mark(path),
                "NX501",
                f"{dotted(path)} selects the provider {describe(provider)}, which needs the "
                f"service(s) {quoted_list(missing)} in tenant {describe(tenant)}: add "
                f"{quoted_list(missing)} under spec.services (see docs/config.md), or choose "
                "another provider",
            )

    def check_transactions(self) -> None:
        channel_ids: dict[str, tuple[Document, Path_]] = {}
        header_sections: list[tuple[Document, Path_, str, str | None]] = []
        for doc in self.docs:
            if doc.data["kind"] != "Transaction":
                continue
            name, scope = doc.data["name"], scope_of(doc)
            sections = _dict(_spec(doc).get("sections"))
            for section, options in sections.items():
                if not isinstance(section, str) or not isinstance(options, dict):
                    continue
                path = ("spec", "sections", section)
                if name == "NexusEndpoints" and section.startswith("chat."):
                    self._endpoint_section(doc, path, options, scope)
                elif name == "NexusServices":
                    if section.startswith("chat.") or section.startswith("cxc."):
                        self._channel_section(doc, path, section, options, scope, channel_ids)
                    elif section in PROVIDER_SECTIONS:
                        header_sections.append((doc, path, section, scope))
        for doc, path, provider, scope in header_sections:
            used = set(self.used_providers[scope])
            if scope is None:
                for tenant in self.index.tenants:
                    used |= self.used_providers[tenant]
            if provider not in used:
                self.error(
                    doc.mark(path),
                    "NX504",
                    f"{dotted(path)} holds header options for the provider {describe(provider)}, "
                    f"which no channel or service of {self._where(scope)} uses"
                    + (f" (used: {quoted_list(sorted(used))})" if used else "")
                    + ": name the section after the provider your channels use, or remove it",
                )

    def _endpoint_section(
        self, doc: Document, path: Path_, options: dict[str, Any], scope: str | None
    ) -> None:
        queue = _str(options.get("queue"))
        if queue:
            self._ref_problem(
                doc, (*path, "queue"), "queue", queue, self.index.queues, scope, "NX304",
                "define a Queue document with this name",
            )
        strategy = _str(options.get("strategy"))
        if strategy and SECTION_SUFFIX.match(strategy) and strategy not in self.strategies:
            guess = did_you_mean(strategy, self.strategies)
            hint = f"did you mean '{guess}'?" if guess else "add scxml/<name>.scxml.j2"
            self.error(
                doc.value_mark((*path, "strategy")),
                "NX306",
                f"{dotted((*path, 'strategy'))} names the strategy {describe(strategy)}, which "
                f"is not a template in scxml/ (available: {quoted_list(self.strategies)}): {hint}",
            )

    def _channel_section(
        self,
        doc: Document,
        path: Path_,
        section: str,
        options: dict[str, Any],
        scope: str | None,
        channel_ids: dict[str, tuple[Document, Path_]],
    ) -> None:
        is_chat = section.startswith("chat.")
        channel_id = _str(options.get("channelId"))
        if channel_id:
            first = channel_ids.get(channel_id)
            if first is None:
                channel_ids[channel_id] = (doc, path)
            else:
                other_doc, other_path = first
                self.error(
                    doc.mark((*path, "channelId")),
                    "NX403",
                    f"{dotted((*path, 'channelId'))} {describe(channel_id)} is already the "
                    f"channelId of {other_path[-1]} ({other_doc.file}:"
                    f"{other_doc.mark(other_path).line}): channel IDs must be unique across all "
                    "tenants and sections",
                )
        if is_chat:
            endpoint = _str(options.get("endpoint"))
            if endpoint and endpoint.startswith("chat."):
                self._ref_problem(
                    doc, (*path, "endpoint"), "endpoint", endpoint, self.index.endpoints, scope,
                    "NX305", "add this section to the NexusEndpoints transaction",
                )
            subtype = _str(options.get("interactionSubtype"))
            if subtype:
                self._subtype(doc, (*path, "interactionSubtype"), subtype)
            provider = options.get("provider", "Portico")
        else:
            provider = options.get("provider")
        if not isinstance(provider, str):
            if not is_chat and provider is None:
                self._email_default(doc, path, scope)
            return
        provider_path = (*path, "provider")
        mark = doc.mark(provider_path) if "provider" in options else doc.mark(path)
        # which tenants own this channel?
        if provider == "Async":
            owner = self.index.async_owner.get(channel_id or "")
            if scope is not None and channel_id and owner != scope:
                self.error(
                    mark,
                    "NX502",
                    f"{dotted(path)} uses the provider 'Async', but tenant {describe(scope)}'s "
                    f"Async service does not list channelId {describe(channel_id)}: add it to "
                    "spec.services.Async.data.channels (with its secrets in "
                    "secret.channels)" + (f"; it is tenant {describe(owner)}'s" if owner else ""),
                )
                return
            if scope is None and channel_id and owner is None:
                self.error(
                    mark,
                    "NX502",
                    f"{dotted(path)} uses the provider 'Async', but no tenant's Async service "
                    f"lists channelId {describe(channel_id)}: add it to the owning tenant's "
                    "spec.services.Async.data.channels (with its secrets in secret.channels)",
                )
                return
            owners = [owner] if owner else []
        else:
            owners = [scope] if scope is not None else list(self.index.tenants)
        for owner in owners:
            self.used_providers[owner].add(provider)
        self.used_providers[scope].add(provider)
        if not is_chat or provider not in SMS_PROVIDER_SERVICES:
            return
        needed = SMS_PROVIDER_SERVICES[provider]
        if not owners:
            return
        key = (tuple(owners), provider)
        complete = self._complete.get(key)
        if complete is None:
            complete = any(all(s in self.index.services(o) for s in needed) for o in owners)
            self._complete[key] = complete
        if not complete:
            where = f"tenant {describe(owners[0])}" if scope is not None else "any tenant"
            missing = [s for s in needed if s not in self.index.services(owners[0])]
            self.error(
                mark,
                "NX501",
                f"{dotted(path)} uses the provider {describe(provider)}, which needs the "
                f"service(s) {quoted_list(needed)} in {where}"
                + (f" (missing: {quoted_list(missing)})" if scope is not None else "")
                + ": add them under the tenant's spec.services, or choose another provider",
            )

    def _email_default(self, doc: Document, path: Path_, scope: str | None) -> None:
        owners = [scope] if scope is not None else list(self.index.tenants)
        if owners and not any("Email" in self.index.services(o) for o in owners):
            self.error(
                doc.mark(path),
                "NX501",
                f"{dotted(path)} has no provider option, so the tenant's Email service chooses "
                f"the provider, but {'tenant ' + describe(scope) if scope else 'no tenant'} "
                "has an Email service: add spec.services.Email (provider SparkPost, Async or "
                "Portico), or set 'provider: Async' here",
            )

    def _subtype(self, doc: Document, path: Path_, subtype: str) -> None:
        env = self.index.environment
        if env is None:
            return
        values = [
            _str(_dict(v).get("name"))
            for v in _list(_dict(_spec(env).get("businessAttributes")).get(SUBTYPE_ATTRIBUTE))
        ]
        values = [v for v in values if v]
        if subtype not in values:
            guess = did_you_mean(subtype, values)
            self.error(
                doc.value_mark(path),
                "NX307",
                f"{dotted(path)} is {describe(subtype)}, which is not a value of the "
                f"Environment's '{SUBTYPE_ATTRIBUTE}' business attribute"
                + (f" (values: {quoted_list(values)})" if values else "")
                + (
                    f": did you mean '{guess}'?"
                    if guess
                    else f": add it under spec.businessAttributes['{SUBTYPE_ATTRIBUTE}'] of the "
                    "Environment"
                ),
            )

    def check_queues(self) -> None:
        for doc in self.docs:
            if doc.data["kind"] != "Queue":
                continue
            spec, name = _spec(doc), doc.data["name"]
            view, strategy, submitter = (
                _dict(spec.get("view")), _dict(spec.get("strategy")), _dict(spec.get("submitter"))
            )
            if name in GUIDE_QUEUES:
                self._guide_queue(doc, name, spec, view, strategy, submitter)
                continue
            for key, own, what in (("view", view, "view"), ("strategy", strategy, "strategy")):
                value = _str(submitter.get(key))
                own_name = _str(own.get("name"))
                if value is None:
                    continue
                if own_name != value:
                    path = ("spec", "submitter", key)
                    self.error(
                        doc.value_mark(path),
                        "NX309",
                        f"{dotted(path)} is {describe(value)}, but the submitter must use its "
                        f"queue's own {what}"
                        + (
                            f" {describe(own_name)} (spec.{what}.name)"
                            if own_name
                            else f": define spec.{what} for queue {describe(name)}"
                        ),
                    )

    def _guide_queue(
        self,
        doc: Document,
        name: str,
        spec: dict[str, Any],
        view: dict[str, Any],
        strategy: dict[str, Any],
        submitter: dict[str, Any],
    ) -> None:
        code = "NX601"
        if scope_of(doc) is not None:
            self.error(
                doc.mark(("tenant",)),
                code,
                f"queue {describe(name)} must be an Environment queue, as the guide sets it up: "
                "remove 'tenant'",
            )
        template = GUIDE_QUEUES[name]
        parts = ("view", "strategy", "submitter")
        missing = [k for k in parts if not isinstance(spec.get(k), dict)]
        for key in missing:
            self.error(
                doc.mark(("spec",)),
                code,
                f"spec: queue {describe(name)} must have the {key} the guide gives it: add "
                f"spec.{key} as in docs/config.md (the guide's {name} scripts)",
            )
        expected: list[tuple[Path_, Any, str]] = []
        if view:
            expected += [
                (("spec", "view", "name"), f"{name}/scheduled_view", ""),
                (("spec", "view", "namespace"), "scheduled_view", ""),
                (("spec", "view", "queue"), name, ""),
                (("spec", "view", "scheduling-mode"), "scheduled-and-unscheduled", ""),
            ]
            if name == "asynchold":
                expected.append((("spec", "view", "freeze-interval"), 30, ""))
        if strategy:
            expected += [
                (("spec", "strategy", "name"), f"{name}.ER", ""),
                (("spec", "strategy", "type"), "Enhanced Routing", ""),
            ]
        if submitter:
            expected += [
                (("spec", "submitter", "name"), f"{name}.IS", ""),
                (("spec", "submitter", "view"), f"{name}/scheduled_view", ""),
                (("spec", "submitter", "strategy"), f"{name}.ER", ""),
            ]
        for path, want, _ in expected:
            got = doc.get(path)
            if got != want:
                where = doc.mark(path) if got is not None else doc.mark(path[:-1])
                self.error(
                    where,
                    code,
                    f"{dotted(path)} of queue {describe(name)} must be {describe(want)}, as the "
                    f"guide sets it up, found {describe(got)}"
                    + ("" if got is not None else f": add '{path[-1]}: {want}'"),
                )
        url = strategy.get("url")
        if isinstance(url, str) and not isinstance(url, Ref):
            suffix = f"/scxml/{template}.scxml"
            bases = ["$nexusURL"] + ([self.nexus_url] if self.nexus_url else [])
            exact = any(url == b + suffix for b in bases)
            if not url.endswith(suffix) or (self.nexus_url is not None and not exact):
                want = (self.nexus_url or "$nexusURL") + suffix
                self.error(
                    doc.value_mark(("spec", "strategy", "url")),
                    code,
                    f"spec.strategy.url of queue {describe(name)} must be {describe(want)} (the "
                    f"Environment's nexus url + '{suffix}', or '$nexusURL{suffix}'), found "
                    f"{describe(url)}",
                )

    def check_users(self) -> None:
        usernames: dict[tuple[str | None, str], Document] = {}
        for doc in self.docs:
            if doc.data["kind"] != "User":
                continue
            spec, scope = _spec(doc), scope_of(doc)
            username = _str(spec.get("username"))
            if username:
                key = (scope, username.lower())
                first = usernames.get(key)
                if first is None:
                    usernames[key] = doc
                else:
                    self.error(
                        doc.mark(("spec", "username")),
                        "NX405",
                        f"spec.username {describe(username)} is already used in "
                        f"{self._where(scope)} ({first.file}:"
                        f"{first.mark(('spec', 'username')).line}): usernames must be unique "
                        "per tenant",
                    )
            agent = _dict(spec.get("agent"))
            for i, queue in enumerate(_list(agent.get("queues"))):
                if isinstance(queue, str) and queue:
                    self._ref_problem(
                        doc, ("spec", "agent", "queues", i), "queue", queue, self.index.queues,
                        scope, "NX304", "define a Queue document with this name",
                    )

    def check_environment(self) -> None:
        env = self.index.environment
        if env is not None:
            spec = _spec(env)
            routing = _dict(spec.get("routing"))
            for section, key in (("redirectQueue", "fallbackQueue"), ("undelivered", "parkQueue")):
                queue = _str(_dict(routing.get(section)).get(key))
                if queue:
                    self._ref_problem(
                        env, ("spec", "routing", section, key), "queue", queue,
                        self.index.queues, None, "NX304", "define a Queue document with this name",
                    )
            self._gws(env, _dict(_dict(spec.get("applications")).get("gws")))
        if self.index.tenants:
            anchor = env or self.docs[0]
            for name in GUIDE_QUEUES:
                # A document of that name whose kind is broken is already reported (NX101):
                # saying the queue is missing too would be a second finding for one mistake.
                if (None, name) not in self.index.queues and name not in self.index.unknown_names:
                    self.error(
                        anchor.mark(("kind",)),
                        "NX602",
                        f"the Environment queue {describe(name)} is missing: a config with "
                        f"tenants needs the guide's {name} queue with its view, strategy and "
                        "submitter (see docs/config.md)",
                    )

    def _gws(self, env: Document, gws: dict[str, Any]) -> None:
        base = ("spec", "applications", "gws")
        if "NexusConversation" in gws and "NexusCommunication" not in gws:
            self.error(
                env.mark((*base, "NexusConversation")),
                "NX603",
                "spec.applications.gws.NexusConversation needs NexusCommunication too: when "
                "enabling the Conversation tab you must also add the Communication tab (hide it "
                "with 'mode: HIDDEN' instead of removing it)",
            )
        workspace = _dict(gws.get("interaction-workspace"))
        for key in ("workspace.web-content", "interaction.web-content"):
            value = _str(workspace.get(key))
            if value is None:
                continue
            names = [n.strip() for n in value.split(",") if n.strip()]
            for section in names:
                if section not in gws or section == "interaction-workspace":
                    defined = [k for k in gws if k != "interaction-workspace"]
                    path = (*base, "interaction-workspace", key)
                    self.error(
                        env.value_mark(path),
                        "NX604",
                        f"{dotted(path)} names the section {describe(section)}, which is not "
                        f"defined under spec.applications.gws"
                        + (f" (defined: {quoted_list(defined)})" if defined else "")
                        + ": define it or name a defined section",
                    )
        for section, page, extra in (
            ("NexusCommunication", "/ux/comm", ()),
            ("NexusConversation", "/ux/conv", ("iid",)),
        ):
            url = _str(_dict(gws.get(section)).get("url"))
            if url is None or isinstance(url, Ref):
                continue
            path = (*base, section, "url")
            problem = self._gws_url(url, page, extra)
            if problem:
                self.error(env.value_mark(path), "NX605", f"{dotted(path)} {problem}")

    def _gws_url(self, url: str, page: str, extra: tuple[str, ...]) -> str:
        parts = urlsplit(url)
        bases = {"$nexusURL", "https://$nexusURL", "http://$nexusURL"}
        if self.nexus_url:
            bases.add(self.nexus_url)
        root = url.split("?", 1)[0].rstrip("/")
        want = f"{self.nexus_url or '$nexusURL'}{page}"
        known_base = self.nexus_url is not None or "$nexusURL" in root
        if (root not in {b + page for b in bases}) if known_base else not root.endswith(page):
            return (
                f"must point at the Nexus UX page {describe(want)} (the Environment's nexus "
                f"url + '{page}'), found {describe(root)}"
            )
        query = parse_qs(parts.query, keep_blank_values=True)
        required = (*extra, "customername", "ccid")
        missing = [k for k in required if not query.get(k) or not query[k][0]]
        if missing:
            return (
                f"must have the query parameters {quoted_list(required)}, missing "
                f"{quoted_list(missing)}: e.g. '{want}?"
                + ("iid=$Interaction.Id$&" if extra else "")
                + "customername=$tenantName&ccid=$ccId'"
            )
        if "iid" in extra and query["iid"][0] != "$Interaction.Id$":
            return f"must pass iid=$Interaction.Id$, found iid={describe(query['iid'][0])}"
        ccid, tenant = query["ccid"][0], query["customername"][0]
        if not ccid.startswith("$") and not tenant.startswith("$"):
            doc = self.index.tenants.get(tenant)
            if doc is None:
                return (
                    f"names customername {describe(tenant)}, which is not a Tenant "
                    f"(tenants: {quoted_list(self.index.tenants) or 'none'})"
                )
            own = _str(_spec(doc).get("ccid"))
            if own and is_uuid(own) and own.lower() != ccid.lower():
                return (
                    f"passes ccid {describe(ccid)}, but tenant {describe(tenant)}'s ccid is "
                    f"{describe(own)}"
                )
        return ""

    def check_secrets(self) -> None:
        for doc in self.docs:
            leaves: list[tuple[Path_, Any]] = []
            _walk(doc.data, (), leaves)
            for path, value in leaves:
                if isinstance(value, Ref):
                    self._check_ref(doc, path, value)
                    continue
                if not path or not _is_secret_path(path):
                    continue
                if value is None or value == "" or isinstance(value, dict | list):
                    continue
                self.error(
                    doc.value_mark(path),
                    "NX701",
                    f"{dotted(path)} holds a literal secret (not shown): secrets must not be "
                    "written in config; use a reference such as '${env:NAME}' or "
                    "'${file:/run/secrets/name}' and provide the value at run time",
                )

    def _check_ref(self, doc: Document, path: Path_, ref: Ref) -> None:
        problems = check_syntax(ref)
        mark = doc.value_mark(path)
        for problem in problems:
            self.error(mark, "NX702", f"{dotted(path)}: {problem}")
        if problems:
            return
        try:
            resolve(ref, self.env)
        except RefError as exc:
            text = f"{dotted(path)}: {exc}"
            if exc.unset:
                if self.mode == "serve":
                    self.error(mark, "NX703", text + ": set it before starting Nexus")
                else:
                    self.findings.warning(
                        mark, "NX703", text + " (fine for lint; `nexus serve` needs it)"
                    )
            else:
                self.error(mark, "NX703", text)


def _is_secret_path(path: Path_) -> bool:
    key = path[-1]
    if not isinstance(key, str):
        return False
    if key in ("password", "token", "clientSecret", "secret"):
        return True
    if key == "apikey":
        return "secret" in path
    if key == "key":
        return len(path) >= 2 and isinstance(path[-2], int) and "apikeys" in path
    return False


_SECRET_NAMES = frozenset({"password", "token", "clientSecret", "secret", "apikey", "key"})


def _walk(node: Any, path: Path_, out: list[tuple[Path_, Any]]) -> None:
    """Collect the leaves that matter for secrets: references and values of secret keys."""
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(value, dict | list):
                _walk(value, (*path, key), out)
            elif isinstance(value, Ref) or key in _SECRET_NAMES:
                out.append(((*path, key), value))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            if isinstance(value, dict | list):
                _walk(value, (*path, i), out)
            elif isinstance(value, Ref):
                out.append(((*path, i), value))


def check(
    documents: list[Document],
    findings: Findings,
    *,
    mode: Mode = "lint",
    env: Mapping[str, str] | None = None,
    strategies: tuple[str, ...] | None = None,
) -> None:
    """Run every cross-document rule over the documents with a valid envelope."""
    docs = [d for d in documents if is_valid(d)]
    if not docs:
        return
    Checker(docs, findings, mode, env, strategies or available_strategies(), documents).run()
