"""The default wiring of ``nexus serve``: real store, real cache, the config applied to both.

``default_wiring(settings)`` returns the keyword arguments of :func:`engine.app.create_app`:

* ``config_loader``: ``validate_paths([path], mode="serve")`` -> ``(model | None, findings)``
  (in serve mode an unset ``${env:...}`` secret is an error, so a bad config never starts);
* ``store_factory``: :class:`engine.store.Store` on ``settings.db_url``; API keys are hashed
  with a pepper derived from ``settings.secret`` (``NEXUS_SECRET`` or ``var/secret``);
* ``cache_factory``: :class:`engine.store.Cache` on ``settings.redis_url`` (cluster, TLS and
  password from the settings; the key prefix from ``NEXUS_REDIS_PREFIX``, default ``nexus:``,
  so several engines, or test runs, can share one Redis);
* ``config_appliers``: the config's tenants, services, API keys and users applied to the store
  (config-managed; the provisioning API answers 409 for them), then its users put in the
  embedded provider's directory, then every process told to drop its cached API keys;
* ``user_directory``: an :class:`~engine.auth.embedded.InMemoryUserDirectory` (config users);
* ``setup``: the provisioning API and the security layer (:mod:`engine.api.security`).

Workers apply the config concurrently at start: on PostgreSQL the apply runs under a
transaction-scoped advisory lock, on SQLite ``BEGIN IMMEDIATE`` already serialises writers, so
the second worker finds everything applied and changes nothing.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import hmac
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from prometheus_client import disable_created_metrics
from sanic import Sanic

from engine.auth.embedded import InMemoryUserDirectory, UserRecord, plain_password
from engine.messaging.wiring import install_messaging
from engine.settings import Settings

log = logging.getLogger("nexus.wiring")

#: The ``--wiring`` of ``nexus serve`` when none is given.
DEFAULT_WIRING = "engine.wiring:default_wiring"
#: Key of the advisory lock that serialises config applies across processes (PostgreSQL).
APPLY_LOCK_KEY = 0x6E657875  # "nexu"
REDIS_PREFIX_ENV = "NEXUS_REDIS_PREFIX"


# ---------------------------------------------------------------------- config loading
def load_config(path: str) -> tuple[Any | None, Sequence[Any]]:
    """Validate the config tree at ``path`` in serve mode: (model or None, findings)."""
    from engine.config.validate import validate_paths

    result = validate_paths([path], mode="serve")
    return result.model, result.findings


# ---------------------------------------------------------------------- model -> store objects
def thaw(value: Any, env: Mapping[str, str] | None = None) -> Any:
    """Plain JSON-able data from the model's frozen data; Secrets resolved (``env``)."""
    from engine.config.model import Secret

    if isinstance(value, Secret):
        return value.resolve(env)
    if isinstance(value, Mapping):
        return {str(k): thaw(v, env) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [thaw(v, env) for v in value]
    return value


def _expires(value: _dt.date | None) -> _dt.datetime | None:
    """A config expiry date: the key stops working at 00:00 UTC of that day."""
    if value is None or value is False:
        return None
    if isinstance(value, _dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=_dt.UTC)
    return _dt.datetime(value.year, value.month, value.day, tzinfo=_dt.UTC)


def store_objects(model: Any, env: Mapping[str, str] | None = None) -> dict[str, list[dict]]:
    """The model as ``apply_config_objects`` input (secrets resolved; keys and passwords in
    clear here, hashed by the store)."""
    tenants: list[dict[str, Any]] = []
    services: list[dict[str, Any]] = []
    apikeys: list[dict[str, Any]] = []
    users: list[dict[str, Any]] = []
    for tenant in model.tenants:
        tenants.append({
            "ccid": tenant.ccid,
            "name": tenant.name,
            "type": tenant.type,
            "backendurl": tenant.backendurl,
            "username": tenant.username,
            "token": tenant.token.resolve(env),
            "genesystenantid": str(tenant.genesystenantid),
        })
        for name, service in tenant.services.items():
            services.append({
                "tenant": tenant.ccid,
                "name": name,
                "url": service.url,
                "data": thaw(service.data, env),
                "secret": thaw(service.secret, env),
            })
        for key in tenant.apikeys:
            apikeys.append({
                "tenant": tenant.ccid,
                "name": key.name,
                "permissions": list(key.permissions),
                "key": key.key.resolve(env),
                "enabled": key.enabled,
                "expires": _expires(key.expires),
                "capacity": key.capacity,
                "frequency": key.frequency,
            })
    for user in model.users:
        users.append({
            "tenant": _user_ccid(model, user),
            "username": user.username,
            "roles": list(user.roles),
            "password": user.password.resolve(env),
            "agent_queues": list(user.agent.queues) if user.agent else [],
            "capacity": dict(user.agent.capacity) if user.agent else {},
        })
    return {"tenants": tenants, "services": services, "apikeys": apikeys, "users": users}


def _user_ccid(model: Any, user: Any) -> str | None:
    """A config user's tenant as a ccid (users name their tenant by its document name)."""
    if user.tenant is None:
        return None
    tenant = model.tenant(user.tenant) or model.tenant_by_ccid(user.tenant)
    return tenant.ccid if tenant is not None else user.tenant


def user_records(model: Any, env: Mapping[str, str] | None = None) -> list[UserRecord]:
    """The config's users for the embedded OAuth provider (passwords kept as digests)."""
    return [
        UserRecord(
            username=user.username,
            tenant_ccid=_user_ccid(model, user),
            roles=frozenset(r.lower() for r in user.roles),
            password_verifier=plain_password(user.password.resolve(env)),
            enabled=user.enabled,
        )
        for user in model.users
    ]


# ---------------------------------------------------------------------- appliers
async def apply_to_store(app: Sanic, model: Any) -> None:
    """Make the store's config-managed objects equal the model's (one transaction)."""
    from engine.store import apply_config_objects

    store = app.ctx.store
    if store is None:
        return
    objects = store_objects(model)
    async with store.transaction():
        if store.dialect == "postgresql":
            await store.fetch_val(f"SELECT pg_advisory_xact_lock({APPLY_LOCK_KEY})")
        result = await apply_config_objects(store, objects, actor="config")
    if result.changed:
        log.info("config applied to the store: %s", result.as_dict()["total"])


def apply_users(app: Sanic, model: Any) -> None:
    directory = app.ctx.users
    if isinstance(directory, InMemoryUserDirectory):
        directory.replace(user_records(model))


async def refresh_api_keys(app: Sanic, model: Any) -> None:
    """Config keys and services may have changed: every process drops its cached API keys
    and service views."""
    from engine.api.security import ALL, invalidate_api_keys, invalidate_services

    await invalidate_api_keys(app, ALL)
    await invalidate_services(app, ALL)


# ---------------------------------------------------------------------- factories
def api_key_pepper(secret: str) -> bytes:
    """The API-key hash pepper, derived from the signing secret (never the secret itself)."""
    return hmac.new(secret.encode("utf-8"), b"nexus api key pepper v1", hashlib.sha256).digest()


def make_store(settings: Settings) -> Any:
    from engine.store import Store

    return Store(settings.db_url, pepper=api_key_pepper(settings.secret))


def make_cache(settings: Settings) -> Any:
    import os

    from engine.store import Cache

    return Cache(
        settings.redis_url,
        cluster=settings.redis_cluster,
        tls=settings.redis_tls,
        password=settings.redis_password or None,
        prefix=os.environ.get(REDIS_PREFIX_ENV) or "nexus:",
        health_check_interval=2.0,
    )


def install_api(app: Sanic) -> None:
    from engine.api import apikeys, chat_wiring, provisioning, security

    security.install_security(app)
    app.blueprint(provisioning.bp)
    app.blueprint(apikeys.bp)
    chat_wiring.install_chat(app)  # chat + agent APIs, the per-worker conversation engine


def default_wiring(settings: Settings) -> dict[str, Any]:
    """``create_app`` keyword arguments of a real engine (see the module docstring)."""
    disable_created_metrics()
    return {
        "config_loader": load_config,
        "store_factory": make_store,
        "cache_factory": make_cache,
        "config_appliers": [apply_to_store, apply_users, refresh_api_keys],
        "user_directory": InMemoryUserDirectory(),
        "setup": [install_api, install_messaging],
    }
