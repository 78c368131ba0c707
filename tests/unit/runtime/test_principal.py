from __future__ import annotations

import pytest

from engine.auth.principal import Principal, implies


@pytest.mark.parametrize(
    ("granted", "wanted", "expected"),
    [
        ("nexus:consumer:chat", "nexus:consumer:chat", True),
        ("nexus:consumer:chat", "nexus:designer:chat", False),
        ("nexus:cluster:*", "nexus:provisioning:tenants", True),
        ("nexus:cluster:*", "nexus:consumer:chat", True),
        ("nexus:agent:*", "nexus:agent:presence", True),
        ("nexus:agent:*", "nexus:agentx:presence", False),
        ("nexus:agent:*", "nexus:cxc:sms", False),
        ("nexus:cxc:*", "nexus:cxc:*", True),
    ],
)
def test_implies(granted: str, wanted: str, expected: bool) -> None:
    assert implies(granted, wanted) is expected


def test_apikey_scope_and_permissions() -> None:
    key = Principal.build("apikey", "k", "ccid1", permissions=["nexus:consumer:chat"])
    assert key.has_permission("nexus:consumer:chat", tenant="ccid1")
    assert not key.has_permission("nexus:consumer:chat", tenant="ccid2")
    assert not key.has_permission("nexus:provisioning:tenants")
    cluster = Principal.build("apikey", "c", "*", permissions=["nexus:cluster:*"])
    assert cluster.has_permission("nexus:provisioning:tenants", tenant="any")


def test_roles() -> None:
    admin = Principal.build("user", "root", None, roles=["Admin"])
    assert admin.is_admin and admin.all_tenants
    assert admin.has_permission("nexus:provisioning:tenants", tenant="ccid9")
    tenant_admin = Principal.build("user", "boss", "ccid1", roles=["admin"])
    assert not tenant_admin.has_permission("nexus:agent:presence", tenant="ccid2")
    agent = Principal.build("user", "a", "ccid1", roles=["agent"])
    assert agent.has_permission("nexus:agent:presence", tenant="ccid1")
    assert not agent.has_permission("nexus:provisioning:tenants", tenant="ccid1")
