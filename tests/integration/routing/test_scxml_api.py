"""GET /scxml/<name>.scxml on a tiny Sanic app (sanic-testing's ASGI client)."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import pytest
from lxml import etree
from sanic import Sanic

from engine.api.scxml import create_scxml_blueprint
from engine.routing.strategies import StrategyCatalog
from tests.unit.routing.support import TEMPLATES, sample_model, strict_catalog

Sanic.test_mode = True
_names = itertools.count()


@pytest.fixture
def xsd_dir(shared_dir: Path) -> Path:
    return shared_dir / "scxml-xsd"


def make_app(catalog: StrategyCatalog | None, *, config=True) -> Sanic:
    app = Sanic(f"scxml_test_{next(_names)}")
    app.ctx.config = sample_model() if config else None
    app.blueprint(create_scxml_blueprint(catalog))
    return app


async def get(app: Sanic, path: str, headers: dict[str, str] | None = None):
    _request, response = await app.asgi_client.get(path, headers=headers or {})
    return response


async def test_serves_a_valid_document(xsd_dir):
    catalog = strict_catalog(xsd_dir=xsd_dir)
    app = make_app(catalog)
    for name in ("redirect_queue", "undelivered"):
        response = await get(app, f"/scxml/{name}.scxml")
        assert response.status == 200
        assert response.headers["content-type"] == "application/xml; charset=utf-8"
        assert response.headers["cache-control"] == "public, max-age=60"
        etag = response.headers["etag"]
        assert etag.startswith('"') and len(etag) == 66
        assert catalog.validate_rendered(response.body) == []
        assert etree.fromstring(response.body).get("name") == name


async def test_etag_and_304(xsd_dir):
    app = make_app(strict_catalog(xsd_dir=xsd_dir))
    first = await get(app, "/scxml/redirect_queue.scxml")
    etag = first.headers["etag"]
    again = await get(app, "/scxml/redirect_queue.scxml", {"If-None-Match": etag})
    assert again.status == 304 and again.body == b"" and again.headers["etag"] == etag
    listed = await get(app, "/scxml/redirect_queue.scxml",
                       {"If-None-Match": f'"other", W/{etag}'})
    assert listed.status == 304
    stale = await get(app, "/scxml/redirect_queue.scxml", {"If-None-Match": '"other"'})
    assert stale.status == 200 and stale.body == first.body


async def test_query_params_change_the_document(xsd_dir):
    catalog = strict_catalog(xsd_dir=xsd_dir)
    app = make_app(catalog)
    plain = await get(app, "/scxml/redirect_queue.scxml")
    ignored = await get(app, "/scxml/redirect_queue.scxml?whatever=1")
    assert ignored.headers["etag"] == plain.headers["etag"]
    hostile = '"><script>alert(1)</script>'
    response = await get(app, "/scxml/redirect_queue.scxml?fallback=%22%3E%3Cscript%3Ealert"
                               "(1)%3C%2Fscript%3E")
    assert response.status == 200 and response.headers["etag"] != plain.headers["etag"]
    assert hostile.encode() not in response.body
    assert catalog.validate_rendered(response.body) == []
    root = etree.fromstring(response.body)
    data = {d.get("id"): d.get("expr")
            for d in root.iter("{http://www.w3.org/2005/07/scxml}data")}
    assert json.loads(data["fallbackRef"])["value"] == hostile
    placeholder = await get(app, "/scxml/redirect_queue.scxml?fallback=[UDATA.home]")
    assert b"&#34;udata&#34;:&#34;home&#34;" in placeholder.body


async def test_bad_param_is_400_naming_the_field(xsd_dir):
    app = make_app(strict_catalog(xsd_dir=xsd_dir))
    response = await get(app, "/scxml/undelivered.scxml?maxAttempts=lots")
    assert response.status == 400
    assert response.json["status"]["code"] == 1
    assert response.json["status"]["field"] == "maxAttempts"


@pytest.mark.parametrize("path", ["/scxml/nope.scxml", "/scxml/redirect_queue.xml",
                                  "/scxml/..%2Fconfig.scxml"])
async def test_unknown_is_404(xsd_dir, path):
    response = await get(make_app(strict_catalog(xsd_dir=xsd_dir)), path)
    assert response.status == 404
    assert response.json["status"]["code"] == 6


async def test_503_without_config(xsd_dir):
    response = await get(make_app(strict_catalog(xsd_dir=xsd_dir), config=False),
                         "/scxml/redirect_queue.scxml")
    assert response.status == 503
    assert response.json == {"status": {"code": 4,
                                        "message": "the configuration is not loaded yet"}}


async def test_never_serves_an_invalid_document(tmp_path, xsd_dir, monkeypatch, caplog):
    shutil.copy(TEMPLATES / "undelivered.scxml.j2", tmp_path)
    text = (TEMPLATES / "redirect_queue.scxml.j2").read_text()
    (tmp_path / "redirect_queue.scxml.j2").write_text(
        text.replace('initial="waiting"', 'initial="nowhere"'))
    monkeypatch.setenv("NEXUS_SCXML_DIR", str(tmp_path))
    monkeypatch.setenv("NEXUS_SCXML_XSD_DIR", str(xsd_dir))
    app = make_app(None)  # the default catalog, from $NEXUS_SCXML_DIR
    response = await get(app, "/scxml/redirect_queue.scxml")
    assert response.status == 500
    assert response.json == {"status": {"code": 4, "message": "internal error"}}
    assert b"<scxml" not in response.body
    assert any("nowhere" in r.getMessage() for r in caplog.records)
    assert (await get(app, "/scxml/undelivered.scxml")).status == 200


async def test_rendering_is_cached(xsd_dir, monkeypatch):
    catalog = strict_catalog(xsd_dir=xsd_dir)
    calls = []
    original = catalog._render
    monkeypatch.setattr(catalog, "_render", lambda *a: calls.append(a) or original(*a))
    app = make_app(catalog)
    for _ in range(5):
        assert (await get(app, "/scxml/undelivered.scxml?reason=x&junk=1")).status == 200
    assert len(calls) == 1
    app.ctx.config = sample_model().__class__(**{
        f: getattr(sample_model(), f) for f in (
            "environment", "tenants", "transactions", "queues", "users", "endpoints",
            "channels", "designer", "provider_headers")
    })
    assert (await get(app, "/scxml/undelivered.scxml?reason=x")).status == 200
    assert len(calls) == 2  # a new config renders afresh
