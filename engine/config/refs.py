"""Secret references: `${env:NAME}` and `${file:PATH}` in config values.

Secrets never appear in config files. A value containing references is loaded as a
:class:`Ref` (a ``str`` holding the raw text, so schemas type-check it as a string) and is
resolved only when the engine needs the value. A resolved value is never printed.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

# ${env:NAME} (NAME: letters, digits, underscore) or ${file:PATH} (anything up to '}').
REF_PATTERN = re.compile(r"\$\{(?P<kind>[A-Za-z]+):(?P<target>[^}]*)\}")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
KINDS = ("env", "file")


@dataclass(frozen=True, slots=True)
class RefPart:
    kind: str
    target: str
    start: int
    end: int


class Ref(str):
    """A config string that contains one or more secret references."""

    __slots__ = ("base_dir", "_parts", "_problems")
    base_dir: str

    def __new__(cls, text: str, base_dir: str = ".") -> Ref:
        obj = super().__new__(cls, text)
        obj.base_dir = base_dir
        return obj

    @property
    def parts(self) -> tuple[RefPart, ...]:
        # parsed once: secrets are resolved on hot paths (every signed webhook)
        try:
            return self._parts
        except AttributeError:
            self._parts = tuple(
                RefPart(m["kind"], m["target"], m.start(), m.end())
                for m in REF_PATTERN.finditer(self)
            )
            return self._parts

    @property
    def problems(self) -> tuple[str, ...]:
        """:func:`check_syntax`, computed once."""
        try:
            return self._problems
        except AttributeError:
            self._problems = tuple(check_syntax(self))
            return self._problems

    @property
    def is_whole(self) -> bool:
        """True when the value is exactly one reference and nothing else."""
        parts = self.parts
        return len(parts) == 1 and parts[0].start == 0 and parts[0].end == len(self)


class RefError(ValueError):
    """A reference that cannot be resolved: unknown kind, bad name, unset var, missing file."""

    def __init__(self, message: str, *, unset: bool = False) -> None:
        super().__init__(message)
        self.unset = unset


def has_ref(text: str) -> bool:
    return "${" in text and REF_PATTERN.search(text) is not None


def check_syntax(ref: Ref) -> list[str]:
    """Problems with a reference's own syntax (not whether it resolves)."""
    problems = []
    for part in ref.parts:
        if part.kind not in KINDS:
            problems.append(
                f"unknown reference kind '{part.kind}' in '${{{part.kind}:...}}': "
                "must be '${env:NAME}' or '${file:PATH}'"
            )
        elif part.kind == "env" and not ENV_NAME.match(part.target):
            problems.append(
                f"'{part.target}' is not a valid environment variable name: "
                "use letters, digits and '_', not starting with a digit"
            )
        elif part.kind == "file" and not part.target.strip():
            problems.append("'${file:}' names no file: give a path, e.g. '${file:/run/secrets/x}'")
    return problems


#: how long a secret file's content is reused: request paths (signature checks, webhook
#: signing) resolve secrets per call, and a file read is blocking I/O on the event loop; a
#: rotated file (a Kubernetes secret volume) is picked up within this many seconds
SECRET_FILE_TTL = 1.0
_secret_files: dict[Path, tuple[float, str]] = {}
_clock = time.monotonic


def _read_secret_file(path: Path) -> str:
    now = _clock()
    cached = _secret_files.get(path)
    if cached is not None and cached[0] > now:
        return cached[1]
    # Secret files conventionally end with a newline that is not part of the value.
    text = path.read_text(encoding="utf-8").rstrip("\r\n")
    if len(_secret_files) > 1024:  # paths come from config: only a reload adds new ones
        _secret_files.clear()
    _secret_files[path] = (now + SECRET_FILE_TTL, text)
    return text


def resolve(ref: str, env: Mapping[str, str] | None = None) -> str:
    """Return the value with every reference substituted. Raises RefError."""
    if not isinstance(ref, Ref):
        return ref
    env = os.environ if env is None else env
    out: list[str] = []
    pos = 0
    if ref.problems:
        raise RefError(ref.problems[0])
    for part in ref.parts:
        out.append(ref[pos : part.start])
        if part.kind == "env":
            value = env.get(part.target)  # one lookup: os.environ encodes the name each time
            if value is None:
                raise RefError(f"environment variable '{part.target}' is not set", unset=True)
            out.append(value)
        else:
            path = Path(part.target)
            if not path.is_absolute():
                path = Path(ref.base_dir) / path
            try:
                out.append(_read_secret_file(path))
            except OSError as exc:
                raise RefError(
                    f"secret file '{part.target}' cannot be read ({exc.strerror or exc})",
                    unset=isinstance(exc, FileNotFoundError),
                ) from None
            except UnicodeDecodeError:
                raise RefError(f"secret file '{part.target}' is not UTF-8 text") from None
        pos = part.end
    out.append(ref[pos:])
    return "".join(out)
