from __future__ import annotations

from pathlib import Path

import pytest

from engine.config.model import Model
from engine.routing.strategies import StrategyCatalog

from .support import sample_model, strict_catalog


@pytest.fixture(scope="session")
def xsd_dir(shared_dir: Path) -> Path:
    path = shared_dir / "scxml-xsd"
    assert (path / "scxml.xsd").is_file(), f"the W3C SCXML XSD must be at {path}"
    return path


@pytest.fixture(scope="session")
def catalog(xsd_dir: Path) -> StrategyCatalog:
    return strict_catalog(xsd_dir=xsd_dir)


@pytest.fixture(scope="session")
def model() -> Model:
    return sample_model()
