"""Helpers shared by the routing tests: the sample config's model and variations of it."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from engine.config.model import Endpoint, Model
from engine.config.validate import validate_paths
from engine.routing.strategies import StrategyCatalog

ROOT = Path(__file__).resolve().parents[3]
CONFIG = ROOT / "config"
TEMPLATES = ROOT / "scxml"
XSD_DIR = ROOT.parent / "shared" / "scxml-xsd"

_SAMPLE: list[Model] = []


def sample_model() -> Model:
    """The model of the sample config/ (validated once per test session)."""
    if not _SAMPLE:
        result = validate_paths([CONFIG], mode="lint")
        assert result.model is not None, [str(f) for f in result.errors]
        _SAMPLE.append(result.model)
    return _SAMPLE[0]


def variant(
    model: Model | None = None, *, endpoints: dict[str, str] | None = None,
    tenant_endpoints: dict[tuple[str, str], str] | None = None, **routing: Any,
) -> Model:
    """A copy of a model with other routing options (``fallback_queue=...``,
    ``user_data_key=...``, ``max_attempts=...``, ``on_give_up=...``, ...) and endpoints."""
    model = model or sample_model()
    env = model.environment
    redirect_fields = {f.name for f in dataclasses.fields(env.routing.redirect_queue)}
    redirect = dataclasses.replace(
        env.routing.redirect_queue, **{k: v for k, v in routing.items() if k in redirect_fields}
    )
    undelivered = dataclasses.replace(
        env.routing.undelivered,
        **{k: v for k, v in routing.items() if k not in redirect_fields},
    )
    new_env = dataclasses.replace(
        env, routing=dataclasses.replace(env.routing, redirect_queue=redirect,
                                         undelivered=undelivered),
    )
    changes: dict[str, Any] = {"environment": new_env}
    if endpoints is not None or tenant_endpoints is not None:
        items = [Endpoint(f"chat.{name}", queue, None, None)
                 for name, queue in (endpoints or {}).items()]
        items += [Endpoint(f"chat.{name}", queue, None, tenant)
                  for (tenant, name), queue in (tenant_endpoints or {}).items()]
        changes["endpoints"] = tuple(items)
    return dataclasses.replace(model, **changes)


def strict_catalog(
    template_dir: Path | str = TEMPLATES, xsd_dir: Path = XSD_DIR,
) -> StrategyCatalog:
    """A catalog that must validate against the W3C XSD (never skipped in tests)."""
    return StrategyCatalog(template_dir, xsd_dir=xsd_dir, require_xsd=True)
