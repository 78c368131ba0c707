"""Shared fixtures: where the real PostgreSQL and Redis are, and the repository paths.

Tests that need the real servers use the ``pg_url`` / ``redis_url`` fixtures. With
``CI=true`` an unset or unreachable server fails the test instead of skipping it.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def _reachable(url: str) -> bool:
    parsed = urlparse(url)
    host = parsed.hostname or "127.0.0.1"
    port = parsed.port or {"postgresql": 5432, "redis": 6379}.get(parsed.scheme, 0)
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def _service_url(var: str) -> str:
    url = os.environ.get(var, "")
    if not url:
        if IN_CI:
            pytest.fail(f"{var} is not set; CI must run against the real server")
        pytest.skip(f"{var} is not set (run through .ci/run to test the real server)")
    if not _reachable(url):
        if IN_CI:
            pytest.fail(f"{var}={url} is unreachable")
        pytest.skip(f"{var}={url} is unreachable")
    return url


@pytest.fixture(scope="session")
def pg_url() -> str:
    return _service_url("NEXUS_TEST_DB_URL")


@pytest.fixture(scope="session")
def redis_url() -> str:
    return _service_url("NEXUS_TEST_REDIS_URL")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    return SHARED


@pytest.fixture(autouse=True)
def _restore_logging():
    """Tests that configure Nexus logging (JSON lines on stdout) must not leak it into
    later tests that read stdout: restore the root and nexus loggers after each test."""
    import logging

    loggers = [logging.getLogger(), logging.getLogger("nexus")]
    saved = [(lg, list(lg.handlers), lg.level, lg.propagate) for lg in loggers]
    yield
    for lg, handlers, level, propagate in saved:
        lg.handlers[:] = handlers
        lg.setLevel(level)
        lg.propagate = propagate
