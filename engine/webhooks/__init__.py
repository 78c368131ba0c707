"""Nexus interaction webhooks: a durable outbox (:mod:`engine.webhooks.outbox`) delivered,
signed, by :class:`engine.webhooks.dispatcher.WebhookDispatcher`. See docs/messaging.md."""
