"""The validated config as immutable objects: the only thing later layers read.

Built only from documents that passed schema and semantic validation
(:func:`engine.config.validate.validate_paths`). Defaults are applied here (cxcOnly false,
provider Portico, API key capacity 120 per 60 s, ...). Secrets stay references
(:class:`Secret`) until a caller asks for the value with :meth:`Secret.resolve`, so a model
can be built in lint mode without any secret at hand.

Lookups::

    model.tenant("t1001"); model.tenant_by_ccid(ccid)
    model.channel("16504661149")          # a chat.* or cxc.* section, with its owning tenant
    model.endpoint("SMS_Main")            # with or without the 'chat.' prefix
    model.queue("sms-support", tenant="t1001")   # the tenant's own, else the Environment's
    model.user("alice", tenant="t1001"); model.headers("Async", tenant="t1001")
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from engine.config.loader import Document
from engine.config.refs import Ref, resolve
from engine.config.semantics import async_channel_ids, scope_of, sms_provider


def _freeze(value: Any) -> Any:
    """Read-only copies of nested data: mappings become MappingProxyType, lists tuples,
    references Secrets."""
    if isinstance(value, dict):
        return MappingProxyType({k: _freeze(v) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, Ref):
        return Secret(value)
    return value


EMPTY: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Secret:
    """A secret by reference (``${env:NAME}`` / ``${file:PATH}``). ``str()`` and ``repr()``
    show the reference, never the value; :meth:`resolve` reads the value."""

    ref: str

    def resolve(self, env: Mapping[str, str] | None = None) -> str:
        """The secret's value. Raises :class:`engine.config.refs.RefError` when unset."""
        return resolve(self.ref, env)

    def __str__(self) -> str:
        return str(self.ref)


def _secret(value: Any) -> Secret | None:
    if isinstance(value, Secret):
        return value
    if isinstance(value, str) and value:
        return Secret(value if isinstance(value, Ref) else Ref(value))
    return None


# ---- Environment ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BusinessAttributeValue:
    name: str
    display_name: str
    description: str


@dataclass(frozen=True, slots=True)
class WebContent:
    """A GWS web-content section (NexusCommunication, NexusConversation)."""

    label: str
    url: str
    sandbox: tuple[str, ...]
    hidden: bool


@dataclass(frozen=True, slots=True)
class Gws:
    communication: WebContent | None
    conversation: WebContent | None
    workspace: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class RedirectQueue:
    fallback_queue: str | None = None
    user_data_key: str = "queue"


