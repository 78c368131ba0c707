from __future__ import annotations

from collections.abc import Iterator

import pytest
from sanic import Sanic

from engine.settings import Settings


@pytest.fixture(autouse=True)
def sanic_test_mode() -> Iterator[None]:
    Sanic.test_mode = True
    yield
    Sanic._app_registry.clear()


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings.from_env(
        {}, var_dir=str(tmp_path / "var"), config_path=str(tmp_path / "config")
    )
