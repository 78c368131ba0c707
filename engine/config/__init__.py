"""Nexus config."""
