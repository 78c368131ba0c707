"""Nexus athena."""
