"""Nexus api."""
