"""Repository tests, run on a fresh SQLite file and on a fresh real PostgreSQL database."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from engine.store import (
    ALL_TENANTS,
    ConfigManaged,
    Conflict,
    NotFound,
    Store,
    StoreError,
)
from engine.store.repos import hash_api_key
from engine.store.tables import apikeys, nex_gapis, tenants

from .conftest import PEPPER

CCID = "0b2c6d3e-8f1a-4b5c-9d7e-1f2a3b4c5d6e"
CCID2 = "7e6d5c4b-3a2f-4e1d-8c9b-0a1b2c3d4e5f"


async def _tenant(store: Store, ccid: str = CCID, name: str = "acme", **kw):
    return await store.tenants.create(
        ccid, name, backendurl="http://gws", username="ops", token="s3cr3t", **kw
    )


async def test_tenant_crud(store: Store) -> None:
    created = await _tenant(store, genesystenantid="1")
    assert created.ccid == CCID and created.type == "PureEngage" and not created.config_managed
    got = await store.tenants.get(CCID)
    assert got is not None
    assert (got.name, got.backendurl, got.username, got.token, got.genesystenantid) == (
        "acme",
        "http://gws",
        "ops",
        "s3cr3t",
        "1",
    )
    assert got.created.tzinfo is not None and got.created.utcoffset() == timedelta(0)
    assert (await store.tenants.get_by_name("acme")).ccid == CCID
    with pytest.raises(Conflict):
        await _tenant(store)
    with pytest.raises(Conflict):
        await _tenant(store, ccid=CCID2)  # same name
    updated = await store.tenants.update(CCID, backendurl="http://gws2", actor="alice")
    assert updated.backendurl == "http://gws2" and updated.updated >= got.updated
    await _tenant(store, ccid=CCID2, name="globex")
    assert [t.ccid for t in await store.tenants.list()] == sorted([CCID, CCID2])
    assert [t.ccid for t in await store.tenants.list(limit=1, after=min(CCID, CCID2))] == [
        max(CCID, CCID2)
    ]
    with pytest.raises(Conflict):
        await store.tenants.update(CCID2, name="acme")
    await store.tenants.delete(CCID2)
    assert await store.tenants.get(CCID2) is None
    with pytest.raises(NotFound):
        await store.tenants.delete(CCID2)
    assert got.public()["token"] == "***"


async def test_services_store_secret_as_is_and_cascade(store: Store) -> None:
    await _tenant(store)
    with pytest.raises(NotFound):
        await store.services.create(CCID2, "SMS", url="http://x")
    svc = await store.services.create(
        CCID,
        "SMS",
        url="https://sms.example/api",
        data={"from": "+15550100", "nested": {"a": [1, 2]}},
        secret={"password": "p4ss", "token": {"id": "t"}},
    )
    assert svc.secret == {"password": "p4ss", "token": {"id": "t"}}
    got = await store.services.get(CCID, "SMS")
    assert got.data == {"from": "+15550100", "nested": {"a": [1, 2]}}
    assert got.secret == {"password": "p4ss", "token": {"id": "t"}}
    assert got.public()["secret"] == {"password": "***", "token": {"id": "***"}}
    with pytest.raises(Conflict):
        await store.services.create(CCID, "SMS")
    await store.services.create(CCID, "Email", url="https://mail")
    assert [s.name for s in await store.services.list(CCID)] == ["Email", "SMS"]
    changed = await store.services.update(CCID, "SMS", secret={"password": "new"})
    assert changed.secret == {"password": "new"} and changed.data == got.data
    await store.tenants.delete(CCID)
    assert await store.services.list(CCID) == []


async def test_apikey_hash_lookup(store: Store) -> None:
    await _tenant(store)
    record, key = await store.apikeys.create(
        CCID, "widget", ["nexus:consumer:chat"], createdby="admin"
    )
    assert str(uuid.UUID(key)) == key and uuid.UUID(key).version == 4  # the guide's key format
    assert record.capacity == 120 and record.frequency == 60 and record.expires is None
    assert record.public()["expires"] is False and "key_hash" not in record.public()
    row = await store.fetch_one(sa.select(apikeys).where(apikeys.c.id == record.id))
    assert key not in {str(v) for v in row.values()}  # the key itself is never stored
    assert row["key_hash"] == hash_api_key(key, PEPPER.encode())
    assert row["key_prefix"] == key[:8]

    found = await store.apikeys.find_by_key(key)
    assert found is not None and found.id == record.id
    assert found.permissions == ["nexus:consumer:chat"]
    assert await store.apikeys.find_by_key(key[:-1] + ("A" if key[-1] != "A" else "B")) is None
    assert await store.apikeys.find_by_key("short") is None
    assert await store.apikeys.find_by_key("") is None

    # same prefix, different key: the hash decides
    twin, twin_key = await store.apikeys.create(
        ALL_TENANTS, "cluster", ["nexus:cluster:*"], key=key[:8] + "-other-suffix"
    )
    assert (await store.apikeys.find_by_key(twin_key)).id == twin.id
    assert (await store.apikeys.find_by_key(key)).id == record.id

    # another pepper gives another hash
    assert hash_api_key(key, b"other pepper") != record.key_hash

    await store.apikeys.update(record.id, enabled=False)
    assert await store.apikeys.find_by_key(key) is None
    assert (await store.apikeys.find_by_key(key, usable_only=False)).enabled is False
    await store.apikeys.update(record.id, enabled=True, expires=datetime.now(UTC) - timedelta(1))
    assert await store.apikeys.find_by_key(key) is None
    future = datetime.now(UTC) + timedelta(days=1)
    updated = await store.apikeys.update(record.id, expires=future, capacity=5, frequency=1)
    assert abs(updated.expires - future) < timedelta(seconds=1)
    assert (updated.capacity, updated.frequency) == (5, 1)
    assert (await store.apikeys.find_by_key(key)).id == record.id
    await store.apikeys.revoke(record.id)
    assert await store.apikeys.find_by_key(key) is None

    with pytest.raises(Conflict):
        await store.apikeys.create(CCID, "widget", [])
    with pytest.raises(NotFound):
        await store.apikeys.create(CCID2, "x", [])
    assert {k.id for k in await store.apikeys.list(tenant=CCID)} == {record.id}
    assert len(await store.apikeys.list()) == 2
    await store.apikeys.delete(twin.id)
    assert await store.apikeys.find_by_key(twin_key) is None


async def test_gapis_and_the_guides_insert(store: Store) -> None:
    now = "now()" if store.dialect == "postgresql" else "CURRENT_TIMESTAMP"
    # the guide's statement, verbatim but for the dialect's now()
    await store.execute(
        "INSERT INTO nex_gapis (url, clientid, apikey, clientsecret, created) VALUES "
        f"('https://gws.example', 'nexus_client', 'NA', '', {now})"
    )
    added = await store.gapis.add("https://gws2.example", "nexus_client", clientsecret="shh")
    listed = await store.gapis.list()
    assert [(g.url, g.clientid, g.apikey) for g in listed] == [
        ("https://gws.example", "nexus_client", "NA"),
        ("https://gws2.example", "nexus_client", "NA"),
    ]
    assert listed[0].created.tzinfo is not None
    assert added.id == listed[1].id and added.clientsecret == "shh"
    assert added.public()["clientsecret"] == "***"
    await store.gapis.delete(listed[0].id)
    assert [g.id for g in await store.gapis.list()] == [added.id]
    count = await store.fetch_val(sa.select(sa.func.count()).select_from(nex_gapis))
    assert count == 1


async def test_users_passwords(store: Store) -> None:
    await _tenant(store)
    env = await store.users.create(None, "nexus", password="pw1", roles=["admin"])
    agent = await store.users.create(
        CCID,
        "agent1",
        password="pw2",
        roles=["agent"],
        agent_queues=["sales"],
        capacity={"chat": 3},
    )
    assert env.password_hash and env.password_hash.startswith("scrypt$")
    assert "pw1" not in env.password_hash
    assert (await store.users.authenticate(None, "nexus", "pw1")).id == env.id
    assert await store.users.authenticate(None, "nexus", "pw2") is None
    assert await store.users.authenticate(CCID, "nexus", "pw1") is None
    assert (await store.users.authenticate(CCID, "agent1", "pw2")).capacity == {"chat": 3}
    # the same username in the Environment twice is refused (coalesce unique index)
    with pytest.raises(Conflict):
        await store.users.create(None, "nexus", password="x")
    await store.users.create(CCID, "nexus", password="x")  # another tenant: fine
    assert {u.username for u in await store.users.list(tenant=CCID)} == {"agent1", "nexus"}
    assert [u.username for u in await store.users.list(all_tenants=False)] == ["nexus"]
    await store.users.update(agent.id, password="pw3", roles=["agent", "supervisor"])
    assert await store.users.authenticate(CCID, "agent1", "pw2") is None
    assert (await store.users.authenticate(CCID, "agent1", "pw3")).roles == [
        "agent",
        "supervisor",
    ]
    await store.users.delete(agent.id)
    assert await store.users.get(agent.id) is None


async def test_audit_rows_mask_secrets(store: Store) -> None:
    await _tenant(store)
    await store.services.create(
        CCID, "SMS", url="u", data={"a": 1}, secret={"password": "p4ss", "k": ["x"]}
    )
    record, key = await store.apikeys.create(CCID, "w", ["nexus:consumer:chat"], actor="bob")
    await store.users.create(CCID, "agent", password="hunter2", actor="bob")
    await store.services.update(CCID, "SMS", secret={"password": "rotated"}, actor="carol")
    await store.services.delete(CCID, "SMS", actor="carol")
    entries = await store.audit.list(tenant=CCID)
    assert [(e.action, e.object_type) for e in entries] == [
        ("delete", "service"),
        ("update", "service"),
        ("create", "user"),
        ("create", "apikey"),
        ("create", "service"),
        ("create", "tenant"),
    ]
    by_kind = {(e.action, e.object_type): e for e in entries}
    assert by_kind[("create", "tenant")].details["token"] == "***"
    assert by_kind[("create", "service")].details == {
        "url": "u",
        "data": {"a": 1},
        "secret": {"password": "***", "k": ["***"]},
    }
    assert by_kind[("update", "service")].details == {"secret": {"password": "***"}}
    assert by_kind[("update", "service")].actor == "carol"
    assert by_kind[("create", "apikey")].object_key == record.id
    assert by_kind[("create", "user")].details["password"] == "***"
    everything = " ".join(str(e.details) for e in entries)
    for secret in ("s3cr3t", "p4ss", "rotated", key, "hunter2", record.key_hash):
        assert secret not in everything
    page = await store.audit.list(tenant=CCID, limit=2)
    rest = await store.audit.list(tenant=CCID, before=page[-1].id)
    assert [e.id for e in page + rest] == [e.id for e in entries]
    assert [e.object_type for e in await store.audit.list(object_type="tenant")] == ["tenant"]


async def test_config_managed_objects_refuse_api_writes(store: Store) -> None:
    await _tenant(store, config_managed=True)
    with pytest.raises(ConfigManaged):
        await store.tenants.update(CCID, backendurl="x")
    with pytest.raises(ConfigManaged):
        await store.tenants.delete(CCID)
    assert issubclass(ConfigManaged, Conflict)
    updated = await store.tenants.update(CCID, backendurl="x", force=True)
    assert updated.backendurl == "x"


async def test_transaction_rolls_back_everything(store: Store) -> None:
    with pytest.raises(RuntimeError):
        async with store.transaction():
            await _tenant(store)
            await store.services.create(CCID, "SMS")
            raise RuntimeError("boom")
    assert await store.tenants.get(CCID) is None
    assert await store.audit.list() == []


async def test_nested_transaction_is_a_savepoint(store: Store) -> None:
    async with store.transaction():
        await _tenant(store)
        with pytest.raises(Conflict):
            await _tenant(store)  # fails inside its own savepoint; the outer tx goes on
        with pytest.raises(ValueError):
            async with store.transaction():
                await store.services.create(CCID, "SMS")
                raise ValueError("inner")
        await store.services.create(CCID, "Email")
    assert [s.name for s in await store.services.list(CCID)] == ["Email"]


async def test_child_tasks_share_the_open_transaction(store: Store) -> None:
    """Queries from tasks spawned inside a transaction run in it (not on other connections),
    and concurrently issued ones do not trip over each other."""
    with pytest.raises(RuntimeError):
        async with store.transaction():
            await _tenant(store)
            names = [f"svc{i}" for i in range(10)]
            await asyncio.gather(*(store.services.create(CCID, n) for n in names))
            seen = await asyncio.gather(*(store.services.get(CCID, n) for n in names))
            assert all(s is not None for s in seen)
            raise RuntimeError("roll back")
    assert await store.tenants.get(CCID) is None
    assert await store.services.list(CCID) == []


async def test_concurrent_transactions_from_many_tasks(store: Store) -> None:
    await _tenant(store)

    async def writer(i: int) -> None:
        async with store.transaction():
            await store.services.create(CCID, f"s{i}", data={"i": i})
            await store.services.update(CCID, f"s{i}", url=f"http://{i}")

    await asyncio.gather(*(writer(i) for i in range(20)))
    listed = await store.services.list(CCID)
    assert len(listed) == 20 and all(s.url == f"http://{s.data['i']}" for s in listed)


async def test_errors_are_store_errors_and_counted(store: Store) -> None:
    metrics = store.metrics
    before = metrics.request.counted
    with pytest.raises(StoreError):
        await store.fetch_all("SELECT nope FROM no_such_table")
    now = datetime.now(UTC)
    row = {"ccid": str(uuid.uuid4()), "name": "dup", "created": now, "updated": now}
    await store.execute(sa.insert(tenants).values(**row))
    with pytest.raises(Conflict):  # unique name violated: an IntegrityError from the driver
        await store.execute(sa.insert(tenants).values(**{**row, "ccid": str(uuid.uuid4())}))
    assert metrics.request.counted >= before + 3
    assert await store.ping() is True
