"""Random and mutated input never makes the loader raise."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.config.loader import load_text

from .test_loader import SAMPLE

YAML_PIECES = [":", "-", " ", "\n", "  ", "[", "]", "{", "}", ",", "&a", "*a", "!!str", "!x",
               "<<", "'", '"', "#", "?", "|", ">", "${env:X}", "---", "...", "\t", "%YAML 1.1",
               "key", "1", "yes", "null", "~", "\x00", "\ufeff", "é"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=400))
def test_random_text(text):
    result = load_text(text, "fuzz.yaml")
    for finding in result.findings:
        assert finding.line >= 1 and finding.column >= 1


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(YAML_PIECES), max_size=80))
def test_yaml_shaped_noise(pieces):
    load_text("".join(pieces), "fuzz.yaml")


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, len(SAMPLE)), st.integers(0, 5), st.sampled_from(YAML_PIECES)),
        min_size=1,
        max_size=6,
    )
)
def test_mutated_sample(edits):
    text = SAMPLE
    for pos, cut, piece in edits:
        text = text[:pos] + piece + text[pos + cut :]
    result = load_text(text, "fuzz.yaml")
    for finding in result.findings:
        assert finding.line >= 1 and finding.column >= 1
