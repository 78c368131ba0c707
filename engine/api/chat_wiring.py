"""``install_chat(app)``: the conversation engine and its HTTP/WebSocket surface in a worker.

Called from the ``setup`` list of :func:`engine.wiring.default_wiring`. It registers the
consumer chat blueprints (``/nexus/v3/chat`` and ``/chat/v3``) and the agent blueprint
(``/nexus/v3/agent``), and adds listeners that, in every worker:

* ``before_server_start`` (after the app's own listener connected the store and the cache and
  applied the config): build a ``StrategyCatalog`` + ``StrategyRunner`` + ``RunnerDecider``,
  the ``Router`` and the ``ConversationService`` on ``app.ctx.store`` / ``app.ctx.cache`` with
  a model getter (``app.ctx.config``), so SIGHUP reloads are seen by routing, the strategies
  and the handlers alike; publish them as ``app.ctx.conversations`` and ``app.ctx.router``
  (the messaging layer uses them) and the handlers' :class:`~engine.api.chat.ChatRuntime` as
  ``app.ctx.chat``;
* ``after_server_start``: start the router's dispatcher (one per worker; they cooperate through
  Redis and the database);
* ``before_server_stop``: stop the dispatcher (it finishes its current pass).

Without a store or a cache (an app built without factories) nothing is built and the chat and
agent routes answer 503.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Mapping, Sequence
from typing import Any

from sanic import Sanic

from engine.api import agent, chat
from engine.routing.conversations import ConversationService
from engine.routing.decider import InteractionInfo, RunnerDecider
from engine.routing.router import Router

log = logging.getLogger("nexus.chat")

#: how often a quiet chat stream re-reads the store (recovers a lost publish)
STREAM_POLL_INTERVAL = 10.0


class ModelTrackingDecider:
    """A :class:`RunnerDecider` whose runner always runs with the current config (the
    runner keeps one model; a reload swaps ``app.ctx.config``)."""

    def __init__(self, runner: Any, model: Any) -> None:
        self.runner = runner
        self._model = model
        self._decider = RunnerDecider(runner)

    async def decide(self, strategy_name: str, interaction: InteractionInfo) -> Sequence[Any]:
        current = self._model()
        if current is not None and current is not self.runner.model:
            self.runner.set_model(current)
        return await self._decider.decide(strategy_name, interaction)


def signing_secret(app: Sanic) -> str:
    """The client tokens' HS256 key: the engine secret (shared by every worker and pod)."""
    secret = app.ctx.settings.secret
    if secret:
        return secret
    embedded = getattr(app.ctx, "embedded_auth", None)
    if embedded is not None:
        return embedded.secret
    return secrets.token_urlsafe(48)


def build(app: Sanic) -> chat.ChatRuntime | None:
    """The worker's conversation engine (None without store, cache or config)."""
    from engine.routing.runner import StrategyRunner
    from engine.routing.strategies import StrategyCatalog

    store, cache, model = app.ctx.store, app.ctx.cache, app.ctx.config
    if store is None or cache is None or model is None:
        return None

    def current_model() -> Any:
        return app.ctx.config

    runner = StrategyRunner(StrategyCatalog(), model)
    router = Router(store, cache, current_model, decider=ModelTrackingDecider(runner,
                                                                              current_model))
    service = ConversationService(store, cache, current_model, router=router,
                                  poll_interval=STREAM_POLL_INTERVAL,
                                  group_commit=group_commit_enabled())
    return chat.ChatRuntime(service, signing_secret(app), chat.file_policy_from_env())


def group_commit_enabled(env: Mapping[str, str] | None = None) -> bool:
    """``NEXUS_GROUP_COMMIT=0`` turns group commit of customer messages off (every message
    then takes the general path: for comparison and as a way out)."""
    value = (os.environ if env is None else env).get("NEXUS_GROUP_COMMIT", "1")
    return value.strip().lower() not in ("0", "false", "no", "off")


def install_chat(app: Sanic) -> None:
    """Register the chat and agent APIs and the per-worker conversation engine."""
    app.ctx.chat = None
    app.ctx.conversations = None
    app.ctx.router = None
    chat.register(app)
    agent.register(app)

    @app.before_server_start
    async def build_conversations(app: Sanic) -> None:
        runtime = build(app)
        app.ctx.chat = runtime
        if runtime is None:
            log.warning("no store, cache or config: the chat and agent APIs are off")
            return
        app.ctx.conversations = runtime.service
        app.ctx.router = runtime.service.router

    @app.after_server_start
    async def start_router(app: Sanic) -> None:
        router: Router | None = app.ctx.router
        if router is not None:
            await router.start()

    @app.before_server_stop
    async def stop_router(app: Sanic) -> None:
        service = app.ctx.conversations
        if service is not None:
            await service.close()
        router: Router | None = app.ctx.router
        if router is not None:
            await router.stop()
