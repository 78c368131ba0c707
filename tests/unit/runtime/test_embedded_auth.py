from __future__ import annotations

import base64
from urllib.parse import urlencode

import pytest

from engine.app import create_app
from engine.auth import AuthError
from engine.auth.embedded import (
    EmbeddedAuthProvider,
    InMemoryUserDirectory,
    OAuthError,
    UserRecord,
    plain_password,
    split_username,
)
from engine.auth.tokens import verify
from engine.store.passwords import hash_password

SECRET = "unit-test-signing-secret"
USERS = {
    "admin": {"password": "admin-pass-123", "roles": ["admin"]},
    "ccid1\\agent1": {"password": "nexus_password", "roles": ["agent"]},
    "ccid1\\gone": {"password": "whatever-pass", "roles": ["agent"], "enabled": False},
}
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def _basic(user: str, password: str) -> dict[str, str]:
    raw = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


def _provider(**kw) -> EmbeddedAuthProvider:
    return EmbeddedAuthProvider(
        secret=SECRET, users=InMemoryUserDirectory.from_mapping(USERS), **kw
    )


def test_split_username() -> None:
    assert split_username("ccid1\\agent1") == ("ccid1", "agent1")
    assert split_username("ccid1\\\\agent1") == ("ccid1", "agent1")
    assert split_username("admin") == (None, "admin")


async def test_password_grant_tenant_user() -> None:
    provider = _provider()
    params = {"username": "ccid1\\agent1", "password": "nexus_password",
              "grant_type": "password", "client_id": "nexus_client"}
    answer = await provider.token(params, ("nexus_client", ""))
    assert set(answer) == {"access_token", "token_type", "refresh_token", "expires_in", "scope"}
    assert answer["token_type"] == "bearer" and answer["scope"] == "*"
    assert answer["expires_in"] == 43199
    claims = verify(answer["access_token"], SECRET, typ="access")
    assert claims["sub"] == "agent1" and claims["ten"] == "ccid1" and claims["roles"] == ["agent"]
    principal = await provider.authenticate(answer["access_token"])
    assert principal.kind == "user" and principal.tenant == "ccid1"
    assert principal.has_permission("nexus:agent:presence", tenant="ccid1")


async def test_password_grant_environment_admin_and_errors() -> None:
    provider = _provider()
    answer = await provider.token(
        {"username": "admin", "password": "admin-pass-123", "grant_type": "password"},
        ("nexus_client", ""),
    )
    principal = await provider.authenticate(answer["access_token"])
    assert principal.all_tenants and principal.is_admin
    for username, password in [
        ("admin", "wrong"),
        ("ccid2\\agent1", "nexus_password"),  # same user name, other tenant
        ("agent1", "nexus_password"),  # a tenant user is not an environment user
        ("ccid1\\gone", "whatever-pass"),  # disabled
    ]:
        with pytest.raises(OAuthError) as err:
            await provider.token({"username": username, "password": password,
                                  "grant_type": "password"}, ("nexus_client", ""))
        assert (err.value.status, err.value.error) == (400, "invalid_grant")
    with pytest.raises(OAuthError) as err:
        await provider.token({"grant_type": "password", "username": "admin"},
                             ("nexus_client", ""))
    assert err.value.error == "invalid_request"


async def test_client_authentication() -> None:
    provider = _provider(client_secret="cs-secret-1")
    with pytest.raises(OAuthError) as err:
        await provider.token({"grant_type": "client_credentials"}, ("nexus_client", ""))
    assert (err.value.status, err.value.error) == (401, "invalid_client")
    with pytest.raises(OAuthError) as err:
        await provider.token({"grant_type": "client_credentials"}, None)
    assert err.value.error == "invalid_client"
    with pytest.raises(OAuthError) as err:
        await provider.token({"grant_type": "client_credentials", "client_id": "other"},
                             ("nexus_client", "cs-secret-1"))
    assert err.value.error == "invalid_request"
    ok = await provider.token({"grant_type": "client_credentials", "client_id": "nexus_client",
                               "client_secret": "cs-secret-1"}, None)
    assert "refresh_token" not in ok
    principal = await provider.authenticate(ok["access_token"])
    assert principal.kind == "client" and principal.name == "nexus_client"
    with pytest.raises(OAuthError) as err:
        await provider.token({"grant_type": "implicit"}, ("nexus_client", "cs-secret-1"))
    assert err.value.error == "unsupported_grant_type"


async def test_refresh_grant_rotates_and_rechecks_the_user() -> None:
    users = InMemoryUserDirectory.from_mapping(USERS)
    provider = EmbeddedAuthProvider(secret=SECRET, users=users)
    first = await provider.token({"grant_type": "password", "username": "ccid1\\agent1",
                                  "password": "nexus_password"}, ("nexus_client", ""))
    again = await provider.token({"grant_type": "refresh_token",
                                  "refresh_token": first["refresh_token"]}, ("nexus_client", ""))
    assert again["refresh_token"] != first["refresh_token"]
    with pytest.raises(OAuthError) as err:  # an access token is not a refresh token
        await provider.token({"grant_type": "refresh_token",
                              "refresh_token": first["access_token"]}, ("nexus_client", ""))
    assert err.value.error == "invalid_grant"
    users.replace([])
    with pytest.raises(OAuthError) as err:
        await provider.token({"grant_type": "refresh_token",
                              "refresh_token": again["refresh_token"]}, ("nexus_client", ""))
    assert err.value.error == "invalid_grant"


