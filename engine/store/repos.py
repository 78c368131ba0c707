"""Repositories: typed reads and writes of one kind of object each.

Every write runs in a transaction (a savepoint when the caller already has one open) and adds
an ``audit_log`` row in that same transaction, with secrets masked. Config-managed objects are
protected: writes to them raise :class:`ConfigManaged` (the API's 409) unless ``force=True``,
which only :func:`engine.store.apply.apply_config_objects` passes.
"""

from __future__ import annotations

import hmac
import json
import secrets
import uuid
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from engine.store.errors import ConfigManaged, Conflict, NotFound
from engine.store.masking import MASK, mask_secrets
from engine.store.models import (
    ALL_TENANTS,
    ApiKey,
    AuditEntry,
    Gapi,
    Service,
    Tenant,
    User,
    now_utc,
    utc,
)
from engine.store.passwords import hash_password_async, verify_password_async
from engine.store.tables import apikeys, audit_log, nex_gapis, services, tenants, users

if TYPE_CHECKING:
    from engine.store.db import Store

KEY_PREFIX_LEN = 8
DEFAULT_CAPACITY = 120
DEFAULT_FREQUENCY = 60
SYSTEM = "system"


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def _loads(text: str | None, default: Any) -> Any:
    if text is None or text == "":
        return default
    return json.loads(text)


def _ts(value: datetime | None) -> datetime | None:
    """A datetime to bind: aware UTC (SQLite stores it as naive UTC text)."""
    return utc(value)


def hash_api_key(key: str, pepper: bytes) -> str:
    """HMAC-SHA256 of the key with the server-side pepper, hex (64 chars)."""
    # hmac.digest: the one-shot C implementation (this runs on every authenticated request).
    return hmac.digest(pepper, key.encode("utf-8"), "sha256").hex()


def generate_api_key() -> str:
    """A new random API key in the guide's format: a UUID string (122 random bits from the
    OS CSPRNG), so existing tooling that expects `9b7682b7-cbce-...` keys keeps working."""
    return str(uuid.UUID(bytes=secrets.token_bytes(16), version=4))


class _Repo:
    object_type = ""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def _audit(
        self,
        actor: str,
        action: str,
        key: str,
        tenant: str | None,
        details: Mapping[str, Any],
    ) -> None:
        await self.store.audit.record(
            actor=actor,
            action=action,
            object_type=self.object_type,
            object_key=key,
            tenant=tenant,
            details=details,
        )

    @staticmethod
    def _guard(obj: Any, force: bool, what: str) -> None:
        if getattr(obj, "config_managed", False) and not force:
            raise ConfigManaged(f"{what} is managed by the declarative config; change it there")


# -- tenants ---------------------------------------------------------------------------------

_TENANT_FIELDS = ("name", "type", "backendurl", "username", "token", "genesystenantid")


def _tenant(row: Mapping[str, Any]) -> Tenant:
    return Tenant(
        ccid=row["ccid"],
        name=row["name"],
        type=row["type"],
        backendurl=row["backendurl"],
        username=row["username"],
        token=row["token"],
        genesystenantid=row["genesystenantid"],
        config_managed=bool(row["config_managed"]),
        created=utc(row["created"]),
        updated=utc(row["updated"]),
    )


def _tenant_details(values: Mapping[str, Any]) -> dict[str, Any]:
    out = {k: values[k] for k in _TENANT_FIELDS if k in values}
    if "token" in out:
        out["token"] = MASK if out["token"] else None
    return out


