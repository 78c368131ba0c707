"""Nexus routing."""
