"""Units of the chat HTTP layer: widget fields, client tokens, upload policy, error mapping,
query credentials, the model-tracking decider."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.api.chat import (
    ChatAuthError,
    ChatRuntime,
    check_client_token,
    content_disposition,
    conversation_error,
    file_policy_from_env,
    issue_client_token,
    session_arguments,
)
from engine.api.chat_wiring import ModelTrackingDecider
from engine.api.errors import BadRequest
from engine.api.security import query_credentials_allowed
from engine.auth.tokens import verify
from engine.routing.conversation_models import (
    FilePolicy,
    FileTooLarge,
    InvalidContactCenter,
    InvalidFileType,
    InvalidNickname,
    TooManyFiles,
)
from engine.routing.decider import InteractionInfo


def runtime(ttl: int = 3600) -> ChatRuntime:
    return ChatRuntime(service=None, secret="s" * 32, policy=FilePolicy(),  # type: ignore[arg-type]
                       token_ttl=ttl)


def test_session_arguments_from_widget_fields() -> None:
    args = session_arguments({
        "firstName": " Ann ", "lastName": "Lee", "email": "a@example.com", "endpoint": "Main",
        "subject": "Order", "userData": {"orderId": "42"}, "stream": "web", "custom": "x",
    })
    assert args["first_name"] == "Ann" and args["last_name"] == "Lee"
    assert args["endpoint"] == "Main" and args["nickname"] is None
    assert args["user_data"] == {"orderId": "42", "stream": "web", "custom": "x"}
    with pytest.raises(BadRequest):
        session_arguments({"userData": "nope"})
    with pytest.raises(BadRequest):
        session_arguments({"nickname": {"a": "b"}})
    with pytest.raises(BadRequest):
        session_arguments({"nickname": "n" * 2000})


def test_client_token_binds_session_and_tenant() -> None:
    chat = runtime()
    token = issue_client_token(chat, ccid="c1", session_id="s1", participant_id="p1")
    claims = verify(token, chat.secret, typ="chat")
    assert {k: claims[k] for k in ("sessionId", "participantId", "ccid")} == {
        "sessionId": "s1", "participantId": "p1", "ccid": "c1"}
    assert claims["transportId"] and claims["exp"] > claims["iat"]
    assert check_client_token(chat, token, "c1", "s1") == "p1"
    for ccid, sid in (("c1", "s2"), ("c2", "s1")):
        with pytest.raises(ChatAuthError) as err:
            check_client_token(chat, token, ccid, sid)
        assert (err.value.status_code, err.value.code) == (403, 5)
    for bad in (None, "", "garbage", token + "x"):
        with pytest.raises(ChatAuthError) as err:
            check_client_token(chat, bad, "c1", "s1")
        assert (err.value.status_code, err.value.code, err.value.message) == (
            401, 3, "AUTHENTICATION_REQUIRED")
    other = ChatRuntime(None, "t" * 32, FilePolicy())  # type: ignore[arg-type]
    with pytest.raises(ChatAuthError):
        check_client_token(other, token, "c1", "s1")
    expired = issue_client_token(runtime(ttl=-600), ccid="c1", session_id="s1",
                                 participant_id="p1")
    with pytest.raises(ChatAuthError):
        check_client_token(chat, expired, "c1", "s1")


def test_file_policy_from_env() -> None:
    assert file_policy_from_env({}) == FilePolicy()
    policy = file_policy_from_env({"NEXUS_CHAT_FILE_TYPES": "image/*, application/pdf",
                                   "NEXUS_CHAT_FILE_MAX_SIZE": "100",
                                   "NEXUS_CHAT_FILE_MAX_COUNT": "3"})
    assert policy == FilePolicy(("image/*", "application/pdf"), 100, 3)
    assert policy.allows("application/pdf") and not policy.allows("text/plain")
    for bad in ({"NEXUS_CHAT_FILE_MAX_SIZE": "big"}, {"NEXUS_CHAT_FILE_MAX_COUNT": "0"}):
        with pytest.raises(ValueError):
            file_policy_from_env(bad)


def test_error_mapping_keeps_widget_identifiers() -> None:
    cases = [
        (InvalidFileType(), 415, 2, "INVALID_FILE_TYPE"),
        (FileTooLarge(), 413, 2, "LIMIT_FILE_SIZE"),
        (TooManyFiles(), 400, 2, "LIMIT_FILE_COUNT"),
        (InvalidContactCenter(), 404, 6, "INVALID_CONTACT_CENTER"),
        (InvalidNickname(field="nickname"), 400, 1, "INVALID_NICKNAME"),
    ]
    for exc, status, code, message in cases:
        err = conversation_error(exc)
        assert (err.status_code, err.code, err.message) == (status, code, message)
    assert conversation_error(InvalidNickname(field="nickname")).field == "nickname"


@given(st.text(min_size=1, max_size=60))
def test_content_disposition_is_one_safe_header(name: str) -> None:
    value = content_disposition(name, "image/png")
    assert value.startswith('inline; filename="')
    assert "\r" not in value and "\n" not in value
    quoted = value.split('filename="', 1)[1].split('"; filename*=', 1)[0]
    assert '"' not in quoted and "\\" not in quoted
    assert content_disposition(name, "application/pdf").startswith("attachment;")


def test_query_credentials_only_on_streams_and_downloads() -> None:
    assert query_credentials_allowed("/nexus/v3/chat/sessions/x/stream")
    assert query_credentials_allowed("/chat/v3/sessions/x/files/y")
    assert query_credentials_allowed("/nexus/v3/agent/stream")
    for path in ("/nexus/v3/chat/sessions", "/chat/v3/sessions/x/messages",
                 "/nexus/v3/agent/interactions", "/nexus/v3/provisioning/tenants/stream",
                 "/nexus/v3/apikeys"):
        assert not query_credentials_allowed(path)


async def test_decider_follows_config_reloads() -> None:
    class Runner:
        def __init__(self) -> None:
            self.model: Any = "old"
            self.seen: list[Any] = []

        def set_model(self, model: Any) -> None:
            self.model = model

        async def run(self, name: str, interaction: Any, params: Any = None,
                      event: str = "") -> Any:
            self.seen.append((name, self.model))
            return SimpleNamespace(actions=[], error=None)

    current = {"model": "old"}
    runner = Runner()
    decider = ModelTrackingDecider(runner, lambda: current["model"])
    info = InteractionInfo("i1", "asynchold", {})
    await decider.decide("redirect_queue", info)
    current["model"] = "new"
    await decider.decide("redirect_queue", info)
    assert runner.seen == [("redirect_queue", "old"), ("redirect_queue", "new")]