class TenantRepo(_Repo):
    object_type = "tenant"

    async def get(self, ccid: str) -> Tenant | None:
        row = await self.store.fetch_one(sa.select(tenants).where(tenants.c.ccid == ccid))
        return None if row is None else _tenant(row)

    async def get_by_name(self, name: str) -> Tenant | None:
        row = await self.store.fetch_one(sa.select(tenants).where(tenants.c.name == name))
        return None if row is None else _tenant(row)

    async def list(self, *, limit: int = 100, after: str | None = None) -> list[Tenant]:
        query = sa.select(tenants).order_by(tenants.c.ccid).limit(limit)
        if after is not None:
            query = query.where(tenants.c.ccid > after)
        return [_tenant(row) for row in await self.store.fetch_all(query)]

    async def create(
        self,
        ccid: str,
        name: str,
        *,
        type: str = "PureEngage",
        backendurl: str | None = None,
        username: str | None = None,
        token: str | None = None,
        genesystenantid: str | None = None,
        config_managed: bool = False,
        actor: str = SYSTEM,
    ) -> Tenant:
        now = now_utc()
        values = {
            "ccid": ccid,
            "name": name,
            "type": type,
            "backendurl": backendurl,
            "username": username,
            "token": token,
            "genesystenantid": genesystenantid,
            "config_managed": config_managed,
            "created": now,
            "updated": now,
        }
        async with self.store.transaction():
            if await self.get(ccid) is not None:
                raise Conflict(f"tenant {ccid} exists")
            if await self.get_by_name(name) is not None:
                raise Conflict(f"a tenant named {name!r} exists")
            await self.store.execute(sa.insert(tenants).values(**values))
            await self._audit(actor, "create", ccid, ccid, _tenant_details(values))
        return _tenant(values)

    async def update(
        self, ccid: str, *, actor: str = SYSTEM, force: bool = False, **changes: Any
    ) -> Tenant:
        unknown = set(changes) - set(_TENANT_FIELDS) - {"config_managed"}
        if unknown:
            raise TypeError(f"unknown tenant field(s): {sorted(unknown)}")
        async with self.store.transaction():
            current = await self.get(ccid)
            if current is None:
                raise NotFound(f"tenant {ccid} not found")
            self._guard(current, force, f"tenant {ccid}")
            diff = {k: v for k, v in changes.items() if getattr(current, k) != v}
            if not diff:
                return current
            if "name" in diff:
                other = await self.get_by_name(diff["name"])
                if other is not None and other.ccid != ccid:
                    raise Conflict(f"a tenant named {diff['name']!r} exists")
            await self.store.execute(
                sa.update(tenants)
                .where(tenants.c.ccid == ccid)
                .values(**diff, updated=now_utc())
            )
            await self._audit(actor, "update", ccid, ccid, _tenant_details(diff))
            updated = await self.get(ccid)
        assert updated is not None
        return updated

    async def delete(self, ccid: str, *, actor: str = SYSTEM, force: bool = False) -> Tenant:
        """Delete the tenant and its services (API keys and users of it stay: see callers)."""
        async with self.store.transaction():
            current = await self.get(ccid)
            if current is None:
                raise NotFound(f"tenant {ccid} not found")
            self._guard(current, force, f"tenant {ccid}")
            # SQLite enforces no foreign keys here (off per connection): cascade by hand.
            await self.store.execute(sa.delete(services).where(services.c.tenant == ccid))
            await self.store.execute(sa.delete(tenants).where(tenants.c.ccid == ccid))
            await self._audit(actor, "delete", ccid, ccid, {"name": current.name})
        return current


# -- services --------------------------------------------------------------------------------


def _service(row: Mapping[str, Any]) -> Service:
    return Service(
        tenant=row["tenant"],
        name=row["name"],
        url=row["url"],
        data=_loads(row["data"], {}) if isinstance(row["data"], str) else dict(row["data"]),
        secret=_loads(row["secret"], {}) if isinstance(row["secret"], str) else dict(
            row["secret"]
        ),
        config_managed=bool(row["config_managed"]),
        created=utc(row["created"]),
        updated=utc(row["updated"]),
    )


