"""`nexus lint` for strategies: render every template with the config and report problems.

Called by :func:`engine.config.validate.validate_paths` once a model exists::

    check_strategies(model, documents, findings)

Codes (documented in docs/scxml.md):

- NX801: a template does not render (Jinja2 syntax or undefined value);
- NX802: a rendered document is invalid (XML, SCXML checks, ES5, W3C XSD);
- NX803: a queue's strategy url points at this Nexus (``$nexusURL/scxml/<name>.scxml`` or
  the Environment's nexus url) but ``scxml/`` has no such template. (Endpoints naming an
  unknown template are NX306 of the config checks.)

Where: at the ``spec.strategy.url`` of each queue whose strategy is that template, at the
``strategy`` option of each NexusEndpoints section naming it, and for templates nobody names
at the Environment's ``spec.routing`` (which their values come from). Each problem is one
finding per place; messages name the template, the check and the document line.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from engine.config.diagnostics import Findings, Mark
from engine.config.loader import Document
from engine.config.model import Model
from engine.routing.strategies import Problem, StrategyCatalog, StrategyError, UnknownStrategy

MAX_PROBLEMS_PER_TEMPLATE = 5


def _places(
    documents: Sequence[Document] | None, nexus_url: str,
) -> tuple[dict[str, list[Mark]], dict[str, list[Mark]], Mark | None]:
    """Template name -> marks of the config naming it, the subset of those that are queue
    urls pointing at this Nexus, and the Environment's routing mark."""
    places: dict[str, list[Mark]] = {}
    served: dict[str, list[Mark]] = {}
    routing: Mark | None = None
    for doc in documents or ():
        kind = doc.kind
        data = doc.data if isinstance(doc.data, dict) else {}
        spec = data.get("spec") if isinstance(data.get("spec"), dict) else {}
        if kind == "Environment":
            routing = doc.mark(("spec", "routing")) if "routing" in spec else doc.mark(("spec",))
        elif kind == "Queue":
            url = doc.get(("spec", "strategy", "url"))
            if isinstance(url, str) and url.endswith(".scxml"):
                name = url.rsplit("/", 1)[-1].removesuffix(".scxml")
                mark = doc.value_mark(("spec", "strategy", "url"))
                places.setdefault(name, []).append(mark)
                if any(url == base + f"/scxml/{name}.scxml" for base in ("$nexusURL", nexus_url)):
                    served.setdefault(name, []).append(mark)
        elif kind == "Transaction" and data.get("name") == "NexusEndpoints":
            sections = spec.get("sections") if isinstance(spec.get("sections"), dict) else {}
            for section, options in sections.items():
                if isinstance(options, dict) and isinstance(options.get("strategy"), str):
                    path = ("spec", "sections", section, "strategy")
                    places.setdefault(options["strategy"], []).append(doc.value_mark(path))
    return places, served, routing


def _describe(problems: Iterable[Problem]) -> str:
    items = list(problems)
    shown = "; ".join(
        f"line {p.line}: {p.check} {p.code}: {p.message}"
        for p in items[:MAX_PROBLEMS_PER_TEMPLATE]
    )
    more = len(items) - MAX_PROBLEMS_PER_TEMPLATE
    return shown + (f" (and {more} more)" if more > 0 else "")


def check_strategies(
    model: Model, documents: Sequence[Document] | None, findings: Findings,
    catalog: StrategyCatalog | None = None,
) -> None:
    """Render every template of ``catalog`` (default: ``scxml/``) with ``model`` and append
    a finding per problem and place to ``findings``. ``documents`` (the loaded config) give
    the marks; without them findings point at line 1 of ``<config>``."""
    catalog = catalog or StrategyCatalog()
    places, served, routing = _places(documents, model.environment.nexus_url)
    fallback_mark = routing or Mark("<config>", 1, 1)
    names = catalog.names()
    for name in names:
        marks = places.get(name) or [fallback_mark]
        try:
            text = catalog.render(name, model)
        except UnknownStrategy:
            continue
        except StrategyError as exc:
            for mark in marks:
                findings.error(mark, "NX801",
                               f"strategy {name!r} (scxml/{name}.scxml.j2) does not render: "
                               f"{_describe(exc.problems) or exc}")
            continue
        problems = catalog.validate_rendered(text)
        if problems:
            for mark in marks:
                findings.error(mark, "NX802",
                               f"strategy {name!r} (scxml/{name}.scxml.j2) renders an invalid "
                               f"SCXML document: {_describe(problems)}")
    for name, marks in sorted(served.items()):
        if name not in names:
            for mark in marks:
                findings.error(mark, "NX803",
                               f"strategy {name!r} has no template scxml/{name}.scxml.j2 in "
                               f"{catalog.template_dir}")
