"""Retry policy, error classification, opt-out keyword rules and the registry."""

from __future__ import annotations

import datetime as dt

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.channels.async_gateway import AsyncGatewayAdapter
from engine.channels.base import (
    PermanentSendError,
    ProviderNotConfigured,
    TransientSendError,
    classify_transport_error,
    parse_retry_after,
    raise_for_response,
)
from engine.channels.mgage import MGageAdapter
from engine.channels.optout import OptAction, classify, normalise_address
from engine.channels.portico import PorticoSmsAdapter
from engine.channels.portico_email import PorticoEmailAdapter
from engine.channels.registry import AdapterRegistry, adapter_name, provider_of_channel
from engine.channels.retry import DeliveryGaveUp, RetryPolicy, compute_delay, send_with_retry
from engine.channels.sparkpost import SparkPostAdapter, transmissions_url
from engine.config.model import Delivery

from .support import make_model

# ---- classification --------------------------------------------------------------------


def response(status: int, **headers: str) -> httpx.Response:
    return httpx.Response(status, headers=headers, content=b"nope")


@pytest.mark.parametrize("status", [500, 502, 503, 504, 599, 408, 429])
def test_transient_statuses(status: int) -> None:
    with pytest.raises(TransientSendError) as info:
        raise_for_response(response(status), "P")
    assert info.value.status_code == status


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 410, 413, 422, 301, 302])
def test_permanent_statuses(status: int) -> None:
    with pytest.raises(PermanentSendError):
        raise_for_response(response(status), "P")


@pytest.mark.parametrize("status", [200, 201, 202, 204])
def test_success_statuses(status: int) -> None:
    raise_for_response(response(status), "P")


def test_retry_after_seconds_and_date() -> None:
    with pytest.raises(TransientSendError) as info:
        raise_for_response(response(429, **{"Retry-After": "7"}), "P")
    assert info.value.retry_after == 7
    now = dt.datetime(2024, 5, 1, 12, 0, 0, tzinfo=dt.UTC)
    assert parse_retry_after("Wed, 01 May 2024 12:00:30 GMT", now) == 30
    assert parse_retry_after("Wed, 01 May 2024 11:00:30 GMT", now) == 0
    assert parse_retry_after("soon", now) is None and parse_retry_after(None) is None


def test_transport_errors() -> None:
    request = httpx.Request("POST", "http://x")
    assert isinstance(classify_transport_error(httpx.ReadTimeout("t", request=request), "P"),
                      TransientSendError)
    assert isinstance(classify_transport_error(httpx.ConnectError("c", request=request), "P"),
                      TransientSendError)
    assert isinstance(classify_transport_error(httpx.UnsupportedProtocol("u"), "P"),
                      PermanentSendError)


# ---- retry -----------------------------------------------------------------------------


def test_delays_from_delivery_policy() -> None:
    policy = RetryPolicy.from_delivery(
        Delivery(max_attempts=6, initial_delay_seconds=1, backoff_multiplier=2,
                 max_delay_seconds=10, jitter=0.0, timeout_seconds=3))
    assert [compute_delay(policy, n, 0.5) for n in range(1, 6)] == [1, 2, 4, 8, 10]
    assert policy.timeout == 3 and policy.max_attempts == 6


@given(
    retry=st.integers(min_value=1, max_value=200),
    u=st.floats(min_value=0, max_value=1),
    jitter=st.floats(min_value=0, max_value=1),
)
def test_jitter_stays_within_bounds(retry: int, u: float, jitter: float) -> None:
    policy = RetryPolicy(initial_delay=0.5, multiplier=3, max_delay=120, jitter=jitter)
    base = policy.base_delay(retry)
    delay = compute_delay(policy, retry, u)
    assert base * (1 - jitter) - 1e-9 <= delay <= base + 1e-9
    assert delay <= 120


@given(u=st.floats(min_value=0, max_value=1), previous=st.floats(min_value=0.5, max_value=500))
def test_decorrelated_jitter_bounds(u: float, previous: float) -> None:
    policy = RetryPolicy(initial_delay=0.5, max_delay=60, mode="decorrelated")
    delay = compute_delay(policy, 3, u, previous=previous)
    assert 0.5 <= delay <= 60


def test_retry_after_wins_when_longer() -> None:
    policy = RetryPolicy(initial_delay=1, jitter=0)
    assert compute_delay(policy, 1, 0.0, retry_after=30) == 30
    assert compute_delay(policy, 1, 0.0, retry_after=0.1) == 1


async def test_send_with_retry_sleeps_per_policy_and_gives_up() -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    calls: list[int] = []

    async def flaky(attempt: int) -> str:
        calls.append(attempt)
        if attempt < 3:
            raise TransientSendError("5xx", status_code=503,
                                     retry_after=9 if attempt == 2 else None)
        return "ok"

    policy = RetryPolicy(max_attempts=4, initial_delay=1, multiplier=2, jitter=0)
    assert await send_with_retry(flaky, policy, sleep=sleep, rng=lambda: 0.0) == "ok"
    assert calls == [1, 2, 3] and slept == [1, 9]

    async def down(attempt: int) -> str:
        raise TransientSendError("timeout")

    slept.clear()
    with pytest.raises(DeliveryGaveUp) as info:
        await send_with_retry(down, policy, sleep=sleep, rng=lambda: 0.0)
    assert info.value.attempts == 4 and slept == [1, 2, 4]
    assert isinstance(info.value, PermanentSendError)

    async def refused(attempt: int) -> str:
        calls.append(attempt)
        raise PermanentSendError("400")

    calls.clear()
    seen: list[tuple[int, float]] = []
    with pytest.raises(PermanentSendError):
        await send_with_retry(refused, policy, sleep=sleep,
                              on_retry=lambda a, e, d: seen.append((a, d)))
    assert calls == [1] and seen == []


