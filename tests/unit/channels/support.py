"""A config Model for messaging tests, its services pointing at a fake provider's URL."""

from __future__ import annotations

from types import MappingProxyType

from engine.config.model import (
    AsyncChannel,
    Channel,
    Delivery,
    Environment,
    Gws,
    Model,
    Routing,
    Secret,
    Service,
    Tenant,
)
from engine.config.refs import Ref

CCID = "578ec98e-f07c-46ad-9675-f36c22f3ba9f"
CCID2 = "11111111-2222-4333-8444-555555555555"
ASYNC_CHANNEL = "16504661149"
EMAIL_DOMAIN = "company.com"
PORTICO_NUMBER = "18885550100"
MGAGE_NUMBER = "1650466114"
API_SECRET = "api-secret-123"
WEBHOOK_SECRET = "webhook-secret-456"
TARGET_SECRET = "target-secret-789"
ENV = {
    "API_SECRET": API_SECRET,
    "WEBHOOK_SECRET": WEBHOOK_SECRET,
    "MGAGE_USER": "kaleyra-user",
    "MGAGE_PASSWORD": "kaleyra-pass",
    "GC_CLIENT_ID": "client-id-1",
    "GC_CLIENT_SECRET": "client-secret-1",
    "SPARKPOST_KEY": "sp-key-1",
    "TARGET_SECRET": TARGET_SECRET,
}


def env_secret(name: str) -> Secret:
    return Secret(Ref(f"${{env:{name}}}"))


def _service(name: str, url: str | None, secret: dict | None = None, data: dict | None = None):
    return Service(
        name=name,
        url=url,
        data=MappingProxyType(data or {}),
        secret=MappingProxyType(secret or {}),
    )


def make_model(
    base_url: str = "http://127.0.0.1:9",
    *,
    targets: dict[str, str] | None = None,
    delivery: Delivery | None = None,
) -> Model:
    """Tenant t1001 with every provider's service at ``base_url``; ``targets`` maps
    webhook target names to URLs (secret TARGET_SECRET); a second tenant t2002 without
    targets."""
    services = {
        "SMS": _service("SMS", "N/A", data={"tokenProvider": "Purecloud"}),
        "mGageSMS": _service(
            "mGageSMS",
            f"{base_url}/mgage/send",
            {"username": env_secret("MGAGE_USER"), "password": env_secret("MGAGE_PASSWORD")},
        ),
        "PurecloudIDP": _service(
            "PurecloudIDP",
            f"{base_url}/login",
            {
                "clientId": env_secret("GC_CLIENT_ID"),
                "clientSecret": env_secret("GC_CLIENT_SECRET"),
            },
        ),
        "PorticoSMS": _service("PorticoSMS", f"{base_url}/gcapi"),
        "PorticoEmail": _service("PorticoEmail", f"{base_url}/gcapi"),
        "Email": _service("Email", "N/A", data={"provider": "SparkPost"}),
        "SparkPostEmail": _service(
            "SparkPostEmail", f"{base_url}/sparkpost", {"apikey": env_secret("SPARKPOST_KEY")}
        ),
    }
    for name, url in (targets or {}).items():
        full = f"WebhookTransportTarget-{name}"
        services[full] = _service(full, url, {"secret": env_secret("TARGET_SECRET")})
    async_channels = tuple(
        AsyncChannel(cid, f"{base_url}/async/hook", env_secret("WEBHOOK_SECRET"),
                     env_secret("API_SECRET"))
        for cid in (ASYNC_CHANNEL, EMAIL_DOMAIN)
    )
    tenant = Tenant(
        name="t1001", ccid=CCID, type="PureEngage", backendurl="http://gws", username="nexus",
        token=Secret("t"), genesystenantid=1, enabled=True,
        services=MappingProxyType(services), apikeys=(), async_channels=async_channels,
    )
    other = Tenant(
        name="t2002", ccid=CCID2, type="PureEngage", backendurl="http://gws", username="nexus",
        token=Secret("t"), genesystenantid=2, enabled=True,
        services=MappingProxyType({}), apikeys=(), async_channels=(),
    )

    def chat(section: str, cid: str, provider: str) -> Channel:
        return Channel(section=section, channel_id=cid, channel_type="sms", provider=provider,
                       tenant="t1001", scope=None, endpoint="chat.SMS_Main",
                       interaction_subtype="SMS", interaction_type="Inbound", media="chat")

    channels = (
        chat("chat.Async", ASYNC_CHANNEL, "Async"),
        chat("chat.Portico", PORTICO_NUMBER, "Portico"),
        chat("chat.Kaleyra", MGAGE_NUMBER, "mGage"),
        Channel(section="cxc.Corp", channel_id=EMAIL_DOMAIN, channel_type="email",
                provider="Async", tenant="t1001", scope=None),
        Channel(section="cxc.News", channel_id="news.company.com", channel_type="email",
                provider=None, tenant="t1001", scope=None),
    )
    environment = Environment(
        name="environment", nexus_url="http://nexus.test", options=MappingProxyType({}),
        business_attributes=MappingProxyType({}), gws=Gws(None, None, MappingProxyType({})),
        ucs=MappingProxyType({}), routing=Routing(),
        delivery=delivery or Delivery(timeout_seconds=2, max_attempts=3,
                                      initial_delay_seconds=1, backoff_multiplier=2,
                                      max_delay_seconds=60, jitter=0.0),
    )
    return Model(
        environment=environment, tenants=(tenant, other), transactions=(), queues=(), users=(),
        channels=channels,
        provider_headers=MappingProxyType({
            (None, "Async"): MappingProxyType({"custom-header-for-async-1": "12345",
                                               "X-Hub-Signature": "spoofed"}),
            ("t1001", "Async"): MappingProxyType({"X-Tenant": "t1001"}),
        }),
    )
