"""Secret masking for audit rows, logs and API responses."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

MASK = "***"


def mask_secrets(obj: Any) -> Any:
    """Return a copy of ``obj`` with every leaf replaced by ``"***"``.

    Mappings and lists/tuples keep their shape (keys are kept, so a reader sees *which*
    secrets are set); every scalar leaf, including ``None`` and numbers, becomes ``"***"``.
    An empty mapping or list stays empty.
    """
    if isinstance(obj, Mapping):
        return {key: mask_secrets(value) for key, value in obj.items()}
    if isinstance(obj, list | tuple):
        return [mask_secrets(value) for value in obj]
    return MASK