@dataclass(frozen=True, slots=True)
class Undelivered:
    max_attempts: int = 3
    initial_delay_seconds: float = 30
    backoff_multiplier: float = 2
    max_delay_seconds: float = 3600
    on_give_up: str = "terminate"
    park_queue: str | None = None
    terminate_reason: str = "undelivered"

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (1-based)."""
        raw = self.initial_delay_seconds * self.backoff_multiplier ** max(0, attempt - 1)
        return min(raw, self.max_delay_seconds)


@dataclass(frozen=True, slots=True)
class Routing:
    redirect_queue: RedirectQueue = RedirectQueue()
    undelivered: Undelivered = Undelivered()


@dataclass(frozen=True, slots=True)
class Delivery:
    timeout_seconds: float = 10
    max_attempts: int = 5
    initial_delay_seconds: float = 1
    backoff_multiplier: float = 2
    max_delay_seconds: float = 300
    jitter: float = 0.1

    def delay(self, attempt: int) -> float:
        """Seconds before retry number ``attempt`` (1-based), before jitter."""
        raw = self.initial_delay_seconds * self.backoff_multiplier ** max(0, attempt - 1)
        return min(raw, self.max_delay_seconds)


@dataclass(frozen=True, slots=True)
class Environment:
    name: str
    nexus_url: str
    options: Mapping[str, Mapping[str, Any]]
    business_attributes: Mapping[str, tuple[BusinessAttributeValue, ...]]
    gws: Gws
    ucs: Mapping[str, Mapping[str, Any]]
    routing: Routing
    delivery: Delivery

    @property
    def interaction_subtypes(self) -> tuple[str, ...]:
        return tuple(v.name for v in self.business_attributes.get("Interaction Subtype", ()))


# ---- Tenants --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Service:
    """A tenant service as the provisioning API knows it: {url, data, secret}. Every string
    in ``secret`` is a :class:`Secret`."""

    name: str
    url: str | None
    data: Mapping[str, Any]
    secret: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class AsyncChannel:
    """One channel of the Async service (data and secret entries joined)."""

    channel_id: str
    webhook_url: str
    webhook_secret: Secret | None
    api_secret: Secret | None


@dataclass(frozen=True, slots=True)
class ApiKey:
    name: str
    permissions: tuple[str, ...]
    key: Secret
    capacity: int = 120
    frequency: int = 60
    enabled: bool = True
    expires: _dt.date | None = None  # None: never (the API's `false`)

    def allows(self, permission: str) -> bool:
        """True when this key grants ``permission`` (``nexus:cluster:*`` grants all)."""
        if "nexus:cluster:*" in self.permissions or permission in self.permissions:
            return True
        area = permission.rsplit(":", 1)[0]
        return f"{area}:*" in self.permissions


@dataclass(frozen=True, slots=True)
class Tenant:
    name: str
    ccid: str
    type: str
    backendurl: str
    username: str
    token: Secret
    genesystenantid: int
    enabled: bool
    services: Mapping[str, Service]
    apikeys: tuple[ApiKey, ...]
    async_channels: tuple[AsyncChannel, ...]

    def service(self, name: str) -> Service | None:
        return self.services.get(name)

    @property
    def sms_provider(self) -> str | None:
        """The SMS service's provider (Portico for tokenProvider Purecloud), if any."""
        sms = self.services.get("SMS")
        return sms_provider({"data": dict(sms.data)}) if sms else None

    @property
    def email_provider(self) -> str | None:
        email = self.services.get("Email")
        provider = email.data.get("provider") if email else None
        return provider if isinstance(provider, str) else None

    @property
    def webhook_targets(self) -> tuple[Service, ...]:
        return tuple(
            s for n, s in self.services.items() if n.startswith("WebhookTransportTarget-")
        )

    def async_channel(self, channel_id: str) -> AsyncChannel | None:
        for channel in self.async_channels:
            if channel.channel_id == channel_id:
                return channel
        return None


# ---- Transactions ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A NexusEndpoints section: where interactions entering at this endpoint go."""

    section: str  # 'chat.SMS_Main'
    queue: str
    strategy: str | None
    tenant: str | None  # None: the Environment's

    @property
    def name(self) -> str:
        return self.section.removeprefix("chat.")


@dataclass(frozen=True, slots=True)
class Channel:
    """A NexusServices `chat.*` (SMS) or `cxc.*` (email domain) section."""

    section: str
    channel_id: str
    channel_type: str  # 'sms' | 'email'
    provider: str | None  # chat: default Portico; cxc: None = the Email service's provider
    tenant: str | None  # the owning tenant when known (the transaction's, or Async owner)
    scope: str | None  # the tenant of the transaction that defines it (None: Environment)
    endpoint: str | None = None
    interaction_subtype: str | None = None
    interaction_type: str | None = None
    media: str | None = None
    cxc_only: bool = False

    @property
    def is_chat(self) -> bool:
        return self.section.startswith("chat.")


@dataclass(frozen=True, slots=True)
class DesignerEnv:
    section: str
    baseurl: str
    url: str
    password: Secret
    tenant: str | None


@dataclass(frozen=True, slots=True)
class Transaction:
    name: str
    tenant: str | None
    sections: Mapping[str, Mapping[str, Any]]


