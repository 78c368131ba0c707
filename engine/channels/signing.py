"""``X-Hub-Signature`` (HMAC-SHA1) and ``X-Hub-Signature-256`` (HMAC-SHA256) over raw bytes.

The same scheme signs the Third-Party Messaging API both ways (the gateway signs with the
channel's api secret, Nexus signs its webhooks with the webhook secret) and the interaction
webhooks. Checks are constant-time (:func:`hmac.compare_digest`).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping

from engine.channels.base import SignatureInvalid, header

SHA1_HEADER = "X-Hub-Signature"
SHA256_HEADER = "X-Hub-Signature-256"

_FORMS = {
    SHA1_HEADER: ("sha1", hashlib.sha1, 40),
    SHA256_HEADER: ("sha256", hashlib.sha256, 64),
}
_HEX = re.compile(r"^[0-9a-fA-F]+$")


def _key(secret: str | bytes) -> bytes:
    return secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)


def sign_sha1(secret: str | bytes, body: bytes) -> str:
    """``sha1=<hex>``: the value of ``X-Hub-Signature``."""
    return "sha1=" + hmac.new(_key(secret), body, hashlib.sha1).hexdigest()


def sign_sha256(secret: str | bytes, body: bytes) -> str:
    """``sha256=<hex>``: the value of ``X-Hub-Signature-256``."""
    return "sha256=" + hmac.new(_key(secret), body, hashlib.sha256).hexdigest()


def signature_headers(secret: str | bytes, body: bytes) -> dict[str, str]:
    return {SHA1_HEADER: sign_sha1(secret, body), SHA256_HEADER: sign_sha256(secret, body)}


def _check(name: str, value: str, secret: bytes, body: bytes) -> bool:
    prefix, digest, length = _FORMS[name]
    scheme, sep, given = value.strip().partition("=")
    if not sep or scheme.lower() != prefix or len(given) != length or not _HEX.match(given):
        return False
    expected = hmac.new(secret, body, digest).hexdigest()
    return hmac.compare_digest(expected, given.lower())


def verify_hub_signature(
    body: bytes, headers: Mapping[str, str], secret: str | bytes | None
) -> str:
    """Verify the raw ``body`` against ``X-Hub-Signature-256`` and/or ``X-Hub-Signature``.

    Either header is enough; every header that is present must verify (a good sha1 does not
    excuse a bad sha256). Missing headers, a garbled value or no secret raise
    :class:`SignatureInvalid`. Returns the name of the header that was checked first.
    """
    if secret is None or secret == "" or secret == b"":
        raise SignatureInvalid("no signing secret is configured for this channel")
    key = _key(secret)
    present = [(n, header(headers, n)) for n in (SHA256_HEADER, SHA1_HEADER)]
    found = [(n, v) for n, v in present if v is not None]
    if not found:
        raise SignatureInvalid(f"missing {SHA1_HEADER} / {SHA256_HEADER}")
    for name, value in found:
        if not _check(name, value, key, body):
            raise SignatureInvalid(f"{name} does not match the body")
    return found[0][0]
