"""``create_app(settings, ...)``: the one place that wires Nexus together.

Everything with a lifetime is created per worker in listeners, from factories passed in, so the
same call builds the app in the main process, in every spawned worker and in tests:

* ``config_loader(path) -> (model | None, findings)`` validates the config tree (the lead wires
  ``engine.config.validate.validate_paths(..., mode="serve")``); ``None`` means invalid.
* ``store_factory(settings) -> StoreLike`` and ``cache_factory(settings) -> CacheLike``
  (``engine.store``'s ``Store`` and ``Cache`` satisfy the Protocols below).
* ``config_appliers``: callables ``(app, model)`` (sync or async) that apply a validated model
  (to the store, to ``app.ctx.users``, ...); run at start and on every accepted reload.
* ``setup``: callables ``(app)`` run last, to add blueprints, middleware and listeners
  (the default wiring's provisioning API and security layer).
* ``user_directory``: where the embedded OAuth provider finds users (default: an empty
  :class:`~engine.auth.embedded.InMemoryUserDirectory` on ``app.ctx.users`` that an applier
  may fill with :meth:`replace`).

Listeners: ``main_process_start`` (main process only) wipes and exports the Prometheus
multiprocess directory, starts the metrics server and forwards SIGHUP to the workers;
``before_server_start`` (each worker) loads the config, connects store and cache and applies the
config; ``after_server_start`` starts the runtime sampler and the SIGHUP reload handler;
``after_server_stop`` closes everything and drops the worker's live metrics.

SIGHUP: each worker re-validates; on success it applies the new model and swaps
``app.ctx.config``; on failure it keeps the old one and logs why. Both count in
``nexus_config_reload_total{result="applied"|"rejected"}`` (per worker).
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import logging
import os
import secrets
import signal
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from sanic import HTTPResponse, Request, Sanic

import engine
from engine.api import auth_routes, health, openapi
from engine.api.errors import EnvelopeErrorHandler, PayloadTooLarge
from engine.api.scxml import create_scxml_blueprint
from engine.auth.embedded import EmbeddedAuthProvider, InMemoryUserDirectory, UserDirectory
from engine.auth.gws import GwsAuthProvider
from engine.observability import logging as nexus_logging
from engine.observability import metrics
from engine.observability.server import MetricsServer
from engine.settings import SHARED_MEMORY, Settings

log = logging.getLogger("nexus.app")


class StoreLike(Protocol):
    async def connect(self) -> Any: ...

    async def disconnect(self) -> None: ...

    async def ping(self) -> bool: ...


class CacheLike(Protocol):
    async def connect(self) -> Any: ...

    async def close(self) -> None: ...

    async def ping(self) -> bool: ...

    @property
    def state(self) -> str: ...


ConfigLoader = Callable[[str], "tuple[Any | None, Sequence[Any]]"]
ConfigApplier = Callable[[Sanic, Any], "Awaitable[None] | None"]
StoreFactory = Callable[[Settings], StoreLike]
CacheFactory = Callable[[Settings], CacheLike]


class ConfigRejected(RuntimeError):
    """The config at start is invalid: the worker does not start."""


# ---------------------------------------------------------------------- build information
def _git_changeset(root: Path) -> str:
    """The commit of HEAD in the checkout at ``root`` (file reads only, no git process)."""
    git = root / ".git"
    try:
        if git.is_file():  # a worktree: "gitdir: <path>"
            git = (root / git.read_text().split(":", 1)[1].strip()).resolve()
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head
        ref = head[5:]
        common = git
        if (git / "commondir").is_file():
            common = (git / (git / "commondir").read_text().strip()).resolve()
        for base in (git, common):
            if (base / ref).is_file():
                return (base / ref).read_text().strip()
        packed = common / "packed-refs"
        if packed.is_file():
            for line in packed.read_text().splitlines():
                if line.endswith(" " + ref):
                    return line.split(" ", 1)[0]
    except (OSError, IndexError):
        pass
    return "unknown"


def build_info() -> dict[str, str]:
    """``{version, changeset, timestamp}``: NEXUS_CHANGESET / NEXUS_BUILD_TIMESTAMP (set by the
    image build) or, from a checkout, the git HEAD and the package's modification time."""
    root = Path(engine.__file__).resolve().parent.parent
    changeset = os.environ.get("NEXUS_CHANGESET") or _git_changeset(root)
    timestamp = os.environ.get("NEXUS_BUILD_TIMESTAMP")
    if not timestamp:
        try:
            mtime = Path(engine.__file__).stat().st_mtime
        except OSError:
            mtime = time.time()
        timestamp = datetime.fromtimestamp(mtime, UTC).strftime("%a %b %d %H:%M:%S UTC %Y")
    return {"version": engine.__version__, "changeset": changeset, "timestamp": timestamp}


