"""THE validation of a config tree, used by both `nexus lint` and `nexus serve`.

load (YAML + marks) -> schema (per document) -> semantics (across documents) -> Model.
The model is built only when there is no error: a config that fails validation is never
applied. In ``lint`` mode unset secret references are warnings; in ``serve`` mode errors.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from engine.config import semantics
from engine.config.diagnostics import Finding, Findings, Severity
from engine.config.loader import Document, gc_paused, load_paths
from engine.config.model import Model, build_model
from engine.config.schema import load_schemas, validate_document

Mode = Literal["lint", "serve"]


@dataclass(frozen=True)
class ValidationResult:
    model: Model | None
    findings: list[Finding] = field(default_factory=list)  # sorted
    unusable: bool = False
    files: tuple[str, ...] = ()

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity is Severity.ERROR]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity is Severity.WARNING]

    @property
    def ok(self) -> bool:
        return self.model is not None


def validate_documents(
    documents: list[Document],
    *,
    mode: Mode = "lint",
    env: Mapping[str, str] | None = None,
    findings: Findings | None = None,
    unusable: bool = False,
    files: Iterable[str] = (),
) -> ValidationResult:
    """Validate loaded documents (schema, then semantics) and build the model if clean."""
    if mode not in ("lint", "serve"):
        raise ValueError(f"mode must be 'lint' or 'serve', not {mode!r}")
    findings = findings if findings is not None else Findings()
    schema_set = load_schemas()
    # Validation builds many small, acyclic objects: the cyclic GC only slows it down.
    with gc_paused():
        for doc in documents:
            validate_document(doc, findings, schema_set)
        shaped = {(f.file, f.line) for f in findings.errors}
        later = Findings()
        semantics.check(documents, later, mode=mode, env=os.environ if env is None else env)
        findings.extend(_without_cascades(later, shaped))
        ordered = findings.sorted()
        has_errors = unusable or any(f.severity is Severity.ERROR for f in ordered)
        model = None if has_errors else build_model(documents)
        if model is not None:
            # The SCXML strategies are rendered with the config and checked too (NX8xx):
            # a config whose strategies would be invalid is not applied.
            from engine.routing.strategy_lint import check_strategies

            rendered = Findings()
            check_strategies(model, documents, rendered)
            if rendered.items:
                ordered = sorted([*ordered, *rendered.items], key=lambda f: f.sort_key)
                if any(f.severity is Severity.ERROR for f in rendered.items):
                    model = None
    return ValidationResult(model, ordered, unusable, tuple(files))


def _without_cascades(findings: Findings, shaped: set[tuple[str, int]]) -> list[Finding]:
    """Drop semantic errors on a line that already has a schema error (one finding per
    mistake): a value of the wrong shape is not also reported as a dangling reference or a
    deviation from the guide. Secret findings (NX7xx) are always kept."""
    return [
        f
        for f in findings
        if f.severity is not Severity.ERROR
        or f.code.startswith("NX7")
        or (f.file, f.line) not in shaped
    ]


def validate_paths(
    paths: Iterable[str | os.PathLike[str]],
    *,
    mode: Mode = "lint",
    env: Mapping[str, str] | None = None,
) -> ValidationResult:
    """Load every config file under ``paths`` and validate it."""
    loaded = load_paths(paths)  # pauses the GC itself
    return validate_documents(
        loaded.documents,
        mode=mode,
        env=env,
        findings=loaded.findings,
        unusable=loaded.unusable,
        files=loaded.files,
    )
