"""Findings: what `nexus lint` and `nexus serve` report about a config tree.

Every finding carries the file, line and column of the offending key or value (1-based),
a severity, a stable code and a message that names the path, the value found, what it
must be and a hint.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import NamedTuple


class Severity(StrEnum):
    ERROR = "error"
    WARNING = "warning"


class Mark(NamedTuple):
    """A position in a config file (1-based line and column). A tuple: cheap to create."""

    file: str
    line: int
    column: int


@dataclass(frozen=True, slots=True)
class Finding:
    file: str
    line: int
    column: int
    severity: Severity
    code: str
    message: str

    @classmethod
    def at(cls, mark: Mark, severity: Severity, code: str, message: str) -> Finding:
        return cls(mark.file, mark.line, mark.column, severity, code, message)

    @property
    def sort_key(self) -> tuple[str, int, int, str, str]:
        return (self.file, self.line, self.column, self.code, self.message)

    def to_dict(self) -> dict[str, object]:
        return {
            "file": self.file,
            "line": self.line,
            "column": self.column,
            "severity": str(self.severity),
            "code": self.code,
            "message": self.message,
        }

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}: {self.severity}: {self.code} {self.message}"


@dataclass
class Findings:
    """A collector: validators append here, the CLI sorts and prints."""

    items: list[Finding] = field(default_factory=list)

    def error(self, mark: Mark, code: str, message: str) -> None:
        self.items.append(Finding.at(mark, Severity.ERROR, code, message))

    def warning(self, mark: Mark, code: str, message: str) -> None:
        self.items.append(Finding.at(mark, Severity.WARNING, code, message))

    def extend(self, findings: list[Finding] | Findings) -> None:
        self.items.extend(findings.items if isinstance(findings, Findings) else findings)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.items if f.severity is Severity.ERROR]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.items if f.severity is Severity.WARNING]

    def sorted(self) -> list[Finding]:
        # A finding reported twice (e.g. by two passes over the same node) is shown once.
        return sorted(set(self.items), key=lambda f: f.sort_key)

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self):
        return iter(self.items)


def describe(value: object, limit: int = 60) -> str:
    """A short, quoted rendering of a value for messages (never the whole of a huge value)."""
    if isinstance(value, str):
        text = value
    elif isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    elif isinstance(value, dict):
        return "a mapping"
    elif isinstance(value, list):
        return "a list"
    else:
        text = str(value)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"'{text}'"
