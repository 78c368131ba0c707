"""The corpus of broken configs: each case is the sample config with one mistake, and its
expect.yaml lists the findings (file, line, code) validation must report. Errors must
match exactly; listed warnings must be present."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from engine.config.validate import validate_paths

CORPUS = Path(__file__).parent / "corpus"
CASES = sorted(p.name for p in CORPUS.iterdir() if (p / "expect.yaml").is_file())


def _config_files(case: Path) -> list[Path]:
    return sorted(p for p in case.rglob("*.yaml") if p.name != "expect.yaml")


def test_corpus_is_broad() -> None:
    assert len(CASES) >= 40
    codes = set()
    for case in CASES:
        expect = yaml.safe_load((CORPUS / case / "expect.yaml").read_text())
        codes.update(f["code"] for f in expect["findings"])
    # every class of code has at least one case
    for prefix in ("NX1", "NX2", "NX3", "NX4", "NX5", "NX6", "NX7"):
        assert any(c.startswith(prefix) for c in codes), prefix


@pytest.mark.parametrize("case", CASES)
def test_case(case: str) -> None:
    folder = CORPUS / case
    expect = yaml.safe_load((folder / "expect.yaml").read_text())
    result = validate_paths(_config_files(folder), env={})

    def key(finding: object) -> tuple[str, int, str]:
        return (
            Path(finding.file).relative_to(folder).as_posix(),  # type: ignore[attr-defined]
            finding.line,  # type: ignore[attr-defined]
            finding.code,  # type: ignore[attr-defined]
        )

    got_errors = {key(f) for f in result.errors}
    got_all = {key(f) for f in result.findings}
    wanted = {(f["file"], f["line"], f["code"]) for f in expect["findings"]}
    wanted_errors = {w for w in wanted if not w[2].startswith("NX703")}
    assert got_errors == wanted_errors, "\n".join(str(f) for f in result.errors)
    assert wanted <= got_all
    assert wanted, "a corpus case must expect at least one finding"
    assert result.model is None
    assert not result.unusable
    for finding in result.findings:
        assert finding.line >= 1 and finding.column >= 1
        assert finding.message