# ---------------------------------------------------------------------- the factory
def _app_name(name: str | None) -> str:
    if name:
        return name
    return f"nexus_{secrets.token_hex(4)}" if Sanic.test_mode else "nexus"


def create_app(
    settings: Settings,
    *,
    config_loader: ConfigLoader | None = None,
    store_factory: StoreFactory | None = None,
    cache_factory: CacheFactory | None = None,
    config_appliers: Iterable[ConfigApplier] = (),
    user_directory: UserDirectory | None = None,
    probes: health.HealthProbes | None = None,
    name: str | None = None,
    serve_metrics: bool = True,
    sample_interval: float = 5.0,
    setup: Iterable[Callable[[Sanic], None]] = (),
) -> Sanic:
    app = Sanic(_app_name(name), configure_logging=False)
    app.config.REQUEST_MAX_SIZE = settings.body_limit
    app.config.ACCESS_LOG = False
    app.config.FALLBACK_ERROR_FORMAT = "json"
    app.config.MOTD = False
    app.error_handler = EnvelopeErrorHandler()

    ctx = app.ctx
    ctx.settings = settings
    ctx.started_at = time.time()
    ctx.build_info = build_info()
    ctx.config = None
    ctx.config_findings = []
    ctx.config_loader = config_loader
    ctx.config_appliers = list(config_appliers)
    ctx.reload_lock = asyncio.Lock()
    ctx.store = None
    ctx.cache = None
    ctx.store_factory = store_factory
    ctx.cache_factory = cache_factory
    ctx.probes = probes or health.StoreCacheProbes(None, None)
    ctx.fixed_probes = probes is not None
    ctx.users = user_directory if user_directory is not None else InMemoryUserDirectory()
    ctx.embedded_auth = (
        EmbeddedAuthProvider(
            secret=settings.secret or secrets.token_urlsafe(48),
            users=ctx.users,
            client_secret=settings.client_secret,
            access_ttl=settings.access_token_ttl,
            refresh_ttl=settings.refresh_token_ttl,
        )
        if settings.auth == "embedded"
        else None
    )
    ctx.auth = ctx.embedded_auth
    ctx.sampler = metrics.RuntimeSampler(interval=sample_interval)
    ctx.metrics_server = None
    ctx.route_labels = {}

    nexus_logging.register_secret(
        settings.secret, settings.client_secret, settings.redis_password,
        *nexus_logging.secrets_in_url(settings.db_url),
        *nexus_logging.secrets_in_url(settings.redis_url),
    )
    app.blueprint(health.bp)
    app.blueprint(auth_routes.bp)
    app.blueprint(openapi.bp)
    app.blueprint(create_scxml_blueprint())  # strategies rendered from app.ctx.config
    _add_middleware(app)
    _add_listeners(app, serve_metrics)
    for extra in setup:  # the wiring's own blueprints, middleware and listeners
        extra(app)
    _freeze_startup_heap(app)  # last: after every other start-up listener
    return app