# ---- Queues and users -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class QueueView:
    name: str
    namespace: str
    queue: str
    condition: str = ""
    order: str = ""
    scheduling_mode: str | None = None
    freeze_interval: int | None = None


@dataclass(frozen=True, slots=True)
class QueueStrategy:
    name: str
    type: str
    url: str

    @property
    def template(self) -> str:
        """The SCXML template the url names ('redirect_queue' for .../redirect_queue.scxml)."""
        return self.url.rsplit("/", 1)[-1].removesuffix(".scxml")


@dataclass(frozen=True, slots=True)
class QueueSubmitter:
    name: str
    view: str
    strategy: str


@dataclass(frozen=True, slots=True)
class Queue:
    name: str
    tenant: str | None
    enabled: bool
    view: QueueView | None = None
    strategy: QueueStrategy | None = None
    submitter: QueueSubmitter | None = None
    distribution: str = "longest-idle"
    capacity: int | None = None
    offer_timeout_seconds: float = 30


@dataclass(frozen=True, slots=True)
class AgentSettings:
    queues: tuple[str, ...]
    capacity: Mapping[str, int]


@dataclass(frozen=True, slots=True)
class User:
    name: str
    username: str
    tenant: str | None
    roles: tuple[str, ...]
    password: Secret
    enabled: bool = True
    first_name: str = ""
    last_name: str = ""
    employee_id: str = ""
    agent: AgentSettings | None = None

    def has_role(self, role: str) -> bool:
        return role in self.roles