async def test_expired_access_token_is_rejected() -> None:
    now = [1_000_000.0]
    provider = _provider(access_ttl=60, clock=lambda: now[0])
    answer = await provider.token({"grant_type": "client_credentials"}, ("nexus_client", ""))
    assert answer["expires_in"] == 59
    now[0] += 60 + 31
    with pytest.raises(AuthError, match="expired"):
        await provider.authenticate(answer["access_token"])


async def test_password_verifiers() -> None:
    async def async_check(p: str) -> bool:
        return p == "async-pass"

    users = InMemoryUserDirectory([
        UserRecord("a", None, frozenset(), plain_password("plain-pass")),
        UserRecord("b", None, frozenset(), async_check),
        UserRecord("c", None, frozenset(), hash_password("hashed-pass", n=2**4)),
        UserRecord("d", None, frozenset(), ""),
    ])
    assert await (await users.find(None, "A")).check_password("plain-pass")
    assert not await (await users.find(None, "a")).check_password("plain-pasS")
    assert await (await users.find(None, "b")).check_password("async-pass")
    assert await (await users.find(None, "c")).check_password("hashed-pass")
    assert not await (await users.find(None, "c")).check_password("nope")
    assert not await (await users.find(None, "d")).check_password("")


# ------------------------------------------------------------------ over HTTP (ASGI)
@pytest.fixture
def app(settings):
    return create_app(settings, user_directory=InMemoryUserDirectory.from_mapping(USERS))


async def test_guide_password_curl(app) -> None:
    # curl --user nexus_client: --request POST '$authURL/auth/v3/oauth/token'
    #   --data-urlencode 'username=$ccId\\$tenantUser' --data-urlencode 'client_id=nexus_client'
    #   --data-urlencode 'grant_type=password' --data-urlencode 'password=$tenantUserPassword'
    body = urlencode({"username": "ccid1\\\\agent1", "client_id": "nexus_client",
                      "grant_type": "password", "password": "nexus_password"})
    _, resp = await app.asgi_client.post("/auth/v3/oauth/token", content=body,
                                         headers={**FORM, **_basic("nexus_client", "")})
    assert resp.status == 200, resp.text
    assert resp.headers["cache-control"] == "no-store"
    data = resp.json
    assert data["token_type"] == "bearer" and data["expires_in"] == 43199
    _, info = await app.asgi_client.get(
        "/auth/v3/userinfo", headers={"Authorization": f"Bearer {data['access_token']}"}
    )
    assert info.status == 200
    assert info.json["user_name"] == "agent1" and info.json["contactCenterId"] == "ccid1"
    assert info.json["roles"] == ["agent"]


async def test_guide_client_credentials_curl_with_query(app) -> None:
    # curl --user nexus_client: --request POST
    #   '$authURL/auth/v3/oauth/token?grant_type=client_credentials&scope=*
    #    &client_id=nexus_client&client_secret='
    url = ("/auth/v3/oauth/token?grant_type=client_credentials&scope=*"
           "&client_id=nexus_client&client_secret=")
    _, resp = await app.asgi_client.post(url, headers=_basic("nexus_client", ""))
    assert resp.status == 200
    assert set(resp.json) == {"access_token", "token_type", "expires_in", "scope"}
    _, resp = await app.asgi_client.post(url)  # query-only client authentication
    assert resp.status == 200


async def test_oauth_errors_over_http(app) -> None:
    _, resp = await app.asgi_client.post(
        "/auth/v3/oauth/token", content="grant_type=password&username=admin&password=bad",
        headers={**FORM, **_basic("nexus_client", "")},
    )
    assert resp.status == 400
    assert resp.json["error"] == "invalid_grant" and "error_description" in resp.json
    _, resp = await app.asgi_client.post(
        "/auth/v3/oauth/token", content="grant_type=client_credentials",
        headers={**FORM, **_basic("intruder", "x")},
    )
    assert resp.status == 401 and resp.json["error"] == "invalid_client"
    assert resp.headers["www-authenticate"].startswith("Basic")
    _, resp = await app.asgi_client.post(
        "/auth/v3/oauth/token", content="grant_type=client_credentials",
        headers={**FORM, "Authorization": "Basic !!!"},
    )
    assert resp.status == 401
    _, resp = await app.asgi_client.post(
        "/auth/v3/oauth/token", content='{"grant_type": "password"}',
        headers={"Content-Type": "application/json", **_basic("nexus_client", "")},
    )
    assert resp.status == 400 and resp.json["error"] == "invalid_request"


async def test_userinfo_needs_a_valid_bearer(app) -> None:
    _, resp = await app.asgi_client.get("/auth/v3/userinfo")
    assert resp.status == 401
    assert resp.json["status"]["code"] == 3 and resp.json["status"]["field"] == "Authorization"
    _, resp = await app.asgi_client.get("/auth/v3/userinfo",
                                        headers={"Authorization": "Bearer not.a.token"})
    assert resp.status == 401
