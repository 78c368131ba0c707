"""Random and mutated config never crashes the linter: every outcome is findings."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.config.validate import validate_paths

ROOT = Path(__file__).resolve().parents[3]
SAMPLES = sorted((ROOT / "config").rglob("*.yaml"))
TEXTS = {p.relative_to(ROOT / "config"): p.read_text() for p in SAMPLES}

PIECES = [":", "-", " ", "\n", "  ", "[", "]", "{", "}", ",", "&a", "*a", "!!str", "<<: *a",
          "'", '"', "#", "?", "|", ">", "${env:X}", "${file:/nonexistent}", "${bad}", "---",
          "\t", "yes", "no", "null", "~", "0x1F", "1e400", "-1", "2026-13-45", "chat.", "cxc.",
          "header:", "kind: Tenant", "apiVersion: nexus/v2", "name:", "spec: []", "é", "\x00"]


def lint_tree(files: dict[Path, str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for rel, text in files.items():
            path = Path(tmp) / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8", errors="surrogatepass")
        result = validate_paths([tmp], mode="lint")
    for finding in result.findings:
        assert finding.line >= 1 and finding.column >= 1
        assert finding.code.startswith("NX")
    if result.model is not None:
        assert not [f for f in result.findings if f.severity == "error"]


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    st.sampled_from(sorted(TEXTS)),
    st.lists(
        st.tuples(st.floats(0, 1), st.integers(0, 12), st.sampled_from(PIECES)),
        min_size=1,
        max_size=5,
    ),
)
def test_mutated_sample_config(target, edits):
    text = TEXTS[target]
    for where, cut, piece in edits:
        pos = int(where * len(text))
        text = text[:pos] + piece + text[pos + cut :]
    lint_tree({**TEXTS, target: text})


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.text(max_size=300))
def test_random_text_file_beside_the_sample(text):
    lint_tree({**TEXTS, Path("random.yaml"): text})


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=20),
        lambda children: st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=12), children, max_size=4),
        max_leaves=30,
    ),
    st.sampled_from(["Environment", "Tenant", "Transaction", "Queue", "User", "Nope"]),
)
def test_random_specs_for_every_kind(spec, kind):
    import yaml

    doc = {"apiVersion": "nexus/v1", "kind": kind, "name": "fuzz", "spec": spec}
    lint_tree({**TEXTS, Path("fuzz.yaml"): yaml.safe_dump(doc)})
