"""Nexus: a self-hostable, declarative Digital Channels engine."""

__version__ = "0.1.0"
