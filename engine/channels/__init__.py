"""Nexus channels."""
