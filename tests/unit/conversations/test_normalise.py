"""Contact normalisation (E.164 phone, email), the nickname rule, file policy, actions."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.routing.contacts import ContactData, normalize_email, normalize_phone
from engine.routing.conversation_models import FilePolicy, InvalidContact, InvalidNickname
from engine.routing.conversations import ConversationService
from engine.routing.decider import Redirect, Retry, Submit, Terminate, coerce_action

E164 = re.compile(r"^\+[1-9][0-9]{6,14}$")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("+1 (650) 555-0100", "+16505550100"),
        ("001 650 555 0100", "+16505550100"),
        ("650.555.0100", "+16505550100"),
        ("1-650-555-0100", "+16505550100"),
        ("+44 7911 123456", "+447911123456"),
        ("0044 (0)7911 123456".replace("(0)", ""), "+447911123456"),
        ("  ", None),
        (None, None),
    ],
)
def test_phone_examples(raw: str | None, expected: str | None) -> None:
    assert normalize_phone(raw) == expected


def test_phone_default_country_and_trunk_zero() -> None:
    assert normalize_phone("07911 123456", "44") == "+447911123456"
    assert normalize_phone("030 1234567", "49") == "+49301234567"
    with pytest.raises(ValueError):
        normalize_phone("123", "0x")


@pytest.mark.parametrize(
    "raw", ["abc", "+1 650 CALL NOW", "++16505550100", "+0650555", "12", "+1234567890123456",
            "650-555-0100 ext 7", "+٣٣١٢٣٤٥٦٧٨"],
)
def test_phone_garbage_is_rejected(raw: str) -> None:
    with pytest.raises(InvalidContact) as info:
        normalize_phone(raw)
    assert info.value.field == "phone"


separators = st.sampled_from([" ", "-", ".", "(", ")", "/", ""])


@given(
    cc=st.sampled_from(["1", "33", "44", "49", "353"]),
    national=st.from_regex(r"[1-9][0-9]{6,10}", fullmatch=True),
    seps=st.lists(separators, min_size=1, max_size=20),
    prefix=st.sampled_from(["+", "00"]),
)
def test_phone_formatting_does_not_matter(cc: str, national: str, seps: list[str], prefix: str):
    digits = cc + national
    if len(digits) > 15:
        digits = digits[:15]
    plain = normalize_phone("+" + digits)
    assert plain is not None and E164.match(plain)
    decorated = prefix + "".join(
        d + seps[i % len(seps)] for i, d in enumerate(digits)
    )
    assert normalize_phone(decorated) == plain
    assert normalize_phone(plain) == plain  # idempotent


@given(st.text(max_size=30))
def test_phone_never_returns_non_e164(raw: str) -> None:
    try:
        value = normalize_phone(raw)
    except InvalidContact:
        return
    assert value is None or E164.match(value)
    if value is not None:
        assert normalize_phone(value) == value


def test_email() -> None:
    assert normalize_email("  Ann.Lee@Example.COM ") == "ann.lee@example.com"
    assert normalize_email("") is None and normalize_email(None) is None
    for bad in ("ann", "a@b", "a b@c.de", "@x.com", "a@@b.com"):
        with pytest.raises(InvalidContact):
            normalize_email(bad)


def test_contact_data_parse() -> None:
    data = ContactData.parse(first_name=" Ann ", email="A@B.CO", phone="650 555 0100")
    assert data == ContactData("Ann", None, None, "a@b.co", "+16505550100")


def test_nickname_rule() -> None:
    rule = ConversationService.customer_nickname
    assert rule("  Nick ", "Ann", "Lee", "a@b.co") == "Nick"
    assert rule(None, "Ann", "Lee", None) == "Ann Lee"
    assert rule("", "Ann", None, None) == "Ann"
    assert rule(None, None, "Lee", "a@b.co") == "a@b.co"
    with pytest.raises(InvalidNickname):
        rule(None, None, "Lee", None)
    with pytest.raises(InvalidNickname):
        rule("x" * 256, None, None, None)


def test_file_policy() -> None:
    policy = FilePolicy()
    assert policy.allows("image/png") and policy.allows("IMAGE/JPEG; charset=binary")
    assert not policy.allows("application/pdf")
    assert FilePolicy(allowed_types=("application/pdf",)).allows("application/pdf")
    assert FilePolicy(allowed_types=("*/*",)).allows("text/plain")


def test_coerce_action_accepts_the_runner_shapes() -> None:
    class Redirect_:  # a foreign class with the runner's name and fields
        def __init__(self, queue: str) -> None:
            self.queue = queue

    Redirect_.__name__ = "Redirect"
    assert coerce_action(Redirect_("q")) == Redirect("q")
    assert coerce_action(Redirect("q")) == Redirect("q")
    assert coerce_action(Submit("q")) == Submit("q")
    assert coerce_action(Terminate()) == Terminate("terminated")
    assert coerce_action(Retry(5.0, 2)) == Retry(5.0, 2)
    assert coerce_action(object()) is None


async def test_runner_decider_adapts_the_strategy_runner() -> None:
    from engine.routing import runner as runner_module
    from engine.routing.decider import InteractionInfo, RunnerDecider

    class FakeRunner:
        def __init__(self) -> None:
            self.seen = []

        async def run(self, name, interaction, params=None, event="interaction.added"):
            self.seen.append((name, interaction, event))
            return runner_module.StrategyOutcome(
                name=name,
                interaction_id=interaction.id,
                actions=(runner_module.Redirect("sms-support"),),
                results=(),
                final_state="redirected",
            )

    fake = FakeRunner()
    decider = RunnerDecider(fake)
    info = InteractionInfo("i1", "asynchold", {"endpoint": "chat.SMS_Main"}, "chat.SMS_Main")
    actions = await decider.decide("redirect_queue", info)
    assert [coerce_action(a) for a in actions] == [Redirect("sms-support")]
    name, passed, event = fake.seen[0]
    assert name == "redirect_queue" and isinstance(passed, runner_module.InteractionInfo)
    assert passed.udata["endpoint"] == "chat.SMS_Main" and event == "interaction.added"
