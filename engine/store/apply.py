"""Apply the declarative config's objects to the store: upsert what config says, delete the
config-managed objects config no longer has, leave API-created objects alone.

The caller (``engine.config``'s apply step) turns its Model into plain dicts per object type:

* ``tenants``:  ``{ccid, name, type?, backendurl?, username?, token?, genesystenantid?}``
* ``services``: ``{tenant (ccid), name, url?, data?, secret?}``
* ``apikeys``:  ``{tenant (ccid or "*"), name, permissions, key, enabled?, expires?,
  capacity?, frequency?}`` (``key`` is the resolved plaintext; only its hash is stored)
* ``users``:    ``{tenant? (ccid or None), username, roles?, password? | password_hash?,
  agent_queues?, capacity?}``

Every type is synchronised: a type missing from ``objects`` means "config has none of these",
so its config-managed objects are deleted. Everything runs in one transaction: either the whole
config is applied or nothing is. Idempotent: applying the same objects again changes nothing and
reports them all as unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from engine.store.models import ApplyCounts, ApplyResult, utc
from engine.store.passwords import verify_password_async
from engine.store.repos import DEFAULT_CAPACITY, DEFAULT_FREQUENCY
from engine.store.tables import apikeys, services, tenants, users

if TYPE_CHECKING:
    from engine.store.db import Store

OBJECT_TYPES = ("tenants", "services", "apikeys", "users")
CONFIG_ACTOR = "config"


def _require(obj: Mapping[str, Any], kind: str, *keys: str) -> None:
    missing = [key for key in keys if obj.get(key) in (None, "")]
    if missing:
        raise ValueError(f"{kind} object {dict(obj)!r} lacks {', '.join(missing)}")


def _check_unique(kind: str, keys: list[tuple[Any, ...]]) -> None:
    seen: set[tuple[Any, ...]] = set()
    for key in keys:
        if key in seen:
            raise ValueError(f"{kind}: {'/'.join(str(k) for k in key)} appears twice")
        seen.add(key)


def _expires(value: Any) -> datetime | None:
    if value in (None, False, ""):
        return None
    if isinstance(value, datetime):
        return utc(value)
    if isinstance(value, str):
        return utc(datetime.fromisoformat(value))
    raise ValueError(f"expires must be false, a datetime or an ISO date, got {value!r}")


async def apply_config_objects(
    store: Store,
    objects: Mapping[str, Iterable[Mapping[str, Any]]],
    *,
    actor: str = CONFIG_ACTOR,
) -> ApplyResult:
    """Make the store's config-managed objects equal ``objects``; returns what changed."""
    unknown = set(objects) - set(OBJECT_TYPES)
    if unknown:
        raise ValueError(f"unknown object type(s) {sorted(unknown)}; known: {OBJECT_TYPES}")
    desired = {kind: [dict(obj) for obj in objects.get(kind, ())] for kind in OBJECT_TYPES}
    for obj in desired["tenants"]:
        _require(obj, "tenant", "ccid", "name")
    for obj in desired["services"]:
        _require(obj, "service", "tenant", "name")
    for obj in desired["apikeys"]:
        _require(obj, "apikey", "tenant", "name", "key")
    for obj in desired["users"]:
        _require(obj, "user", "username")
    _check_unique("tenants", [(o["ccid"],) for o in desired["tenants"]])
    _check_unique("tenants", [(o["name"],) for o in desired["tenants"]])
    _check_unique("services", [(o["tenant"], o["name"]) for o in desired["services"]])
    _check_unique("apikeys", [(o["tenant"], o["name"]) for o in desired["apikeys"]])
    _check_unique("users", [(o.get("tenant"), o["username"]) for o in desired["users"]])

    result = ApplyResult({kind: ApplyCounts() for kind in OBJECT_TYPES})
    async with store.transaction():
        # upserts parents first, deletions children first
        await _upsert_tenants(store, desired["tenants"], result.by_type["tenants"], actor)
        await _upsert_services(store, desired["services"], result.by_type["services"], actor)
        await _upsert_apikeys(store, desired["apikeys"], result.by_type["apikeys"], actor)
        await _upsert_users(store, desired["users"], result.by_type["users"], actor)
        await _delete_users(store, desired["users"], result.by_type["users"], actor)
        await _delete_apikeys(store, desired["apikeys"], result.by_type["apikeys"], actor)
        await _delete_services(store, desired["services"], result.by_type["services"], actor)
        await _delete_tenants(store, desired["tenants"], result.by_type["tenants"], actor)
    return result


async def _upsert_tenants(
    store: Store, wanted: list[dict[str, Any]], counts: ApplyCounts, actor: str
) -> None:
    for obj in wanted:
        fields = {
            "name": obj["name"],
            "type": obj.get("type") or "PureEngage",
            "backendurl": obj.get("backendurl"),
            "username": obj.get("username"),
            "token": obj.get("token"),
            "genesystenantid": obj.get("genesystenantid"),
        }
        current = await store.tenants.get(obj["ccid"])
        if current is None:
            await store.tenants.create(obj["ccid"], config_managed=True, actor=actor, **fields)
            counts.created += 1
            continue
        diff = {k: v for k, v in fields.items() if getattr(current, k) != v}
        if not current.config_managed:
            diff["config_managed"] = True
        if diff:
            await store.tenants.update(obj["ccid"], actor=actor, force=True, **diff)
            counts.updated += 1
        else:
            counts.unchanged += 1


