"""Running the engine: Sanic's worker manager with an app factory that spawned workers re-run.

:func:`serve` builds the app once in the main process (for its main-process listeners: the
metrics directory, the metrics server, SIGHUP forwarding), then ``Sanic.serve`` spawns
``settings.workers`` workers; each re-imports this module and calls :func:`build_app` with the
same (pickled) settings and wiring path, and the API port's listening sockets: the main
process binds one per worker (engine/listeners.py). Nothing here has side effects at import.

Wiring: a ``"module:function"`` path of a callable ``(settings) -> mapping`` returning keyword
arguments of :func:`engine.app.create_app` (``config_loader``, ``store_factory``,
``cache_factory``, ``config_appliers``, ``user_directory``, ``probes``). A path (not objects)
crosses the process boundary, so every worker builds its own store and cache.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import logging
import signal
import socket
import sys
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any, TextIO

from sanic import Sanic
from sanic.worker.loader import AppLoader
from sanic.worker.manager import WorkerManager

from engine import listeners as api_listeners
from engine.app import create_app, wiring_kwargs
from engine.settings import Settings

Wiring = Callable[[Settings], Mapping[str, Any]]

log = logging.getLogger("nexus.server")


def resolve_wiring(path: str | None) -> Wiring | None:
    if not path:
        return None
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"wiring must be 'module:function', got {path!r}")
    func = getattr(importlib.import_module(module_name), attr, None)
    if not callable(func):
        raise ValueError(f"wiring {path!r} is not a callable")
    return func


def build_app(settings: Settings, wiring: str | None = None,
              listeners: Sequence[socket.socket] = ()) -> Sanic:
    """The app factory of the main process and of every worker. ``listeners``: the API
    port's sockets, one per worker (engine/listeners.py), which a worker adopts before its
    server starts."""
    func = resolve_wiring(wiring)
    kwargs = wiring_kwargs(func(settings) if func else None)
    app = create_app(settings, **kwargs)
    if api_listeners.worker_index() is not None:
        if listeners:
            app.register_listener(partial(api_listeners.adopt, listeners=listeners),
                                  "before_server_start")
        app.register_listener(_hold_stops_while_starting, "after_server_start",
                              priority=_HOLD_PRIORITY)
    return app


#: a worker's after-start steps run with stop signals held (:func:`_hold_stops_while_starting`)
_HOLD_PRIORITY = 1_000_000


def _hold_stops_while_starting(app: Sanic) -> None:
    """The first after-start step of a worker: hold SIGINT/SIGTERM until it serves.

    The main process stops a worker with SIGINT once the worker has acknowledged, which is
    before the worker's after-start steps (freezing the heap, starting the messaging loops).
    Sanic's handler stops the event loop, and inside its start-up ``run_until_complete``
    that either ended the worker with "Event loop stopped before Future completed" (no
    shutdown steps run) or was swallowed, and the worker served on until the main process
    gave up 10 s later (``make run`` stopped a second after it started). Now a signal
    in that window is noted, and once Sanic has finished starting (``state.is_running``)
    its own handler is back and the noted stop runs as a normal graceful stop."""
    loop = asyncio.get_running_loop()
    held: list[int] = []
    for sig in _SHUTDOWN_SIGNALS:
        loop.add_signal_handler(sig, held.append, sig)
    loop.create_task(_release_stops_when_serving(app, held))


async def _release_stops_when_serving(app: Sanic, held: list[int]) -> None:
    while not app.state.is_running:  # set right before the worker's run_forever
        await asyncio.sleep(0.01)
    loop = asyncio.get_running_loop()
    stop = partial(app.stop, terminate=False)
    for sig in _SHUTDOWN_SIGNALS:  # as sanic.server.runners._setup_system_signals does
        loop.add_signal_handler(sig, stop)
    if held:
        log.info("%s arrived while this worker was starting: stopping",
                 signal.Signals(held[0]).name)
        stop()


def banner(settings: Settings) -> str:
    api = settings.api_url
    secret = settings.client_secret and "<NEXUS_CLIENT_SECRET>"
    lines = [
        f"Nexus is starting with {settings.workers} worker(s) (auth: {settings.auth})",
        f"  API      {api}   (public URL {settings.fqdn})",
        f"  health   {api}/health/detail",
        f"  metrics  {settings.metrics_url}",
        f"  OpenAPI  {api}/nexus/v3/openapi.json",
    ]
    if settings.auth == "embedded":
        lines += [
            "  token    curl --user nexus_client:" + (secret or "")
            + f" --request POST '{api}/auth/v3/oauth/token' \\",
            "             --data-urlencode 'username=<ccid>\\<user>' "
            "--data-urlencode 'password=<password>' \\",
            "             --data-urlencode 'grant_type=password' "
            "--data-urlencode 'client_id=nexus_client'",
            "           (an environment user: username=<user>, without '<ccid>\\')",
        ]
    else:
        lines.append(f"  tokens   from the auth service at {settings.auth_url}")
    return "\n".join(lines)


def check_config(settings: Settings, wiring: str | None, err: TextIO) -> bool:
    """Validate the config once in the main process, so a bad config fails before forking."""
    func = resolve_wiring(wiring)
    loader = wiring_kwargs(func(settings) if func else None).get("config_loader")
    if loader is None:
        return True
    model, findings = loader(settings.config_path)
    if model is None:
        for finding in findings:
            print(finding, file=err)
        errors = sum(1 for f in findings if str(getattr(f, "severity", "error")) == "error")
        print(f"nexus serve: the config at {settings.config_path} is invalid "
              f"({errors} error(s)); not starting", file=err)
        return False
    return True


_SHUTDOWN_SIGNALS = (signal.SIGINT, signal.SIGTERM)


#: run once in the main process when every worker has acknowledged (see below)
_after_workers_ack: list[Callable[[], None]] = []


def defer_shutdown_signals_until_workers_ack() -> None:
    """Make Sanic's main process hold SIGINT/SIGTERM while it waits for its workers to come
    up, then handle the first one as usual; then run (once) what ``_after_workers_ack``
    holds.

    The wait asks the multiprocessing manager for the workers' states; a shutdown signal
    handled in the middle of such a call makes its own calls on the same connection, and
    the main process deadlocked there until SIGKILL (sanic-org/sanic#2997; seen with
    ``make run`` stopped right after its first answer, and in Kubernetes a pod stopped
    while it starts). Idempotent."""
    if getattr(WorkerManager.wait_for_ack, "_nexus_deferred", False):
        return
    original = WorkerManager.wait_for_ack

    def wait_for_ack(self: WorkerManager) -> None:
        received: list[int] = []
        previous = {sig: signal.signal(sig, lambda signum, _frame: received.append(signum))
                    for sig in _SHUTDOWN_SIGNALS}
        try:
            original(self)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        while _after_workers_ack:
            _after_workers_ack.pop(0)()
        if received:  # the workers are up: now the shutdown runs outside any manager call
            self.shutdown_signal(received[0], None)

    wait_for_ack._nexus_deferred = True  # type: ignore[attr-defined]
    WorkerManager.wait_for_ack = wait_for_ack  # type: ignore[method-assign]


def serve(
    settings: Settings,
    *,
    wiring: str | None = None,
    out: TextIO | None = None,
) -> int:
    out = out or sys.stderr
    if not check_config(settings, wiring, out):
        return 2
    try:
        socks = api_listeners.bind_listeners(settings.host, settings.port, settings.workers)
    except api_listeners.ListenError as exc:
        print(f"nexus serve: {exc}", file=out)
        return 2
    if settings.port == 0:  # the port the kernel chose, for the banner and the workers
        settings = dataclasses.replace(settings, port=socks[0].getsockname()[1])
    loader = AppLoader(factory=partial(build_app, settings, wiring, socks))
    app = loader.load()
    app.prepare(
        sock=socks[0],
        workers=settings.workers,
        access_log=False,
        motd=False,
    )
    print(banner(settings), file=out, flush=True)
    if len(socks) > 1:
        # Each worker has its own socket now (adopted before it acknowledged). Without the
        # main process's copies, a worker that dies takes its socket with it and the kernel
        # hands new connections to the others, instead of queueing them where nobody
        # accepts (Sanic does not restart a dead worker).
        _after_workers_ack.append(partial(api_listeners.release, socks))
    defer_shutdown_signals_until_workers_ack()
    Sanic.serve(primary=app, app_loader=loader)
    return 0
