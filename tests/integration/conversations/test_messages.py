"""Sessions, messages, indexes, idempotency, durability before acknowledgement, live streams
and files, on SQLite + memory:// and PostgreSQL + Redis."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
import sqlalchemy as sa

from engine.routing.conversation_models import (
    ConversationClosed,
    FilePolicy,
    FileTooLarge,
    InvalidChannel,
    InvalidContactCenter,
    InvalidEndpoint,
    InvalidFileType,
    InvalidNickname,
    Message,
    MessageType,
    TooManyFiles,
)
from engine.store.conversation_tables import conversations, interaction_events, segments

from .conftest import CCID, SMS_CHANNEL, Engine, collect


async def test_session_messages_and_indexes(engine: Engine) -> None:
    conv = await engine.session(first_name="Ann", email="ANN@Example.com ", subject="hi")
    assert conv.customer_nickname == "Cust"
    for i in range(3):
        await engine.service.post_customer_message(CCID, conv.id, f"m{i}")
    bot = await engine.service.post_bot_message(CCID, conv.id, "bot says")
    messages = await engine.service.read_messages(CCID, conv.id)
    assert [m.index for m in messages] == [1, 2, 3, 4, 5]
    assert messages[0].type is MessageType.PARTICIPANT_JOINED
    assert [m.text for m in messages[1:]] == ["m0", "m1", "m2", "bot says"]
    assert bot.from_type.value == "Bot"
    assert [m.index for m in await engine.service.read_messages(CCID, conv.id, 4)] == [4, 5]
    as_json = messages[1].as_dict()
    assert as_json["from"]["type"] == "Customer" and as_json["index"] == 2
    assert Message.from_dict(as_json) == messages[1]
    # the contact was matched by the normalised email
    assert conv.contact_id is not None
    assert conv.customer["email"] == "ann@example.com"


async def test_session_validation(engine: Engine) -> None:
    with pytest.raises(InvalidEndpoint):
        await engine.service.create_session(CCID, endpoint="Nope", nickname="x")
    with pytest.raises(InvalidNickname):
        await engine.service.create_session(CCID, endpoint="Main", last_name="only")
    with pytest.raises(InvalidContactCenter):
        await engine.service.create_session("no-such-ccid", endpoint="Main", nickname="x")
    by_first = await engine.service.create_session(
        CCID, endpoint="chat.Main", first_name="Jo", last_name="Doe"
    )
    assert by_first.customer_nickname == "Jo Doe"
    by_email = await engine.service.create_session(CCID, endpoint="Main", email="a@b.co")
    assert by_email.customer_nickname == "a@b.co"


async def test_fifty_concurrent_posters_get_gapless_indexes(engine: Engine) -> None:
    conv = await engine.session()
    posted = await asyncio.gather(
        *(engine.service.post_customer_message(CCID, conv.id, f"p{i}") for i in range(50))
    )
    assert sorted(m.index for m in posted) == list(range(2, 52))
    stored = await engine.service.read_messages(CCID, conv.id)
    assert [m.index for m in stored] == list(range(1, 52))
    assert len({m.id for m in stored}) == 51
    assert (await engine.service.get_conversation(CCID, conv.id)).last_index == 51


async def test_lost_publish_is_recovered_and_resume_has_no_duplicate(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    conv = await engine.session()
    stream = engine.service.subscribe(CCID, conv.id, 1)
    first = await collect(stream, 1)
    assert [m.index for m in first] == [1]

    async def lost(*args, **kwargs) -> None:  # the process "dies" between commit and publish
        return None

    monkeypatch.setattr(engine.router.bus, "publish_many", lost)
    acked = await engine.service.post_customer_message(CCID, conv.id, "durable")
    assert acked.index == 2  # acknowledged: it is in the store
    monkeypatch.undo()
    # the live subscriber gets it from the store (poll), exactly once
    more = await collect(stream, 2)
    assert [m.index for m in more] == [2]
    await stream.aclose()
    # a resume on "another process" from index 1 replays both, once each
    resumed = await collect(engine.service.subscribe(CCID, conv.id, 1), 2)
    assert [m.index for m in resumed] == [1, 2]


async def test_failure_after_publish_retry_is_idempotent(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    conv = await engine.session()
    stream = engine.service.subscribe(CCID, conv.id, 1)
    await collect(stream, 1)
    original = engine.router.publish_messages

    async def publish_then_crash(segment, messages) -> None:
        await original(segment, messages)
        raise ConnectionResetError("the caller never got the acknowledgement")

    original_pairs = engine.router.publish_pairs

    async def publish_pairs_then_crash(pairs, sets, unheard=()) -> None:  # group commit
        await original_pairs(pairs, sets, unheard)
        raise ConnectionResetError("the caller never got the acknowledgement")

    monkeypatch.setattr(engine.router, "publish_messages", publish_then_crash)
    monkeypatch.setattr(engine.router, "publish_pairs", publish_pairs_then_crash)
    with pytest.raises(ConnectionResetError):
        await engine.service.post_customer_message(
            CCID, conv.id, "once", provider_message_id="client-1"
        )
    monkeypatch.undo()
    again = await engine.service.post_customer_message(
        CCID, conv.id, "once", provider_message_id="client-1"
    )
    assert again.index == 2
    after = await engine.service.post_customer_message(CCID, conv.id, "next")
    got = await collect(stream, after.index or 0)
    assert [m.index for m in got] == [2, 3]
    await stream.aclose()
    stored = await engine.service.read_messages(CCID, conv.id)
    assert [m.text for m in stored if m.type is MessageType.TEXT] == ["once", "next"]


async def test_subscribe_replay_then_live_without_gap_or_duplicate(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    conv = await engine.session()
    for i in range(5):
        await engine.service.post_customer_message(CCID, conv.id, f"before{i}")
    repo = engine.service.repo
    original = repo.read_messages
    calls = 0

    async def racing_read(*args, **kwargs):
        nonlocal calls
        calls += 1
        if calls == 1:  # messages committed and published after subscribing, before the read
            for i in range(3):
                await engine.service.post_customer_message(CCID, conv.id, f"during{i}")
        return await original(*args, **kwargs)

    monkeypatch.setattr(repo, "read_messages", racing_read)
    stream = engine.service.subscribe(CCID, conv.id, 2)
    collector = asyncio.create_task(collect(stream, 19))
    posters = [
        engine.service.post_customer_message(CCID, conv.id, f"after{i}") for i in range(10)
    ]
    await asyncio.gather(*posters)
    got = await collector
    assert [m.index for m in got] == list(range(2, 20))


async def test_typing_is_live_only(engine: Engine) -> None:
    conv = await engine.session()
    stream = engine.service.subscribe(CCID, conv.id, 1)
    await collect(stream, 1)
    await engine.service.typing(CCID, conv.id, started=True)
    posted = await engine.service.post_customer_message(CCID, conv.id, "typed")
    got = await collect(stream, posted.index or 0)
    await stream.aclose()
    assert [m.type for m in got] == [MessageType.TYPING_STARTED, MessageType.TEXT]
    assert got[0].index is None
    stored = await engine.service.read_messages(CCID, conv.id)
    assert MessageType.TYPING_STARTED not in {m.type for m in stored}


async def test_fifty_concurrent_first_sms_make_one_conversation(engine: Engine) -> None:
    results = await asyncio.gather(
        *(
            engine.service.post_inbound(
                CCID, SMS_CHANNEL, "+1 (650) 555-0100", f"sms{i}", provider_message_id=f"p{i}"
            )
            for i in range(50)
        )
    )
    assert len({message.conversation_id for message, _ in results}) == 1
    assert all(created for _, created in results)
    rows = await engine.store.fetch_all(sa.select(conversations))
    assert len(rows) == 1 and rows[0]["customer_address"] == "+16505550100"
    assert rows[0]["media"] == "sms"
    assert len(await engine.store.fetch_all(sa.select(segments))) == 1
    events = await engine.store.fetch_all(sa.select(interaction_events))
    assert [(e["event"], e["subtype"]) for e in events] == [("STARTED", "SMS")]
    stored = await engine.service.read_messages(CCID, rows[0]["id"])
    assert sorted(m.text for m in stored) == sorted(f"sms{i}" for i in range(50))
    assert [m.index for m in stored] == list(range(1, 51))
    # a provider retry of one id is acknowledged again and not stored twice
    message, created = await engine.service.post_inbound(
        CCID, SMS_CHANNEL, "+16505550100", "sms7", provider_message_id="p7"
    )
    assert not created and message.text == "sms7" and message.conversation_id == rows[0]["id"]
    assert len(await engine.service.read_messages(CCID, message.conversation_id)) == 50


async def test_files_and_limits(engine: Engine) -> None:
    conv = await engine.session()
    policy = FilePolicy(max_size=10, max_count=2)
    info, message = await engine.service.upload_file(
        CCID, conv.id, name="a.png", mime="image/png", data=b"12345", policy=policy
    )
    assert message.type is MessageType.FILE and message.file_id == info.id
    got, data = await engine.service.get_file(CCID, conv.id, info.id)
    assert data == b"12345" and got.sha256 == info.sha256 and got.size == 5
    with pytest.raises(InvalidFileType) as bad_type:
        await engine.service.upload_file(
            CCID, conv.id, name="a.exe", mime="application/x-msdownload", data=b"1", policy=policy
        )
    assert bad_type.value.identifier == "INVALID_FILE_TYPE"
    with pytest.raises(FileTooLarge) as too_big:
        await engine.service.upload_file(
            CCID, conv.id, name="b.png", mime="image/png", data=b"x" * 11, policy=policy
        )
    assert too_big.value.identifier == "LIMIT_FILE_SIZE"
    results = await asyncio.gather(
        *(
            engine.service.upload_file(
                CCID, conv.id, name=f"{i}.png", mime="image/png", data=b"1", policy=policy
            )
            for i in range(4)
        ),
        return_exceptions=True,
    )
    assert sum(isinstance(r, TooManyFiles) for r in results) == 3
    assert TooManyFiles.identifier == "LIMIT_FILE_COUNT"


async def test_customer_leave_keeps_session_open(engine: Engine) -> None:
    conv = await engine.session()
    left = await engine.service.customer_leave(CCID, conv.id)
    assert left.type is MessageType.PARTICIPANT_LEFT
    assert (await engine.service.get_conversation(CCID, conv.id)).is_open
    await engine.service.post_customer_message(CCID, conv.id, "back again")
    closed = await engine.store.execute(
        sa.update(conversations).where(conversations.c.id == conv.id).values(state="closed")
    )
    del closed
    with pytest.raises(ConversationClosed):
        await engine.service.post_customer_message(CCID, conv.id, "too late")


async def test_customer_message_into_the_open_segment_in_one_statement(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL reads the open segment and inserts a customer message in one statement;
    SQLite uses separate ones. Either way the message belongs to the open segment, indexes
    stay gapless, a duplicate provider id stores nothing, and without an open segment a new
    one is started. (The general path: group commit is tested in test_group_commit.py.)"""
    engine.service.batcher = None
    calls: list[int | None] = []
    original = engine.service.repo.append_to_open_segment

    async def spy(conversation, draft):
        result = await original(conversation, draft)
        calls.append(None if result is None else conversation.last_index)
        return result

    monkeypatch.setattr(engine.service.repo, "append_to_open_segment", spy)
    conv = await engine.session()
    segment = await engine.service.open_segment(CCID, conv.id)
    assert segment is not None
    first = await engine.service.post_customer_message(CCID, conv.id, "one")
    second = await engine.service.post_customer_message(
        CCID, conv.id, "two", provider_message_id="p-2"
    )
    again = await engine.service.post_customer_message(
        CCID, conv.id, "two again", provider_message_id="p-2"
    )
    assert again == second
    assert (first.index, second.index) == (2, 3)
    assert first.segment_id == second.segment_id == segment.id
    if engine.store.dialect == "postgresql":
        assert calls == [2, 3]  # (the repeat was answered before any write)
    else:
        assert calls == []
    # no open segment: the message starts a new one (and keeps the index sequence)
    await engine.router.end(CCID, segment.id, reason="test")
    third = await engine.service.post_customer_message(CCID, conv.id, "three")
    new_segment = await engine.service.open_segment(CCID, conv.id)
    assert new_segment is not None and new_segment.id != segment.id
    assert third.segment_id == new_segment.id
    stored = await engine.service.read_messages(CCID, conv.id)
    assert [m.index for m in stored] == list(range(1, len(stored) + 1))
    assert [m.text for m in stored if m.type is MessageType.TEXT] == ["one", "two", "three"]


