"""Units of the provisioning layer: the key cache, service and key validation, the config ->
store mapping, the dev secrets script, the curl replayer used by the guide tests."""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from engine.api.apikeys import _may_grant, key_view, parse_expires
from engine.api.errors import BadRequest, NoPermission
from engine.api.provisioning import service_problems, validate_service
from engine.api.security import ALL, ApiKeyCache, actor_of
from engine.auth.principal import Principal
from engine.config.validate import validate_paths
from engine.wiring import api_key_pepper, store_objects, user_records
from tests.integration.provisioning.harness import parse_curl, substitute

ROOT = Path(__file__).resolve().parents[3]


def _key(key_id: str) -> SimpleNamespace:
    return SimpleNamespace(id=key_id)


def test_key_cache_ttl_bound_and_invalidation() -> None:
    cache = ApiKeyCache(ttl=10, size=3)
    cache.put("h1", _key("a"), now=0)
    cache.put("h2", None, now=0)
    assert cache.get("h1", now=5).key.id == "a"
    assert cache.get("h2", now=5).key is None  # unknown keys are cached too
    assert cache.get("h1", now=10) is None  # expired
    cache.put("h1", _key("a"), now=20)
    cache.put("h3", _key("b"), now=20)
    cache.put("h4", _key("c"), now=20)
    cache.put("h5", _key("d"), now=20)
    assert len(cache) == 3 and cache.get("h1", now=21) is None  # the oldest went
    cache.invalidate("c")
    assert cache.get("h4", now=21) is None and cache.get("h5", now=21) is not None
    cache.invalidate(ALL)
    assert len(cache) == 0


@pytest.mark.parametrize(("name", "body"), [
    ("SMS", {"url": "N/A", "data": {"provider": "mGage"}, "secret": {}}),
    ("SMS", {"url": "N/A", "secret": {}, "data": {"tokenProvider": "Purecloud"}}),
    ("mGageSMS", {"url": "http://directtext.mgage.com", "data": {},
                  "secret": {"username": "u", "password": "p"}}),
    ("Async", {"data": {"channels": [{"channelId": "16504661149",
                                      "webhook": {"url": "https://w.example.com"}}]},
               "secret": {"channels": [{"channelId": "16504661149",
                                        "webhook": {"secret": "w"}, "api": {"secret": "a"}}]}}),
    ("WebhookTransportTarget-ai-connector", {"url": "http://athena:4084/athena/v1/x"}),
    ("PlatformUCS", {"url": "http://ucs.example.com", "secret": {}, "data": {}}),
])
def test_valid_services(name: str, body: dict) -> None:
    assert service_problems(name, body) == []
    validate_service(name, body)


def test_invalid_service_messages_name_the_field() -> None:
    problems = service_problems("Email", {"url": "N/A", "data": {"provider": "SparkPst"},
                                          "secret": {}})
    assert problems[0][0] == "data.provider" and "did you mean 'SparkPost'" in problems[0][1]
    problems = service_problems("mGageSMS", {"url": "http://m.example", "data": {},
                                             "secret": {"username": "u", "password": 7}})
    assert problems[0][0] == "secret.password" and "7" not in problems[0][1]  # secret hidden
    with pytest.raises(BadRequest) as info:
        validate_service("SMS", {"url": "N/A", "data": {}, "secret": {"x": "***"}})
    assert info.value.field == "secret"


def test_parse_expires() -> None:
    assert parse_expires(False) is None and parse_expires(None) is None
    assert parse_expires("2027-12-31") == dt.datetime(2027, 12, 31, tzinfo=dt.UTC)
    assert parse_expires("2027-12-31T10:00:00Z").hour == 10
    assert parse_expires("2027-12-31T10:00:00+02:00").utcoffset() == dt.timedelta(hours=2)
    for bad in ("soon", "", True, 5, "2027-13-01"):
        with pytest.raises(BadRequest):
            parse_expires(bad)


def test_who_may_grant_what() -> None:
    env_admin = Principal.build("user", "nexus", None, ["admin"])
    tenant_admin = Principal.build("user", "nexus", "t1", ["admin"])
    prov_key = Principal.build("apikey", "k", "t1", (), ["nexus:provisioning:*"])
    chat_key = Principal.build("apikey", "k", "t1", (), ["nexus:consumer:chat"])
    _may_grant(env_admin, "*", ["nexus:cluster:*"])
    _may_grant(tenant_admin, "t1", ["nexus:consumer:chat"])
    _may_grant(prov_key, "t1", ["nexus:designer:chat"])
    for principal, tenant, perms in [(tenant_admin, "t2", ["nexus:consumer:chat"]),
                                     (tenant_admin, "t1", ["nexus:cluster:*"]),
                                     (prov_key, "*", ["nexus:consumer:chat"]),
                                     (chat_key, "t1", ["nexus:consumer:chat"])]:
        with pytest.raises(NoPermission):
            _may_grant(principal, tenant, perms)
    assert actor_of(env_admin) == "user:nexus" and actor_of(prov_key) == "apikey:k@t1"


