"""Development secrets for `make run`: every ``${env:NAME}`` the config references, with a
random value, in ``var/dev.env`` (mode 0600).

Usage: ``python scripts/dev_env.py [--config config] [--out var/dev.env] [--hint]``

* The names are found by the config loader (every value of every document holding a
  ``${env:NAME}`` reference), so the list follows the config, not this script.
* Existing values are kept: run it any number of times; only names new in the config get a
  value.
* ``--hint`` prints how to reach the engine that `make run` starts and the exact curl to get
  a token for the `nexus` admin user (reading the password from the file, never printing it).

The file is ``NAME=value`` lines (values are URL-safe base64, no quoting needed), for
``set -a; . var/dev.env; set +a``.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT))

from engine.config.loader import load_paths  # noqa: E402
from engine.config.refs import Ref  # noqa: E402

ADMIN_USER = "nexus"
ADMIN_PASSWORD_VAR = "NEXUS_ADMIN_PASSWORD"


def _refs(value: Any) -> Iterator[Ref]:
    if isinstance(value, Ref):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _refs(item)
    elif isinstance(value, list):
        for item in value:
            yield from _refs(item)


def env_names(paths: Iterable[str | os.PathLike[str]]) -> list[str]:
    """Every environment variable a config tree references, sorted."""
    loaded = load_paths(list(paths))
    names: set[str] = set()
    for doc in loaded.documents:
        for ref in _refs(doc.data):
            names.update(p.target for p in ref.parts if p.kind == "env" and p.target)
    return sorted(names)


def read_env_file(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    if not path.exists():
        return values
    for line in path.read_text("utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        name, _, value = line.partition("=")
        values[name.strip()] = value.strip()
    return values


def write_dev_env(config: Path, out: Path) -> list[str]:
    """Write ``out`` with a value for every referenced name; returns the names added now."""
    existing = read_env_file(out)
    added = []
    values = dict(existing)
    for name in env_names([config]):
        if name in values:
            continue
        values[name] = secrets.token_urlsafe(24)
        added.append(name)
    if added or not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write("# Development secrets for `make run` (scripts/dev_env.py). Not for "
                     "production.\n")
            for name in sorted(values):
                fh.write(f"{name}={values[name]}\n")
        os.replace(tmp, out)
    os.chmod(out, 0o600)
    return added


def hint(out: Path, api_url: str, metrics_url: str) -> str:
    password = f"$(grep '^{ADMIN_PASSWORD_VAR}=' {out} | cut -d= -f2)"
    return "\n".join([
        f"Nexus API {api_url}  health {api_url}/health/detail  metrics {metrics_url}",
        f"Get a token for the '{ADMIN_USER}' admin user (password in {out}):",
        f"  curl --user nexus_client: --request POST '{api_url}/auth/v3/oauth/token' \\",
        "    --header 'Content-Type: application/x-www-form-urlencoded' \\",
        f"    --data-urlencode 'username={ADMIN_USER}' \\",
        "    --data-urlencode 'client_id=nexus_client' \\",
        f"    --data-urlencode 'grant_type=password' --data-urlencode \"password={password}\"",
        "Then follow README.md, 'First steps'.",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=os.environ.get("NEXUS_CONFIG", "config"))
    parser.add_argument("--out", default="var/dev.env")
    parser.add_argument("--hint", action="store_true", help="print the URLs and token curl")
    args = parser.parse_args(argv)
    out = Path(args.out)
    added = write_dev_env(Path(args.config), out)
    if added:
        print(f"{out}: generated {len(added)} development secret(s): {', '.join(added)}",
              file=sys.stderr)
    if args.hint:
        from engine.settings import Settings

        settings = Settings.from_env(generate_secret=False)
        print(hint(out, settings.api_url, settings.metrics_url), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