async def _upsert_services(
    store: Store, wanted: list[dict[str, Any]], counts: ApplyCounts, actor: str
) -> None:
    for obj in wanted:
        fields = {
            "url": obj.get("url"),
            "data": dict(obj.get("data") or {}),
            "secret": dict(obj.get("secret") or {}),
        }
        current = await store.services.get(obj["tenant"], obj["name"])
        if current is None:
            await store.services.create(
                obj["tenant"], obj["name"], config_managed=True, actor=actor, **fields
            )
            counts.created += 1
            continue
        diff = {k: v for k, v in fields.items() if getattr(current, k) != v}
        if not current.config_managed:
            diff["config_managed"] = True
        if diff:
            await store.services.update(obj["tenant"], obj["name"], actor=actor, force=True, **diff)
            counts.updated += 1
        else:
            counts.unchanged += 1


async def _upsert_apikeys(
    store: Store, wanted: list[dict[str, Any]], counts: ApplyCounts, actor: str
) -> None:
    for obj in wanted:
        fields = {
            "permissions": list(obj.get("permissions") or []),
            "enabled": bool(obj.get("enabled", True)),
            "expires": _expires(obj.get("expires")),
            "capacity": int(obj.get("capacity") or DEFAULT_CAPACITY),
            "frequency": int(obj.get("frequency") or DEFAULT_FREQUENCY),
        }
        current = await store.apikeys.get_by_name(obj["tenant"], obj["name"])
        if current is None:
            await store.apikeys.create(
                obj["tenant"],
                obj["name"],
                key=obj["key"],
                createdby=actor,
                config_managed=True,
                actor=actor,
                **fields,
            )
            counts.created += 1
            continue
        diff: dict[str, Any] = {k: v for k, v in fields.items() if getattr(current, k) != v}
        if current.revoked:
            diff["revoked"] = False
        if not current.config_managed:
            diff["config_managed"] = True
        key_changed = store.apikeys.hash_key(obj["key"]) != current.key_hash
        if diff or key_changed:
            await store.apikeys.update(
                current.id,
                actor=actor,
                force=True,
                key=obj["key"] if key_changed else None,
                **diff,
            )
            counts.updated += 1
        else:
            counts.unchanged += 1


async def _upsert_users(
    store: Store, wanted: list[dict[str, Any]], counts: ApplyCounts, actor: str
) -> None:
    for obj in wanted:
        tenant = obj.get("tenant") or None
        fields: dict[str, Any] = {
            "roles": list(obj.get("roles") or []),
            "agent_queues": list(obj.get("agent_queues") or []),
            "capacity": dict(obj.get("capacity") or {}),
        }
        password = obj.get("password")
        current = await store.users.get_by_username(tenant, obj["username"])
        if current is None:
            await store.users.create(
                tenant,
                obj["username"],
                password=password,
                password_hash=obj.get("password_hash"),
                config_managed=True,
                actor=actor,
                **fields,
            )
            counts.created += 1
            continue
        diff = {k: v for k, v in fields.items() if getattr(current, k) != v}
        if not current.config_managed:
            diff["config_managed"] = True
        new_password: str | None = None
        if password is not None:
            if not await verify_password_async(password, current.password_hash):
                new_password = password
        elif "password_hash" in obj and obj["password_hash"] != current.password_hash:
            diff["password_hash"] = obj["password_hash"]
        if diff or new_password is not None:
            await store.users.update(
                current.id, actor=actor, force=True, password=new_password, **diff
            )
            counts.updated += 1
        else:
            counts.unchanged += 1


async def _config_rows(store: Store, table: sa.Table, *columns: str) -> list[dict[str, Any]]:
    query = sa.select(*(table.c[name] for name in columns)).where(
        table.c.config_managed == sa.true()
    )
    return await store.fetch_all(query)


async def _delete_users(
    store: Store, wanted: list[dict[str, Any]], counts: ApplyCounts, actor: str
) -> None:
    keep = {(o.get("tenant") or None, o["username"]) for o in wanted}
    for row in await _config_rows(store, users, "id", "tenant", "username"):
        if (row["tenant"], row["username"]) not in keep:
            await store.users.delete(row["id"], actor=actor, force=True)
            counts.deleted += 1


async def _delete_apikeys(
    store: Store, wanted: list[dict[str, Any]], counts: ApplyCounts, actor: str
) -> None:
    keep = {(o["tenant"], o["name"]) for o in wanted}
    for row in await _config_rows(store, apikeys, "id", "tenant", "name"):
        if (row["tenant"], row["name"]) not in keep:
            await store.apikeys.delete(row["id"], actor=actor, force=True)
            counts.deleted += 1


async def _delete_services(
    store: Store, wanted: list[dict[str, Any]], counts: ApplyCounts, actor: str
) -> None:
    keep = {(o["tenant"], o["name"]) for o in wanted}
    for row in await _config_rows(store, services, "tenant", "name"):
        if (row["tenant"], row["name"]) not in keep:
            await store.services.delete(row["tenant"], row["name"], actor=actor, force=True)
            counts.deleted += 1


async def _delete_tenants(
    store: Store, wanted: list[dict[str, Any]], counts: ApplyCounts, actor: str
) -> None:
    keep = {o["ccid"] for o in wanted}
    for row in await _config_rows(store, tenants, "ccid"):
        if row["ccid"] not in keep:
            await store.tenants.delete(row["ccid"], actor=actor, force=True)
            counts.deleted += 1