async def test_post_inbound_mark_is_written_with_the_publish(engine: Engine) -> None:
    message, created = await engine.service.post_inbound(
        CCID, SMS_CHANNEL, "+16505550123", "hello", provider_message_id="pm-mark",
        mark=("inb:test:pm-mark", 60.0),
    )
    assert created
    assert await engine.cache.get("inb:test:pm-mark") == f"done:{message.id}"
    # a repeat is answered from the store and leaves the marker to the caller
    await engine.cache.delete("inb:test:pm-mark")
    again, created = await engine.service.post_inbound(
        CCID, SMS_CHANNEL, "+16505550123", "hello", provider_message_id="pm-mark",
        mark=("inb:test:pm-mark", 60.0),
    )
    assert not created and again.id == message.id
    assert await engine.cache.get("inb:test:pm-mark") is None


async def test_inbound_sms_follows_a_reloaded_model(engine: Engine) -> None:
    """The service keeps each channel's (channel, endpoint) per model: a reload (a new model
    object) is seen by the very next message."""
    service = engine.service
    message, created = await service.post_inbound(CCID, SMS_CHANNEL, "+16505550170", "one")
    assert created and message.conversation_id
    model = service.model
    without_channel = dataclasses.replace(
        model, channels=tuple(c for c in model.channels if c.channel_id != SMS_CHANNEL)
    )
    disabled = dataclasses.replace(
        model,
        tenants=tuple(dataclasses.replace(t, enabled=False) if t.ccid == CCID else t
                      for t in model.tenants),
    )
    try:
        service._model = without_channel
        with pytest.raises(InvalidChannel):
            await service.post_inbound(CCID, SMS_CHANNEL, "+16505550170", "two")
        service._model = disabled
        with pytest.raises(InvalidContactCenter):
            await service.post_inbound(CCID, SMS_CHANNEL, "+16505550170", "three")
    finally:
        service._model = model
    again, created = await service.post_inbound(CCID, SMS_CHANNEL, "+16505550170", "four")
    assert created and again.conversation_id == message.conversation_id