# ---- opt-out keywords ------------------------------------------------------------------

OUT = ["STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT"]
IN = ["START", "UNSTOP"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("STOP", ("STOP", OptAction.OUT, False)),
        ("stop", ("STOP", OptAction.OUT, False)),
        ("  Stop.  ", ("STOP", OptAction.OUT, False)),
        ("STOP!!", ("STOP", OptAction.OUT, False)),
        ("stop\n", ("STOP", OptAction.OUT, False)),
        ("StopAll", ("STOPALL", OptAction.OUT, True)),
        ("unsubscribe?", ("UNSUBSCRIBE", OptAction.OUT, False)),
        ("Cancel", ("CANCEL", OptAction.OUT, False)),
        ("end", ("END", OptAction.OUT, False)),
        ("quit", ("QUIT", OptAction.OUT, False)),
        ("Revoke", ("REVOKE", OptAction.OUT, False)),
        ("optout", ("OPTOUT", OptAction.OUT, False)),
        ("start", ("START", OptAction.IN, False)),
        ("Unstop.", ("UNSTOP", OptAction.IN, False)),
        ("stop please", None),
        ("please stop", None),
        ("don't stop", None),
        ("S T O P", None),
        ("stopp", None),
        ("opt out", None),
        ("", None),
        (None, None),
        ("...", None),
        ("¿stop", None),
    ],
)
def test_keyword_table(text, expected) -> None:
    found = classify(text)
    if expected is None:
        assert found is None
    else:
        assert found is not None
        assert (found.keyword, found.action, found.all_channels) == expected


whitespace = st.text(alphabet=" \t\r\n\u00a0\u2003", max_size=4)
punctuation = st.text(alphabet=".!?,;:", max_size=3)


@given(
    word=st.sampled_from(OUT + IN),
    flips=st.lists(st.booleans(), min_size=11, max_size=11),
    before=whitespace,
    after=whitespace,
    trailing=punctuation,
)
def test_keywords_any_case_and_spacing(word, flips, before, after, trailing) -> None:
    cased = "".join(c.lower() if flip else c for c, flip in zip(word, flips, strict=False))
    found = classify(f"{before}{cased}{trailing}{after}")
    assert found is not None and found.keyword == word
    assert found.action == (OptAction.OUT if word in OUT else OptAction.IN)


@given(word=st.sampled_from(OUT + IN), extra=st.text(min_size=1, max_size=12).filter(
    lambda s: any(c.isalnum() for c in s)))
def test_keyword_with_more_words_is_not_a_keyword(word, extra) -> None:
    text = f"{word} {extra}"
    found = classify(text)
    assert found is None or found.keyword != word or text.strip(" .!?,;:\t\n\r") == word


def test_address_normalisation() -> None:
    assert normalise_address("+1 (650) 466-1149") == "16504661149"
    assert normalise_address("Ada@Example.COM ") == "ada@example.com"
    assert normalise_address("user-123") == "user-123"


# ---- registry --------------------------------------------------------------------------


async def test_registry_resolves_channels_and_shares_one_client() -> None:
    model = make_model()
    registry = AdapterRegistry()
    assert isinstance(registry.for_channel(model, "16504661149"), AsyncGatewayAdapter)
    assert isinstance(registry.for_channel(model, "18885550100"), PorticoSmsAdapter)
    assert isinstance(registry.for_channel(model, "1650466114"), MGageAdapter)
    assert isinstance(registry.for_channel(model, "company.com"), AsyncGatewayAdapter)
    # a cxc domain without provider uses the Email service's (SparkPost)
    assert isinstance(registry.for_channel(model, "news.company.com"), SparkPostAdapter)
    assert registry.get("Portico") is registry.get("Portico")
    email = registry.get("PorticoEmail")
    assert isinstance(email, PorticoEmailAdapter)
    assert email.client is registry.get("mGage").client is registry.client
    assert email.tokens is registry.get("Portico").tokens
    assert adapter_name("Portico", "email") == "PorticoEmail"
    assert adapter_name("Portico", "sms") == "Portico"
    with pytest.raises(ProviderNotConfigured):
        registry.get("Twilio")
    with pytest.raises(ProviderNotConfigured):
        registry.for_channel(model, "nope")
    assert provider_of_channel(model, model.channel("news.company.com")) == "SparkPost"
    await registry.aclose()
    assert registry.client.is_closed


def test_transmissions_url() -> None:
    assert transmissions_url("https://api.sparkpost.com/api/v1") == (
        "https://api.sparkpost.com/api/v1/transmissions")
    assert transmissions_url("https://sp.example/") == "https://sp.example/api/v1/transmissions"
