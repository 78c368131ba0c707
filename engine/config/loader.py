"""Load YAML config files into plain Python data that remembers where everything came from.

Each YAML document becomes a :class:`Document`: its ``data`` is made of plain dicts, lists
and scalars (strings holding secret references become :class:`~engine.config.refs.Ref`),
and ``marks`` maps every path in it (a tuple of keys and list indexes) to the file, line
and column of the key and of the value. Validators report against those marks.

Stricter than PyYAML: duplicate keys, unknown tags, alias cycles, very deep nesting, huge
or binary files are findings, never exceptions or silent surprises.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from engine.config.diagnostics import Findings, Mark, describe
from engine.config.refs import Ref, has_ref

# LibYAML when available (much faster); the pure-Python classes behave the same.
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

MAX_FILE_BYTES = 16 * 1024 * 1024
MAX_DEPTH = 64
MAX_NODES_PER_DOCUMENT = 2_000_000
YAML_SUFFIXES = (".yaml", ".yml")

PathKey = tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class NodeMarks:
    key: Mark | None
    value: Mark


@dataclass(slots=True)
class Document:
    """One YAML document of a config file, as plain data plus the marks of every node."""

    file: str
    index: int
    data: Any
    marks: dict[PathKey, NodeMarks]
    source_dir: str = "."

    def mark(self, path: Iterable[Any] = (), *, prefer: str = "key") -> Mark:
        """The mark of the node at ``path``: its key when it has one (``prefer='key'``),
        else its value; falls back to the nearest ancestor that exists."""
        path = tuple(path)
        while True:
            marks = self.marks.get(path)
            if marks is not None:
                if prefer == "key" and marks.key is not None:
                    return marks.key
                return marks.value
            if not path:
                return Mark(self.file, 1, 1)
            path = path[:-1]

    def value_mark(self, path: Iterable[Any] = ()) -> Mark:
        return self.mark(path, prefer="value")

    def get(self, path: Iterable[Any], default: Any = None) -> Any:
        node = self.data
        for part in path:
            try:
                node = node[part]
            except (KeyError, IndexError, TypeError):
                return default
        return node

    @property
    def kind(self) -> str | None:
        kind = self.data.get("kind") if isinstance(self.data, dict) else None
        return kind if isinstance(kind, str) else None

    @property
    def name(self) -> str | None:
        name = self.data.get("name") if isinstance(self.data, dict) else None
        return name if isinstance(name, str) else None


@dataclass
class LoadResult:
    documents: list[Document] = field(default_factory=list)
    findings: Findings = field(default_factory=Findings)
    # True when some input could not be used at all (unreadable, not text, not YAML):
    # the linter exits 2 and the engine refuses to start or reload.
    unusable: bool = False
    files: list[str] = field(default_factory=list)


def _mark(file: str, yaml_mark: Any) -> Mark:
    return Mark(file, yaml_mark.line + 1, yaml_mark.column + 1)


def _char(character: object) -> str:
    code = character if isinstance(character, int) else ord(str(character)[:1] or "?")
    return f"U+{code:04X}"


def _position_mark(file: str, text: str, position: int) -> Mark:
    """Line and column of a character offset (for errors that carry no mark)."""
    position = max(0, min(position, len(text)))
    line = text.count("\n", 0, position) + 1
    column = position - (text.rfind("\n", 0, position) + 1) + 1
    return Mark(file, line, column)


class _Builder:
    """Turns one composed YAML node tree into plain data and marks."""

    def __init__(self, file: str, findings: Findings, base_dir: str) -> None:
        self.file = file
        self.findings = findings
        self.base_dir = base_dir
        self.marks: dict[PathKey, NodeMarks] = {}
        self.nodes = 0
        self.too_many = False
        self._scalars = yaml.SafeLoader("")  # only its scalar constructors are used
        self._active: set[int] = set()  # nodes on the current path, to catch alias cycles

    def build(self, node: Node) -> Any:
        return self._value(node, (), None, 0)

    def _value(self, node: Node, path: PathKey, key_mark: Mark | None, depth: int) -> Any:
        value_mark = _mark(self.file, node.start_mark)
        self.marks[path] = NodeMarks(key_mark, value_mark)
        self.nodes += 1
        if self.nodes > MAX_NODES_PER_DOCUMENT:
            if not self.too_many:
                self.too_many = True
                self.findings.error(
                    value_mark,
                    "NX009",
                    f"document expands to more than {MAX_NODES_PER_DOCUMENT} nodes "
                    "(aliases repeated too often?): config documents must be small",
                )
            return None
        if depth > MAX_DEPTH:
            self.findings.error(
                value_mark,
                "NX005",
                f"nesting deeper than {MAX_DEPTH} levels at {_dotted(path)}: "
                "no config option is nested this deep",
            )
            return None
        if isinstance(node, ScalarNode):
            return self._scalar(node, value_mark)
        if id(node) in self._active:
            self.findings.error(
                value_mark, "NX009", f"alias at {_dotted(path)} refers to itself (a cycle)"
            )
            return None
        self._active.add(id(node))
        try:
            if isinstance(node, SequenceNode):
                self._check_tag(node, "tag:yaml.org,2002:seq", value_mark)
                return [
                    self._value(item, (*path, i), None, depth + 1)
                    for i, item in enumerate(node.value)
                ]
            if isinstance(node, MappingNode):
                self._check_tag(node, "tag:yaml.org,2002:map", value_mark)
                return self._mapping(node, path, depth)
        finally:
            self._active.discard(id(node))
        return None  # pragma: no cover - composer yields only these node kinds

    def _check_tag(self, node: Node, expected: str, mark: Mark) -> None:
        if node.tag != expected:
            self.findings.error(
                mark, "NX010", f"unsupported YAML tag '{node.tag}': config uses plain YAML only"
            )

    def _scalar(self, node: ScalarNode, mark: Mark) -> Any:
        constructor = self._scalars.yaml_constructors.get(node.tag)
        if constructor is None:
            self.findings.error(
                mark,
                "NX010",
                f"unsupported YAML tag '{node.tag}' on {describe(node.value)}: "
                "config uses plain YAML only (remove the tag or quote the value)",
            )
            return node.value
        try:
            value = constructor(self._scalars, node)
        except (yaml.YAMLError, ValueError, TypeError) as exc:
            self.findings.error(
                mark, "NX003", f"cannot read {describe(node.value)} as {node.tag}: {exc}"
            )
            return node.value
        if isinstance(value, str) and has_ref(value):
            return Ref(value, self.base_dir)
        return value

    def _mapping(self, node: MappingNode, path: PathKey, depth: int) -> dict[Any, Any]:
        result: dict[Any, Any] = {}
        explicit: dict[Any, Mark] = {}
        merges: list[Node] = []
        for key_node, value_node in node.value:
            key_mark = _mark(self.file, key_node.start_mark)
            if key_node.tag == "tag:yaml.org,2002:merge":
                merges.append(value_node)
                continue
            if not isinstance(key_node, ScalarNode):
                self.findings.error(
                    key_mark,
                    "NX011",
                    f"mapping key at {_dotted(path)} is a {'list' if isinstance(key_node, SequenceNode) else 'mapping'}: "  # noqa: E501
                    "keys must be plain scalars",
                )
                continue
            key = self._scalar(key_node, key_mark)
            if isinstance(key, Ref):
                key = str(key)
            try:
                hash(key)
            except TypeError:
                key = str(key)
            if key in explicit:
                first = explicit[key]
                self.findings.error(
                    key_mark,
                    "NX004",
                    f"duplicate key {describe(key)} in {_dotted(path)} "
                    f"(first defined at line {first.line}): YAML would silently keep only "
                    "the last one; remove or rename one of them",
                )
                continue
            explicit[key] = key_mark
            result[key] = self._value(value_node, (*path, key), key_mark, depth + 1)
        # `<<: *anchor` merges: explicit keys win, earlier merges win over later ones.
        for merge in merges:
            sources = merge.value if isinstance(merge, SequenceNode) else [merge]
            for source in sources:
                if not isinstance(source, MappingNode):
                    self.findings.error(
                        _mark(self.file, source.start_mark),
                        "NX010",
                        "'<<' merge needs a mapping or a list of mappings",
                    )
                    continue
                for key_node, value_node in source.value:
                    if not isinstance(key_node, ScalarNode):
                        continue
                    key = self._scalar(key_node, _mark(self.file, key_node.start_mark))
                    if key in result:
                        continue
                    key_mark = _mark(self.file, key_node.start_mark)
                    result[key] = self._value(value_node, (*path, key), key_mark, depth + 1)
        return result


def _dotted(path: PathKey) -> str:
    if not path:
        return "the document"
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return f"'{out}'"


def dotted(path: Iterable[Any]) -> str:
    """`spec.sections.chat.X.cxcOnly` style rendering of a path (unquoted)."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _check_depth(text: str, file: str, findings: Findings) -> bool:
    """Reject very deep nesting before composing: the composer recurses per level."""
    depth = 0
    starts = (
        yaml.BlockMappingStartToken,
        yaml.BlockSequenceStartToken,
        yaml.FlowMappingStartToken,
        yaml.FlowSequenceStartToken,
    )
    ends = (yaml.BlockEndToken, yaml.FlowMappingEndToken, yaml.FlowSequenceEndToken)
    for token in yaml.scan(text, Loader=_Loader):
        if isinstance(token, starts):
            depth += 1
            if depth > MAX_DEPTH:
                findings.error(
                    _mark(file, token.start_mark),
                    "NX005",
                    f"nesting deeper than {MAX_DEPTH} levels: no config option is nested "
                    "this deep",
                )
                return False
        elif isinstance(token, ends):
            depth -= 1
    return True


