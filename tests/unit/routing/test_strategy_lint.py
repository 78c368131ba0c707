"""check_strategies: findings from rendering every template with the config."""

from __future__ import annotations

from pathlib import Path

from engine.config.diagnostics import Findings
from engine.config.loader import load_paths
from engine.routing.strategy_lint import check_strategies

from .support import CONFIG, TEMPLATES, strict_catalog


def _documents():
    loaded = load_paths([CONFIG])
    assert not loaded.unusable
    return loaded.documents


def _line(documents, kind: str, name: str, needle: str) -> int:
    doc = next(d for d in documents if d.kind == kind and d.name == name)
    lines = Path(doc.file).read_text().splitlines()
    start = doc.mark(()).line - 1
    return next(i + 1 for i in range(start, len(lines)) if needle in lines[i])


def test_sample_config_has_no_strategy_findings(model, catalog):
    findings = Findings()
    check_strategies(model, _documents(), findings, catalog)
    assert list(findings) == []


def test_broken_templates_are_reported_where_they_are_named(model, tmp_path, xsd_dir):
    for template in TEMPLATES.glob("*.scxml.j2"):
        (tmp_path / template.name).write_text(template.read_text())
    # redirect_queue: renders an invalid document (a target that does not exist)
    text = (TEMPLATES / "redirect_queue.scxml.j2").read_text()
    (tmp_path / "redirect_queue.scxml.j2").write_text(
        text.replace('target="redirected"/>', 'target="nowhere"/>', 1))
    # undelivered: does not render at all
    (tmp_path / "undelivered.scxml.j2").write_text("{{ no_such_value }}")
    # a template nobody names, invalid: reported at the Environment's spec.routing
    (tmp_path / "extra.scxml.j2").write_text("<scxml")
    documents = _documents()
    findings = Findings()
    check_strategies(model, documents, findings, strict_catalog(tmp_path, xsd_dir))
    by_code = {}
    for f in findings:
        by_code.setdefault(f.code, []).append(f)
    assert set(by_code) == {"NX801", "NX802"}
    redirect = [f for f in by_code["NX802"] if "'redirect_queue'" in f.message]
    # the asynchold queue's strategy.url and the endpoint SMS_CustomerSupport name it
    assert {Path(f.file).name for f in redirect} == {"queues.yaml", "transactions.yaml"}
    assert all("nowhere" in f.message for f in redirect)
    queue_finding = next(f for f in redirect if f.file.endswith("queues.yaml"))
    assert queue_finding.line == _line(documents, "Queue", "asynchold", "url:")
    (undelivered,) = by_code["NX801"]
    assert undelivered.file.endswith("queues.yaml")
    assert undelivered.line == _line(documents, "Queue", "undelivered", "url:")
    assert "no_such_value" in undelivered.message
    (extra,) = [f for f in by_code["NX802"] if "'extra'" in f.message]
    assert extra.file.endswith("environment.yaml")
    assert extra.line == _line(documents, "Environment", "environment", "routing:")
    assert all(f.severity == "error" for f in findings)


def test_missing_template_of_a_served_queue_url(model, tmp_path, xsd_dir):
    (tmp_path / "redirect_queue.scxml.j2").write_text(
        (TEMPLATES / "redirect_queue.scxml.j2").read_text())
    findings = Findings()
    check_strategies(model, _documents(), findings, strict_catalog(tmp_path, xsd_dir))
    (finding,) = list(findings)
    assert finding.code == "NX803" and "'undelivered'" in finding.message
    assert finding.file.endswith("queues.yaml")


def test_without_documents_findings_still_come(model, tmp_path, xsd_dir):
    (tmp_path / "bad.scxml.j2").write_text("<scxml")
    findings = Findings()
    check_strategies(model, None, findings, strict_catalog(tmp_path, xsd_dir))
    (finding,) = list(findings)
    assert finding.code == "NX802" and finding.file == "<config>" and finding.line == 1
