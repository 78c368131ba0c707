"""apply_config_objects: upsert, idempotency, deletion of removed config objects."""

from __future__ import annotations

import copy

import pytest

from engine.store import ConfigManaged, Store, apply_config_objects

CCID = "11111111-2222-4333-8444-555555555555"
CCID2 = "66666666-7777-4888-9999-000000000000"

CONFIG = {
    "tenants": [
        {
            "ccid": CCID,
            "name": "acme",
            "backendurl": "http://gws",
            "username": "ops",
            "token": "tenant-token-xyz",
            "genesystenantid": "1",
        },
        {"ccid": CCID2, "name": "globex"},
    ],
    "services": [
        {"tenant": CCID, "name": "SMS", "url": "https://sms", "data": {"a": 1},
         "secret": {"password": "sms-pass-xyz"}},
        {"tenant": CCID, "name": "Email", "url": "https://mail"},
        {"tenant": CCID2, "name": "SMS", "url": "https://sms2"},
    ],
    "apikeys": [
        {"tenant": CCID, "name": "widget", "permissions": ["nexus:consumer:chat"],
         "key": "widget-key-0123456789"},
        {"tenant": "*", "name": "ops", "permissions": ["nexus:cluster:*"],
         "key": "cluster-key-0123456789", "capacity": 1000, "frequency": 1},
    ],
    "users": [
        {"username": "nexus", "roles": ["admin"], "password": "pw"},
        {"tenant": CCID, "username": "agent1", "roles": ["agent"], "password": "agent-pass-xyz",
         "agent_queues": ["sales"], "capacity": {"chat": 2}},
    ],
}


def _counts(result, kind):
    return result.by_type[kind].as_dict()


async def test_apply_creates_then_is_idempotent(store: Store) -> None:
    first = await apply_config_objects(store, CONFIG)
    assert first.as_dict()["total"] == {"created": 9, "updated": 0, "deleted": 0, "unchanged": 0}
    assert first.changed
    second = await apply_config_objects(store, copy.deepcopy(CONFIG))
    assert second.as_dict()["total"] == {
        "created": 0,
        "updated": 0,
        "deleted": 0,
        "unchanged": 9,
    }
    assert not second.changed

    tenant = await store.tenants.get(CCID)
    assert tenant.config_managed and tenant.token == "tenant-token-xyz"
    sms = await store.services.get(CCID, "SMS")
    assert sms.config_managed and sms.secret == {"password": "sms-pass-xyz"}
    key = await store.apikeys.find_by_key("cluster-key-0123456789")
    assert key.tenant == "*" and key.capacity == 1000 and key.config_managed
    assert (await store.users.authenticate(None, "nexus", "pw")).roles == ["admin"]
    agent = await store.users.authenticate(CCID, "agent1", "agent-pass-xyz")
    assert agent.capacity == {"chat": 2}
    with pytest.raises(ConfigManaged):
        await store.services.delete(CCID, "SMS")


async def test_apply_updates_and_deletes_removed_config_objects(store: Store) -> None:
    await apply_config_objects(store, CONFIG)
    # objects created through the API are never touched by apply
    await store.services.create(CCID, "PlatformUCS", url="https://ucs")
    api_key, api_plain = await store.apikeys.create(CCID, "by-api", ["nexus:consumer:chat"])

    changed = copy.deepcopy(CONFIG)
    changed["tenants"] = [changed["tenants"][0]]  # globex removed (and its SMS service)
    changed["services"] = [
        {**changed["services"][0], "secret": {"password": "rotated"}},  # updated
    ]  # Email removed
    changed["apikeys"][0]["key"] = "widget-key-rotated-99"  # key rotated
    changed["apikeys"].pop(1)  # cluster key removed
    changed["users"][0]["password"] = "new-pw"
    changed["users"].pop(1)

    result = await apply_config_objects(store, changed)
    assert _counts(result, "tenants") == {"created": 0, "updated": 0, "deleted": 1,
                                          "unchanged": 1}
    assert _counts(result, "services") == {"created": 0, "updated": 1, "deleted": 2,
                                           "unchanged": 0}
    assert _counts(result, "apikeys") == {"created": 0, "updated": 1, "deleted": 1,
                                          "unchanged": 0}
    assert _counts(result, "users") == {"created": 0, "updated": 1, "deleted": 1,
                                        "unchanged": 0}

    assert await store.tenants.get(CCID2) is None
    assert [s.name for s in await store.services.list(CCID)] == ["PlatformUCS", "SMS"]
    assert (await store.services.get(CCID, "SMS")).secret == {"password": "rotated"}
    assert await store.apikeys.find_by_key("widget-key-0123456789") is None
    assert (await store.apikeys.find_by_key("widget-key-rotated-99")).name == "widget"
    assert await store.apikeys.find_by_key("cluster-key-0123456789") is None
    assert (await store.apikeys.find_by_key(api_plain)).id == api_key.id
    assert await store.users.authenticate(None, "nexus", "new-pw") is not None
    assert await store.users.get_by_username(CCID, "agent1") is None

    again = await apply_config_objects(store, copy.deepcopy(changed))
    assert not again.changed and again.total.unchanged == 4

    # an empty config removes every config-managed object and nothing else
    emptied = await apply_config_objects(store, {})
    assert emptied.total.deleted == 4
    assert await store.tenants.list() == []
    assert [k.id for k in await store.apikeys.list()] == [api_key.id]


async def test_apply_takes_over_an_api_created_object(store: Store) -> None:
    await store.tenants.create(CCID, "acme", backendurl="http://gws")
    result = await apply_config_objects(store, {"tenants": [CONFIG["tenants"][0]]})
    assert _counts(result, "tenants")["updated"] == 1
    assert (await store.tenants.get(CCID)).config_managed


async def test_apply_is_all_or_nothing(store: Store) -> None:
    await apply_config_objects(store, CONFIG)
    broken = copy.deepcopy(CONFIG)
    broken["tenants"][0]["backendurl"] = "http://changed"
    broken["services"].append({"tenant": "no-such-tenant", "name": "SMS"})
    with pytest.raises(Exception, match="no-such-tenant"):
        await apply_config_objects(store, broken)
    assert (await store.tenants.get(CCID)).backendurl == "http://gws"


async def test_apply_audits_with_masked_secrets(store: Store) -> None:
    await apply_config_objects(store, CONFIG)
    entries = await store.audit.list(limit=100)
    assert {e.actor for e in entries} == {"config"}
    assert len(entries) == 9
    text = repr([e.details for e in entries])
    for secret in ("tenant-token-xyz", "sms-pass-xyz", "widget-key", "cluster-key", "pass-xyz"):
        assert secret not in text


async def test_apply_rejects_bad_input(store: Store) -> None:
    with pytest.raises(ValueError, match="unknown object type"):
        await apply_config_objects(store, {"queues": []})
    with pytest.raises(ValueError, match="lacks ccid"):
        await apply_config_objects(store, {"tenants": [{"name": "x"}]})
    with pytest.raises(ValueError, match="twice"):
        await apply_config_objects(
            store, {"tenants": [CONFIG["tenants"][0], CONFIG["tenants"][0]]}
        )
    assert await store.tenants.list() == []
