"""The schemas themselves: every one instantiates (Cerberus validates it, custom rules
included), bad schemas are refused, and the precompiled fast path agrees with Cerberus."""

from __future__ import annotations

from pathlib import Path

import pytest
from cerberus import SchemaError
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.config.fastcheck import UnsupportedRule, compile_mapping, compile_rules
from engine.config.problems import Problem
from engine.config.schema import (
    KINDS,
    NexusValidator,
    load_schemas,
    problems_from_errors,
    schemas_dir,
)

SCHEMAS = load_schemas()


def _validator(schema: object) -> NexusValidator:
    return NexusValidator(
        schema,
        schema_registry=SCHEMAS.schema_registry,
        rules_set_registry=SCHEMAS.rules_set_registry,
        problems=[],
        schema_set=SCHEMAS,
    )


def test_schemas_dir_is_the_repository_folder() -> None:
    assert schemas_dir() == Path(__file__).resolve().parents[3] / "schemas"
    assert {p.name for p in schemas_dir().glob("*.yaml")} >= {
        "_fragments.yaml",
        "environment.yaml",
        "tenant.yaml",
        "transaction.yaml",
        "queue.yaml",
        "user.yaml",
    }


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_schema_instantiates(kind: str) -> None:
    validator = _validator(SCHEMAS.specs[kind])
    assert validator.schema is not None


@pytest.mark.parametrize("name", sorted(dict(SCHEMAS.schema_registry.all())))
def test_every_registered_schema_instantiates(name: str) -> None:
    _validator(dict(SCHEMAS.schema_registry.all())[name])


@pytest.mark.parametrize("name", sorted(dict(SCHEMAS.rules_set_registry.all())))
def test_every_rules_set_instantiates(name: str) -> None:
    # nested, as the schemas use them (see schema._inline_rules_sets)
    _validator({"field": {"type": "dict", "schema": {"x": name}}})


@pytest.mark.parametrize("name", sorted(SCHEMAS.sections))
def test_every_section_schema_instantiates_and_compiles(name: str) -> None:
    schema = SCHEMAS.sections[name]
    if name == "headers":
        _validator({"section": schema})
    else:
        _validator(schema)
    assert name in SCHEMAS.section_checks


def test_custom_rule_arguments_are_validated() -> None:
    with pytest.raises(SchemaError):
        _validator({"x": {"type": "string", "nexus_format": "no-such-format"}})
    with pytest.raises(SchemaError):
        _validator({"x": {"type": "number", "nexus_gt": "zero"}})
    with pytest.raises(SchemaError):
        _validator({"x": {"type": "dict", "nexus_services": "yes"}})


def test_fast_path_refuses_rules_it_does_not_implement() -> None:
    with pytest.raises(UnsupportedRule):
        compile_rules({"type": "string", "regex": "^a$"}, {}, {})


def test_schemas_dir_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for path in schemas_dir().glob("*.yaml"):
        (tmp_path / path.name).write_text(path.read_text())
    monkeypatch.setenv("NEXUS_SCHEMAS_DIR", str(tmp_path))
    assert schemas_dir() == tmp_path
    assert load_schemas().directory == tmp_path.resolve()


# ---- the fast path and Cerberus agree ------------------------------------------------

VALUES = st.one_of(
    st.sampled_from(
        [
            "sms",
            "email",
            "chat",
            "SMS",
            "Inbound",
            "Outbound",
            "Portico",
            "Async",
            "mGage",
            "chat.Main",
            "Main",
            "chat.bad name",
            "16504661149",
            "company.com",
            "not a domain",
            "",
            "redirect_queue",
            "x.scxml.j2",
            "queue-1",
            "q 1",
            "/nexus/v1",
            "/nexus/v3",
            "${env:X}",
            "header:x",
        ]
    ),
    st.integers(-3, 3),
    st.booleans(),
    st.none(),
    st.just([]),
    st.just({}),
    st.floats(-1, 2, allow_nan=False),
)


def _cerberus_problems(schema: dict[str, object], section: dict[str, object]) -> set[tuple]:
    problems: list[Problem] = []
    validator = NexusValidator(
        schema,
        schema_registry=SCHEMAS.schema_registry,
        rules_set_registry=SCHEMAS.rules_set_registry,
        problems=problems,
        schema_set=SCHEMAS,
    )
    validator.validate(section, normalize=False)
    problems_from_errors(validator._errors, problems, schema, SCHEMAS)
    return {(p.path, p.kind) for p in problems}


def _fast_problems(schema: dict[str, object], section: dict[str, object]) -> set[tuple]:
    problems: list[Problem] = []
    registry = dict(SCHEMAS.schema_registry.all())
    compile_mapping(schema, registry, SCHEMAS.rules)(section, (), problems)
    return {(p.path, p.kind) for p in problems}


@pytest.mark.parametrize("name", ["endpoint", "chat", "cxc", "designer"])
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_fast_path_matches_cerberus(name: str, data: st.DataObject) -> None:
    schema = SCHEMAS.sections[name]
    keys = [*schema, "cxcOnyl", "extra"]
    section = data.draw(st.dictionaries(st.sampled_from(keys), VALUES, max_size=len(keys)))
    assert _fast_problems(schema, section) == _cerberus_problems(schema, section)


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_fast_path_matches_cerberus_for_async_channels(data: st.DataObject) -> None:
    schema = dict(SCHEMAS.schema_registry.all())["async-secret-channel"]
    item = data.draw(
        st.dictionaries(
            st.sampled_from(["channelId", "webhook", "api", "other"]),
            st.one_of(VALUES, st.just({"secret": "${env:S}"}), st.just({"secret": 1})),
        )
    )
    assert _fast_problems(schema, item) == _cerberus_problems(schema, item)
