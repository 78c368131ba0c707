"""Plain dataclasses the repositories return (never ORM objects or driver records)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from engine.store.masking import MASK, mask_secrets

#: The ``tenant`` of an API key valid for every tenant (``nexus:cluster:*`` keys).
ALL_TENANTS = "*"


def utc(value: datetime | None) -> datetime | None:
    """Timezone-aware UTC (SQLite hands back naive datetimes, stored as UTC)."""
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def now_utc() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Tenant:
    ccid: str
    name: str
    type: str
    backendurl: str | None
    username: str | None
    token: str | None
    genesystenantid: str | None
    config_managed: bool
    created: datetime
    updated: datetime

    def public(self) -> dict[str, Any]:
        """The tenant as an API may show it: the token masked."""
        out = asdict(self)
        out["token"] = MASK if self.token else None
        return out


@dataclass(frozen=True)
class Service:
    tenant: str
    name: str
    url: str | None
    data: dict[str, Any]
    secret: dict[str, Any]
    config_managed: bool
    created: datetime
    updated: datetime

    def public(self) -> dict[str, Any]:
        out = asdict(self)
        out["secret"] = mask_secrets(self.secret)
        return out


@dataclass(frozen=True)
class ApiKey:
    id: str
    tenant: str  # a ccid, or "*" for all tenants
    name: str
    permissions: list[str]
    key_prefix: str
    enabled: bool
    revoked: bool
    expires: datetime | None  # None: never expires (the API shows false)
    capacity: int
    frequency: int
    createdby: str | None
    config_managed: bool
    created: datetime
    updated: datetime
    key_hash: str = field(repr=False, default="")

    def usable(self, at: datetime | None = None) -> bool:
        """Enabled, not revoked and not expired at ``at`` (default now)."""
        if not self.enabled or self.revoked:
            return False
        if self.expires is None:
            return True
        return (at or now_utc()) < self.expires

    def public(self) -> dict[str, Any]:
        """The API's view: no hash; ``expires`` false when unset."""
        out = asdict(self)
        out.pop("key_hash")
        out.pop("key_prefix")
        out["expires"] = self.expires if self.expires is not None else False
        return out


@dataclass(frozen=True)
class Gapi:
    id: int
    url: str
    clientid: str
    apikey: str
    clientsecret: str
    created: datetime

    def public(self) -> dict[str, Any]:
        out = asdict(self)
        out["apikey"] = MASK if self.apikey else ""
        out["clientsecret"] = MASK if self.clientsecret else ""
        return out


@dataclass(frozen=True)
class User:
    id: str
    tenant: str | None  # None: an Environment (all-tenant) user
    username: str
    roles: list[str]
    agent_queues: list[Any]
    capacity: dict[str, Any]
    config_managed: bool
    created: datetime
    updated: datetime
    password_hash: str | None = field(repr=False, default=None)

    def public(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("password_hash")
        return out


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at: datetime
    actor: str
    action: str  # create | update | delete
    object_type: str
    object_key: str
    tenant: str | None
    details: dict[str, Any]


@dataclass
class ApplyCounts:
    created: int = 0
    updated: int = 0
    deleted: int = 0
    unchanged: int = 0

    def __iadd__(self, other: ApplyCounts) -> ApplyCounts:
        self.created += other.created
        self.updated += other.updated
        self.deleted += other.deleted
        self.unchanged += other.unchanged
        return self

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass
class ApplyResult:
    """Counts per object type (tenants, services, apikeys, users) and in total."""

    by_type: dict[str, ApplyCounts] = field(default_factory=dict)

    @property
    def total(self) -> ApplyCounts:
        out = ApplyCounts()
        for counts in self.by_type.values():
            out += counts
        return out

    @property
    def changed(self) -> bool:
        total = self.total
        return bool(total.created or total.updated or total.deleted)

    def as_dict(self) -> dict[str, dict[str, int]]:
        out = {name: counts.as_dict() for name, counts in self.by_type.items()}
        out["total"] = self.total.as_dict()
        return out