def _freeze_startup_heap(app: Sanic) -> None:
    @app.after_server_start
    async def freeze_heap(app: Sanic) -> None:
        # What start-up built (the config model, SQLAlchemy's tables and compiled statements,
        # Sanic's router, the strategies) lives as long as the worker. Frozen, it is out of
        # the cyclic collector's reach, and a full collection scans only what requests
        # create: unfrozen, full collections took 75-165 ms in a worker under the chat
        # benchmark, each a stall of every request in flight. (A config reload's new model
        # is not frozen: it is scanned like any other object.) Only in a served worker
        # process: an app started inside another program (tests) leaves its heap alone.
        if not os.environ.get("SANIC_WORKER_NAME"):
            return
        gc.collect()
        gc.freeze()
        log.info("start-up heap frozen: %d objects", gc.get_freeze_count())


# ---------------------------------------------------------------------- middleware
def _route_label(app: Sanic, request: Request) -> str:
    route = request.route
    if route is None:
        return "unmatched"
    labels: dict[str, str] = app.ctx.route_labels
    label = labels.get(route.name)
    if label is None:
        label = labels[route.name] = route.name.split(".", 1)[-1]
    return label


def _add_middleware(app: Sanic) -> None:
    sampler: metrics.RuntimeSampler = app.ctx.sampler
    track, untrack = sampler.inflight.add, sampler.inflight.discard
    count_request, count_error = metrics.REQUEST_COUNT.inc, metrics.ERROR_COUNT.inc
    trace_id_from, access_enabled = nexus_logging.trace_id_from, nexus_logging.access_enabled
    access_line = nexus_logging.access_line
    perf_counter = time.perf_counter
    limit = app.ctx.settings.body_limit
    # Whether Sanic takes client addresses from proxy headers; read at the first response, as
    # Sanic's config is slow to read and settled by then.
    proxy_headers: list[bool] = []

    def remote_of(request: Request) -> str:
        if not proxy_headers:
            config = app.config
            proxy_headers.append(
                bool(config.FORWARDED_SECRET or config.REAL_IP_HEADER or config.PROXIES_COUNT)
            )
        if proxy_headers[0]:
            return request.remote_addr or (request.ip or "")
        return request.ip or ""  # what remote_addr would fall back to, without parsing headers

    # Plain functions, not coroutines: Sanic calls a middleware and awaits only what is
    # awaitable, so these skip a coroutine and an await per request.
    @app.on_request(priority=1000)
    def begin(request: Request) -> None:
        ctx = request.ctx
        ctx.trace_id = trace_id_from(request.headers.get("x-b3-traceid"))
        ctx.started = perf_counter()
        track(request)
        # Sanic's HTTP/1 server refuses larger bodies before reading them; this covers ASGI.
        if request.body and len(request.body) > limit:
            raise PayloadTooLarge()

    @app.on_response(priority=1000)
    def end(request: Request, response: HTTPResponse) -> None:
        ctx = request.ctx
        trace_id = getattr(ctx, "trace_id", None)
        if trace_id is None:  # the request never reached the request middleware
            trace_id = ctx.trace_id = trace_id_from(None)
            ctx.started = perf_counter()
        response.headers["X-B3-TraceId"] = trace_id
        count_request()
        status = response.status
        if status >= 500:
            count_error()
        untrack(request)
        if access_enabled():  # else the line's fields are not worth gathering
            access_line(trace_id, request.method, _route_label(app, request), request.path,
                        request.query_string, status, ctx.started, remote_of(request))


# ---------------------------------------------------------------------- config
async def _call(func: Callable[..., Any], *args: Any) -> Any:
    result = func(*args)
    if inspect.isawaitable(result):
        result = await result
    return result


def _is_error(finding: Any) -> bool:
    severity = getattr(finding, "severity", "error")
    return str(getattr(severity, "value", severity)).lower() == "error"


