"""``X-Hub-Signature`` (HMAC-SHA1) and ``X-Hub-Signature-256`` (HMAC-SHA256) over raw bytes.

The same scheme signs the Third-Party Messaging API both ways (the gateway signs with the
channel's api secret, Nexus signs its webhooks with the webhook secret) and the interaction
webhooks. Checks are constant-time (:func:`hmac.compare_digest`).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

from engine.channels.base import SignatureInvalid, header

SHA1_HEADER = "X-Hub-Signature"
SHA256_HEADER = "X-Hub-Signature-256"

#: header -> (scheme, hashlib algorithm name, hex digits of the digest)
_FORMS = {
    SHA1_HEADER: ("sha1", "sha1", 40),
    SHA256_HEADER: ("sha256", "sha256", 64),
}


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
    prefix, algorithm, length = _FORMS[name]
    scheme, sep, given = value.strip().partition("=")
    if not sep or len(given) != length or scheme.lower() != prefix:
        return False
    try:
        expected = bytes.fromhex(given)  # a garbled value is simply not a match
    except ValueError:
        return False
    # one-shot HMAC (OpenSSL), compared on the raw digest: no HMAC object, no hex text
    return hmac.compare_digest(hmac.digest(secret, body, algorithm), expected)


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
    sha256 = header(headers, SHA256_HEADER)
    sha1 = header(headers, SHA1_HEADER)
    if sha256 is None and sha1 is None:
        raise SignatureInvalid(f"missing {SHA1_HEADER} / {SHA256_HEADER}")
    if sha256 is not None and not _check(SHA256_HEADER, sha256, key, body):
        raise SignatureInvalid(f"{SHA256_HEADER} does not match the body")
    if sha1 is not None and not _check(SHA1_HEADER, sha1, key, body):
        raise SignatureInvalid(f"{SHA1_HEADER} does not match the body")
    return SHA256_HEADER if sha256 is not None else SHA1_HEADER
