"""HS256 JSON Web Tokens with the standard library only (RFC 7519 / RFC 7515 compact form).

Only ``{"alg": "HS256", "typ": "JWT"}`` is ever accepted: ``alg: none``, other algorithms,
padded or non-canonical base64url, extra segments and tampered payloads are all rejected with
:class:`TokenError`. Signatures are compared in constant time. ``exp`` is required; ``exp``,
``nbf`` and ``iat`` are checked with a small clock-skew leeway.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import time
import uuid
from collections.abc import Mapping
from typing import Any

ALGORITHM = "HS256"
_HEADER = {"alg": ALGORITHM, "typ": "JWT"}
_B64URL = re.compile(r"^[A-Za-z0-9_-]*$")
DEFAULT_LEEWAY = 30.0
MAX_TOKEN_LENGTH = 8192
TOKEN_TYPES = ("access", "refresh")


class TokenError(Exception):
    """A token that must not be trusted; ``str()`` says why (safe to log, never the token)."""


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Strict unpadded base64url: no ``=``, no foreign characters, canonical trailing bits."""
    if not _B64URL.match(text) or len(text) % 4 == 1:
        raise TokenError("malformed base64url segment")
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise TokenError("malformed base64url segment") from None
    if b64url_encode(data) != text:
        raise TokenError("non-canonical base64url segment")
    return data


def _key(secret: str | bytes) -> bytes:
    key = secret.encode("utf-8") if isinstance(secret, str) else secret
    if not key:
        raise ValueError("an empty signing secret")
    return key


def _json_segment(obj: Mapping[str, Any]) -> str:
    return b64url_encode(json.dumps(obj, separators=(",", ":"), sort_keys=True).encode("utf-8"))


def sign(claims: Mapping[str, Any], secret: str | bytes) -> str:
    """The compact HS256 JWS of ``claims``."""
    signing_input = f"{_json_segment(_HEADER)}.{_json_segment(claims)}"
    mac = hmac.new(_key(secret), signing_input.encode("ascii"), hashlib.sha256).digest()
    return f"{signing_input}.{b64url_encode(mac)}"


def issue(
    secret: str | bytes,
    *,
    sub: str,
    typ: str,
    ttl: float,
    now: float | None = None,
    **extra: Any,
) -> tuple[str, dict[str, Any]]:
    """Sign a fresh token (``sub``, ``typ``, ``iat``, ``exp``, a random ``jti``) plus ``extra``."""
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {
        **extra,
        "sub": sub,
        "typ": typ,
        "iat": issued,
        "exp": issued + int(ttl),
        "jti": uuid.uuid4().hex,
    }
    return sign(claims, secret), claims


def _load_json(segment: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(b64url_decode(segment))
    except (UnicodeDecodeError, ValueError):
        raise TokenError(f"malformed {what}") from None
    if not isinstance(value, dict):
        raise TokenError(f"malformed {what}")
    return value


def _number(claims: Mapping[str, Any], name: str, required: bool) -> float | None:
    value = claims.get(name)
    if value is None:
        if required:
            raise TokenError(f"missing {name}")
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TokenError(f"malformed {name}")
    return float(value)


def verify(
    token: str,
    secret: str | bytes,
    *,
    typ: str | None = None,
    leeway: float = DEFAULT_LEEWAY,
    now: float | None = None,
) -> dict[str, Any]:
    """The claims of ``token`` if its HS256 signature, times and (optionally) ``typ`` check out."""
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_LENGTH:
        raise TokenError("malformed token")
    parts = token.split(".")
    if len(parts) != 3:
        raise TokenError("malformed token")
    header_b64, payload_b64, signature_b64 = parts
    header = _load_json(header_b64, "header")
    if header.get("alg") != ALGORITHM:
        raise TokenError(f"unsupported algorithm {str(header.get('alg'))[:16]!r}")
    if set(header) - {"alg", "typ", "kid"} or header.get("typ", "JWT") != "JWT":
        raise TokenError("unsupported header")
    signature = b64url_decode(signature_b64)
    expected = hmac.new(
        _key(secret), f"{header_b64}.{payload_b64}".encode("ascii"), hashlib.sha256
    ).digest()
    if not hmac.compare_digest(signature, expected):
        raise TokenError("bad signature")
    claims = _load_json(payload_b64, "payload")
    current = time.time() if now is None else now
    exp = _number(claims, "exp", required=True)
    if exp is not None and current > exp + leeway:
        raise TokenError("expired")
    nbf = _number(claims, "nbf", required=False)
    if nbf is not None and current + leeway < nbf:
        raise TokenError("not yet valid")
    iat = _number(claims, "iat", required=False)
    if iat is not None and current + leeway < iat:
        raise TokenError("issued in the future")
    if typ is not None and claims.get("typ") != typ:
        raise TokenError(f"not an {typ} token" if typ[0] in "aeiou" else f"not a {typ} token")
    return claims


class VerifiedTokens:
    """:func:`verify` with a memo of the tokens that passed, for tokens presented on every
    request (a chat client's key): a repeat costs a dict lookup and the expiry check instead
    of base64, JSON and HMAC. Only successes are kept (at most ``maxsize``, the oldest
    dropped first); a hit is still refused once expired. The returned claims are shared:
    read them, do not change them."""

    def __init__(
        self,
        secret: str | bytes,
        *,
        typ: str | None = None,
        leeway: float = DEFAULT_LEEWAY,
        maxsize: int = 16384,
    ) -> None:
        self.secret = secret
        self.typ = typ
        self.leeway = leeway
        self.maxsize = maxsize
        self._memo: dict[str, tuple[dict[str, Any], float]] = {}

    def verify(self, token: str, *, now: float | None = None) -> dict[str, Any]:
        current = time.time() if now is None else now
        hit = self._memo.get(token)
        if hit is not None:
            claims, exp = hit
            if current <= exp + self.leeway:
                return claims
            del self._memo[token]
        claims = verify(token, self.secret, typ=self.typ, leeway=self.leeway, now=current)
        if len(self._memo) >= self.maxsize:
            del self._memo[next(iter(self._memo))]
        # nbf and iat were in the past when it verified; only exp can end its validity
        self._memo[token] = (claims, float(claims["exp"]))
        return claims

    def __len__(self) -> int:
        return len(self._memo)