async def load_config(app: Sanic) -> tuple[Any | None, Sequence[Any]]:
    loader: ConfigLoader | None = app.ctx.config_loader
    if loader is None:
        return None, ()
    return await asyncio.to_thread(loader, app.ctx.settings.config_path)


async def apply_config(app: Sanic, model: Any) -> None:
    for applier in app.ctx.config_appliers:
        await _call(applier, app, model)


async def reload_config(app: Sanic) -> bool:
    """Re-validate and apply the config; keep the running one when anything fails."""
    async with app.ctx.reload_lock:
        try:
            model, findings = await load_config(app)
        except Exception:
            log.exception("config reload: loading failed; keeping the running config")
            metrics.CONFIG_RELOADS.labels(result="rejected").inc()
            return False
        app.ctx.config_findings = list(findings)
        if model is None:
            errors = [f for f in findings if _is_error(f)] or list(findings)
            for finding in errors[:50]:
                log.error("config reload rejected: %s", finding)
            log.error(
                "config reload rejected (%d finding(s)); keeping the running config",
                len(errors),
            )
            metrics.CONFIG_RELOADS.labels(result="rejected").inc()
            return False
        try:
            await apply_config(app, model)
        except Exception:
            log.exception("config reload: applying failed; keeping the running config")
            metrics.CONFIG_RELOADS.labels(result="rejected").inc()
            return False
        app.ctx.config = model
        metrics.CONFIG_RELOADS.labels(result="applied").inc()
        log.info("config reloaded from %s", app.ctx.settings.config_path)
        return True


# ---------------------------------------------------------------------- listeners
def _forward_sighup(app: Sanic) -> Callable[[int, Any], None]:
    def handler(signum: int, frame: Any) -> None:
        manager = getattr(app, "_manager", None)
        pids = [p.pid for p in getattr(manager, "transient_processes", ()) if p.pid]
        log.info("SIGHUP: reloading the config in %d worker(s)", len(pids))
        for pid in pids:
            try:
                os.kill(pid, signal.SIGHUP)
            except ProcessLookupError:
                continue

    return handler


def _add_listeners(app: Sanic, serve_metrics: bool) -> None:
    settings: Settings = app.ctx.settings
    counter_folder = metrics.CounterFolder()

    @app.main_process_start
    async def main_start(app: Sanic) -> None:
        nexus_logging.configure_logging(settings.log_format)
        chosen = os.environ.get(metrics.MULTIPROC_ENV) or settings.multiproc_dir
        directory = metrics.prepare_multiprocess_dir(chosen)
        # The default directory in shared memory is ours to remove at the end (it holds RAM);
        # a directory the operator named, or var/prometheus, stays.
        app.ctx.owned_metrics_dir = (
            directory
            if not settings.metrics_dir
            and Path(chosen) == settings.multiproc_dir
            and directory.parent == SHARED_MEMORY.resolve()
            else None
        )
        if app.ctx.owned_metrics_dir is not None:
            metrics.claim_multiprocess_dir(directory)
        log.info("prometheus multiprocess directory %s", directory)
        if serve_metrics:
            app.ctx.metrics_server = MetricsServer(settings.host, settings.metrics_port).start()
        if hasattr(signal, "SIGHUP"):
            signal.signal(signal.SIGHUP, _forward_sighup(app))

    @app.main_process_stop
    async def main_stop(app: Sanic) -> None:
        server: MetricsServer | None = app.ctx.metrics_server
        if server is not None:
            server.stop()
            app.ctx.metrics_server = None
        owned: Path | None = getattr(app.ctx, "owned_metrics_dir", None)
        if owned is not None:
            metrics.remove_multiprocess_dir(owned)
            if os.environ.get(metrics.MULTIPROC_ENV) == str(owned):
                del os.environ[metrics.MULTIPROC_ENV]

    @app.before_server_start
    async def connect(app: Sanic) -> None:
        await start_worker(app)

    @app.after_server_start
    async def start_background(app: Sanic) -> None:
        loop = asyncio.get_running_loop()
        app.ctx.sampler.start()
        counter_folder.start()
        app.ctx.sighup_installed = False
        if hasattr(signal, "SIGHUP") and os.environ.get("SANIC_WORKER_NAME"):
            try:
                loop.add_signal_handler(
                    signal.SIGHUP, lambda: app.add_task(reload_config(app), name="config-reload")
                )
                app.ctx.sighup_installed = True
            except (NotImplementedError, RuntimeError, ValueError):
                log.warning("SIGHUP reload is not available in this process")

    @app.before_server_stop
    async def stop_background(app: Sanic) -> None:
        if getattr(app.ctx, "sighup_installed", False):
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        await app.ctx.sampler.stop()

    @app.after_server_stop
    async def disconnect(app: Sanic) -> None:
        # Every response is out: the last counts and access lines of this worker go now.
        await counter_folder.stop()
        nexus_logging.flush_access_lines()
        await stop_worker(app)


