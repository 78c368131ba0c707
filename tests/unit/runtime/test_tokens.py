from __future__ import annotations

import base64
import hashlib
import hmac
import json

import pytest

from engine.auth import tokens
from engine.auth.tokens import TokenError, b64url_encode, issue, sign, verify

SECRET = "s3cr3t-signing-key-for-tests"


def _segment(obj: object) -> str:
    return b64url_encode(json.dumps(obj).encode())


def _forge(header: dict, claims: dict, key: str = SECRET) -> str:
    signing_input = f"{_segment(header)}.{_segment(claims)}"
    mac = hmac.new(key.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url_encode(mac)}"


def test_round_trip_carries_standard_claims() -> None:
    token, claims = issue(SECRET, sub="agent1", typ="access", ttl=60, now=1000, ten="ccid1")
    got = verify(token, SECRET, typ="access", now=1010)
    assert got == claims
    assert got["sub"] == "agent1" and got["typ"] == "access" and got["ten"] == "ccid1"
    assert got["iat"] == 1000 and got["exp"] == 1060 and len(got["jti"]) == 32
    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    assert header == {"alg": "HS256", "typ": "JWT"}


def test_jti_is_unique() -> None:
    a, _ = issue(SECRET, sub="x", typ="access", ttl=60)
    b, _ = issue(SECRET, sub="x", typ="access", ttl=60)
    assert a != b


def test_expiry_with_leeway() -> None:
    token, _ = issue(SECRET, sub="x", typ="access", ttl=60, now=1000)
    assert verify(token, SECRET, now=1060 + 29, leeway=30)["sub"] == "x"
    with pytest.raises(TokenError, match="expired"):
        verify(token, SECRET, now=1060 + 31, leeway=30)


def test_issued_in_the_future_and_nbf() -> None:
    token, _ = issue(SECRET, sub="x", typ="access", ttl=600, now=2000)
    with pytest.raises(TokenError, match="future"):
        verify(token, SECRET, now=1000)
    early = sign({"sub": "x", "exp": 5000, "nbf": 3000}, SECRET)
    with pytest.raises(TokenError, match="not yet valid"):
        verify(early, SECRET, now=2000)


def test_wrong_type_is_rejected() -> None:
    token, _ = issue(SECRET, sub="x", typ="refresh", ttl=60)
    with pytest.raises(TokenError, match="not an access token"):
        verify(token, SECRET, typ="access")


def test_missing_exp_is_rejected() -> None:
    with pytest.raises(TokenError, match="missing exp"):
        verify(sign({"sub": "x"}, SECRET), SECRET)


@pytest.mark.parametrize("alg", ["none", "None", "HS512", "RS256", ""])
def test_other_algorithms_are_rejected(alg: str) -> None:
    claims = {"sub": "admin", "exp": 9999999999}
    forged = f"{_segment({'alg': alg, 'typ': 'JWT'})}.{_segment(claims)}."
    with pytest.raises(TokenError):
        verify(forged, SECRET)
    signed = _forge({"alg": alg, "typ": "JWT"}, claims)
    with pytest.raises(TokenError, match="unsupported algorithm"):
        verify(signed, SECRET)


def test_tampered_payload_and_wrong_key() -> None:
    token, _ = issue(SECRET, sub="agent1", typ="access", ttl=60)
    header, _payload, sig = token.split(".")
    evil = _segment({"sub": "admin", "typ": "access", "exp": 9999999999})
    with pytest.raises(TokenError, match="bad signature"):
        verify(f"{header}.{evil}.{sig}", SECRET)
    with pytest.raises(TokenError, match="bad signature"):
        verify(token, "another-secret")


def test_bad_padding_and_malformed_tokens() -> None:
    token, _ = issue(SECRET, sub="x", typ="access", ttl=60)
    header, payload, sig = token.split(".")
    for bad in (
        f"{header}=.{payload}.{sig}",
        f"{header}.{payload}==.{sig}",
        f"{header}.{payload}.{sig}=",
        f"{header}.{payload}.{sig}+",
        f"{header}.{payload}",
        f"{header}.{payload}.{sig}.x",
        "",
        "a" * (tokens.MAX_TOKEN_LENGTH + 1),
        f"{header}.{payload}.{sig[:-1]}",
    ):
        with pytest.raises(TokenError):
            verify(bad, SECRET)


def test_non_object_payload_is_rejected() -> None:
    header = _segment({"alg": "HS256", "typ": "JWT"})
    body = b64url_encode(b"[1,2]")
    mac = hmac.new(SECRET.encode(), f"{header}.{body}".encode(), hashlib.sha256).digest()
    with pytest.raises(TokenError, match="malformed payload"):
        verify(f"{header}.{body}.{b64url_encode(mac)}", SECRET)


def test_empty_secret_is_refused() -> None:
    with pytest.raises(ValueError):
        sign({"sub": "x"}, "")


# ---- VerifiedTokens: the memo of tokens that passed -------------------------------------


def test_verified_tokens_skip_the_signature_on_a_repeat(monkeypatch) -> None:
    memo = tokens.VerifiedTokens(SECRET, typ="chat")
    token, claims = issue(SECRET, sub="c1", typ="chat", ttl=60, now=1000)
    assert memo.verify(token, now=1001) == claims
    calls = []
    monkeypatch.setattr(tokens.hmac, "new", lambda *a, **k: calls.append(a))
    assert memo.verify(token, now=1002) is memo.verify(token, now=1003)
    assert calls == [] and len(memo) == 1


def test_verified_tokens_refuse_an_expired_hit_and_forget_it() -> None:
    memo = tokens.VerifiedTokens(SECRET, leeway=30)
    token, _ = issue(SECRET, sub="c1", typ="chat", ttl=60, now=1000)
    memo.verify(token, now=1000)
    assert memo.verify(token, now=1060 + 29)["sub"] == "c1"
    with pytest.raises(TokenError, match="expired"):
        memo.verify(token, now=1060 + 31)
    assert len(memo) == 0


def test_verified_tokens_keep_only_successes() -> None:
    memo = tokens.VerifiedTokens(SECRET, typ="chat")
    wrong_type, _ = issue(SECRET, sub="c1", typ="access", ttl=60)
    other_key, _ = issue("another-secret-entirely", sub="c1", typ="chat", ttl=60)
    for bad in (wrong_type, other_key, "not.a.token", ""):
        for _ in range(2):  # refused each time, never remembered
            with pytest.raises(TokenError):
                memo.verify(bad)
    assert len(memo) == 0


def test_verified_tokens_drop_the_oldest_when_full() -> None:
    memo = tokens.VerifiedTokens(SECRET, maxsize=3)
    issued = [issue(SECRET, sub=f"c{n}", typ="chat", ttl=60)[0] for n in range(4)]
    for token in issued:
        memo.verify(token)
    assert len(memo) == 3
    assert list(memo._memo) == issued[1:]
    assert memo.verify(issued[0])["sub"] == "c0"  # verified again, then remembered
    assert list(memo._memo) == [*issued[2:], issued[0]]
