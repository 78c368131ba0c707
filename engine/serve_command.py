"""``nexus serve``: run the engine (flags win over the ``NEXUS_*`` environment variables)."""

from __future__ import annotations

import argparse
import sys

from engine.settings import Settings, SettingsError

#: engine.wiring.DEFAULT_WIRING (not imported: `nexus --help` stays light).
DEFAULT_WIRING = "engine.wiring:default_wiring"


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "serve",
        help="run the engine (HTTP API, health, metrics)",
        description="Run Nexus: the API on --port, Prometheus metrics on --metrics-port.",
    )
    parser.add_argument("--host", help="listen address (default 0.0.0.0, NEXUS_HOST)")
    parser.add_argument("--port", help="API port (default 8080, NEXUS_PORT)")
    parser.add_argument("--metrics-port", help="metrics port (default 4004, NEXUS_METRICS_PORT)")
    parser.add_argument("--config", help="config folder (default ./config, NEXUS_CONFIG)")
    parser.add_argument("--workers", help="worker processes (default 1, NEXUS_WORKERS)")
    parser.add_argument("--db-url", help="database URL (NEXUS_DB_URL)")
    parser.add_argument("--redis-url", help="Redis URL(s) or memory:// (NEXUS_REDIS_URL)")
    parser.add_argument("--log-format", help="json or text (NEXUS_LOG_FORMAT)")
    # The default wiring is the real engine; tests may pass another "module:function".
    parser.add_argument("--wiring", default=DEFAULT_WIRING, help=argparse.SUPPRESS)
    parser.set_defaults(func=run_serve)


def settings_from_args(args: argparse.Namespace) -> Settings:
    return Settings.from_env(
        host=args.host,
        port=args.port,
        metrics_port=args.metrics_port,
        config_path=args.config,
        workers=args.workers,
        db_url=args.db_url,
        redis_url=args.redis_url,
        log_format=args.log_format,
    )


def run_serve(args: argparse.Namespace) -> int:
    from engine.server import serve

    try:
        settings = settings_from_args(args)
    except SettingsError as exc:
        print(f"nexus serve: {exc}", file=sys.stderr)
        return 2
    return serve(settings, wiring=args.wiring)
