"""Static checks of SCXML files for ``nexus scxml validate`` and ``nexus lint``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .parser import Diagnostic, check_document


@dataclass(frozen=True, slots=True)
class FileReport:
    path: str
    diagnostics: tuple[Diagnostic, ...]
    readable: bool = True

    @property
    def ok(self) -> bool:
        return self.readable and not self.diagnostics

    def lines(self) -> list[str]:
        return [d.format(self.path) for d in self.diagnostics]


def validate_text(text: str | bytes, path: str = "<scxml>", base: str | None = None,
                  ) -> FileReport:
    """Check a document: well-formed, unique ids, targets and initial states resolve, required
    attributes present (including those of the Genesys actions)."""
    _doc, diags = check_document(text, path=None, base=base)
    return FileReport(path, tuple(diags))


def validate_file(path: str | Path) -> FileReport:
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        return FileReport(str(path), (Diagnostic(0, 0, "unreadable", reason),), readable=False)
    return validate_text(data, str(path), base=str(p.resolve().parent))
