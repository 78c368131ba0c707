"""Who is calling: a :class:`Principal` and the permission rules every handler shares.

Permissions are ``nexus:<area>:<action>`` strings (``nexus:consumer:chat``,
``nexus:provisioning:*``, ...). A granted permission implies a wanted one when they are equal,
when the granted one is ``nexus:cluster:*`` (everything), or when it is ``nexus:<area>:*`` and
the wanted one is in the same area. The ``admin`` role implies every permission; other roles
grant the permissions listed in :data:`ROLE_PERMISSIONS`.

Tenant scope is separate from permissions: a principal of tenant ``"*"`` (environment users,
cluster keys, the OAuth client) may act on any tenant, any other only on its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

PrincipalKind = Literal["user", "apikey", "client"]
ALL_TENANTS = "*"
CLUSTER_ALL = "nexus:cluster:*"
ADMIN_ROLE = "admin"

#: Permissions granted by a user's roles (besides ``admin``, which implies all).
ROLE_PERMISSIONS: Mapping[str, frozenset[str]] = {
    "supervisor": frozenset({"nexus:agent:*", "nexus:supervisor:*"}),
    "agent": frozenset({"nexus:agent:*"}),
}


def implies(granted: str, wanted: str) -> bool:
    """True if the permission ``granted`` covers ``wanted``."""
    if granted == wanted or granted == CLUSTER_ALL:
        return True
    if granted.endswith(":*"):
        return wanted.startswith(granted[:-1]) and wanted.count(":") >= 2
    return False


@dataclass(frozen=True)
class Principal:
    kind: PrincipalKind
    name: str
    tenant: str = ALL_TENANTS
    roles: frozenset[str] = field(default_factory=frozenset)
    permissions: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def build(
        cls,
        kind: PrincipalKind,
        name: str,
        tenant: str | None,
        roles: Iterable[str] = (),
        permissions: Iterable[str] = (),
    ) -> Principal:
        """A principal whose permissions include those its roles grant."""
        role_set = frozenset(r.lower() for r in roles)
        perms = set(permissions)
        for role in role_set:
            perms |= ROLE_PERMISSIONS.get(role, frozenset())
        return cls(kind, name, tenant or ALL_TENANTS, role_set, frozenset(perms))

    @property
    def is_admin(self) -> bool:
        return ADMIN_ROLE in self.roles

    @property
    def all_tenants(self) -> bool:
        return self.tenant == ALL_TENANTS

    def can_access_tenant(self, ccid: str) -> bool:
        return self.all_tenants or self.tenant == ccid

    def has_permission(self, wanted: str, tenant: str | None = None) -> bool:
        """True if this principal may do ``wanted`` (on ``tenant``, when one is given)."""
        if tenant is not None and not self.can_access_tenant(tenant):
            return False
        if self.is_admin:
            return True
        return any(implies(granted, wanted) for granted in self.permissions)
