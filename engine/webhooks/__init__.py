"""Nexus webhooks."""
