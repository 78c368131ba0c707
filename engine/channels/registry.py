"""The provider registry: config name -> adapter class, and a per-process set of instances.

Adding a provider is one module implementing :class:`ProviderAdapter`, one line in
:data:`PROVIDERS` and the name in the schemas' ``provider`` allowed lists.

Provider names are the config's: a ``chat.*`` section's ``provider`` (Portico, Async, mGage;
default Portico) or a ``cxc.*`` section's (else the Email service's ``data.provider``:
SparkPost, Async, Portico). Email through Genesys Cloud is the adapter ``PorticoEmail``.
"""

from __future__ import annotations

from collections.abc import Callable

import httpx

from engine.channels.async_gateway import AsyncGatewayAdapter
from engine.channels.base import ProviderAdapter, ProviderNotConfigured
from engine.channels.mgage import MGageAdapter
from engine.channels.portico import PorticoSmsAdapter
from engine.channels.portico_email import PorticoEmailAdapter
from engine.channels.purecloud import PurecloudTokens
from engine.channels.sparkpost import SparkPostAdapter
from engine.config.model import Channel, Model

PROVIDERS: dict[str, type[ProviderAdapter]] = {
    "Async": AsyncGatewayAdapter,
    "Portico": PorticoSmsAdapter,
    "mGage": MGageAdapter,
    "SparkPost": SparkPostAdapter,
    "PorticoEmail": PorticoEmailAdapter,
}

#: (media, config provider name) -> adapter name, where they differ.
_EMAIL_ALIASES = {"Portico": "PorticoEmail"}


def adapter_name(provider: str, media: str = "sms") -> str:
    """The registry key of a config provider name for a medium ('sms' or 'email')."""
    if media == "email":
        return _EMAIL_ALIASES.get(provider, provider)
    return provider


def provider_of_channel(model: Model, channel: Channel) -> str:
    """The adapter name a channel sends with (cxc email domains fall back to the owning
    tenant's Email service provider; SMS channels default to Portico)."""
    media = "email" if channel.channel_type == "email" else "sms"
    provider = channel.provider
    if provider is None and channel.tenant is not None:
        tenant = model.tenant(channel.tenant)
        provider = tenant.email_provider if media == "email" and tenant else None
        if provider is None and media == "sms" and tenant is not None:
            provider = tenant.sms_provider
    if provider is None:
        provider = "Portico" if media == "sms" else None
    if provider is None:
        raise ProviderNotConfigured(f"channel {channel.channel_id!r} selects no provider")
    return adapter_name(provider, media)


class AdapterRegistry:
    """One adapter instance per provider for this process, sharing one pooled
    ``httpx.AsyncClient`` and one PurecloudIDP token cache. ``aclose()`` at shutdown."""

    def __init__(
        self,
        client: httpx.AsyncClient | None = None,
        *,
        providers: dict[str, type[ProviderAdapter]] | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._own_client = client is None
        self.client = client or httpx.AsyncClient(
            follow_redirects=False,
            limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
        )
        self.tokens = (
            PurecloudTokens(self.client) if clock is None
            else PurecloudTokens(self.client, clock=clock)
        )
        self.providers = dict(providers or PROVIDERS)
        self._instances: dict[str, ProviderAdapter] = {}

    def get(self, name: str) -> ProviderAdapter:
        adapter = self._instances.get(name)
        if adapter is not None:
            return adapter
        cls = self.providers.get(name)
        if cls is None:
            raise ProviderNotConfigured(f"unknown provider {name!r}")
        if issubclass(cls, PorticoSmsAdapter | PorticoEmailAdapter):
            adapter = cls(self.client, tokens=self.tokens)
        else:
            adapter = cls(self.client)
        self._instances[name] = adapter
        return adapter

    def for_channel(self, model: Model, channel_id: str) -> ProviderAdapter:
        channel = model.channel(channel_id)
        if channel is None:
            raise ProviderNotConfigured(f"no channel {channel_id!r} is configured")
        return self.get(provider_of_channel(model, channel))

    async def aclose(self) -> None:
        for adapter in self._instances.values():
            await adapter.aclose()
        self._instances.clear()
        if self._own_client:
            await self.client.aclose()
