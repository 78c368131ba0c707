"""``install_messaging(app)``: the messaging API and its background workers, per worker.

Blueprints (added at setup): provider webhooks and the undelivered retry contract
(:mod:`engine.api.messaging`), campaign sends (:mod:`engine.api.campaigns`), webhook
deliveries (:mod:`engine.api.webhooks`).

At ``after_server_start`` (after the other wiring's listeners: low priority) each worker builds
a :class:`MessagingRuntime` on ``app.ctx.messaging``: one :class:`AdapterRegistry` (pooled
HTTP client), the opt-out list, the outbound queue (feeder + sender + undelivered strategy),
the paced campaign sender, the inbound service and a :class:`WebhookDispatcher` (all safe
with any number of workers: claims with leases in the database). The conversation engine is
read lazily from ``app.ctx.conversations`` / ``app.ctx.router`` (the chat wiring builds
them), so the order of the setup callables does not matter; when no chat wiring is installed
the runtime builds a ConversationService and Router of its own and publishes them there.
Everything stops at ``before_server_stop`` (in-flight sends finish; claims are released).
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from sanic import Sanic

from engine.channels.optout import OptOutList
from engine.channels.registry import AdapterRegistry
from engine.config.model import Model
from engine.messaging.campaigns import CampaignSender, CampaignService
from engine.messaging.inbound import InboundService
from engine.messaging.outbound import OutboundService
from engine.webhooks.dispatcher import WebhookDispatcher

log = logging.getLogger("nexus.messaging")

START_PRIORITY = -100  # after the chat wiring's after_server_start listeners
STOP_PRIORITY = 100  # before the chat wiring's before_server_stop listeners


class _ModelRunner:
    """A StrategyRunner that follows config reloads (for the fallback router's decider)."""

    def __init__(self, app: Sanic) -> None:
        from engine.routing.runner import StrategyRunner
        from engine.routing.strategies import StrategyCatalog

        self.app = app
        self.model: Model = app.ctx.config
        self.runner = StrategyRunner(StrategyCatalog(), self.model)

    async def run(self, *args: Any, **kwargs: Any) -> Any:
        model = self.app.ctx.config
        if model is not self.model:
            self.model = model
            self.runner.set_model(model)
        return await self.runner.run(*args, **kwargs)


class MessagingRuntime:
    def __init__(self, app: Sanic) -> None:
        self.app = app
        ctx = app.ctx
        self.worker_id = uuid.uuid4().hex[:12]
        self.store = ctx.store
        self.cache = ctx.cache
        self.registry = AdapterRegistry()
        self.optouts = OptOutList(self.store, self.cache)
        self.own_router: Any = None
        self.outbound = OutboundService(
            self.store, self.model, self.registry, conversations=self.conversations,
            router=self.router, worker_id=self.worker_id, cache=self.cache,
        )
        self.campaigns = CampaignService(self.store, self.model, self.optouts)
        self.sender = CampaignSender(self.store, self.cache, self.model, self.registry,
                                     self.optouts, worker_id=self.worker_id)
        self.inbound = InboundService(
            self.store, self.cache, self.model, self.registry, self.optouts, self.outbound,
            conversations=self.conversations, check_api_key=self.check_api_key,
        )
        self.dispatcher = WebhookDispatcher(self.store, self.model, worker_id=self.worker_id,
                                            cache=self.cache)

    # -- lazy views of the app -----------------------------------------------------------

    def model(self) -> Model:
        return self.app.ctx.config

    def conversations(self) -> Any:
        return getattr(self.app.ctx, "conversations", None)

    def router(self) -> Any:
        return getattr(self.app.ctx, "router", None)

    async def check_api_key(self, ccid: str, presented: str) -> bool:
        """HTTP Basic ``<ccid>:<api key>`` of the SMS aggregators: an enabled, unexpired,
        unrevoked key of that tenant (or a cluster key)."""
        from engine.api import security
        from engine.api.errors import NexusError

        try:
            key = await security._lookup_key(self.app, presented.strip())
            if key is None:
                return False
            security._check_usable(key)
        except NexusError:
            return False
        return key.tenant in (ccid, security.ALL)

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        if self.conversations() is None:
            await self._own_conversation_engine()
        service = self.conversations()
        if service is not None:
            service.on_event(lambda _event: self.dispatcher.wake())
        self.outbound.start()
        self.sender.start()
        self.dispatcher.start()
        log.info("messaging started (worker %s)", self.worker_id)

    async def _own_conversation_engine(self) -> None:
        from engine.routing.conversations import ConversationService
        from engine.routing.decider import RunnerDecider
        from engine.routing.router import Router

        router = Router(self.store, self.cache, self.model,
                        decider=RunnerDecider(_ModelRunner(self.app)))
        from engine.api.chat_wiring import group_commit_enabled

        service = ConversationService(self.store, self.cache, self.model, router=router,
                                      group_commit=group_commit_enabled())
        await router.start()
        self.own_router = router
        self.app.ctx.router = router
        self.app.ctx.conversations = service
        log.info("no chat wiring: messaging runs its own conversation engine")

    async def stop(self) -> None:
        await self.sender.stop()
        await self.outbound.stop()
        await self.dispatcher.stop(timeout=10.0)
        if self.own_router is not None:
            service = getattr(self.app.ctx, "conversations", None)
            if service is not None:
                await service.close()
            await self.own_router.stop()
            self.own_router = None
        await self.registry.aclose()


def install_messaging(app: Sanic) -> None:
    """Add the messaging API and start/stop its runtime with each worker."""
    from engine.api import campaigns, messaging, webhooks

    app.ctx.messaging = None
    app.blueprint(messaging.bp)
    app.blueprint(campaigns.bp)
    app.blueprint(webhooks.bp)

    async def start_messaging(app: Sanic) -> None:
        if app.ctx.store is None or app.ctx.cache is None or app.ctx.config is None:
            log.warning("messaging not started: no store, cache or config")
            return
        runtime = MessagingRuntime(app)
        await runtime.start()
        app.ctx.messaging = runtime

    async def stop_messaging(app: Sanic) -> None:
        runtime: MessagingRuntime | None = app.ctx.messaging
        app.ctx.messaging = None
        if runtime is not None:
            await runtime.stop()

    app.register_listener(start_messaging, "after_server_start", priority=START_PRIORITY)
    app.register_listener(stop_messaging, "before_server_stop", priority=STOP_PRIORITY)