def load_text(text: str, file: str, base_dir: str = ".") -> LoadResult:
    """Load every document of one YAML text. Syntax errors make the result unusable."""
    result = LoadResult(files=[file])
    findings = result.findings
    if not text.strip():
        findings.warning(Mark(file, 1, 1), "NX008", "file is empty: it defines nothing")
        return result
    try:
        if not _check_depth(text, file, findings):
            result.unusable = True
            return result
        for index, node in enumerate(yaml.compose_all(text, Loader=_Loader)):
            if node is None:
                continue
            builder = _Builder(file, findings, base_dir)
            data = builder.build(node)
            result.documents.append(Document(file, index, data, builder.marks, base_dir))
        if not result.documents:
            findings.warning(Mark(file, 1, 1), "NX008", "file holds no YAML document")
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = _mark(file, mark) if mark is not None else Mark(file, 1, 1)
        problem = exc.problem or "invalid YAML"
        context = f" ({exc.context})" if exc.context else ""
        findings.error(where, "NX003", f"YAML syntax error: {problem}{context}")
        result.unusable = True
    except yaml.reader.ReaderError as exc:
        findings.error(
            _position_mark(file, text, exc.position),
            "NX002",
            f"character {_char(exc.character)} is not allowed in YAML: {exc.reason}",
        )
        result.unusable = True
    except yaml.YAMLError as exc:  # LibYAML errors without a mark
        findings.error(Mark(file, 1, 1), "NX003", f"YAML syntax error: {exc}")
        result.unusable = True
    except RecursionError:
        findings.error(Mark(file, 1, 1), "NX005", "nesting too deep to read")
        result.unusable = True
    return result