def _service_details(values: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "url" in values:
        out["url"] = values["url"]
    if "data" in values:
        out["data"] = values["data"]
    if "secret" in values:
        out["secret"] = mask_secrets(values["secret"])
    return out


class ServiceRepo(_Repo):
    object_type = "service"

    async def get(self, tenant: str, name: str) -> Service | None:
        row = await self.store.fetch_one(
            sa.select(services).where(services.c.tenant == tenant, services.c.name == name)
        )
        return None if row is None else _service(row)

    async def list(self, tenant: str) -> list[Service]:
        rows = await self.store.fetch_all(
            sa.select(services).where(services.c.tenant == tenant).order_by(services.c.name)
        )
        return [_service(row) for row in rows]

    async def create(
        self,
        tenant: str,
        name: str,
        *,
        url: str | None = None,
        data: Mapping[str, Any] | None = None,
        secret: Mapping[str, Any] | None = None,
        config_managed: bool = False,
        actor: str = SYSTEM,
    ) -> Service:
        now = now_utc()
        values = {
            "tenant": tenant,
            "name": name,
            "url": url,
            "data": dict(data or {}),
            "secret": dict(secret or {}),
            "config_managed": config_managed,
            "created": now,
            "updated": now,
        }
        async with self.store.transaction():
            if await self.store.tenants.get(tenant) is None:
                raise NotFound(f"tenant {tenant} not found")
            if await self.get(tenant, name) is not None:
                raise Conflict(f"service {name} of tenant {tenant} exists")
            await self.store.execute(
                sa.insert(services).values(
                    **{**values, "data": _dumps(values["data"]), "secret": _dumps(values["secret"])}
                )
            )
            await self._audit(actor, "create", f"{tenant}/{name}", tenant, _service_details(values))
        return _service(values)

    async def update(
        self,
        tenant: str,
        name: str,
        *,
        actor: str = SYSTEM,
        force: bool = False,
        **changes: Any,
    ) -> Service:
        unknown = set(changes) - {"url", "data", "secret", "config_managed"}
        if unknown:
            raise TypeError(f"unknown service field(s): {sorted(unknown)}")
        async with self.store.transaction():
            current = await self.get(tenant, name)
            if current is None:
                raise NotFound(f"service {name} of tenant {tenant} not found")
            self._guard(current, force, f"service {name} of tenant {tenant}")
            diff = {k: v for k, v in changes.items() if getattr(current, k) != v}
            if not diff:
                return current
            row = dict(diff)
            for key in ("data", "secret"):
                if key in row:
                    row[key] = _dumps(row[key])
            await self.store.execute(
                sa.update(services)
                .where(services.c.tenant == tenant, services.c.name == name)
                .values(**row, updated=now_utc())
            )
            await self._audit(actor, "update", f"{tenant}/{name}", tenant, _service_details(diff))
            updated = await self.get(tenant, name)
        assert updated is not None
        return updated

    async def delete(
        self, tenant: str, name: str, *, actor: str = SYSTEM, force: bool = False
    ) -> Service:
        async with self.store.transaction():
            current = await self.get(tenant, name)
            if current is None:
                raise NotFound(f"service {name} of tenant {tenant} not found")
            self._guard(current, force, f"service {name} of tenant {tenant}")
            await self.store.execute(
                sa.delete(services).where(services.c.tenant == tenant, services.c.name == name)
            )
            await self._audit(actor, "delete", f"{tenant}/{name}", tenant, {})
        return current


# -- API keys --------------------------------------------------------------------------------

_APIKEY_FIELDS = ("name", "permissions", "enabled", "revoked", "expires", "capacity", "frequency")


def _apikey(row: Mapping[str, Any]) -> ApiKey:
    perms = row["permissions"]
    return ApiKey(
        id=row["id"],
        tenant=row["tenant"],
        name=row["name"],
        permissions=list(_loads(perms, []) if isinstance(perms, str) else perms),
        key_prefix=row["key_prefix"],
        enabled=bool(row["enabled"]),
        revoked=bool(row["revoked"]),
        expires=utc(row["expires"]),
        capacity=int(row["capacity"]),
        frequency=int(row["frequency"]),
        createdby=row["createdby"],
        config_managed=bool(row["config_managed"]),
        created=utc(row["created"]),
        updated=utc(row["updated"]),
        key_hash=row["key_hash"],
    )


def _apikey_details(values: Mapping[str, Any]) -> dict[str, Any]:
    out = {k: values[k] for k in _APIKEY_FIELDS if k in values}
    if "expires" in out and out["expires"] is not None:
        out["expires"] = utc(out["expires"]).isoformat()
    if "key_hash" in values:
        out["key"] = MASK
    return out


class ApiKeyRepo(_Repo):
    object_type = "apikey"

    def hash_key(self, key: str) -> str:
        return hash_api_key(key, self.store.pepper)

    async def get(self, key_id: str) -> ApiKey | None:
        row = await self.store.fetch_one(sa.select(apikeys).where(apikeys.c.id == key_id))
        return None if row is None else _apikey(row)

    async def get_by_name(self, tenant: str, name: str) -> ApiKey | None:
        row = await self.store.fetch_one(
            sa.select(apikeys).where(apikeys.c.tenant == tenant, apikeys.c.name == name)
        )
        return None if row is None else _apikey(row)

    async def list(
        self, *, tenant: str | None = None, limit: int = 100, after: str | None = None
    ) -> list[ApiKey]:
        query = sa.select(apikeys).order_by(apikeys.c.id).limit(limit)
        if tenant is not None:
            query = query.where(apikeys.c.tenant == tenant)
        if after is not None:
            query = query.where(apikeys.c.id > after)
        return [_apikey(row) for row in await self.store.fetch_all(query)]

    async def find_by_key(self, key: str, *, usable_only: bool = True) -> ApiKey | None:
        """The key record for a presented key: an indexed prefix lookup, then a constant-time
        compare of the peppered hash. ``usable_only`` hides disabled, revoked, expired keys."""
        if not key or len(key) < KEY_PREFIX_LEN:
            return None
        wanted = self.hash_key(key)
        rows = await self.store.fetch_all(
            sa.select(apikeys).where(apikeys.c.key_prefix == key[:KEY_PREFIX_LEN])
        )
        found: ApiKey | None = None
        for row in rows:  # compare all candidates: no early exit on the first match
            if hmac.compare_digest(str(row["key_hash"]), wanted):
                found = _apikey(row)
        if found is None or (usable_only and not found.usable()):
            return None
        return found

    async def create(
        self,
        tenant: str,
        name: str,
        permissions: Iterable[str],
        *,
        key: str | None = None,
        enabled: bool = True,
        expires: datetime | None = None,
        capacity: int = DEFAULT_CAPACITY,
        frequency: int = DEFAULT_FREQUENCY,
        createdby: str | None = None,
        config_managed: bool = False,
        key_id: str | None = None,
        actor: str = SYSTEM,
    ) -> tuple[ApiKey, str]:
        """Create a key; returns the record and the plaintext key (shown once, never stored)."""
        if key is None:
            key = generate_api_key()
        if len(key) < KEY_PREFIX_LEN:
            raise ValueError(f"an API key must have at least {KEY_PREFIX_LEN} characters")
        if capacity < 1 or frequency < 1:
            raise ValueError("capacity and frequency must be positive")
        now = now_utc()
        values = {
            "id": key_id or str(uuid.uuid4()),
            "tenant": tenant,
            "name": name,
            "permissions": list(permissions),
            "key_prefix": key[:KEY_PREFIX_LEN],
            "key_hash": self.hash_key(key),
            "enabled": enabled,
            "revoked": False,
            "expires": _ts(expires),
            "capacity": capacity,
            "frequency": frequency,
            "createdby": createdby,
            "config_managed": config_managed,
            "created": now,
            "updated": now,
        }
        async with self.store.transaction():
            if tenant != ALL_TENANTS and await self.store.tenants.get(tenant) is None:
                raise NotFound(f"tenant {tenant} not found")
            if await self.get_by_name(tenant, name) is not None:
                raise Conflict(f"an API key named {name!r} exists for tenant {tenant}")
            row = {**values, "permissions": _dumps(values["permissions"])}
            await self.store.execute(sa.insert(apikeys).values(**row))
            await self._audit(actor, "create", values["id"], _tenant_of(tenant),
                              _apikey_details(values))
        return _apikey(values), key

    async def update(
        self,
        key_id: str,
        *,
        actor: str = SYSTEM,
        force: bool = False,
        key: str | None = None,
        **changes: Any,
    ) -> ApiKey:
        """Change fields (``name, permissions, enabled, revoked, expires, capacity,
        frequency``); ``key=`` replaces the secret key itself."""
        unknown = set(changes) - set(_APIKEY_FIELDS) - {"config_managed"}
        if unknown:
            raise TypeError(f"unknown API key field(s): {sorted(unknown)}")
        if "expires" in changes:
            changes["expires"] = _ts(changes["expires"])
        async with self.store.transaction():
            current = await self.get(key_id)
            if current is None:
                raise NotFound(f"API key {key_id} not found")
            self._guard(current, force, f"API key {key_id}")
            diff = {k: v for k, v in changes.items() if getattr(current, k) != v}
            if key is not None:
                new_hash = self.hash_key(key)
                if not hmac.compare_digest(new_hash, current.key_hash):
                    diff["key_hash"] = new_hash
                    diff["key_prefix"] = key[:KEY_PREFIX_LEN]
            if not diff:
                return current
            if "name" in diff and await self.get_by_name(current.tenant, diff["name"]):
                raise Conflict(f"an API key named {diff['name']!r} exists")
            row = dict(diff)
            if "permissions" in row:
                row["permissions"] = _dumps(list(row["permissions"]))
            await self.store.execute(
                sa.update(apikeys).where(apikeys.c.id == key_id).values(**row, updated=now_utc())
            )
            await self._audit(actor, "update", key_id, _tenant_of(current.tenant),
                              _apikey_details(diff))
            updated = await self.get(key_id)
        assert updated is not None
        return updated

    async def revoke(self, key_id: str, *, actor: str = SYSTEM, force: bool = False) -> ApiKey:
        return await self.update(key_id, actor=actor, force=force, revoked=True)

    async def delete(self, key_id: str, *, actor: str = SYSTEM, force: bool = False) -> ApiKey:
        async with self.store.transaction():
            current = await self.get(key_id)
            if current is None:
                raise NotFound(f"API key {key_id} not found")
            self._guard(current, force, f"API key {key_id}")
            await self.store.execute(sa.delete(apikeys).where(apikeys.c.id == key_id))
            await self._audit(actor, "delete", key_id, _tenant_of(current.tenant),
                              {"name": current.name})
        return current


def _tenant_of(tenant: str | None) -> str | None:
    return None if tenant in (None, ALL_TENANTS) else tenant


# -- nex_gapis -------------------------------------------------------------------------------


def _gapi(row: Mapping[str, Any]) -> Gapi:
    return Gapi(
        id=int(row["id"]),
        url=row["url"],
        clientid=row["clientid"],
        apikey=row["apikey"],
        clientsecret=row["clientsecret"],
        created=utc(row["created"]),
    )


class GapiRepo(_Repo):
    """The GWS endpoints Nexus talks to (the guide's ``nex_gapis`` table)."""

    object_type = "gapi"

    async def list(self) -> list[Gapi]:
        rows = await self.store.fetch_all(sa.select(nex_gapis).order_by(nex_gapis.c.id))
        return [_gapi(row) for row in rows]

    async def get(self, gapi_id: int) -> Gapi | None:
        row = await self.store.fetch_one(sa.select(nex_gapis).where(nex_gapis.c.id == gapi_id))
        return None if row is None else _gapi(row)

    async def add(
        self,
        url: str,
        clientid: str,
        *,
        apikey: str = "NA",
        clientsecret: str = "",
        actor: str = SYSTEM,
    ) -> Gapi:
        async with self.store.transaction():
            insert = sa.insert(nex_gapis).values(
                url=url,
                clientid=clientid,
                apikey=apikey,
                clientsecret=clientsecret,
                created=now_utc(),
            )
            if self.store.dialect == "sqlite":
                new_id = await self.store.execute(insert)  # the driver returns lastrowid
            else:
                new_id = await self.store.execute(insert.returning(nex_gapis.c.id))
            row = await self.store.fetch_one(
                sa.select(nex_gapis).where(nex_gapis.c.id == new_id)
            )
            assert row is not None
            gapi = _gapi(row)
            await self._audit(
                actor,
                "create",
                str(gapi.id),
                None,
                {"url": url, "clientid": clientid, "apikey": MASK, "clientsecret": MASK},
            )
        return gapi

    async def delete(self, gapi_id: int, *, actor: str = SYSTEM) -> Gapi:
        async with self.store.transaction():
            current = await self.get(gapi_id)
            if current is None:
                raise NotFound(f"gapi {gapi_id} not found")
            await self.store.execute(sa.delete(nex_gapis).where(nex_gapis.c.id == gapi_id))
            await self._audit(actor, "delete", str(gapi_id), None, {"url": current.url})
        return current


# -- users -----------------------------------------------------------------------------------

_USER_FIELDS = ("roles", "agent_queues", "capacity", "password_hash")


def _user(row: Mapping[str, Any]) -> User:
    def _json(key: str, default: Any) -> Any:
        value = row[key]
        return _loads(value, default) if isinstance(value, str) or value is None else value

    return User(
        id=row["id"],
        tenant=row["tenant"],
        username=row["username"],
        roles=list(_json("roles", [])),
        agent_queues=list(_json("agent_queues", [])),
        capacity=dict(_json("capacity", {})),
        config_managed=bool(row["config_managed"]),
        created=utc(row["created"]),
        updated=utc(row["updated"]),
        password_hash=row["password_hash"],
    )


def _user_details(values: Mapping[str, Any]) -> dict[str, Any]:
    out = {k: values[k] for k in ("roles", "agent_queues", "capacity") if k in values}
    if "password_hash" in values:
        out["password"] = MASK
    return out


def _user_where(tenant: str | None, username: str) -> sa.ColumnElement[bool]:
    tenant_clause = users.c.tenant.is_(None) if tenant is None else users.c.tenant == tenant
    return sa.and_(tenant_clause, users.c.username == username)


class UserRepo(_Repo):
    object_type = "user"

    async def get(self, user_id: str) -> User | None:
        row = await self.store.fetch_one(sa.select(users).where(users.c.id == user_id))
        return None if row is None else _user(row)

    async def get_by_username(self, tenant: str | None, username: str) -> User | None:
        row = await self.store.fetch_one(sa.select(users).where(_user_where(tenant, username)))
        return None if row is None else _user(row)

    async def list(self, *, tenant: str | None = None, all_tenants: bool = True) -> list[User]:
        """Users of ``tenant``; with ``tenant=None`` all users (or, with ``all_tenants=False``,
        only the Environment's)."""
        query = sa.select(users).order_by(users.c.tenant, users.c.username)
        if tenant is not None:
            query = query.where(users.c.tenant == tenant)
        elif not all_tenants:
            query = query.where(users.c.tenant.is_(None))
        return [_user(row) for row in await self.store.fetch_all(query)]

    async def authenticate(self, tenant: str | None, username: str, password: str) -> User | None:
        user = await self.get_by_username(tenant, username)
        if user is None or not await verify_password_async(password, user.password_hash):
            return None
        return user

    async def create(
        self,
        tenant: str | None,
        username: str,
        *,
        password: str | None = None,
        password_hash: str | None = None,
        roles: Iterable[str] = (),
        agent_queues: Iterable[Any] = (),
        capacity: Mapping[str, Any] | None = None,
        config_managed: bool = False,
        actor: str = SYSTEM,
    ) -> User:
        if password is not None:
            password_hash = await hash_password_async(password)
        now = now_utc()
        values = {
            "id": str(uuid.uuid4()),
            "tenant": tenant,
            "username": username,
            "roles": list(roles),
            "password_hash": password_hash,
            "agent_queues": list(agent_queues),
            "capacity": dict(capacity or {}),
            "config_managed": config_managed,
            "created": now,
            "updated": now,
        }
        async with self.store.transaction():
            if tenant is not None and await self.store.tenants.get(tenant) is None:
                raise NotFound(f"tenant {tenant} not found")
            if await self.get_by_username(tenant, username) is not None:
                raise Conflict(f"user {username!r} exists")
            await self.store.execute(
                sa.insert(users).values(
                    **{
                        **values,
                        "roles": _dumps(values["roles"]),
                        "agent_queues": _dumps(values["agent_queues"]),
                        "capacity": _dumps(values["capacity"]),
                    }
                )
            )
            await self._audit(actor, "create", _user_key(tenant, username), tenant,
                              _user_details(values))
        return _user(values)

    async def update(
        self,
        user_id: str,
        *,
        actor: str = SYSTEM,
        force: bool = False,
        password: str | None = None,
        **changes: Any,
    ) -> User:
        unknown = set(changes) - set(_USER_FIELDS) - {"config_managed"}
        if unknown:
            raise TypeError(f"unknown user field(s): {sorted(unknown)}")
        if password is not None:
            changes["password_hash"] = await hash_password_async(password)
        async with self.store.transaction():
            current = await self.get(user_id)
            if current is None:
                raise NotFound(f"user {user_id} not found")
            self._guard(current, force, f"user {current.username}")
            diff = {k: v for k, v in changes.items() if getattr(current, k) != v}
            if not diff:
                return current
            row = dict(diff)
            for key in ("roles", "agent_queues", "capacity"):
                if key in row:
                    row[key] = _dumps(row[key])
            await self.store.execute(
                sa.update(users).where(users.c.id == user_id).values(**row, updated=now_utc())
            )
            await self._audit(actor, "update", _user_key(current.tenant, current.username),
                              current.tenant, _user_details(diff))
            updated = await self.get(user_id)
        assert updated is not None
        return updated

    async def delete(self, user_id: str, *, actor: str = SYSTEM, force: bool = False) -> User:
        async with self.store.transaction():
            current = await self.get(user_id)
            if current is None:
                raise NotFound(f"user {user_id} not found")
            self._guard(current, force, f"user {current.username}")
            await self.store.execute(sa.delete(users).where(users.c.id == user_id))
            await self._audit(actor, "delete", _user_key(current.tenant, current.username),
                              current.tenant, {})
        return current


def _user_key(tenant: str | None, username: str) -> str:
    return f"{tenant}/{username}" if tenant else username


# -- audit log -------------------------------------------------------------------------------

AUDIT_ACTIONS = ("create", "update", "delete")


def _audit_entry(row: Mapping[str, Any]) -> AuditEntry:
    return AuditEntry(
        id=int(row["id"]),
        at=utc(row["at"]),
        actor=row["actor"],
        action=row["action"],
        object_type=row["object_type"],
        object_key=row["object_key"],
        tenant=row["tenant"],
        details=_loads(row["details"], {}),
    )


class AuditRepo:
    """Append-only log of changes. Callers pass details with secrets already masked; the
    repositories do (``mask_secrets`` on service secrets, ``***`` for tokens and keys)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def record(
        self,
        *,
        actor: str,
        action: str,
        object_type: str,
        object_key: str,
        tenant: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        if action not in AUDIT_ACTIONS:
            raise ValueError(f"audit action must be one of {AUDIT_ACTIONS}, got {action!r}")
        await self.store.execute(
            sa.insert(audit_log).values(
                at=now_utc(),
                actor=actor,
                action=action,
                object_type=object_type,
                object_key=object_key,
                tenant=tenant,
                details=_dumps(dict(details or {})),
            )
        )

    async def list(
        self,
        *,
        tenant: str | None = None,
        object_type: str | None = None,
        object_key: str | None = None,
        limit: int = 100,
        before: int | None = None,
    ) -> list[AuditEntry]:
        """Newest first; page with ``before=<id of the last entry seen>``."""
        query = sa.select(audit_log).order_by(audit_log.c.id.desc()).limit(limit)
        if tenant is not None:
            query = query.where(audit_log.c.tenant == tenant)
        if object_type is not None:
            query = query.where(audit_log.c.object_type == object_type)
        if object_key is not None:
            query = query.where(audit_log.c.object_key == object_key)
        if before is not None:
            query = query.where(audit_log.c.id < before)
        return [_audit_entry(row) for row in await self.store.fetch_all(query)]
