"""`nexus migrate`: apply the store's pending schema migrations and exit."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import Any

from engine.store.errors import StoreError
from engine.store.urls import DEFAULT_DB_URL

EXIT_OK = 0
EXIT_UNUSABLE = 2


def register(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "migrate",
        help="apply pending database schema migrations",
        description=(
            "Apply the pending schema migrations to the database (idempotent; safe when "
            "several engines start at once). Prints the versions applied."
        ),
    )
    parser.add_argument(
        "--db-url",
        metavar="URL",
        default=None,
        help=(
            "postgresql://user:password@host:port/db[?ssl=true] or sqlite:///path.db "
            f"(default: $NEXUS_DB_URL, else {DEFAULT_DB_URL})"
        ),
    )
    parser.set_defaults(func=run_migrate)
    return parser


async def _migrate(url: str) -> tuple[list[int], int]:
    from engine.store.db import Store
    from engine.store.migrations import applied_versions

    store = Store(url, min_size=1, max_size=1)
    await store.connect(migrate=False)
    try:
        applied = await store.migrate()
        current = max(await applied_versions(store), default=0)
    finally:
        await store.disconnect()
    return applied, current


def run_migrate(args: argparse.Namespace) -> int:
    url = args.db_url or os.environ.get("NEXUS_DB_URL") or DEFAULT_DB_URL
    try:
        applied, current = asyncio.run(_migrate(url))
    except StoreError as exc:
        print(f"nexus migrate: error: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    for version in applied:
        print(f"applied migration {version:04d}")
    if not applied:
        print(f"schema is up to date (version {current:04d})")
    return EXIT_OK
