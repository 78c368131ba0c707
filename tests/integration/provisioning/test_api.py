"""Every provisioning and API key route, good and bad input, against the real engine on both
backends; authentication, tenant isolation, config-managed 409s, rate limits, metrics."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from typing import Any

import httpx
import pytest

from tests.integration.provisioning.harness import T1001, Engine

PROV = "/nexus/v3/provisioning"
GUIDE_KEY_FIELDS = ["id", "tenant", "name", "permissions", "enabled", "created", "revoked",
                    "expires", "createdby", "capacity", "frequency"]


def new_ccid() -> str:
    return str(uuid.uuid4())


def tenant_body(ccid: str, **over: Any) -> dict[str, Any]:
    body = {"id": ccid, "name": f"t-{ccid[:8]}", "type": "PureEngage",
            "backendurl": "http://gws.example.com", "username": "nexus",
            "token": "gws-secret-token", "genesystenantid": 1}
    body.update(over)
    return body


def error(resp: httpx.Response, status: int, code: int, field: str | None = None) -> str:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["status"]["code"] == code, body
    if field is not None:
        assert body["status"].get("field") == field, body
    return body["status"]["message"]


def make_tenant(engine: Engine, admin: dict[str, str]) -> tuple[str, str]:
    ccid = new_ccid()
    resp = engine.call("POST", f"{PROV}/tenants", headers=admin, json=tenant_body(ccid))
    assert resp.status_code == 201, resp.text
    return ccid, resp.json()["data"]["xapikey"]


def make_key(engine: Engine, admin: dict[str, str], tenant: str,
             permissions: list[str], **extra: Any) -> dict[str, Any]:
    body = {"tenant": tenant, "name": f"key-{uuid.uuid4().hex[:8]}",
            "permissions": permissions, **extra}
    resp = engine.call("POST", "/nexus/v3/apikeys", headers=admin, json=body)
    assert resp.status_code == 201, resp.text
    return resp.json()


def key_headers(key: dict[str, Any] | str, ccid: str | None = None) -> dict[str, str]:
    headers = {"x-api-key": key if isinstance(key, str) else key["key"]}
    if ccid:
        headers["x-ccid"] = ccid
    return headers


# ---------------------------------------------------------------------- authentication
def test_every_route_but_health_and_token_needs_credentials(engine: Engine) -> None:
    assert engine.call("GET", "/health").json() == {"state": "green"}
    detail = engine.call("GET", "/health/detail")
    assert detail.status_code == 200 and detail.json()["state"] == "green"
    routes = [("GET", f"{PROV}/tenants"), ("POST", f"{PROV}/tenants"),
              ("GET", f"{PROV}/tenants/{T1001}"), ("PUT", f"{PROV}/tenants/{T1001}"),
              ("DELETE", f"{PROV}/tenants/{T1001}"), ("GET", f"{PROV}/services/{T1001}"),
              ("GET", f"{PROV}/services/{T1001}/SMS"), ("POST", f"{PROV}/services/{T1001}/SMS"),
              ("PUT", f"{PROV}/services/{T1001}/SMS"),
              ("DELETE", f"{PROV}/services/{T1001}/SMS"), ("GET", "/nexus/v3/apikeys"),
              ("POST", "/nexus/v3/apikeys"), ("GET", "/nexus/v3/apikeys/x"),
              ("PUT", "/nexus/v3/apikeys/x"), ("DELETE", "/nexus/v3/apikeys/x"),
              ("GET", "/nexus/v3/openapi.json"), ("GET", "/auth/v3/userinfo")]
    for method, path in routes:
        message = error(engine.call(method, path), 401, 3, "x-api-key")
        assert "x-api-key" in message
        error(engine.call(method, path, headers={"x-api-key": "not-a-key-at-all"}), 401, 3)
        error(engine.call(method, path, headers={"Authorization": "Bearer bad.token.x"}), 401, 3)
    # an OAuth client token authenticates but has no provisioning permission
    cc = engine.call("POST", "/auth/v3/oauth/token?grant_type=client_credentials&scope=*"
                     "&client_id=nexus_client&client_secret=", auth=("nexus_client", ""))
    client = {"Authorization": f"Bearer {cc.json()['access_token']}"}
    error(engine.call("GET", f"{PROV}/tenants", headers=client), 403, 5)
    assert engine.call("GET", "/nexus/v3/openapi.json", headers=client).status_code == 200
    # SCXML documents are public (orchestration servers fetch them by URL)
    assert engine.call("GET", "/scxml/redirect_queue.scxml").status_code != 401


def test_openapi_lists_the_provisioning_routes(engine: Engine, admin: dict[str, str]) -> None:
    spec = engine.call("GET", "/nexus/v3/openapi.json", headers=admin).json()
    for path in ("/nexus/v3/provisioning/tenants", "/nexus/v3/provisioning/tenants/{ccid}",
                 "/nexus/v3/provisioning/services/{ccid}",
                 "/nexus/v3/provisioning/services/{ccid}/{name}", "/nexus/v3/apikeys",
                 "/nexus/v3/apikeys/{key_id}"):
        assert path in spec["paths"], path


# ---------------------------------------------------------------------- tenants
def test_tenant_lifecycle(engine: Engine, admin: dict[str, str]) -> None:
    ccid = new_ccid()
    resp = engine.call("POST", f"{PROV}/tenants", headers=admin, json=tenant_body(ccid))
    assert resp.status_code == 201
    body = resp.json()
    assert body["status"] == {"code": 0} and set(body) == {"status", "data", "operationId"}
    xapikey = body["data"]["xapikey"]
    # the tenant key is a consumer chat key of the tenant: it authenticates, cannot provision
    error(engine.call("GET", f"{PROV}/tenants/{ccid}", headers=key_headers(xapikey)), 403, 5)
    got = engine.call("GET", f"{PROV}/tenants/{ccid}", headers=admin).json()["data"]
    assert got["id"] == ccid and got["token"] == "***" and got["genesystenantid"] == 1
    assert got["configManaged"] is False and "gws-secret-token" not in str(got)
    resp = engine.call("PUT", f"{PROV}/tenants/{ccid}", headers=admin,
                       json={"name": f"renamed-{ccid[:8]}", "backendurl": "https://gws2.example"})
    assert resp.status_code == 200 and resp.json()["data"]["name"] == f"renamed-{ccid[:8]}"
    listed: list[str] = []
    cursor = None
    while True:
        query = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = engine.call("GET", f"{PROV}/tenants", headers=admin, params=query).json()["data"]
        listed += [t["id"] for t in page["tenants"]]
        cursor = page["cursor"]
        if not cursor:
            break
    assert ccid in listed and T1001 in listed and len(listed) == len(set(listed))
    resp = engine.call("DELETE", f"{PROV}/tenants/{ccid}", headers=admin)
    assert resp.status_code == 200 and resp.json()["data"]["id"] == ccid
    error(engine.call("GET", f"{PROV}/tenants/{ccid}", headers=admin), 404, 6)
    error(engine.call("DELETE", f"{PROV}/tenants/{ccid}", headers=admin), 404, 6)
    # its API keys went with it
    error(engine.call("GET", "/nexus/v3/openapi.json", headers=key_headers(xapikey)), 401, 3)


@pytest.mark.parametrize(("change", "field"), [
    ({"id": None}, "id"),
    ({"id": "has space"}, "id"),
    ({"name": None}, "name"),
    ({"name": ""}, "name"),
    ({"name": 5}, "name"),
    ({"type": "PureCloud"}, "type"),
    ({"backendurl": "not a url"}, "backendurl"),
    ({"genesystenantid": "one"}, "genesystenantid"),
    ({"genesystenantid": 0}, "genesystenantid"),
    ({"color": "blue"}, "color"),
])
def test_tenant_create_bad_input(engine: Engine, admin: dict[str, str], change: dict[str, Any],
                                 field: str) -> None:
    ccid = new_ccid()
    body = {k: v for k, v in {**tenant_body(ccid), **change}.items() if v is not None}
    error(engine.call("POST", f"{PROV}/tenants", headers=admin, json=body), 400, 1, field)
    error(engine.call("GET", f"{PROV}/tenants/{ccid}", headers=admin), 404, 6)


def test_tenant_bad_bodies_and_conflicts(engine: Engine, admin: dict[str, str]) -> None:
    json_headers = {**admin, "Content-Type": "application/json"}
    message = error(engine.call("POST", f"{PROV}/tenants", headers=json_headers,
                                content=b'{"id": "x",'), 400, 1, "body")
    assert "line 1" in message
    error(engine.call("POST", f"{PROV}/tenants", headers=json_headers, content=b"[1]"),
          400, 1, "body")
    error(engine.call("POST", f"{PROV}/tenants", headers=json_headers, content=b"\xff\xfe"),
          400, 1, "body")
    error(engine.call("POST", f"{PROV}/tenants", headers=json_headers,
                      content=b'{"id": "' + b"x" * 70_000 + b'"}'), 413, 2, "body")
    ccid, _ = make_tenant(engine, admin)
    error(engine.call("POST", f"{PROV}/tenants", headers=admin, json=tenant_body(ccid)), 409, 9)
    error(engine.call("POST", f"{PROV}/tenants", headers=admin,
                      json=tenant_body(new_ccid(), name=f"t-{ccid[:8]}")), 409, 9)
    error(engine.call("PUT", f"{PROV}/tenants/{ccid}", headers=admin, json={"id": new_ccid()}),
          400, 1, "id")
    error(engine.call("PUT", f"{PROV}/tenants/{ccid}", headers=admin, json={"token": "***"}),
          400, 1, "token")
    error(engine.call("PUT", f"{PROV}/tenants/{new_ccid()}", headers=admin, json={"name": "z"}),
          404, 6)
    error(engine.call("GET", f"{PROV}/tenants", headers=admin, params={"limit": 0}),
          400, 1, "limit")
    error(engine.call("GET", f"{PROV}/tenants", headers=admin, params={"limit": "x"}),
          400, 1, "limit")
    error(engine.call("GET", f"{PROV}/tenants", headers=admin, params={"cursor": "%%%"}),
          400, 1, "cursor")
    # the widgets' bracket form encoding works too
    form = engine.call("POST", f"{PROV}/tenants", headers=admin, data={
        "data[id]": (other := new_ccid()), "data[name]": f"form-{other[:8]}",
        "data[genesystenantid]": "2"})
    assert form.status_code == 201, form.text
    got = engine.call("GET", f"{PROV}/tenants/{other}", headers=admin).json()["data"]
    assert got["genesystenantid"] == 2


def test_config_managed_objects_answer_409(engine: Engine, admin: dict[str, str]) -> None:
    tenant = engine.call("GET", f"{PROV}/tenants/{T1001}", headers=admin).json()["data"]
    assert tenant["configManaged"] is True and tenant["name"] == "t1001"
    error(engine.call("PUT", f"{PROV}/tenants/{T1001}", headers=admin, json={"name": "x"}),
          409, 9)
    error(engine.call("DELETE", f"{PROV}/tenants/{T1001}", headers=admin), 409, 9)
    error(engine.call("POST", f"{PROV}/tenants", headers=admin,
                      json=tenant_body(T1001, name="t1001")), 409, 9)
    error(engine.call("PUT", f"{PROV}/services/{T1001}/SMS", headers=admin,
                      json={"url": "N/A", "data": {"provider": "Async"}, "secret": {}}), 409, 9)
    error(engine.call("DELETE", f"{PROV}/services/{T1001}/SMS", headers=admin), 409, 9)
    keys = engine.call("GET", "/nexus/v3/apikeys", headers=admin,
                       params={"tenant": T1001}).json()["apikeys"]
    config_key = next(k for k in keys if k["name"] == "Designer API key")
    assert config_key["createdby"] == "config" and "key" not in config_key
    error(engine.call("PUT", f"/nexus/v3/apikeys/{config_key['id']}", headers=admin,
                      json={"enabled": False}), 409, 9)
    error(engine.call("DELETE", f"/nexus/v3/apikeys/{config_key['id']}", headers=admin), 409, 9)
    # the config's keys work, with their secret from the environment
    chat = key_headers(engine.env["T1001_CHAT_API_KEY"], T1001)
    assert engine.call("GET", "/nexus/v3/openapi.json", headers=chat).status_code == 200
    cxc = engine.call("GET", "/nexus/v3/apikeys", headers=admin, params={"tenant": T1001})
    cxc_key = next(k for k in cxc.json()["apikeys"] if k["name"] == "CX Contact API key")
    assert cxc_key["capacity"] == 600 and cxc_key["expires"].startswith("2027-12-31")


# ---------------------------------------------------------------------- services
def test_service_lifecycle(engine: Engine, admin: dict[str, str]) -> None:
    ccid, _ = make_tenant(engine, admin)
    prov = make_key(engine, admin, ccid, ["nexus:provisioning:*"])
    headers = key_headers(prov, ccid)
    resp = engine.call("POST", f"{PROV}/services/{ccid}/mGageSMS", headers=headers, json={
        "url": "http://directtext.mgage.com", "data": {},
        "secret": {"username": "kuser", "password": "kpass"}})
    assert resp.status_code == 201, resp.text
    data = resp.json()["data"]
    assert data["secret"] == {"username": "***", "password": "***"}
    assert "kpass" not in resp.text and data["configManaged"] is False
    got = engine.call("GET", f"{PROV}/services/{ccid}/mGageSMS", headers=headers)
    assert got.json()["data"]["secret"] == {"username": "***", "password": "***"}
    assert "kpass" not in got.text
    # PUT without secret keeps the stored one (the schema requires it: it is there)
    resp = engine.call("PUT", f"{PROV}/services/{ccid}/mGageSMS", headers=headers,
                       json={"url": "https://directtext2.mgage.com", "data": {}})
    assert resp.status_code == 200, resp.text
    assert resp.json()["data"]["url"] == "https://directtext2.mgage.com"
    assert resp.json()["data"]["secret"] == {"username": "***", "password": "***"}
    error(engine.call("PUT", f"{PROV}/services/{ccid}/mGageSMS", headers=headers,
                      json={"url": "http://x.example", "data": {},
                            "secret": {"username": "***", "password": "***"}}), 400, 1, "secret")
    resp = engine.call("POST", f"{PROV}/services/{ccid}/SMS", headers=headers,
                       json={"url": "N/A", "data": {"provider": "mGage"}, "secret": {}})
    assert resp.status_code == 201
    page = engine.call("GET", f"{PROV}/services/{ccid}", headers=headers,
                       params={"limit": 1}).json()["data"]
    assert [s["name"] for s in page["services"]] == ["SMS"] and page["cursor"]
    rest = engine.call("GET", f"{PROV}/services/{ccid}", headers=headers,
                       params={"cursor": page["cursor"]}).json()["data"]
    assert [s["name"] for s in rest["services"]] == ["mGageSMS"] and rest["cursor"] is None
    error(engine.call("POST", f"{PROV}/services/{ccid}/SMS", headers=headers,
                      json={"url": "N/A", "data": {"provider": "mGage"}, "secret": {}}), 409, 9)
    assert engine.call("DELETE", f"{PROV}/services/{ccid}/SMS", headers=headers).status_code == 200
    error(engine.call("GET", f"{PROV}/services/{ccid}/SMS", headers=headers), 404, 6)
    error(engine.call("DELETE", f"{PROV}/services/{ccid}/SMS", headers=headers), 404, 6)
    error(engine.call("PUT", f"{PROV}/services/{ccid}/SMS", headers=headers,
                      json={"url": "N/A", "data": {}, "secret": {}}), 404, 6)
    error(engine.call("GET", f"{PROV}/services/{new_ccid()}", headers=admin), 404, 6)
    error(engine.call("POST", f"{PROV}/services/{new_ccid()}/SMS", headers=admin,
                      json={"url": "N/A", "data": {}, "secret": {}}), 404, 6)


@pytest.mark.parametrize(("name", "body", "field", "words"), [
    ("SMSS", {"url": "N/A", "data": {}, "secret": {}}, "name", "did you mean 'SMS'"),
    ("SMS", {"url": "N/A", "data": {"provider": "Asynch"}, "secret": {}}, "data.provider",
     "'Async'"),
    ("SMS", {"data": {}, "secret": {}}, "url", "required"),
    ("mGageSMS", {"url": "http://m.example", "data": {}, "secret": {"username": "u"}},
     "secret.password", "required"),
    ("PlatformUCS", {"url": "not a url", "data": {}, "secret": {}}, "url", "URL"),
    ("Async", {"data": {"channels": [{"channelId": "1650", "webhook": {"url": "http://w.x"}}]},
               "secret": {"channels": []}}, "data.channels.0.channelId", "secret.channels"),
    ("Email", {"url": "N/A", "data": {"provider": "SparkPost"}, "secret": {}, "extra": 1},
     "extra", "unknown"),
    ("WebhookTransportTarget-bad name", {"url": "http://a.example"}, "name", "Webhook"),
    ("SparkPostEmail", {"url": "https://api.sparkpost.com", "data": {}, "secret": {"apikey": 5}},
     "secret.apikey", "string"),
])
def test_service_bad_input(engine: Engine, admin: dict[str, str], name: str,
                           body: dict[str, Any], field: str, words: str) -> None:
    ccid = T1001 if name == "SMSS" else make_tenant(engine, admin)[0]
    message = error(engine.call("POST", f"{PROV}/services/{ccid}/{name}", headers=admin,
                                json=body), 400, 1, field)
    assert words in message, message
    if name != "SMSS":
        error(engine.call("GET", f"{PROV}/services/{ccid}/{name}", headers=admin), 404, 6)


def test_service_malformed_bodies(engine: Engine, admin: dict[str, str]) -> None:
    ccid, _ = make_tenant(engine, admin)
    headers = {**admin, "Content-Type": "application/json"}
    for raw in (b'{"url": "N/A" "data": {}}', b'"text"', b"\xc3\x28"):
        error(engine.call("POST", f"{PROV}/services/{ccid}/SMS", headers=headers, content=raw),
              400, 1, "body")
    # `curl -d '{...}'` without a JSON content type still parses
    resp = engine.call("POST", f"{PROV}/services/{ccid}/SMS", headers={
        **admin, "Content-Type": "application/x-www-form-urlencoded"},
        content=b'{"url": "N/A", "data": {"provider": "Async"}, "secret": {}}')
    assert resp.status_code == 201, resp.text


# ---------------------------------------------------------------------- API keys
def test_apikey_lifecycle(engine: Engine, admin: dict[str, str]) -> None:
    ccid, _ = make_tenant(engine, admin)
    created = make_key(engine, admin, ccid, ["nexus:provisioning:*", "nexus:consumer:chat"],
                       capacity=50, frequency=30, expires="2099-01-31")
    assert list(created) == [*GUIDE_KEY_FIELDS, "key"]
    assert created["tenant"] == ccid and created["capacity"] == 50
    assert created["expires"].startswith("2099-01-31T00:00:00") and created["revoked"] is False
    assert created["createdby"] == "user:nexus"
    key_id, headers = created["id"], key_headers(created)
    got = engine.call("GET", f"/nexus/v3/apikeys/{key_id}", headers=headers)
    assert got.status_code == 200 and "key" not in got.json()
    assert list(got.json()) == GUIDE_KEY_FIELDS and created["key"] not in got.text
    listed = engine.call("GET", "/nexus/v3/apikeys", headers=headers).json()
    assert {k["tenant"] for k in listed["apikeys"]} == {ccid} and listed["cursor"] is None
    assert key_id in {k["id"] for k in listed["apikeys"]}
    resp = engine.call("PUT", f"/nexus/v3/apikeys/{key_id}", headers=admin,
                       json={"capacity": 70, "expires": False, "name": "renamed"})
    assert resp.status_code == 200 and resp.json()["capacity"] == 70
    assert resp.json()["expires"] is False
    # round trip: what GET answers can be PUT back
    back = engine.call("PUT", f"/nexus/v3/apikeys/{key_id}", headers=admin,
                       json=engine.call("GET", f"/nexus/v3/apikeys/{key_id}",
                                        headers=admin).json())
    assert back.status_code == 200, back.text
    # disabled: 403; enabled again: works; expired: 401; revoked: 401 for good
    engine.call("PUT", f"/nexus/v3/apikeys/{key_id}", headers=admin, json={"enabled": False})
    assert "disabled" in error(engine.call("GET", f"{PROV}/tenants/{ccid}", headers=headers),
                               403, 5)
    engine.call("PUT", f"/nexus/v3/apikeys/{key_id}", headers=admin, json={"enabled": True})
    assert engine.call("GET", f"{PROV}/tenants/{ccid}", headers=headers).status_code == 200
    engine.call("PUT", f"/nexus/v3/apikeys/{key_id}", headers=admin,
                json={"expires": "2001-01-01T00:00:00Z"})
    assert "expired" in error(engine.call("GET", f"{PROV}/tenants/{ccid}", headers=headers),
                              401, 3)
    engine.call("PUT", f"/nexus/v3/apikeys/{key_id}", headers=admin,
                json={"expires": False, "revoked": True})
    assert "revoked" in error(engine.call("GET", f"{PROV}/tenants/{ccid}", headers=headers),
                              401, 3)
    error(engine.call("PUT", f"/nexus/v3/apikeys/{key_id}", headers=admin,
                      json={"revoked": False}), 400, 1, "revoked")
    resp = engine.call("DELETE", f"/nexus/v3/apikeys/{key_id}", headers=admin)
    assert resp.status_code == 200 and resp.json()["id"] == key_id
    error(engine.call("GET", f"/nexus/v3/apikeys/{key_id}", headers=admin), 404, 6)
    error(engine.call("DELETE", f"/nexus/v3/apikeys/{key_id}", headers=admin), 404, 6)
    error(engine.call("GET", f"{PROV}/tenants/{ccid}", headers=headers), 401, 3)


@pytest.mark.parametrize(("change", "field"), [
    ({"tenant": None}, "tenant"),
    ({"name": None}, "name"),
    ({"name": ""}, "name"),
    ({"permissions": []}, "permissions"),
    ({"permissions": ["nexus:everything"]}, "permissions.0"),
    ({"permissions": "nexus:consumer:chat"}, "permissions"),
    ({"capacity": 0}, "capacity"),
    ({"frequency": "60"}, "frequency"),
    ({"enabled": "yes"}, "enabled"),
    ({"expires": "soon"}, "expires"),
    ({"expires": True}, "expires"),
    ({"key": "my-own-key-value"}, "key"),
    ({"tenant": "bad tenant"}, "tenant"),
])
def test_apikey_create_bad_input(engine: Engine, admin: dict[str, str], change: dict[str, Any],
                                 field: str) -> None:
    body = {"tenant": T1001, "name": f"bad-{uuid.uuid4().hex[:6]}",
            "permissions": ["nexus:consumer:chat"], **change}
    body = {k: v for k, v in body.items() if v is not None}
    error(engine.call("POST", "/nexus/v3/apikeys", headers=admin, json=body), 400, 1, field)


def test_apikey_conflicts_and_missing(engine: Engine, admin: dict[str, str]) -> None:
    error(engine.call("POST", "/nexus/v3/apikeys", headers=admin, json={
        "tenant": new_ccid(), "name": "x", "permissions": ["nexus:consumer:chat"]}), 404, 6)
    error(engine.call("POST", "/nexus/v3/apikeys", headers=admin, json={
        "tenant": T1001, "name": "Designer API key", "permissions": ["nexus:designer:chat"]}),
        409, 9)
    key = make_key(engine, admin, T1001, ["nexus:consumer:chat"])
    error(engine.call("PUT", f"/nexus/v3/apikeys/{key['id']}", headers=admin,
                      json={"tenant": "*"}), 400, 1, "tenant")
    error(engine.call("PUT", f"/nexus/v3/apikeys/{key['id']}", headers=admin,
                      json={"capacity": -1}), 400, 1, "capacity")
    error(engine.call("PUT", "/nexus/v3/apikeys/nope", headers=admin, json={"enabled": True}),
          404, 6)
    error(engine.call("GET", "/nexus/v3/apikeys", headers=admin, params={"limit": 501}),
          400, 1, "limit")


# ---------------------------------------------------------------------- isolation
def test_tenant_isolation(engine: Engine, admin: dict[str, str]) -> None:
    a, _ = make_tenant(engine, admin)
    b, _ = make_tenant(engine, admin)
    key_a = key_headers(make_key(engine, admin, a, ["nexus:provisioning:*"]))
    key_b = make_key(engine, admin, b, ["nexus:provisioning:*"])
    resp = engine.call("POST", f"{PROV}/services/{b}/SMS", headers=key_headers(key_b, b),
                       json={"url": "N/A", "data": {"provider": "Async"}, "secret": {}})
    assert resp.status_code == 201
    svc = {"url": "N/A", "data": {"provider": "Async"}, "secret": {}}
    for method, path, body in [
        ("GET", f"{PROV}/tenants/{b}", None), ("PUT", f"{PROV}/tenants/{b}", {"name": "x"}),
        ("DELETE", f"{PROV}/tenants/{b}", None), ("POST", f"{PROV}/tenants", tenant_body(b)),
        ("GET", f"{PROV}/services/{b}", None), ("GET", f"{PROV}/services/{b}/SMS", None),
        ("POST", f"{PROV}/services/{b}/Email", svc), ("PUT", f"{PROV}/services/{b}/SMS", svc),
        ("DELETE", f"{PROV}/services/{b}/SMS", None),
        ("POST", "/nexus/v3/apikeys", {"tenant": b, "name": "n",
                                       "permissions": ["nexus:consumer:chat"]}),
    ]:
        error(engine.call(method, path, headers=key_a, json=body), 403, 5)
    for method in ("GET", "PUT", "DELETE"):
        error(engine.call(method, f"/nexus/v3/apikeys/{key_b['id']}", headers=key_a,
                          json={"enabled": False} if method == "PUT" else None), 404, 6)
    error(engine.call("GET", "/nexus/v3/apikeys", headers=key_a, params={"tenant": b}), 403, 5)
    listed = engine.call("GET", "/nexus/v3/apikeys", headers=key_a).json()["apikeys"]
    assert {k["tenant"] for k in listed} == {a}
    tenants = engine.call("GET", f"{PROV}/tenants", headers=key_a).json()["data"]["tenants"]
    assert [t["id"] for t in tenants] == [a]
    # x-ccid naming another tenant is refused outright
    error(engine.call("GET", f"{PROV}/tenants/{a}", headers={**key_a, "x-ccid": b}),
          403, 5, "x-ccid")
    # a tenant key may not create cluster keys or '*' keys
    error(engine.call("POST", "/nexus/v3/apikeys", headers=key_a, json={
        "tenant": a, "name": "c", "permissions": ["nexus:cluster:*"]}), 403, 5)
    error(engine.call("POST", "/nexus/v3/apikeys", headers=key_a, json={
        "tenant": "*", "name": "c", "permissions": ["nexus:consumer:chat"]}), 403, 5)
    # B still has everything
    assert engine.call("GET", f"{PROV}/services/{b}/SMS", headers=admin).status_code == 200
    assert engine.call("GET", f"/nexus/v3/apikeys/{key_b['id']}", headers=admin).status_code == 200


def test_user_tokens_are_scoped(engine: Engine, admin: dict[str, str]) -> None:
    other, _ = make_tenant(engine, admin)
    tenant_admin = {"Authorization": engine.token(f"{T1001}\\nexus",
                                                  engine.env["T1001_ADMIN_PASSWORD"])}
    assert engine.call("GET", f"{PROV}/tenants/{T1001}", headers=tenant_admin).status_code == 200
    error(engine.call("GET", f"{PROV}/tenants/{other}", headers=tenant_admin), 403, 5)
    error(engine.call("POST", f"{PROV}/tenants", headers=tenant_admin,
                      json=tenant_body(new_ccid())), 403, 5)
    tenants = engine.call("GET", f"{PROV}/tenants", headers=tenant_admin).json()["data"]
    assert [t["id"] for t in tenants["tenants"]] == [T1001]
    agent = {"Authorization": "Bearer " + engine.token(f"{T1001}\\alice",
                                                       engine.env["T1001_ALICE_PASSWORD"])}
    error(engine.call("GET", f"{PROV}/tenants/{T1001}", headers=agent), 403, 5)
    error(engine.call("GET", "/nexus/v3/apikeys", headers=agent), 403, 5)


# ---------------------------------------------------------------------- rate limits
async def _burst(engine: Engine, headers: dict[str, str], n: int) -> list[httpx.Response]:
    async def one(i: int) -> httpx.Response:
        trace = uuid.uuid4().hex
        # a fresh connection per request, so the kernel spreads them over the workers
        async with httpx.AsyncClient(timeout=15) as client:
            return await client.get(engine.api + "/nexus/v3/openapi.json",
                                    headers={**headers, "X-B3-TraceId": trace})

    return list(await asyncio.gather(*(one(i) for i in range(n))))


def _workers_of(engine: Engine, traces: set[str]) -> set[int]:
    return {r["worker"] for r in engine.log_records() if r.get("trace_id") in traces}


def test_rate_limit_is_exact_across_workers(engine: Engine, admin: dict[str, str]) -> None:
    key = make_key(engine, admin, T1001, ["nexus:consumer:chat"], capacity=5, frequency=60)
    headers = key_headers(key, T1001)
    responses: list[httpx.Response] = []
    workers: set[int] = set()
    # until both workers have served this key (one worker on sqlite): the kernel hands new
    # connections to whichever worker accepts first, so an idle pair may need a few bursts
    for _ in range(40):
        responses += asyncio.run(_burst(engine, headers, 8))
        time.sleep(0.3)  # access lines are written after the answer
        workers = _workers_of(engine, {r.headers["x-b3-traceid"] for r in responses})
        if len(workers) >= engine.backend.workers and len(responses) >= 12:
            break
    assert len(workers) == engine.backend.workers
    allowed = [r for r in responses if r.status_code == 200]
    limited = [r for r in responses if r.status_code == 429]
    assert len(allowed) == 5 and len(limited) == len(responses) - 5
    for resp in limited:
        assert resp.json()["status"]["code"] == 8
        assert re.fullmatch(r"[1-9][0-9]*", resp.headers["retry-after"])
        assert 1 <= int(resp.headers["retry-after"]) <= 60
    # other keys are not affected
    other = key_headers(make_key(engine, admin, T1001, ["nexus:consumer:chat"]), T1001)
    assert engine.call("GET", "/nexus/v3/openapi.json", headers=other).status_code == 200


def test_revocation_reaches_every_worker(engine: Engine, admin: dict[str, str]) -> None:
    key = make_key(engine, admin, T1001, ["nexus:consumer:chat"])
    headers = key_headers(key, T1001)
    warm = asyncio.run(_burst(engine, headers, 8))  # cached in the workers that served it
    assert all(r.status_code == 200 for r in warm)
    engine.call("PUT", f"/nexus/v3/apikeys/{key['id']}", headers=admin, json={"revoked": True})
    deadline = time.monotonic() + 5.0  # well under the cache TTL: pub/sub, not expiry
    while True:
        statuses = {r.status_code for r in asyncio.run(_burst(engine, headers, 8))}
        if statuses == {401} or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert statuses == {401}


# ---------------------------------------------------------------------- metrics
def test_request_total_sums_all_workers(engine: Engine, admin: dict[str, str]) -> None:
    before = engine.sample("nexus_request_total")
    responses = asyncio.run(_burst(engine, admin, 20))
    for _ in range(5):
        engine.call("GET", "/health")
    after = engine.sample("nexus_request_total")
    assert after - before == 25
    assert {r.status_code for r in responses} == {200}
    text = engine.scrape()
    assert "nexus_request_total" in text and "_created" not in text
