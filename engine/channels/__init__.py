"""Nexus channels: one adapter per messaging provider behind :class:`ProviderAdapter`
(``base``), the registry (``registry``), outbound retries (``retry``) and the opt-out list
(``optout``). See docs/messaging.md."""
