"""Unit tests of the messaging runtime's pure parts: pacing slots, the mps option, the
self-authenticated routes, queue rows and leases."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from engine.api.security import SELF_AUTHENTICATED
from engine.channels.retry import RetryPolicy
from engine.messaging import queue as q
from engine.messaging.campaigns import DEFAULT_MPS, Pacer, sender_mps
from engine.messaging.outbound import lease_seconds
from engine.store.cache import Cache

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("path", [
    "/nexus/v3/channels/16504661149/messages", "/nexus/v3/channels/company.com/media",
    "/nexus/v3/sms/message", "/nexus/v3/sms/receipt", "/nexus/v3/sms/mgage/abc-123",
])
def test_provider_webhooks_authenticate_themselves(path: str) -> None:
    assert SELF_AUTHENTICATED.match(path)


@pytest.mark.parametrize("path", [
    "/nexus/v3/channels", "/nexus/v3/channels/1/messages/x", "/nexus/v3/cxc/sms",
    "/nexus/v3/sms/mgage", "/nexus/v3/routing/undelivered/retry", "/nexus/v3/sms/messages",
    "/nexus/v3/channels/../provisioning/tenants",
])
def test_other_routes_need_credentials(path: str) -> None:
    assert not SELF_AUTHENTICATED.match(path)


async def test_pacer_slots_are_unique_and_spaced_across_processes() -> None:
    cache = Cache("memory://", prefix="pace-test:")
    await cache.connect()
    try:
        now = [1000.0]
        one, two = Pacer(cache, clock=lambda: now[0]), Pacer(cache, clock=lambda: now[0])
        slots = []
        for _ in range(5):
            slots.append(await one.slot("t", "s", 10.0))
            slots.append(await two.slot("t", "s", 10.0))
        assert len(set(slots)) == 10
        ordered = sorted(slots)
        gaps = [round(b - a, 6) for a, b in zip(ordered, ordered[1:], strict=False)]
        assert gaps == [0.1] * 9
        assert ordered[0] >= 1000.0
        other = await one.slot("t", "another sender", 10.0)
        assert other == 1000.0
    finally:
        await cache.close()


def _model(tmp: Path, mps: object | None) -> object:
    from engine.config.validate import validate_paths

    config = tmp / "config"
    shutil.copytree(ROOT / "config", config)
    path = config / "transactions.yaml"
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    if mps is not None:
        for doc in docs:
            if doc["name"] == "NexusServices":
                doc["spec"]["sections"]["chat.SMS_Campaigns"]["mps"] = mps
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    result = validate_paths([str(config)], mode="lint")
    return result


def test_mps_option_of_the_section(tmp_path: Path) -> None:
    result = _model(tmp_path, 2.5)
    model = result.model
    assert model is not None
    assert sender_mps(model, model.channel("18885550101")) == 2.5
    assert sender_mps(model, model.channel("18885550100")) == DEFAULT_MPS
    assert sender_mps(model, None) == DEFAULT_MPS


def test_mps_must_be_positive(tmp_path: Path) -> None:
    result = _model(tmp_path, 0)
    assert result.model is None
    assert any("mps" in str(f) for f in result.findings)


def _row(**values: object) -> q.OutboundRow:
    base = {k: None for k in (
        "id", "tenant", "kind", "media", "channel_id", "provider", "to_address",
        "conversation_id", "interaction_id", "external_id", "text", "subject", "html",
        "from_address", "from_name", "status", "reason", "attempts", "undelivered_attempts",
        "next_attempt_at", "provider_message_id", "last_error", "trace_id", "created",
        "updated", "sent_at")}
    base.update(values)
    return q.OutboundRow.from_row(base)


def test_strategy_attempt_and_api_view() -> None:
    assert _row(reason="retry:2").strategy_attempt == 2
    assert _row(reason="parked").strategy_attempt is None
    assert _row(reason=None).strategy_attempt is None
    view = _row(id="m1", status="refused", reason="OPTED_OUT", channel_id="1", to_address="2",
                provider="Portico", external_id="e").to_dict()
    assert view["reason"] == "OPTED_OUT"
    assert view["externalId"] == "e"
    assert "reason" not in _row(id="m", status="retrying", reason="retry:1").to_dict()


def test_a_claim_outlives_the_whole_retry_sequence() -> None:
    policy = RetryPolicy(max_attempts=5, initial_delay=1, multiplier=2, max_delay=300,
                         timeout=10)
    # 5 timeouts + 1 + 2 + 4 + 8 s of backoff + margin
    assert lease_seconds(policy) == 5 * 10 + 15 + 30