def load_file(path: Path, display: str | None = None) -> LoadResult:
    """Read one file (size, binary and encoding checks first), then load its documents."""
    file = display or str(path)
    result = LoadResult(files=[file])
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            result.findings.error(
                Mark(file, 1, 1),
                "NX006",
                f"file is {size} bytes, more than the {MAX_FILE_BYTES} bytes a config file "
                "may have: split it",
            )
            result.unusable = True
            return result
        raw = path.read_bytes()
    except OSError as exc:
        result.findings.error(
            Mark(file, 1, 1), "NX001", f"cannot read file: {exc.strerror or exc}"
        )
        result.unusable = True
        return result
    if b"\x00" in raw:
        nul = raw.index(b"\x00")
        where = _position_mark(file, raw[:nul].decode("utf-8", "replace"), nul)
        result.findings.error(where, "NX002", "file is binary (contains NUL bytes), not YAML")
        result.unusable = True
        return result
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        where = _position_mark(file, raw[: exc.start].decode("utf-8", "replace"), exc.start)
        result.findings.error(
            where,
            "NX002",
            f"file is not UTF-8 text (byte 0x{raw[exc.start]:02x}): save it as UTF-8",
        )
        result.unusable = True
        return result
    loaded = load_text(text, file, str(path.parent))
    loaded.files = [file]
    return loaded


def iter_config_files(paths: Iterable[str | os.PathLike[str]], result: LoadResult) -> Iterator[
    tuple[Path, str]
]:
    """Expand files and folders (recursively, `*.yaml`/`*.yml`, sorted) into (path, display)."""
    seen: set[Path] = set()
    for raw in paths:
        given = Path(raw)
        if given.is_dir():
            found = sorted(
                p for p in given.rglob("*") if p.suffix in YAML_SUFFIXES and p.is_file()
            )
            if not found:
                result.findings.warning(
                    Mark(str(given), 1, 1), "NX012", "folder holds no *.yaml or *.yml files"
                )
            for path in found:
                real = path.resolve()
                if real not in seen:
                    seen.add(real)
                    yield path, str(path)
        elif given.exists():
            real = given.resolve()
            if real not in seen:
                seen.add(real)
                yield given, str(given)
        else:
            result.findings.error(Mark(str(given), 1, 1), "NX001", "no such file or folder")
            result.unusable = True


def load_paths(paths: Iterable[str | os.PathLike[str]]) -> LoadResult:
    """Load every config file under ``paths``; findings of all files are collected."""
    result = LoadResult()
    for path, display in iter_config_files(paths, result):
        loaded = load_file(path, display)
        result.documents.extend(loaded.documents)
        result.findings.extend(loaded.findings)
        result.files.append(display)
        result.unusable = result.unusable or loaded.unusable
    return result
