"""The datamodel interface, the null datamodel, and the factory.

The interpreter only talks to a datamodel through :class:`DataModel`. Values that cross into
Python (event data, params, donedata, Genesys attributes) are plain JSON-compatible values.
Any failure is reported as :class:`DataModelError`, which the interpreter turns into
``error.execution``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

from .events import Event


class DataModelError(Exception):
    """An expression, assignment or script failed; becomes ``error.execution``."""


class DataModel(Protocol):
    name: str

    def bind_system(
        self, sessionid: str, name: str | None, ioprocessors: Mapping[str, Any],
        in_state: Callable[[str], bool],
    ) -> None:
        """Create the read-only system variables and the ``In()`` predicate."""
        ...

    def state_entered(self, state_id: str) -> None:
        """Configuration change, for datamodels that evaluate ``In()`` themselves."""
        ...

    def state_exited(self, state_id: str) -> None: ...

    def declare(self, id: str) -> None:
        """Create the variable ``id`` with no value (undefined)."""
        ...

    def init_data(self, id: str, expr: str) -> None:
        """Set ``id`` to the value of ``expr`` (evaluated in the datamodel)."""
        ...

    def assign(self, location: str, expr: str) -> None: ...

    def assign_value(self, location: str, value: Any) -> None:
        """Assign a Python (JSON-compatible) value to a location."""
        ...

    def evaluate(self, expr: str) -> Any:
        """Evaluate to a JSON-compatible Python value (None for undefined/null)."""
        ...

    def evaluate_cond(self, expr: str) -> bool: ...

    def execute_script(self, source: str) -> None: ...

    def is_legal_location(self, location: str) -> bool: ...

    def set_event(self, event: Event) -> None:
        """Bind ``_event`` (read-only) to ``event``."""
        ...

    def foreach(self, array: str, item: str, index: str | None) -> Iterator[None]:
        """Iterate a shallow copy of ``array``, assigning ``item``/``index`` before each yield."""
        ...

    def set_path(self, path: tuple[str, ...], value: Any) -> None:
        """Host hook: set a nested global property (``("_genesys", "ixn", ...)``)."""
        ...

    def delete_path(self, path: tuple[str, ...]) -> None: ...

    def close(self) -> None: ...


_IN_RE = re.compile(r"""^\s*In\(\s*(['"])([^'"]+)\1\s*\)\s*$""")


class NullDataModel:
    """``datamodel="null"``: no data; the only condition is ``In('stateid')``."""

    name = "null"

    def __init__(self) -> None:
        self._in_state: Callable[[str], bool] = lambda _id: False

    def bind_system(
        self, sessionid: str, name: str | None, ioprocessors: Mapping[str, Any],
        in_state: Callable[[str], bool],
    ) -> None:
        self._in_state = in_state

    def _unsupported(self, what: str) -> DataModelError:
        return DataModelError(f"the null datamodel does not support {what}")

    def state_entered(self, state_id: str) -> None:
        return None

    def state_exited(self, state_id: str) -> None:
        return None

    def declare(self, id: str) -> None:
        raise self._unsupported("<data>")

    def init_data(self, id: str, expr: str) -> None:
        raise self._unsupported("<data>")

    def assign(self, location: str, expr: str) -> None:
        raise self._unsupported("<assign>")

    def assign_value(self, location: str, value: Any) -> None:
        raise self._unsupported("locations")

    def evaluate(self, expr: str) -> Any:
        raise self._unsupported(f"value expressions ({expr!r})")

    def evaluate_cond(self, expr: str) -> bool:
        text = expr.strip()
        if text in ("true", "false"):
            return text == "true"
        m = _IN_RE.match(text)
        if m is None:
            raise self._unsupported(f"the condition {expr!r}")
        return self._in_state(m.group(2))

    def execute_script(self, source: str) -> None:
        raise self._unsupported("<script>")

    def is_legal_location(self, location: str) -> bool:
        return False

    def set_event(self, event: Event) -> None:
        return None

    def foreach(self, array: str, item: str, index: str | None) -> Iterator[None]:
        raise self._unsupported("<foreach>")

    def set_path(self, path: tuple[str, ...], value: Any) -> None:
        return None

    def delete_path(self, path: tuple[str, ...]) -> None:
        return None

    def close(self) -> None:
        return None


def create_datamodel(name: str, pool: Any = None, key: Any = None) -> DataModel:
    """A datamodel by name; ``pool``/``key`` let ECMAScript reuse contexts per document."""
    if name == "ecmascript":
        from .ecmascript import EcmaScriptDataModel

        return EcmaScriptDataModel(pool, key)
    if name == "null":
        return NullDataModel()
    raise DataModelError(f"unsupported datamodel {name!r}")
