from __future__ import annotations

import re

import pytest
from sanic import Blueprint, Request
from sanic.response import empty

from engine.api.openapi import build_spec, describe
from engine.app import ConfigRejected, create_app, reload_config, start_worker, stop_worker
from engine.settings import Settings


async def test_openapi_lists_every_route(settings: Settings) -> None:
    app = create_app(settings)
    extra = Blueprint("extra")

    @extra.put("/nexus/v3/things/<thing_id:str>", name="put_thing")
    @describe("Replace a thing", body={"application/json": {"schema": {"type": "object"}}},
              responses={200: "replaced", 404: "no such thing"})
    async def put_thing(request: Request, thing_id: str):
        return empty()

    @extra.route("/nexus/v3/undocumented", methods=["GET", "POST"], name="undocumented")
    async def undocumented(request: Request):
        """Docstring summary."""
        return empty()

    app.blueprint(extra)
    _, resp = await app.asgi_client.get("/nexus/v3/openapi.json")
    assert resp.status == 200
    spec = resp.json
    assert spec["openapi"].startswith("3.")
    for route in app.router.routes:
        path = "/" + route.path.lstrip("/")
        path = re.sub(r"<(\w+)(?::[^>]*)?>", r"{\1}", path)
        assert path in spec["paths"], path
        for method in route.methods - {"HEAD", "OPTIONS"}:
            assert method.lower() in spec["paths"][path], (path, method)
    thing = spec["paths"]["/nexus/v3/things/{thing_id}"]["put"]
    assert thing["summary"] == "Replace a thing"
    assert thing["parameters"][0]["name"] == "thing_id"
    assert "requestBody" in thing and set(thing["responses"]) >= {"200", "404", "default"}
    assert spec["paths"]["/nexus/v3/undocumented"]["post"]["summary"] == "Docstring summary."
    token = spec["paths"]["/auth/v3/oauth/token"]["post"]
    assert token["security"] == [{"basic": []}]
    assert build_spec(app) == spec


async def test_invalid_config_at_start_stops_the_worker(settings: Settings) -> None:
    app = create_app(settings, config_loader=lambda path: (None, ["x.yaml:1:1: error: bad"]))
    with pytest.raises(ConfigRejected):
        await start_worker(app)


async def test_config_applied_at_start_and_reload_keeps_the_good_one(settings) -> None:
    answers = [({"v": 1}, []), ({"v": 2}, []), (None, ["error: broken"])]
    applied: list[dict] = []

    async def applier(app, model) -> None:
        applied.append(model)

    app = create_app(settings, config_loader=lambda path: answers.pop(0),
                     config_appliers=[applier])
    await start_worker(app)
    try:
        assert app.ctx.config == {"v": 1}
        assert await reload_config(app) is True and app.ctx.config == {"v": 2}
        assert await reload_config(app) is False and app.ctx.config == {"v": 2}
        assert app.ctx.config_findings == ["error: broken"]
        assert applied == [{"v": 1}, {"v": 2}]
    finally:
        await stop_worker(app)


async def test_a_failing_applier_keeps_the_old_config(settings: Settings) -> None:
    def applier(app, model) -> None:
        if model["v"] == 2:
            raise RuntimeError("store refused")

    answers = [({"v": 1}, []), ({"v": 2}, [])]
    app = create_app(settings, config_loader=lambda path: answers.pop(0),
                     config_appliers=[applier])
    await start_worker(app)
    try:
        assert await reload_config(app) is False and app.ctx.config == {"v": 1}
    finally:
        await stop_worker(app)


def test_app_names_are_unique_in_test_mode(settings: Settings) -> None:
    assert create_app(settings).name != create_app(settings).name
    assert create_app(settings, name="custom").name == "custom"
