from __future__ import annotations

import logging

import pytest
from sanic import Request
from sanic.response import json as json_response

from engine.api.body import parse_body, parse_pairs
from engine.api.envelope import ok
from engine.api.errors import BadRequest, ConfigManaged, NoPermission, RateLimited
from engine.app import create_app
from engine.settings import Settings


@pytest.fixture
def app(settings: Settings):
    app = create_app(settings)

    @app.post("/t/echo", name="echo")
    async def echo(request: Request):
        return ok(parse_body(request))

    @app.get("/t/boom", name="boom")
    async def boom(request: Request):
        raise RuntimeError("database password is hunter2")

    @app.get("/t/conflict", name="conflict")
    async def conflict(request: Request):
        raise ConfigManaged(field="name")

    @app.get("/t/limited", name="limited")
    async def limited(request: Request):
        raise RateLimited(7)

    @app.get("/t/forbidden", name="forbidden")
    async def forbidden(request: Request):
        raise NoPermission("needs nexus:provisioning:*")

    @app.get("/t/plain", name="plain")
    async def plain(request: Request):
        return json_response({})

    return app


async def test_success_envelope(app) -> None:
    _, resp = await app.asgi_client.post("/t/echo", json={"data": {"a": 1}})
    assert resp.status == 200
    body = resp.json
    assert body["status"] == {"code": 0} and body["data"] == {"a": 1}
    assert len(body["operationId"]) == 36


async def test_unknown_route_is_404_envelope(app) -> None:
    _, resp = await app.asgi_client.get("/nexus/v3/nothing-here")
    assert resp.status == 404
    assert resp.json["status"]["code"] == 6 and resp.json["status"]["message"]


async def test_wrong_method_is_405_envelope(app) -> None:
    _, resp = await app.asgi_client.delete("/health")
    assert resp.status == 405
    assert resp.json["status"]["code"] == 2
    assert "GET" in resp.headers["allow"]


async def test_body_over_the_limit_is_413(tmp_path) -> None:
    app = create_app(Settings.from_env({}, var_dir=str(tmp_path), body_limit=2048))

    @app.post("/t/echo", name="echo")
    async def echo(request: Request):
        return ok(parse_body(request))

    _, resp = await app.asgi_client.post("/t/echo", content=b"{" + b" " * 5000 + b"}",
                                         headers={"Content-Type": "application/json"})
    assert resp.status == 413
    assert resp.json["status"]["code"] == 2 and resp.json["status"]["field"] == "body"


async def test_malformed_json_names_the_body(app) -> None:
    _, resp = await app.asgi_client.post("/t/echo", content=b'{"data": ',
                                         headers={"Content-Type": "application/json"})
    assert resp.status == 400
    status = resp.json["status"]
    assert status["code"] == 1 and status["field"] == "body" and "JSON" in status["message"]
    _, resp = await app.asgi_client.post("/t/echo", content=b"[1, 2]",
                                         headers={"Content-Type": "application/json"})
    assert resp.status == 400 and "object" in resp.json["status"]["message"]


async def test_malformed_form_names_the_field(app) -> None:
    _, resp = await app.asgi_client.post(
        "/t/echo", content=b"data[firstName=Ann",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert resp.status == 400
    assert resp.json["status"]["field"] == "data[firstName"


async def test_bracket_form_is_parsed(app) -> None:
    body = ("data[firstName]=Ann&data[lastName]=Lee&data[userData][k1]=v1"
            "&data[userData][k2]=v2&data[tags][]=a&data[tags][]=b&data[endpoint]=MainChat")
    _, resp = await app.asgi_client.post(
        "/t/echo", content=body, headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert resp.status == 200
    assert resp.json["data"] == {
        "firstName": "Ann", "lastName": "Lee", "userData": {"k1": "v1", "k2": "v2"},
        "tags": ["a", "b"], "endpoint": "MainChat",
    }


async def test_multipart_fields_use_the_same_rules(app) -> None:
    _, resp = await app.asgi_client.post(
        "/t/echo", data={"data[type]": "Text", "data[text]": "hi"},
        files={"file": ("a.txt", b"x", "text/plain")},
    )
    assert resp.status == 200 and resp.json["data"] == {"type": "Text", "text": "hi"}


async def test_plain_json_object_and_empty_body(app) -> None:
    _, resp = await app.asgi_client.post("/t/echo", json={"url": "http://x", "data": {"a": 1},
                                                          "secret": "s"})
    assert resp.json["data"] == {"url": "http://x", "data": {"a": 1}, "secret": "s"}
    _, resp = await app.asgi_client.post("/t/echo")
    assert resp.json["data"] == {}


def test_parse_pairs_conflicts() -> None:
    with pytest.raises(BadRequest) as err:
        parse_pairs([("a", "1"), ("a[b]", "2")])
    assert err.value.field == "a[b]"
    with pytest.raises(BadRequest) as err:
        parse_pairs([("a[b]", "1"), ("a", "2")])
    assert err.value.field == "a"
    with pytest.raises(BadRequest):
        parse_pairs([("a" + "[x]" * 9, "1")])
    with pytest.raises(BadRequest):
        parse_pairs([("a[]", "1"), ("a[b]", "2")])
    assert parse_pairs([("a", "1"), ("a", "2")]) == {"a": "2"}
    assert parse_pairs([("l[][n]", "1"), ("l[][n]", "2")]) == {"l": [{"n": "1"}, {"n": "2"}]}


async def test_unhandled_exception_is_500_without_details(app, caplog) -> None:
    with caplog.at_level(logging.ERROR, logger="nexus.errors"):
        _, resp = await app.asgi_client.get("/t/boom")
    assert resp.status == 500
    assert resp.json == {"status": {"code": 4, "message": "internal error"}}
    assert "hunter2" not in resp.text
    assert any("RuntimeError" in r.getMessage() for r in caplog.records)


async def test_nexus_errors(app) -> None:
    _, resp = await app.asgi_client.get("/t/conflict")
    assert resp.status == 409
    assert resp.json["status"]["code"] == 9 and resp.json["status"]["field"] == "name"
    _, resp = await app.asgi_client.get("/t/limited")
    assert resp.status == 429 and resp.headers["retry-after"] == "7"
    assert resp.json["status"]["code"] == 8
    _, resp = await app.asgi_client.get("/t/forbidden")
    assert resp.status == 403 and resp.json["status"]["code"] == 5
