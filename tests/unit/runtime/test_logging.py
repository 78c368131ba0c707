from __future__ import annotations

import json
import logging
from urllib.parse import urlencode

import pytest

from engine.app import create_app
from engine.auth.embedded import InMemoryUserDirectory
from engine.observability.logging import (
    configure_logging,
    mask,
    mask_query,
    register_secret,
    trace_id_from,
)
from engine.settings import Settings

PASSWORD = "Sup3r-Secret-Pw!"
API_KEY = "9b7682b7-cbce-422f-9bbb-ecda85e61695"


def _lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_trace_id_validation() -> None:
    assert trace_id_from("ABCDEF0123456789") == "abcdef0123456789"
    assert trace_id_from("a" * 32) == "a" * 32
    for bad in (None, "", "xyz", "a" * 15, "a" * 33, "g" * 16, "a" * 16 + "\n"):
        generated = trace_id_from(bad)
        assert len(generated) == 32 and int(generated, 16) >= 0


async def test_trace_id_echo_and_generation(settings: Settings) -> None:
    app = create_app(settings)
    _, resp = await app.asgi_client.get("/health", headers={"X-B3-TraceId": "0123456789abcdef"})
    assert resp.headers["x-b3-traceid"] == "0123456789abcdef"
    _, resp = await app.asgi_client.get("/health", headers={"X-B3-TraceId": "not-hex!"})
    assert len(resp.headers["x-b3-traceid"]) == 32
    assert resp.headers["x-b3-traceid"] != "not-hex!"
    _, resp = await app.asgi_client.get("/no/such/route")
    assert resp.status == 404 and len(resp.headers["x-b3-traceid"]) == 32


async def test_request_trace_id_is_on_request_ctx(settings: Settings) -> None:
    app = create_app(settings)
    seen = {}

    @app.get("/t/trace", name="trace")
    async def trace(request):
        from sanic.response import empty

        seen["trace"] = request.ctx.trace_id
        return empty()

    _, resp = await app.asgi_client.get("/t/trace", headers={"X-B3-TraceId": "f" * 32})
    assert seen["trace"] == "f" * 32 == resp.headers["x-b3-traceid"]


async def test_access_lines_are_json_without_secrets(settings: Settings, capsys) -> None:
    users = InMemoryUserDirectory.from_mapping({"admin": {"password": PASSWORD,
                                                          "roles": ["admin"]}})
    app = create_app(settings, user_directory=users)
    body = urlencode({"grant_type": "password", "username": "admin", "password": PASSWORD})
    capsys.readouterr()
    _, resp = await app.asgi_client.post(
        f"/auth/v3/oauth/token?client_id=nexus_client&client_secret=&password={PASSWORD}",
        content=body,
        headers={"Content-Type": "application/x-www-form-urlencoded", "x-api-key": API_KEY,
                 "X-B3-TraceId": "1234567890abcdef"},
    )
    assert resp.status == 200
    token = resp.json["access_token"]
    logging.getLogger("nexus.test").warning(
        "headers %s", {"x-api-key": API_KEY, "Authorization": f"Bearer {token}"}
    )
    logging.getLogger("nexus.test").info(
        "login", extra={"password": PASSWORD, "x_api_key": API_KEY}
    )
    out = capsys.readouterr().out
    assert PASSWORD not in out and token not in out and API_KEY not in out
    lines = _lines(out)
    access = [line for line in lines if line["logger"] == "nexus.access"]
    assert len(access) == 1
    line = access[0]
    assert line["trace_id"] == "1234567890abcdef"
    assert line["method"] == "POST" and line["route"] == "auth.oauth_token"
    assert line["status"] == 200 and line["path"].startswith("/auth/v3/oauth/token?")
    assert "password=%2A%2A%2A" in line["path"] or "password=***" in line["path"]
    assert isinstance(line["duration_ms"], float) and line["worker"] > 0
    assert {"ts", "level", "msg", "remote"} <= set(line)
    extra = [x for x in lines if x["msg"] == "login"][0]
    assert extra["password"] == "***"


def test_masking_rules() -> None:
    register_secret("registered-secret-value")
    text = mask(
        'Authorization: Basic bmV4dXNfY2xpZW50Og== x-api-key=abc123def password="pw1" '
        "client_secret=cs9 {'token': 'tk1'} uses registered-secret-value "
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJlLXN0dWZm"
    )
    for secret in ("bmV4dXNfY2xpZW50Og==", "abc123def", "pw1", "cs9", "tk1",
                   "registered-secret-value", "eyJhbGciOiJIUzI1NiJ9"):
        assert secret not in text
    assert "Authorization: Basic ***" in text
    assert mask_query("a=1&password=x&api_key=y") == "a=1&password=***&api_key=***"


def test_text_format(capsys) -> None:
    configure_logging("text")
    try:
        logging.getLogger("nexus.test").info("hello", extra={"trace_id": "ab" * 8, "k": 1})
        out = capsys.readouterr().out
        assert "INFO" in out and "nexus.test [abababababababab]: hello (k=1)" in out
        assert not out.lstrip().startswith("{")
    finally:
        configure_logging("json")


def test_exception_tracebacks_are_masked(capsys) -> None:
    configure_logging("json")
    try:
        raise ValueError(f"password={PASSWORD}")
    except ValueError:
        logging.getLogger("nexus.test").exception("failed")
    out = capsys.readouterr().out
    assert PASSWORD not in out
    (line,) = [x for x in _lines(out) if x["msg"] == "failed"]
    assert "ValueError" in line["exc"]


@pytest.fixture(autouse=True)
def _json_logging():
    configure_logging("json")
    yield


def test_fast_access_line_is_exactly_what_json_dumps_gives(capsys, monkeypatch) -> None:
    import json as json_module
    import logging as logging_module
    import time as time_module

    from engine.observability import logging as nexus_log

    handler = nexus_log.configure_logging("json")
    # pytest's own capture handlers would send the line through logging: keep only ours.
    monkeypatch.setattr(logging_module.root, "handlers", [handler])
    assert nexus_log._direct_handler() is handler
    nexus_log.access_line(
        trace_id="ab" * 16, method="GET", route=None, path='/x/"é\\u2028',
        query="apikey=s3cret&a=1", status=404, started=time_module.perf_counter(),
        remote="127.0.0.1",
    )
    line = capsys.readouterr().out.strip().splitlines()[-1]
    parsed = json_module.loads(line)
    assert parsed["route"] is None and parsed["status"] == 404
    assert "s3cret" not in line and parsed["path"].startswith('/x/"é')
    assert line == json_module.dumps(parsed, ensure_ascii=False)
