"""The YAML loader: marks on every key and value, strictness, and no tracebacks."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.config.diagnostics import Mark
from engine.config.loader import MAX_DEPTH, dotted, load_file, load_paths, load_text
from engine.config.refs import Ref, RefError, resolve

SAMPLE = """\
apiVersion: nexus/v1
kind: Transaction
name: NexusServices
spec:
  type: List
  sections:
    chat.SMS_Main:
      channelId: "16504661149"
      cxcOnly: false
      endpoint: chat.Main
    Async:
      header:custom-header-for-async-1: "12345"
---
apiVersion: nexus/v1
kind: Tenant
name: t1001
spec:
  token: ${env:T1001_TOKEN}
  items: [a, b]
"""


def codes(result):
    return [(f.line, f.code) for f in result.findings.sorted()]


def test_marks_point_at_keys_and_values():
    result = load_text(SAMPLE, "nexus.yaml")
    assert not result.findings.items and not result.unusable
    services, tenant = result.documents
    path = ("spec", "sections", "chat.SMS_Main", "cxcOnly")
    assert services.data["spec"]["sections"]["chat.SMS_Main"]["cxcOnly"] is False
    assert services.mark(path) == Mark("nexus.yaml", 9, 7)
    assert services.value_mark(path) == Mark("nexus.yaml", 9, 16)
    header = ("spec", "sections", "Async", "header:custom-header-for-async-1")
    assert services.mark(header).line == 12
    assert tenant.index == 1
    assert tenant.mark(("spec", "items", 1)) == Mark("nexus.yaml", 19, 14)
    # A path that does not exist falls back to its nearest ancestor.
    assert services.mark(("spec", "sections", "chat.SMS_Main", "missing")).line == 7
    assert tenant.kind == "Tenant" and tenant.name == "t1001"


def test_refs_are_kept_unresolved():
    tenant = load_text(SAMPLE, "n.yaml").documents[1]
    token = tenant.data["spec"]["token"]
    assert isinstance(token, Ref) and token.is_whole
    assert resolve(token, {"T1001_TOKEN": "s3cret"}) == "s3cret"
    with pytest.raises(RefError) as info:
        resolve(token, {})
    assert info.value.unset


def test_embedded_and_file_refs(tmp_path: Path):
    (tmp_path / "secret.txt").write_text("from-file\n")
    (tmp_path / "c.yaml").write_text("a: Bearer ${file:secret.txt}\nb: ${vault:x}\n")
    doc = load_file(tmp_path / "c.yaml").documents[0]
    assert resolve(doc.data["a"], {}) == "Bearer from-file"
    with pytest.raises(RefError, match="unknown reference kind 'vault'"):
        resolve(doc.data["b"], {})


def test_duplicate_keys_are_errors_on_the_second_key():
    result = load_text("spec:\n  a: 1\n  b: 2\n  a: 3\n", "d.yaml")
    assert codes(result) == [(4, "NX004")]
    assert "first defined at line 2" in result.findings.items[0].message
    assert result.documents[0].data == {"spec": {"a": 1, "b": 2}}


def test_merge_keys_and_anchors():
    text = "base: &b {x: 1, y: 2}\nitem:\n  <<: *b\n  y: 3\n"
    doc = load_text(text, "m.yaml").documents[0]
    assert doc.data["item"] == {"x": 1, "y": 3}


@pytest.mark.parametrize(
    ("text", "code", "line", "unusable"),
    [
        ("a: b: c\n", "NX003", 1, True),
        ("a: [1, 2\n", "NX003", 2, True),
        ("a: 1\n\tb: 2\n", "NX003", 2, True),
        ("ok: 1\nx: \x07\n", "NX002", 2, True),
        ("a: &a [*a]\n", "NX009", 1, False),
        ("a: !!python/object:os.system x\n", "NX010", 1, False),
        ("a: !include other.yaml\n", "NX010", 1, False),
        ("? [a, b]\n: 1\n", "NX011", 1, False),
        ("", "NX008", 1, False),
        ("   \n# only a comment\n", "NX008", 1, False),
    ],
)
def test_bad_input_is_a_finding_never_a_traceback(text, code, line, unusable):
    result = load_text(text, "bad.yaml")
    assert (line, code) in codes(result)
    assert result.unusable is unusable


def test_deep_nesting_is_one_finding_and_no_recursion():
    result = load_text("a: " + "[" * 500 + "]" * 500, "deep.yaml")
    assert codes(result) == [(1, "NX005")]
    assert result.findings.items[0].column == 4 + 64 - 1
    # Deeper than PyYAML's own limit (1,000 since 6.0.3): still one NX005, no traceback.
    deeper = load_text("a: " + "[" * 50000 + "]" * 50000, "deep.yaml")
    assert codes(deeper) == [(1, "NX005")]
    assert deeper.unusable
    fine = load_text("a: " + "[" * (MAX_DEPTH - 2) + "]" * (MAX_DEPTH - 2), "ok.yaml")
    assert not fine.findings.items


def test_billion_laughs_is_bounded(monkeypatch):
    import engine.config.loader as loader

    monkeypatch.setattr(loader, "MAX_NODES_PER_DOCUMENT", 50_000)
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        prev = f"*a{i - 1}"
        lines.append(f"a{i}: &a{i} [{', '.join([prev] * 10)}]")
    result = load_text("\n".join(lines) + "\n", "lol.yaml")
    assert "NX009" in [c for _, c in codes(result)]


def test_binary_non_utf8_and_missing_files(tmp_path: Path):
    (tmp_path / "bin.yaml").write_bytes(b"a: 1\n\x00\x01\x02")
    (tmp_path / "latin.yaml").write_bytes(b"a: 1\nb: caf\xe9\n")
    (tmp_path / "bom.yaml").write_bytes(b"\xef\xbb\xbfa: 1\n")
    result = load_paths([tmp_path, tmp_path / "nope.yaml"])
    found = sorted((Path(f.file).name, f.line, f.code) for f in result.findings)
    assert found == [
        ("bin.yaml", 2, "NX002"),
        ("latin.yaml", 2, "NX002"),
        ("nope.yaml", 1, "NX001"),
    ]
    assert result.unusable
    assert [d.data for d in result.documents] == [{"a": 1}]


def test_folders_are_read_recursively_sorted_and_once(tmp_path: Path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "z.yml").write_text("z: 1\n")
    (tmp_path / "a.yaml").write_text("a: 1\n")
    (tmp_path / "notes.txt").write_text("ignored")
    result = load_paths([tmp_path, tmp_path / "a.yaml"])
    assert [d.data for d in result.documents] == [{"a": 1}, {"z": 1}]
    assert len(result.files) == 2


def test_empty_folder_warns(tmp_path: Path):
    result = load_paths([tmp_path])
    assert [f.code for f in result.findings] == ["NX012"] and not result.unusable


def test_huge_file_is_refused(tmp_path: Path, monkeypatch):
    import engine.config.loader as loader

    monkeypatch.setattr(loader, "MAX_FILE_BYTES", 100)
    (tmp_path / "big.yaml").write_text("a: " + "x" * 200 + "\n")
    result = load_paths([tmp_path])
    assert [f.code for f in result.findings] == ["NX006"] and result.unusable


def test_dotted_paths():
    assert dotted(("spec", "sections", "chat.X", "cxcOnly")) == "spec.sections.chat.X.cxcOnly"
    assert dotted(("spec", "apikeys", 0, "name")) == "spec.apikeys[0].name"


def test_secret_files_are_reread_once_their_ttl_passed(tmp_path: Path, monkeypatch):
    from engine.config import refs

    now = [1000.0]
    monkeypatch.setattr(refs, "_clock", lambda: now[0])
    monkeypatch.setattr(refs, "_secret_files", {})
    (tmp_path / "secret.txt").write_text("first\n")
    (tmp_path / "c.yaml").write_text("a: ${file:secret.txt}\n")
    ref = load_file(tmp_path / "c.yaml").documents[0].data["a"]
    assert resolve(ref, {}) == "first"
    (tmp_path / "secret.txt").write_text("rotated\n")
    assert resolve(ref, {}) == "first"  # read at most once per TTL (no file I/O per call)
    now[0] += refs.SECRET_FILE_TTL
    assert resolve(ref, {}) == "rotated"
    (tmp_path / "secret.txt").unlink()
    now[0] += refs.SECRET_FILE_TTL
    with pytest.raises(RefError) as info:  # a file gone is an error again, not a stale value
        resolve(ref, {})
    assert info.value.unset
