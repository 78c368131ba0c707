"""Nexus store."""
