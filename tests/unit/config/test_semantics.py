"""Cross-document rules, exercised on the sample config plus small additions."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from engine.config.diagnostics import Findings
from engine.config.loader import load_paths
from engine.config.semantics import available_strategies, check
from engine.config.validate import validate_paths

CONFIG = Path(__file__).resolve().parents[3] / "config"
TENANT2 = """apiVersion: nexus/v1
kind: Tenant
name: t1002
spec:
  ccid: 0f8e9d7c-6b5a-4321-8fed-cba987654321
  type: PureEngage
  backendurl: https://gws.example.com
  username: nexus
  token: ${env:T1002_TOKEN}
  genesystenantid: 2
"""


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    shutil.copytree(CONFIG, tmp_path / "config")
    return tmp_path / "config"


def codes(path: Path, **kwargs: object) -> list[tuple[str, int, str]]:
    result = validate_paths([path], env={}, **kwargs)  # type: ignore[arg-type]
    return [(Path(f.file).name, f.line, f.code) for f in result.errors]


def test_literal_secrets_are_never_printed(tree: Path) -> None:
    tenant = tree / "tenants" / "t1001.yaml"
    tenant.write_text(
        tenant.read_text().replace("${env:T1001_GWS_TOKEN}", "hunter2-very-secret")
    )
    result = validate_paths([tree], env={})
    assert [f.code for f in result.errors] == ["NX701"]
    assert all("hunter2" not in f.message for f in result.findings)


def test_unset_reference_is_a_warning_in_lint_and_an_error_in_serve(tree: Path) -> None:
    lint = validate_paths([tree], env={})
    assert lint.model is not None and lint.warnings
    serve = validate_paths([tree], mode="serve", env={})
    assert serve.model is None and {f.code for f in serve.errors} == {"NX703"}


def test_file_references_resolve_relative_to_the_file(tree: Path) -> None:
    (tree / "token.txt").write_text("abc\n")
    tenant = tree / "tenants" / "t1001.yaml"
    tenant.write_text(tenant.read_text().replace("${env:T1001_GWS_TOKEN}", "${file:../token.txt}"))
    result = validate_paths([tree], env={})
    assert result.model is not None
    assert result.model.tenants[0].token.resolve({}) == "abc"
    assert not any("T1001_GWS_TOKEN" in f.message for f in result.findings)


def test_environment_queue_references_need_every_tenant(tree: Path) -> None:
    (tree / "tenants" / "t1002.yaml").write_text(TENANT2)
    queues = tree / "queues.yaml"
    text = queues.read_text()
    queues.write_text(text.replace("name: sms-support\n", "name: sms-support\ntenant: t1001\n"))
    found = codes(tree)
    # the Environment's endpoints and routing name a queue only t1001 defines
    assert {c for _, _, c in found} == {"NX308"}
    (tree / "tenants" / "t1002.yaml").write_text(
        TENANT2 + "---\napiVersion: nexus/v1\nkind: Queue\nname: sms-support\ntenant: t1002\n"
        "spec:\n  enabled: true\n"
    )
    assert codes(tree) == []


def test_environment_async_channel_belongs_to_the_listing_tenant(tree: Path) -> None:
    (tree / "tenants" / "t1002.yaml").write_text(TENANT2)
    result = validate_paths([tree], env={})
    assert result.model is not None
    channel = result.model.channel("16504661149")
    assert channel is not None and channel.tenant == "t1001"
    # with two tenants an Environment Portico channel has no single owner
    portico = result.model.channel("18885550100")
    assert portico is not None and portico.tenant is None


def test_strategies_come_from_the_scxml_folder(tmp_path: Path) -> None:
    (tmp_path / "vip_routing.scxml.j2").write_text("<scxml/>")
    assert available_strategies(tmp_path) == ("redirect_queue", "undelivered", "vip_routing")


def test_no_environment_is_reported(tmp_path: Path) -> None:
    (tmp_path / "t.yaml").write_text(TENANT2)
    loaded = load_paths([tmp_path])
    findings = Findings()
    check(loaded.documents, findings)
    assert {f.code for f in findings.errors} == {"NX301", "NX602"}


def test_ten_thousand_sections_validate(tmp_path: Path) -> None:
    # Correctness at scale only: speed is measured by bench/lint_bench.py, never asserted here.
    shutil.copytree(CONFIG, tmp_path / "config")
    lines = ["apiVersion: nexus/v1", "kind: Transaction", "name: NexusServices",
             "tenant: t1001", "spec:", "  type: List", "  sections:"]
    for i in range(10_000):
        lines += [
            f"    chat.bulk_{i}:",
            f"      channelId: '1{i:010d}'",
            "      channelType: sms",
            "      endpoint: chat.SMS_Main",
            "      interactionSubtype: SMS",
            "      interactionType: Inbound",
            "      media: chat",
            "      provider: Portico",
        ]
    (tmp_path / "config" / "bulk.yaml").write_text("\n".join(lines) + "\n")
    result = validate_paths([tmp_path / "config"], env={})
    assert result.errors == []
    assert result.model is not None and len(result.model.channels) == 10_006
