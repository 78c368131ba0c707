"""Rendering and validation of the strategies (W3C XSD always checked here)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from lxml import etree

from engine.routing.strategies import (
    ParamError,
    StrategyCatalog,
    StrategyError,
    UnknownStrategy,
    load_schema,
    normalize_params,
    validate_rendered,
)

from .support import TEMPLATES, strict_catalog, variant

HOSTILE = '"><script>alert(1)</script><x a=\'&amp;'
SCXML = "{http://www.w3.org/2005/07/scxml}"

VARIANTS = {
    "sample": {},
    "no-fallback": {"fallback_queue": None},
    "park": {"on_give_up": "park", "park_queue": "sms-support"},
    "terminate": {"on_give_up": "terminate", "park_queue": None, "terminate_reason": "x y"},
    "custom-key": {"user_data_key": "Route.To"},
}
PARAM_SETS = [
    {},
    {"fallback": HOSTILE, "reason": HOSTILE, "parkQueue": HOSTILE},
    {"fallback": "[UDATA.home]", "parkQueue": "[UDATA.park]", "userDataKey": "k"},
    {"maxAttempts": "0", "onGiveUp": "terminate", "attemptsKey": "n", "unknown": HOSTILE},
]


def _es_sources(text: str) -> list[str]:
    root = etree.fromstring(text.encode())
    out = []
    for el in root.iter():
        if not isinstance(el.tag, str):
            continue
        if el.tag == SCXML + "script":
            out.append(el.text or "")
        out.extend(v for k, v in el.attrib.items() if k.endswith("expr") or k == "cond")
    return out


@pytest.mark.parametrize("variant_name", sorted(VARIANTS))
@pytest.mark.parametrize("params", PARAM_SETS, ids=["none", "hostile", "udata", "policy"])
@pytest.mark.parametrize("name", ["redirect_queue", "undelivered"])
def test_rendered_strategies_are_valid(catalog, name, variant_name, params):
    model = variant(**VARIANTS[variant_name])
    text = catalog.render(name, model, params)
    assert catalog.schema is not None
    assert catalog.validate_rendered(text) == []
    # the W3C XSD, independently of the catalog
    assert load_schema(catalog.xsd_dir.resolve()).validate(etree.fromstring(text.encode()))
    # plain ES5 only
    for source in _es_sources(text):
        assert "=>" not in source and "`" not in source
        assert not re.search(r"\b(let|const)\s", source), source
    assert "<script>alert" not in text and "<x a=" not in text
    rendered = catalog.render_checked(name, model, params)
    assert rendered.text == text


def test_hostile_params_are_escaped_and_round_trip(catalog, model):
    text = catalog.render("redirect_queue", model, {"fallback": HOSTILE})
    assert HOSTILE not in text and "<script>alert" not in text
    root = etree.fromstring(text.encode())
    data = {d.get("id"): d.get("expr") for d in root.iter(SCXML + "data")}
    assert json.loads(data["fallbackRef"]) == {"value": HOSTILE, "udata": None}


def test_sample_config_values_reach_the_documents(catalog, model):
    redirect = catalog.render("redirect_queue", model)
    assert 'expr="&#34;queue&#34;"' in redirect  # userDataKey
    assert "&#34;SMS_CustomerSupport&#34;:&#34;sms-support&#34;" in redirect
    undelivered = catalog.render("undelivered", model)
    root = etree.fromstring(undelivered.encode())
    data = {d.get("id"): json.loads(d.get("expr")) for d in root.iter(SCXML + "data")
            if d.get("expr") not in (None, "null", "0")}
    assert data["maxAttempts"] == 3 and data["initialDelay"] == 30
    assert data["multiplier"] == 2 and data["maxDelay"] == 3600
    assert data["onGiveUp"] == "park"
    assert data["parkRef"] == {"value": "sms-support", "udata": None}
    assert data["retryUrl"] == "http://localhost:8080/nexus/v3/routing/undelivered/retry"


def test_names_and_exists(catalog):
    assert catalog.names() == ("redirect_queue", "undelivered")
    assert catalog.exists("undelivered")
    assert not catalog.exists("../config/environment")
    assert not catalog.exists("missing")


def test_unknown_template(catalog, model):
    with pytest.raises(UnknownStrategy):
        catalog.render("missing", model)
    with pytest.raises(UnknownStrategy):
        catalog.render_checked("../etc", model)


@pytest.mark.parametrize("params,field", [
    ({"maxAttempts": "many"}, "maxAttempts"),
    ({"maxAttempts": "101"}, "maxAttempts"),
    ({"onGiveUp": "explode"}, "onGiveUp"),
    ({"userDataKey": "a b"}, "userDataKey"),
    ({"fallback": "bad\nqueue"}, "fallback"),
    ({"reason": "x" * 300}, "reason"),
])
def test_bad_params_name_the_field(catalog, model, params, field):
    with pytest.raises(ParamError) as info:
        catalog.render_checked("undelivered", model, params)
    assert info.value.field == field


def test_params_are_whitelisted_and_normalized():
    assert normalize_params({"zzz": "1", "fallback": ["a", "b"], "reason": None}) == (
        ("fallback", "b"), ("reason", ""))
    assert normalize_params(None) == ()


def test_checked_renders_are_cached_per_model_and_params(catalog, model):
    first = catalog.render_checked("redirect_queue", model, {"fallback": "a", "junk": "x"})
    assert catalog.render_checked("redirect_queue", model, {"fallback": "a"}) is first
    assert catalog.render_checked("redirect_queue", model, {"fallback": "b"}) is not first
    other = variant(model)
    again = catalog.render_checked("redirect_queue", other, {"fallback": "a"})
    assert again is not first and again.text == first.text
    assert first.etag == f'"{first.sha256}"' and first.body == first.text.encode()


BAD_DOCS = {
    "xml": ("<scxml", "xml"),
    "target": ('<scxml xmlns="http://www.w3.org/2005/07/scxml" version="1.0" initial="a">'
               '<state id="a"><transition event="e" target="nowhere"/></state></scxml>', "scxml"),
    "es6": ('<scxml xmlns="http://www.w3.org/2005/07/scxml" version="1.0" initial="a" '
            'datamodel="ecmascript"><datamodel><data id="f" expr="() =&gt; 1"/></datamodel>'
            '<final id="a"/></scxml>', "es"),
    "let": ('<scxml xmlns="http://www.w3.org/2005/07/scxml" version="1.0" initial="a" '
            'datamodel="ecmascript"><script>let x = 1;</script><final id="a"/></scxml>', "es"),
    "syntax": ('<scxml xmlns="http://www.w3.org/2005/07/scxml" version="1.0" initial="a" '
               'datamodel="ecmascript"><datamodel><data id="f" expr="1 +"/></datamodel>'
               '<final id="a"/></scxml>', "es"),
    "xsd": ('<scxml xmlns="http://www.w3.org/2005/07/scxml" version="1.0" initial="a">'
            '<state id="a" bogus="1"/></scxml>', "xsd"),
    "genesys": ('<scxml xmlns="http://www.w3.org/2005/07/scxml" '
                'xmlns:ixn="http://www.genesyslab.com/modules/interaction" version="1.0" '
                'initial="a"><state id="a"><onentry><ixn:redirect queue="q"/></onentry>'
                '</state></scxml>', "scxml"),
}


@pytest.mark.parametrize("case", sorted(BAD_DOCS))
def test_validate_rendered_finds_problems(catalog, case):
    text, check = BAD_DOCS[case]
    problems = catalog.validate_rendered(text)
    assert problems and check in {p.check for p in problems}, problems


def test_es5_check_ignores_string_contents(catalog):
    text = ('<scxml xmlns="http://www.w3.org/2005/07/scxml" version="1.0" initial="a" '
            'datamodel="ecmascript"><datamodel><data id="q" expr="\'let it be =&gt; `x`\'"/>'
            '</datamodel><final id="a"/></scxml>')
    assert catalog.validate_rendered(text) == []


def test_genesys_elements_pass_the_xsd_lax(xsd_dir):
    schema = load_schema(xsd_dir.resolve())
    text = ('<scxml xmlns="http://www.w3.org/2005/07/scxml" '
            'xmlns:ixn="http://www.genesyslab.com/modules/interaction" version="1.0" '
            'initial="a"><state id="a"><onentry><ixn:redirect interactionid="i" queue="q" '
            'anything="x"><param name="p" expr="1"/></ixn:redirect></onentry></state></scxml>')
    assert validate_rendered(text, schema=schema) == []


def _broken_dir(tmp_path: Path, body: str, name: str = "broken") -> Path:
    for template in TEMPLATES.glob("*.scxml.j2"):
        (tmp_path / template.name).write_text(template.read_text())
    (tmp_path / f"{name}.scxml.j2").write_text(body)
    return tmp_path


def test_render_checked_never_returns_an_invalid_document(tmp_path, model, xsd_dir):
    directory = _broken_dir(tmp_path, '<scxml xmlns="http://www.w3.org/2005/07/scxml" '
                                      'version="1.0" initial="nowhere"/>')
    broken = strict_catalog(directory, xsd_dir)
    with pytest.raises(StrategyError) as info:
        broken.render_checked("broken", model)
    assert {p.check for p in info.value.problems} >= {"scxml"}
    with pytest.raises(StrategyError):  # cached failure, same answer
        broken.render_checked("broken", model)
    assert broken.render_checked("redirect_queue", model).text


@pytest.mark.parametrize("body,code", [
    ("{{ undefined_value }}", "template"),
    ("{% if %}", "template-syntax"),
])
def test_template_errors_are_strategy_errors(tmp_path, model, xsd_dir, body, code):
    broken = strict_catalog(_broken_dir(tmp_path, body), xsd_dir)
    with pytest.raises(StrategyError) as info:
        broken.render("broken", model)
    assert info.value.problems[0].code == code


def test_missing_xsd(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError):
        StrategyCatalog(TEMPLATES, xsd_dir=tmp_path, require_xsd=True)
    monkeypatch.setenv("NEXUS_SCXML_XSD_DIR", str(tmp_path))
    engine_catalog = StrategyCatalog(TEMPLATES)  # the engine runs without ../shared
    assert engine_catalog.schema is None and engine_catalog.xsd_dir is None


def test_xsd_located_through_env(monkeypatch, xsd_dir):
    monkeypatch.setenv("NEXUS_SCXML_XSD_DIR", str(xsd_dir))
    assert StrategyCatalog(TEMPLATES).schema is not None


def test_template_dir_from_env(monkeypatch, tmp_path):
    (tmp_path / "only.scxml.j2").write_text("x")
    monkeypatch.setenv("NEXUS_SCXML_DIR", str(tmp_path))
    assert StrategyCatalog().names() == ("only",)
