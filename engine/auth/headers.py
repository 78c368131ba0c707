"""Parsing of ``Authorization`` header values (no framework objects)."""

from __future__ import annotations

import base64
import binascii


class MalformedCredentials(ValueError):
    pass


def bearer_token(header: str | None) -> str | None:
    """The token of ``Bearer <token>``, or a bare token (the guide: ``Authorization: $token``)."""
    if not header:
        return None
    scheme, _, rest = header.strip().partition(" ")
    if not rest:
        # The guide sends the token without a scheme; a bare "Basic"/"Bearer" is no token.
        return None if scheme.lower() in ("bearer", "basic") else scheme
    if scheme.lower() != "bearer":
        return None
    return rest.strip() or None


def basic_credentials(header: str | None) -> tuple[str, str] | None:
    """``(user, password)`` of ``Basic <b64>``; None when the header is not Basic."""
    if not header:
        return None
    scheme, _, rest = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(rest.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise MalformedCredentials("malformed Basic credentials") from None
    user, sep, password = decoded.partition(":")
    if not sep:
        raise MalformedCredentials("malformed Basic credentials")
    return user, password