# ---- the model ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Model:
    environment: Environment
    tenants: tuple[Tenant, ...]
    transactions: tuple[Transaction, ...]
    queues: tuple[Queue, ...]
    users: tuple[User, ...]
    endpoints: tuple[Endpoint, ...] = ()
    channels: tuple[Channel, ...] = ()
    designer: tuple[DesignerEnv, ...] = ()
    # (scope, provider) -> {header name: value}
    provider_headers: Mapping[tuple[str | None, str], Mapping[str, str]] = field(
        default_factory=lambda: EMPTY
    )
    _by_name: Mapping[str, Tenant] = field(init=False, repr=False, compare=False)
    _by_ccid: Mapping[str, Tenant] = field(init=False, repr=False, compare=False)
    _by_channel: Mapping[str, Channel] = field(init=False, repr=False, compare=False)
    _by_endpoint: Mapping[tuple[str | None, str], Endpoint] = field(
        init=False, repr=False, compare=False
    )
    _by_queue: Mapping[tuple[str | None, str], Queue] = field(
        init=False, repr=False, compare=False
    )
    _by_user: Mapping[tuple[str | None, str], User] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, MappingProxyType(value))

        put("_by_name", {t.name: t for t in self.tenants})
        put("_by_ccid", {t.ccid.lower(): t for t in self.tenants})
        put("_by_channel", {c.channel_id: c for c in self.channels})
        put("_by_endpoint", {(e.tenant, e.section): e for e in self.endpoints})
        put("_by_queue", {(q.tenant, q.name): q for q in self.queues})
        put("_by_user", {(u.tenant, u.username.lower()): u for u in self.users})

    def tenant(self, name: str) -> Tenant | None:
        return self._by_name.get(name)

    def tenant_by_ccid(self, ccid: str) -> Tenant | None:
        return self._by_ccid.get(ccid.lower())

    def channel(self, channel_id: str) -> Channel | None:
        return self._by_channel.get(channel_id)

    def channels_of(self, tenant: str) -> tuple[Channel, ...]:
        """Channels owned by a tenant (its own sections and Environment sections it owns)."""
        return tuple(c for c in self.channels if c.tenant == tenant or c.tenant is None)

    def endpoint(self, name: str, tenant: str | None = None) -> Endpoint | None:
        """An endpoint by name, with or without its 'chat.' prefix: the tenant's own first,
        then the Environment's."""
        section = name if name.startswith("chat.") else f"chat.{name}"
        if tenant is not None and (tenant, section) in self._by_endpoint:
            return self._by_endpoint[(tenant, section)]
        return self._by_endpoint.get((None, section))

    def queue(self, name: str, tenant: str | None = None) -> Queue | None:
        """A queue by name: the tenant's own first, then the Environment's."""
        if tenant is not None and (tenant, name) in self._by_queue:
            return self._by_queue[(tenant, name)]
        return self._by_queue.get((None, name))

    def user(self, username: str, tenant: str | None = None) -> User | None:
        return self._by_user.get((tenant, username.lower()))

    def users_of(self, tenant: str | None) -> tuple[User, ...]:
        return tuple(u for u in self.users if u.tenant == tenant)

    def agents_of(self, queue: str, tenant: str | None = None) -> tuple[User, ...]:
        return tuple(
            u
            for u in self.users
            if u.agent is not None and queue in u.agent.queues and u.tenant in (tenant, None)
        )

    def headers(self, provider: str, tenant: str | None = None) -> Mapping[str, str]:
        """Custom webhook headers for a provider: the Environment's, overridden by the
        tenant's NexusServices section of the same name."""
        merged = dict(self.provider_headers.get((None, provider), EMPTY))
        if tenant is not None:
            merged.update(self.provider_headers.get((tenant, provider), EMPTY))
        return MappingProxyType(merged)

    def designer_env(self, tenant: str | None = None) -> DesignerEnv | None:
        for scope in (tenant, None):
            for item in self.designer:
                if item.tenant == scope:
                    return item
        return None

    def transaction(self, name: str, tenant: str | None = None) -> Transaction | None:
        for item in self.transactions:
            if item.name == name and item.tenant == tenant:
                return item
        return None

    def secrets(self) -> tuple[Secret, ...]:
        """Every secret reference in the model (for checks before serving)."""
        found: list[Secret] = []

        def walk(value: Any) -> None:
            if isinstance(value, Secret):
                found.append(value)
            elif isinstance(value, Mapping):
                for item in value.values():
                    walk(item)
            elif isinstance(value, tuple):
                for item in value:
                    walk(item)

        for tenant in self.tenants:
            found.append(tenant.token)
            for service in tenant.services.values():
                walk(service.secret)
            found.extend(k.key for k in tenant.apikeys)
        found.extend(u.password for u in self.users)
        found.extend(d.password for d in self.designer)
        return tuple(found)


# ---- building -------------------------------------------------------------------------


