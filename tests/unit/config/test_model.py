"""The sample config validates clean and its model holds the guide's whole setup."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import pytest

from engine.config.model import Model, Secret
from engine.config.refs import RefError
from engine.config.validate import validate_paths

CONFIG = Path(__file__).resolve().parents[3] / "config"
CCID = "578ec98e-f07c-46ad-9675-f36c22f3ba9f"


@pytest.fixture(scope="module")
def model() -> Model:
    result = validate_paths([CONFIG], env={})
    assert result.errors == [], "\n".join(map(str, result.errors))
    assert {f.code for f in result.warnings} <= {"NX703"}
    assert result.model is not None
    return result.model


def test_sample_is_clean_in_serve_mode_with_secrets() -> None:
    names = {
        "NEXUS_ADMIN_PASSWORD", "NEXUS_DESIGNER_PASSWORD", "T1001_GWS_TOKEN",
        "T1001_KALEYRA_USERNAME", "T1001_KALEYRA_PASSWORD", "T1001_ASYNC_WEBHOOK_SECRET",
        "T1001_ASYNC_API_SECRET", "T1001_PURECLOUD_CLIENT_ID", "T1001_PURECLOUD_CLIENT_SECRET",
        "T1001_SPARKPOST_APIKEY", "T1001_AI_CONNECTOR_SECRET", "T1001_CHAT_API_KEY",
        "T1001_DESIGNER_API_KEY", "T1001_CXC_API_KEY", "T1001_ALICE_PASSWORD",
        "T1001_SAM_PASSWORD",
    }
    result = validate_paths([CONFIG], mode="serve", env={n: "x" for n in names})
    assert result.findings == []
    assert result.model is not None
    missing = validate_paths([CONFIG], mode="serve", env={})
    assert missing.model is None
    assert {f.code for f in missing.errors} == {"NX703"}


def test_environment(model: Model) -> None:
    env = model.environment
    assert env.nexus_url == "http://localhost:8080"
    assert env.interaction_subtypes == ("SMS",)
    assert env.gws.communication is not None and env.gws.conversation is not None
    assert env.gws.communication.sandbox[0] == "ALLOW-SCRIPTS"
    assert env.gws.workspace["interaction.web-content"] == "NexusConversation"
    assert env.ucs["index.contact"]["enabled"] is True
    assert env.routing.redirect_queue.fallback_queue == "sms-support"
    assert env.routing.undelivered.on_give_up == "park"
    assert env.routing.undelivered.delay(1) == 30
    assert env.routing.undelivered.delay(20) == 3600
    assert env.delivery.timeout_seconds == 10


def test_tenant(model: Model) -> None:
    tenant = model.tenant_by_ccid(CCID.upper())
    assert tenant is not None and tenant is model.tenant("t1001")
    assert tenant.genesystenantid == 1 and tenant.enabled
    assert isinstance(tenant.token, Secret)
    assert tenant.sms_provider == "Portico" and tenant.email_provider == "SparkPost"
    assert set(tenant.services) == {
        "SMS", "mGageSMS", "Async", "PurecloudIDP", "PorticoSMS", "Email", "SparkPostEmail",
        "PorticoEmail", "PlatformUCS", "WebhookTransportTarget-ai-connector",
    }
    assert [t.name for t in tenant.webhook_targets] == ["WebhookTransportTarget-ai-connector"]
    channel = tenant.async_channel("16504661149")
    assert channel is not None and channel.webhook_url.startswith("https://")
    assert channel.api_secret == Secret("${env:T1001_ASYNC_API_SECRET}")
    assert channel.webhook_secret is not None
    assert channel.webhook_secret.resolve({"T1001_ASYNC_WEBHOOK_SECRET": "s"}) == "s"
    with pytest.raises(RefError):
        channel.webhook_secret.resolve({})
    keys = {k.name: k for k in tenant.apikeys}
    assert keys["API key for t1001"].capacity == 120
    assert keys["API key for t1001"].frequency == 60
    assert keys["API key for t1001"].expires is None
    assert keys["CX Contact API key"].capacity == 600
    assert keys["CX Contact API key"].expires == dt.date(2027, 12, 31)
    assert keys["CX Contact API key"].allows("nexus:cxc:send")
    assert not keys["Designer API key"].allows("nexus:consumer:chat")


def test_channels_and_endpoints(model: Model) -> None:
    kaleyra = model.channel("1650466114")
    assert kaleyra is not None and kaleyra.provider == "mGage" and kaleyra.is_chat
    assert kaleyra.tenant == "t1001" and kaleyra.scope is None
    gateway = model.channel("16504661149")
    assert gateway is not None and gateway.provider == "Async" and gateway.tenant == "t1001"
    campaigns = model.channel("18885550101")
    assert campaigns is not None and campaigns.cxc_only and campaigns.provider == "Portico"
    domain = model.channel("company.com")
    assert domain is not None and domain.channel_type == "email" and domain.provider == "Async"
    newsletters = model.channel("news.company.com")
    assert newsletters is not None and newsletters.provider is None
    assert model.channel("nope") is None
    assert len(model.channels_of("t1001")) == 6
    endpoint = model.endpoint("SMS_CustomerSupport")
    assert endpoint is not None and endpoint is model.endpoint("chat.SMS_CustomerSupport")
    assert endpoint.strategy == "redirect_queue" and endpoint.queue == "sms-support"
    assert model.endpoint("SMS_Main", tenant="t1001") is model.endpoint("SMS_Main")
    assert dict(model.headers("Async", tenant="t1001")) == {
        "custom-header-for-async-1": "12345",
        "X-Tenant": "t1001",
    }
    designer = model.designer_env("t1001")
    assert designer is not None and designer.baseurl == "/nexus/v1"
    services = model.transaction("NexusServices")
    assert services is not None and "Async" in services.sections


def test_queues_and_users(model: Model) -> None:
    asynchold = model.queue("asynchold", tenant="t1001")
    assert asynchold is not None and asynchold.tenant is None
    assert asynchold.view is not None and asynchold.view.freeze_interval == 30
    assert asynchold.strategy is not None and asynchold.strategy.template == "redirect_queue"
    assert asynchold.submitter is not None and asynchold.submitter.strategy == "asynchold.ER"
    undelivered = model.queue("undelivered")
    assert undelivered is not None and undelivered.strategy is not None
    assert undelivered.strategy.template == "undelivered"
    nexus = model.user("nexus")
    assert nexus is not None and nexus.roles == ("admin",) and nexus.agent is None
    alice = model.user("ALICE", tenant="t1001")
    assert alice is not None and alice.agent is not None
    assert alice.agent.queues == ("sms-support",) and alice.agent.capacity["sms"] == 3
    assert [u.username for u in model.agents_of("sms-support", "t1001")] == ["alice"]
    assert {u.username for u in model.users_of("t1001")} == {"alice", "sam"}
    assert len(model.secrets()) == 18


def test_model_is_immutable(model: Model) -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        model.tenants = ()  # type: ignore[misc]
    tenant = model.tenants[0]
    with pytest.raises(TypeError):
        tenant.services["X"] = tenant.services["SMS"]  # type: ignore[index]
    with pytest.raises(TypeError):
        tenant.services["SMS"].data["provider"] = "x"  # type: ignore[index]
    assert "T1001" in repr(tenant.token) and str(tenant.token) == "${env:T1001_GWS_TOKEN}"