async def warm_imports() -> None:
    """Imports that would otherwise happen on the event loop at a worker's first use, once
    it serves: httpx's first request (a webhook, a provider send) imports anyio's asyncio
    backend, which held the loop for 12-15 ms in the chat benchmark."""
    import anyio.lowlevel  # httpx's own dependency

    await anyio.lowlevel.checkpoint()


async def start_worker(app: Sanic) -> None:
    """Per worker, before it serves: logging, auth, config, store, cache, config applied."""
    settings: Settings = app.ctx.settings
    nexus_logging.configure_logging(settings.log_format)
    await warm_imports()
    if os.environ.get("SANIC_WORKER_NAME") and hasattr(signal, "SIGHUP"):
        # A reload request that arrives before the handler is installed must not kill us.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    if settings.auth == "gws":
        app.ctx.auth = GwsAuthProvider(settings.auth_url)
    model, findings = await load_config(app)
    app.ctx.config_findings = list(findings)
    if app.ctx.config_loader is not None and model is None:
        for finding in findings:
            log.error("config: %s", finding)
        raise ConfigRejected(
            f"the config at {settings.config_path} is invalid ({len(findings)} finding(s))"
        )
    if app.ctx.store_factory is not None:
        app.ctx.store = app.ctx.store_factory(settings)
        await app.ctx.store.connect()
    if app.ctx.cache_factory is not None:
        app.ctx.cache = app.ctx.cache_factory(settings)
        await app.ctx.cache.connect()
    if not app.ctx.fixed_probes:
        app.ctx.probes = health.StoreCacheProbes(app.ctx.store, app.ctx.cache)
    if model is not None:
        await apply_config(app, model)
        app.ctx.config = model


async def stop_worker(app: Sanic) -> None:
    """Per worker, after it stopped serving: close cache, store, auth client; drop live metrics."""
    cache, store = app.ctx.cache, app.ctx.store
    app.ctx.cache = app.ctx.store = None
    if cache is not None:
        await _quietly(cache.close(), "cache close")
    if store is not None:
        await _quietly(store.disconnect(), "store disconnect")
    auth = app.ctx.auth
    if isinstance(auth, GwsAuthProvider):
        await _quietly(auth.aclose(), "auth client close")
    if os.environ.get("SANIC_WORKER_NAME"):
        metrics.mark_worker_dead()


async def _quietly(awaitable: Awaitable[Any], what: str) -> None:
    try:
        await awaitable
    except Exception:
        log.exception("%s failed", what)


def wiring_kwargs(wiring: Mapping[str, Any] | None) -> dict[str, Any]:
    allowed = {
        "config_loader", "store_factory", "cache_factory", "config_appliers", "user_directory",
        "probes", "setup",
    }
    kwargs = dict(wiring or {})
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise TypeError(f"unknown wiring key(s): {', '.join(unknown)}")
    return kwargs