def _d(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _web_content(value: Any) -> WebContent | None:
    if not isinstance(value, dict):
        return None
    return WebContent(
        label=value["label"],
        url=value["url"],
        sandbox=tuple(f.strip() for f in value["sandbox"].split(",") if f.strip()),
        hidden=value.get("mode") == "HIDDEN",
    )


def _policy(cls: type, values: dict[str, Any], names: dict[str, str]) -> Any:
    return cls(**{attr: values[key] for key, attr in names.items() if key in values})


_RETRY_NAMES = {
    "maxAttempts": "max_attempts",
    "initialDelaySeconds": "initial_delay_seconds",
    "backoffMultiplier": "backoff_multiplier",
    "maxDelaySeconds": "max_delay_seconds",
}


def _environment(doc: Document) -> Environment:
    spec = doc.data["spec"]
    applications = _d(spec.get("applications"))
    gws = _d(applications.get("gws"))
    routing = _d(spec.get("routing"))
    attributes = {
        name: tuple(
            BusinessAttributeValue(
                v["name"], v.get("displayName", v["name"]), v.get("description", "")
            )
            for v in values
        )
        for name, values in _d(spec.get("businessAttributes")).items()
    }
    return Environment(
        name=doc.data["name"],
        nexus_url=str(spec["options"]["nexus"]["url"]).rstrip("/"),
        options=_freeze(spec["options"]),
        business_attributes=MappingProxyType(attributes),
        gws=Gws(
            communication=_web_content(gws.get("NexusCommunication")),
            conversation=_web_content(gws.get("NexusConversation")),
            workspace=_freeze(_d(gws.get("interaction-workspace"))),
        ),
        ucs=_freeze(_d(applications.get("ucs"))),
        routing=Routing(
            redirect_queue=_policy(
                RedirectQueue,
                _d(routing.get("redirectQueue")),
                {"fallbackQueue": "fallback_queue", "userDataKey": "user_data_key"},
            ),
            undelivered=_policy(
                Undelivered,
                _d(routing.get("undelivered")),
                {
                    **_RETRY_NAMES,
                    "onGiveUp": "on_give_up",
                    "parkQueue": "park_queue",
                    "terminateReason": "terminate_reason",
                },
            ),
        ),
        delivery=_policy(
            Delivery,
            _d(spec.get("delivery")),
            {**_RETRY_NAMES, "timeoutSeconds": "timeout_seconds", "jitter": "jitter"},
        ),
    )


def _tenant(doc: Document) -> Tenant:
    spec = doc.data["spec"]
    services = {
        name: Service(
            name=name,
            url=body.get("url"),
            data=_freeze(_d(body.get("data"))),
            secret=_freeze(_d(body.get("secret"))),
        )
        for name, body in _d(spec.get("services")).items()
    }
    async_body = _d(spec.get("services")).get("Async")
    secrets = {
        c.get("channelId"): c
        for c in _d(_d(async_body).get("secret")).get("channels", [])
        if isinstance(c, dict)
    }
    channels = []
    for i, channel_id in async_channel_ids(async_body):
        plain = async_body["data"]["channels"][i]
        secret = _d(secrets.get(channel_id))
        channels.append(
            AsyncChannel(
                channel_id=channel_id,
                webhook_url=plain["webhook"]["url"],
                webhook_secret=_secret(_d(secret.get("webhook")).get("secret")),
                api_secret=_secret(_d(secret.get("api")).get("secret")),
            )
        )
    apikeys = tuple(
        ApiKey(
            name=k["name"],
            permissions=tuple(k["permissions"]),
            key=Secret(k["key"]),
            capacity=k.get("capacity", 120),
            frequency=k.get("frequency", 60),
            enabled=k.get("enabled", True),
            expires=k.get("expires") or None,
        )
        for k in spec.get("apikeys", [])
    )
    return Tenant(
        name=doc.data["name"],
        ccid=spec["ccid"],
        type=spec["type"],
        backendurl=spec["backendurl"],
        username=spec["username"],
        token=Secret(spec["token"]),
        genesystenantid=spec["genesystenantid"],
        enabled=spec.get("enabled", True),
        services=MappingProxyType(services),
        apikeys=apikeys,
        async_channels=tuple(channels),
    )


def _queue(doc: Document) -> Queue:
    spec = doc.data["spec"]
    view = spec.get("view")
    strategy = spec.get("strategy")
    submitter = spec.get("submitter")
    return Queue(
        name=doc.data["name"],
        tenant=scope_of(doc),
        enabled=spec["enabled"],
        view=QueueView(
            name=view["name"],
            namespace=view["namespace"],
            queue=view["queue"],
            condition=view.get("condition", ""),
            order=view.get("order", ""),
            scheduling_mode=view.get("scheduling-mode"),
            freeze_interval=view.get("freeze-interval"),
        )
        if isinstance(view, dict)
        else None,
        strategy=QueueStrategy(strategy["name"], strategy["type"], strategy["url"])
        if isinstance(strategy, dict)
        else None,
        submitter=QueueSubmitter(submitter["name"], submitter["view"], submitter["strategy"])
        if isinstance(submitter, dict)
        else None,
        distribution=spec.get("distribution", "longest-idle"),
        capacity=spec.get("capacity"),
        offer_timeout_seconds=spec.get("offerTimeoutSeconds", 30),
    )


def _user(doc: Document) -> User:
    spec = doc.data["spec"]
    agent = spec.get("agent")
    settings = None
    if isinstance(agent, dict):
        capacity = {"chat": 1, "sms": 1, "email": 0, **_d(agent.get("capacity"))}
        settings = AgentSettings(tuple(agent["queues"]), MappingProxyType(capacity))
    return User(
        name=doc.data["name"],
        username=spec["username"],
        tenant=scope_of(doc),
        roles=tuple(spec["roles"]),
        password=Secret(spec["password"]),
        enabled=spec.get("enabled", True),
        first_name=spec.get("firstName", ""),
        last_name=spec.get("lastName", ""),
        employee_id=spec.get("employeeId", ""),
        agent=settings,
    )


def build_model(documents: list[Document]) -> Model:
    """Build the model from documents that passed validation (no error findings)."""
    environment: Environment | None = None
    tenants: list[Tenant] = []
    queues: list[Queue] = []
    users: list[User] = []
    transactions: list[Transaction] = []
    endpoints: list[Endpoint] = []
    channels: list[Channel] = []
    designer: list[DesignerEnv] = []
    headers: dict[tuple[str | None, str], dict[str, str]] = {}
    services_docs: list[Document] = []
    for doc in documents:
        kind = doc.data["kind"]
        if kind == "Environment":
            environment = _environment(doc)
        elif kind == "Tenant":
            tenants.append(_tenant(doc))
        elif kind == "Queue":
            queues.append(_queue(doc))
        elif kind == "User":
            users.append(_user(doc))
        elif kind == "Transaction":
            scope = scope_of(doc)
            name = doc.data["name"]
            sections = doc.data["spec"]["sections"]
            transactions.append(Transaction(name, scope, _freeze(sections)))
            if name == "NexusEndpoints":
                endpoints.extend(
                    Endpoint(section, options["queue"], options.get("strategy"), scope)
                    for section, options in sections.items()
                )
            elif name == "DesignerEnv":
                designer.extend(
                    DesignerEnv(section, o["baseurl"], o["url"], Secret(o["password"]), scope)
                    for section, o in sections.items()
                )
            else:
                services_docs.append(doc)
    if environment is None:
        raise ValueError("build_model needs validated documents with one Environment")
    owner = {c.channel_id: t.name for t in tenants for c in t.async_channels}
    single = tenants[0].name if len(tenants) == 1 else None
    for doc in services_docs:
        scope = scope_of(doc)
        for section, o in doc.data["spec"]["sections"].items():
            if section.startswith("chat."):
                provider = o.get("provider", "Portico")
            elif section.startswith("cxc."):
                provider = o.get("provider")
            else:
                headers[(scope, section)] = {
                    k.removeprefix("header:"): v for k, v in o.items()
                }
                continue
            tenant = scope
            if tenant is None:
                tenant = owner.get(o["channelId"]) if provider == "Async" else single
            common = {
                "section": section,
                "channel_id": o["channelId"],
                "channel_type": o["channelType"],
                "provider": provider,
                "tenant": tenant,
                "scope": scope,
            }
            if section.startswith("chat."):
                channels.append(
                    Channel(
                        **common,
                        endpoint=o["endpoint"],
                        interaction_subtype=o["interactionSubtype"],
                        interaction_type=o["interactionType"],
                        media=o["media"],
                        cxc_only=o.get("cxcOnly", False),
                    )
                )
            else:
                channels.append(Channel(**common))
    return Model(
        environment=environment,
        tenants=tuple(tenants),
        transactions=tuple(transactions),
        queues=tuple(queues),
        users=tuple(users),
        endpoints=tuple(endpoints),
        channels=tuple(channels),
        designer=tuple(designer),
        provider_headers=MappingProxyType(
            {k: MappingProxyType(v) for k, v in headers.items()}
        ),
    )
