"""Load YAML config files into plain Python data that remembers where everything came from.

Each YAML document becomes a :class:`Document`: its ``data`` is made of plain dicts, lists
and scalars (strings holding secret references become :class:`~engine.config.refs.Ref`),
and ``marks`` maps every path in it (a tuple of keys and list indexes) to the file, line
and column of the key and of the value. Validators report against those marks.

Stricter than PyYAML: duplicate keys, unknown tags, alias cycles, very deep nesting, huge
or binary files are findings, never exceptions or silent surprises.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import yaml
from yaml.nodes import ScalarNode

from engine.config.diagnostics import Findings, Mark, describe
from engine.config.refs import Ref, has_ref

# LibYAML when available (much faster); the pure-Python classes behave the same.
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

MAX_FILE_BYTES = 16 * 1024 * 1024
MAX_DEPTH = 64
MAX_NODES_PER_DOCUMENT = 2_000_000
YAML_SUFFIXES = (".yaml", ".yml")

PathKey = tuple[Any, ...]


class NodeMarks(NamedTuple):
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


_STR = "tag:yaml.org,2002:str"
_MERGE = "tag:yaml.org,2002:merge"
_COLLECTION_TAGS = {
    yaml.MappingStartEvent: (None, "!", "tag:yaml.org,2002:map"),
    yaml.SequenceStartEvent: (None, "!", "tag:yaml.org,2002:seq"),
}
_RESOLVER = yaml.resolver.Resolver()
# First characters for which a plain scalar may be something other than a string.
_RESOLVABLE_FIRST = frozenset(ch for ch in _RESOLVER.yaml_implicit_resolvers if ch)
_CONSTRUCTOR = yaml.SafeLoader("")  # only its scalar constructors are used
_STARTS = (yaml.MappingStartEvent, yaml.SequenceStartEvent)
_ScalarEvent = yaml.ScalarEvent
_ENDS = (yaml.MappingEndEvent, yaml.SequenceEndEvent)


_RESOLVED: dict[str, str] = {}


def _resolve_plain(value: str) -> str:
    """The implicit tag of a plain scalar, memoised: configs repeat 'true', 'false', '30'..."""
    tag = _RESOLVED.get(value)
    if tag is None:
        tag = _RESOLVER.resolve(ScalarNode, value, (True, False))
        if len(_RESOLVED) < 4096:
            _RESOLVED[value] = tag
    return tag


class _Key:
    """Sentinels for the key slot of an open mapping."""

    NONE = object()  # waiting for a key
    MERGE = object()  # '<<': the value is merged into the mapping
    DROP = object()  # duplicate or complex key: the value is read and dropped


class _Frame:
    """A mapping or sequence that is open while events stream in."""

    __slots__ = ("value", "path", "is_map", "key", "key_mark", "key_marks", "merges", "anchor",
                 "anchor_start", "index", "dropped")

    def __init__(self, value: Any, path: PathKey, anchor: str | None, anchor_start: int) -> None:
        self.value = value
        self.path = path
        self.is_map = isinstance(value, dict)
        self.key: Any = _Key.NONE
        self.key_mark: Mark | None = None
        self.key_marks: dict[Any, Mark] = {}
        self.merges: list[PathKey] = []
        self.anchor = anchor
        self.anchor_start = anchor_start
        self.index = 0
        self.dropped = 0

    @property
    def expects_key(self) -> bool:
        return self.is_map and self.key is _Key.NONE


class _Builder:
    """Builds one document's plain data and marks from the parser's event stream.

    Iterative (deep nesting cannot overflow the stack) and single pass: events become
    values directly, without composing a node tree first.
    """

    def __init__(self, file: str, findings: Findings, base_dir: str, keep_list: bool) -> None:
        self.file = file
        self.findings = findings
        self.base_dir = base_dir
        self.marks: dict[PathKey, NodeMarks] = {}
        # Every recorded (path, marks) in order; only needed to copy marks for aliases and
        # merges, so documents without anchors don't pay for it.
        self.mark_list: list[tuple[PathKey, NodeMarks]] = []
        self.keep_list = keep_list
        self.anchors: dict[str, tuple[Any, PathKey, list[tuple[PathKey, NodeMarks]]]] = {}
        self.open_anchors: set[str] = set()
        self.stack: list[_Frame] = []
        self.root: Any = None
        self.nodes = 0
        self.skip = 0  # depth of a subtree being skipped (too deep, or a complex key)
        self.skip_is_key = False
        self.too_big = False

    # -- events --------------------------------------------------------------------------
    def feed(self, event: Any) -> None:
        cls = event.__class__
        # Fast path for the bulk of a config: untagged, unanchored string scalars inside a
        # mapping or sequence. Everything else goes through the general code below.
        if cls is _ScalarEvent and self.stack and not self.skip and not event.anchor:
            value = event.value
            plain, quoted = event.implicit
            if (plain and value and value[0] not in _RESOLVABLE_FIRST) or (
                quoted and not plain and event.tag is None
            ):
                if "${" in value and has_ref(value):
                    value = Ref(value, self.base_dir)
                frame = self.stack[-1]
                start = event.start_mark
                mark = Mark(self.file, start.line + 1, start.column + 1)
                if frame.is_map:
                    key = frame.key
                    if key is _Key.NONE:
                        self._set_key(frame, value, mark)
                        return
                    if key is not _Key.MERGE and key is not _Key.DROP:
                        path = (*frame.path, key)
                        self._record(path, frame.key_mark, mark)
                        self.nodes += 1
                        frame.value[key] = value
                        frame.key = _Key.NONE
                        return
                else:
                    self._record((*frame.path, frame.index), None, mark)
                    self.nodes += 1
                    frame.value.append(value)
                    frame.index += 1
                    return
        if self.skip:
            if cls in _STARTS:
                self.skip += 1
            elif cls in _ENDS:
                self.skip -= 1
                if not self.skip:
                    self._after_skip()
            return
        start = event.start_mark
        mark = Mark(self.file, start.line + 1, start.column + 1)
        frame = self.stack[-1] if self.stack else None
        if frame is not None and frame.expects_key:
            self._key_event(frame, event, cls, mark)
        elif cls is yaml.ScalarEvent:
            value = self._scalar(event, mark)
            path, key_mark = self._slot()
            self._record(path, key_mark, mark)
            self._count(1, mark)
            if event.anchor:
                self.anchors[event.anchor] = (value, path, [(path, self.marks[path])])
            self._attach(value)
        elif cls is yaml.AliasEvent:
            self._alias(event.anchor, mark)
        elif cls in _STARTS:
            self._start(event, cls, mark)
        elif cls in _ENDS:
            self._end()

    def _key_event(self, frame: _Frame, event: Any, cls: type, mark: Mark) -> None:
        if cls is yaml.ScalarEvent:
            key = self._scalar(event, mark)
            if event.anchor:
                self.anchors[event.anchor] = (key, frame.path, [])
            self._set_key(frame, key, mark)
        elif cls is yaml.AliasEvent:
            entry = self.anchors.get(event.anchor)
            key = entry[0] if entry else None
            if isinstance(key, (dict, list)):
                self._complex_key(frame, mark)
                frame.key = _Key.DROP
            else:
                self._set_key(frame, key, mark)
        elif cls in _STARTS:
            self._complex_key(frame, mark)
            self.skip, self.skip_is_key = 1, True
        elif cls in _ENDS:  # an empty mapping ends while waiting for a key
            self._end()

    def _complex_key(self, frame: _Frame, mark: Mark) -> None:
        self.findings.error(
            mark,
            "NX011",
            f"a mapping key in {_dotted(frame.path)} is a list or mapping: "
            "keys must be plain scalars",
        )

    def _after_skip(self) -> None:
        if self.skip_is_key:
            self.stack[-1].key = _Key.DROP
            self.skip_is_key = False
        else:
            self._attach(None)

    def _start(self, event: Any, cls: type, mark: Mark) -> None:
        if len(self.stack) >= MAX_DEPTH:
            self.findings.error(
                mark,
                "NX005",
                f"nesting deeper than {MAX_DEPTH} levels: no config option is nested this deep",
            )
            self.skip, self.skip_is_key = 1, False
            return
        if event.tag not in _COLLECTION_TAGS[cls]:
            self.findings.error(
                mark, "NX010", f"unsupported YAML tag '{event.tag}': config uses plain YAML only"
            )
        path, key_mark = self._slot()
        self._record(path, key_mark, mark)
        self._count(1, mark)
        value: Any = {} if cls is yaml.MappingStartEvent else []
        if event.anchor:
            self.open_anchors.add(event.anchor)
        self.stack.append(_Frame(value, path, event.anchor, len(self.mark_list) - 1))

    def _end(self) -> None:
        frame = self.stack.pop()
        if frame.merges:
            self._apply_merges(frame)
        if frame.anchor is not None:
            self.anchors[frame.anchor] = (
                frame.value, frame.path, self.mark_list[frame.anchor_start:]
            )
            self.open_anchors.discard(frame.anchor)
        self._attach(frame.value)

    def _alias(self, anchor: str, mark: Mark) -> None:
        path, key_mark = self._slot()
        if anchor in self.open_anchors:
            self.findings.error(
                mark, "NX009", f"alias '*{anchor}' at {_dotted(path)} refers to itself (a cycle)"
            )
            self._record(path, key_mark, mark)
            self._attach(None)
            return
        entry = self.anchors.get(anchor)
        if entry is None:
            self.findings.error(
                mark, "NX003", f"alias '*{anchor}' is used before any anchor '&{anchor}' defines it"
            )
            self._record(path, key_mark, mark)
            self._attach(None)
            return
        value, source, items = entry
        if not self._count(len(items), mark):
            self._attach(None)
            return
        self._record(path, key_mark, mark)
        n = len(source)
        for item_path, marks in items[1:]:
            self._record((*path, *item_path[n:]), marks.key, marks.value)
        self._attach(value)

    # -- slots and values ----------------------------------------------------------------
    def _slot(self) -> tuple[PathKey, Mark | None]:
        """The path and key mark of the value that comes next."""
        if not self.stack:
            return (), None
        frame = self.stack[-1]
        if not frame.is_map:
            return (*frame.path, frame.index), None
        if frame.key is _Key.MERGE:
            return (*frame.path, "<<", len(frame.merges)), frame.key_mark
        if frame.key is _Key.DROP:
            return (*frame.path, "<<dropped>>", frame.dropped), frame.key_mark
        return (*frame.path, frame.key), frame.key_mark

    def _attach(self, value: Any) -> None:
        if not self.stack:
            self.root = value
            return
        frame = self.stack[-1]
        if not frame.is_map:
            frame.value.append(value)
            frame.index += 1
            return
        if frame.key is _Key.MERGE:
            frame.merges.append((*frame.path, "<<", len(frame.merges)))
            frame.value.setdefault(_Key.MERGE, []).append(value)
        elif frame.key is _Key.DROP:
            frame.dropped += 1
        else:
            frame.value[frame.key] = value
        frame.key = _Key.NONE

    def _set_key(self, frame: _Frame, key: Any, mark: Mark) -> None:
        if key is _Key.MERGE:
            frame.key, frame.key_mark = _Key.MERGE, mark
            return
        if key.__class__ is not str:
            if isinstance(key, Ref):
                key = str(key)
            try:
                hash(key)
            except TypeError:
                key = str(key)
        first = frame.key_marks.get(key)
        if first is not None:
            self.findings.error(
                mark,
                "NX004",
                f"duplicate key {describe(key)} in {_dotted(frame.path)} "
                f"(first defined at line {first.line}): YAML would silently keep only "
                "the last one; remove or rename one of them",
            )
            frame.key, frame.key_mark = _Key.DROP, mark
            return
        frame.key_marks[key] = mark
        frame.key, frame.key_mark = key, mark

    def _scalar(self, event: Any, mark: Mark) -> Any:
        value = event.value
        tag = event.tag
        if event.implicit[0]:
            if value and value[0] not in _RESOLVABLE_FIRST:
                tag = _STR
            else:
                tag = _resolve_plain(value)
        elif tag is None or tag == "!":
            tag = _STR
        if tag == _STR:
            return Ref(value, self.base_dir) if "${" in value and has_ref(value) else value
        if tag == _MERGE:
            return _Key.MERGE
        constructor = _CONSTRUCTOR.yaml_constructors.get(tag)
        if constructor is None:
            self.findings.error(
                mark,
                "NX010",
                f"unsupported YAML tag '{tag}' on {describe(value)}: "
                "config uses plain YAML only (remove the tag or quote the value)",
            )
            return value
        node = ScalarNode(tag, value, event.start_mark, event.end_mark, event.style)
        try:
            return constructor(_CONSTRUCTOR, node)
        except (yaml.YAMLError, ValueError, TypeError, OverflowError) as exc:
            self.findings.error(mark, "NX003", f"cannot read {describe(value)} as {tag}: {exc}")
            return value

    def _apply_merges(self, frame: _Frame) -> None:
        sources = frame.value.pop(_Key.MERGE)
        for source, source_path in zip(sources, frame.merges, strict=True):
            items = source if isinstance(source, list) else [source]
            paths = (
                [(*source_path, i) for i in range(len(items))]
                if isinstance(source, list)
                else [source_path]
            )
            for item, item_path in zip(items, paths, strict=True):
                if not isinstance(item, dict):
                    self.findings.error(
                        self.marks.get(item_path, NodeMarks(None, Mark(self.file, 1, 1))).value,
                        "NX010",
                        "'<<' merge needs a mapping or a list of mappings",
                    )
                    continue
                n = len(item_path)
                under = [(p, m) for p, m in self.mark_list if p[:n] == item_path and len(p) > n]
                for key, value in item.items():
                    if key in frame.value:
                        continue  # explicit keys and earlier merges win
                    frame.value[key] = value
                    for p, m in under:
                        if p[n] == key:
                            self._record((*frame.path, *p[n:]), m.key, m.value)

    # -- bookkeeping ---------------------------------------------------------------------
    def _record(self, path: PathKey, key_mark: Mark | None, value_mark: Mark) -> None:
        marks = NodeMarks(key_mark, value_mark)
        self.marks[path] = marks
        if self.keep_list:
            self.mark_list.append((path, marks))

    def _count(self, n: int, mark: Mark) -> bool:
        self.nodes += n
        if self.nodes <= MAX_NODES_PER_DOCUMENT:
            return True
        if not self.too_big:
            self.too_big = True
            self.findings.error(
                mark,
                "NX009",
                f"document expands to more than {MAX_NODES_PER_DOCUMENT} nodes "
                "(aliases repeated too often?): config documents must be small",
            )
        return False


def _dotted(path: PathKey) -> str:
    if not path:
        return "the document"
    return f"'{dotted(path)}'"


def dotted(path: Iterable[Any]) -> str:
    """`spec.sections.chat.X.cxcOnly` style rendering of a path (unquoted)."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def load_text(text: str, file: str, base_dir: str = ".") -> LoadResult:
    """Load every document of one YAML text. Syntax errors make the result unusable."""
    result = LoadResult(files=[file])
    findings = result.findings
    if not text.strip():
        findings.warning(Mark(file, 1, 1), "NX008", "file is empty: it defines nothing")
        return result
    builder: _Builder | None = None
    index = 0
    keep_list = "&" in text  # anchors are possible only then
    try:
        for event in yaml.parse(text, Loader=_Loader):
            cls = event.__class__
            if cls is yaml.DocumentStartEvent:
                builder = _Builder(file, findings, base_dir, keep_list)
            elif cls is yaml.DocumentEndEvent:
                if builder is not None and builder.root is not None:
                    result.documents.append(
                        Document(file, index, builder.root, builder.marks, base_dir)
                    )
                index += 1
                builder = None
            elif builder is not None:
                builder.feed(event)
        if not result.documents:
            findings.warning(Mark(file, 1, 1), "NX008", "file holds no YAML document")
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = _mark(file, mark) if mark is not None else Mark(file, 1, 1)
        problem = exc.problem or "invalid YAML"
        if problem.startswith("exceeded maximum nesting depth"):
            # PyYAML >= 6.0.3 stops its scanner at depth 1,000, before our builder sees the
            # events: the same finding as our own depth limit, not a syntax error.
            findings.error(where, "NX005", f"nesting deeper than {MAX_DEPTH} levels: {problem}")
        else:
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


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while building large acyclic data.

    Loading creates hundreds of thousands of small dicts and tuples; with the collector on,
    its repeated full passes over the growing heap cost more than the parsing itself.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def load_paths(paths: Iterable[str | os.PathLike[str]]) -> LoadResult:
    """Load every config file under ``paths``; findings of all files are collected."""
    with gc_paused():
        return _load_paths(paths)


def _load_paths(paths: Iterable[str | os.PathLike[str]]) -> LoadResult:
    result = LoadResult()
    for path, display in iter_config_files(paths, result):
        loaded = load_file(path, display)
        result.documents.extend(loaded.documents)
        result.findings.extend(loaded.findings)
        result.files.append(display)
        result.unusable = result.unusable or loaded.unusable
    return result