def test_key_view_has_the_guides_fields_in_order() -> None:
    now = dt.datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=dt.UTC)
    key = SimpleNamespace(id="i", tenant="*", name="n", permissions=["nexus:cluster:*"],
                          enabled=True, created=now, revoked=False, expires=None,
                          createdby=None, capacity=120, frequency=60)
    view = key_view(key, "secret")
    assert list(view) == ["id", "tenant", "name", "permissions", "enabled", "created", "revoked",
                          "expires", "createdby", "capacity", "frequency", "key"]
    assert view["created"] == "2026-01-02T03:04:05.678Z" and view["expires"] is False


def test_config_maps_to_store_objects_and_users() -> None:
    result = validate_paths([ROOT / "config"], mode="lint")
    assert result.model is not None
    env = {name: f"value-of-{name}" for name in _env_names()}
    objects = store_objects(result.model, env)
    tenant = objects["tenants"][0]
    assert tenant["ccid"] == "578ec98e-f07c-46ad-9675-f36c22f3ba9f"
    assert tenant["token"] == "value-of-T1001_GWS_TOKEN" and tenant["genesystenantid"] == "1"
    mgage = next(s for s in objects["services"] if s["name"] == "mGageSMS")
    assert mgage["secret"] == {"username": "value-of-T1001_KALEYRA_USERNAME",
                               "password": "value-of-T1001_KALEYRA_PASSWORD"}
    async_service = next(s for s in objects["services"] if s["name"] == "Async")
    assert isinstance(async_service["data"]["channels"], list)
    cxc = next(k for k in objects["apikeys"] if k["name"] == "CX Contact API key")
    assert cxc["capacity"] == 600 and cxc["expires"] == dt.datetime(2027, 12, 31, tzinfo=dt.UTC)
    alice = next(u for u in objects["users"] if u["username"] == "alice")
    assert alice["tenant"] == tenant["ccid"] and alice["agent_queues"] == ["sms-support"]
    nexus = next(u for u in objects["users"] if u["username"] == "nexus")
    assert nexus["tenant"] is None and nexus["roles"] == ["admin"]
    records = {(r.tenant_ccid, r.username): r for r in user_records(result.model, env)}
    assert records[(None, "nexus")].roles == frozenset({"admin"})
    assert api_key_pepper("s") != b"s" and len(api_key_pepper("s")) == 32


def _env_names() -> list[str]:
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import dev_env
    finally:
        sys.path.pop(0)
    return dev_env.env_names([ROOT / "config"])


def test_dev_env_generates_once_and_keeps_values(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import dev_env
    finally:
        sys.path.pop(0)
    names = dev_env.env_names([ROOT / "config"])
    assert "NEXUS_ADMIN_PASSWORD" in names and "T1001_CHAT_API_KEY" in names
    out = tmp_path / "var" / "dev.env"
    assert dev_env.write_dev_env(ROOT / "config", out) == names
    first = dev_env.read_env_file(out)
    assert set(first) == set(names) and oct(out.stat().st_mode & 0o777) == "0o600"
    assert all(len(v) >= 32 and "=" not in v for v in first.values())
    out.write_text(out.read_text().replace(f"T1001_SAM_PASSWORD={first['T1001_SAM_PASSWORD']}\n",
                                           ""))
    assert dev_env.write_dev_env(ROOT / "config", out) == ["T1001_SAM_PASSWORD"]
    second = dev_env.read_env_file(out)
    assert {k: v for k, v in second.items() if k != "T1001_SAM_PASSWORD"} == {
        k: v for k, v in first.items() if k != "T1001_SAM_PASSWORD"}
    hint = dev_env.hint(out, "http://localhost:8080", "http://localhost:4004/metrics")
    assert "$(grep '^NEXUS_ADMIN_PASSWORD=' " in hint and first["NEXUS_ADMIN_PASSWORD"] not in hint


def test_curl_parser() -> None:
    call = parse_curl(substitute(
        "curl --user nexus_client: --request POST '$u/auth' \\\n"
        "--data-urlencode 'username=$c\\\\$t' --data-urlencode 'password=a b'",
        {"u": "http://h", "c": "cc", "t": "nexus"}))
    assert call.method == "POST" and call.url == "http://h/auth"
    assert call.auth == ("nexus_client", "")
    assert call.body == b"username=cc%5C%5Cnexus&password=a%20b"
    call = parse_curl("curl -X POST \\\n\nhttp://h/x \\\n-H 'x-ccid: c' \\\n-d '{\n\"a\": 1}'")
    assert call.headers[0] == ("x-ccid", "c") and call.body == b'{\n"a": 1}'
    assert ("Content-Type", "application/x-www-form-urlencoded") in call.headers
