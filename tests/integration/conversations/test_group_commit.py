"""Group commit of customer messages into open conversations (``AppendBatcher``, PostgreSQL)
and its use by ``ConversationService.post_customer_message`` / ``post_inbound``.

The batcher exists only on PostgreSQL: the tests of it select the ``postgresql+redis``
variant of the conftest's ``backend`` parametrisation (so they run whenever the real servers
are configured, and fail under CI=true when they are not). What group commit must not change
(the answers of the general path) is compared with ``service.batcher = None`` on the same
engine.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

import asyncpg
import pytest
import sqlalchemy as sa

from engine.routing.append_batcher import AppendBatcher
from engine.routing.conversation_models import (
    Conversation,
    ConversationClosed,
    ConversationNotFound,
    InvalidContactCenter,
    Message,
    MessageType,
    SegmentState,
)
from engine.routing.conversations import STREAM_MARK_SECONDS, ConversationService
from engine.routing.decider import Redirect
from engine.routing.live import agent_channel, conversation_channel
from engine.routing.router import Router
from engine.store.cache import Cache
from engine.store.conversation_tables import conversations, messages, segments
from engine.store.db import Store

from .conftest import CCID, MODEL, SMS_CHANNEL, Engine, collect

#: the tests of the batcher itself: PostgreSQL + Redis only
pg_only = pytest.mark.parametrize("backend", ["postgresql+redis"], indirect=True)


# ---- helpers ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Counters:
    batches: int
    appended: int
    declined: int


def _counters(service: ConversationService) -> Counters:
    batcher = service.batcher
    assert batcher is not None
    return Counters(batcher.batches, batcher.appended, batcher.declined)


def _delta(service: ConversationService, before: Counters) -> Counters:
    now = _counters(service)
    return Counters(
        now.batches - before.batches,
        now.appended - before.appended,
        now.declined - before.declined,
    )


async def _assert_gapless(engine: Engine, conversation_id: str) -> list[Message]:
    """The conversation's stored messages: indexes 1..N, unique ids, ``last_index`` N."""
    stored = await engine.service.read_messages(CCID, conversation_id)
    assert [m.index for m in stored] == list(range(1, len(stored) + 1))
    assert len({m.id for m in stored}) == len(stored)
    conversation = await engine.service.get_conversation(CCID, conversation_id)
    assert conversation.last_index == len(stored)
    return stored


async def _open_segment_id(engine: Engine, conversation_id: str) -> str:
    segment = await engine.service.open_segment(CCID, conversation_id)
    assert segment is not None
    return segment.id


async def _sms_conversations(engine: Engine, count: int) -> list[tuple[str, Conversation]]:
    """``count`` SMS conversations with an open segment (their first message took the
    general path, which starts the segment): ``(address as the provider formats it, conv)``."""
    out = []
    for i in range(count):
        first, created = await engine.service.post_inbound(
            CCID, SMS_CHANNEL, f"+1650555{i:04d}", "first", provider_message_id=f"first-{i}"
        )
        assert created
        conv = await engine.service.get_conversation(CCID, first.conversation_id)
        assert await engine.service.open_segment(CCID, conv.id) is not None
        out.append((f"+1 (650) 555-{i:04d}", conv))
    return out


async def _lock_waiters(url: str, count: int) -> None:
    """Wait until ``count`` backends of the database wait for a lock (polled from a
    connection of its own: within a transaction pg_stat_activity is a frozen snapshot)."""
    monitor = await asyncpg.connect(url, timeout=10)
    try:
        for _ in range(3000):
            waiting = await monitor.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock'"
            )
            if waiting >= count:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"{count} lock waiters expected, {waiting} seen")
    finally:
        await monitor.close()


@asynccontextmanager
async def _second_process(
    engine: Engine, backend: tuple[str, str]
) -> AsyncIterator[ConversationService]:
    """Another "process": its own store pool, cache client, router and service (and so its
    own batcher) on the same database and Redis prefix."""
    store = Store(backend[0], max_size=10)
    await store.connect()
    cache = Cache(backend[1], prefix=engine.cache.prefix, health_check_interval=None)
    assert await cache.connect()
    router = Router(store, cache, MODEL, decider=engine.decider, clock=engine.clock)
    service = ConversationService(store, cache, MODEL, router=router, poll_interval=0.05)
    try:
        yield service
    finally:
        await router.stop()
        await cache.close()
        await store.disconnect()


# ---- where the batcher exists -----------------------------------------------------------


async def test_group_commit_only_on_postgresql(engine: Engine) -> None:
    if engine.store.dialect == "postgresql":
        assert isinstance(engine.service.batcher, AppendBatcher)
        off = ConversationService(
            engine.store, engine.cache, MODEL, router=engine.router, group_commit=False
        )
        assert off.batcher is None
    else:
        assert engine.service.batcher is None
        with pytest.raises(ValueError, match="PostgreSQL"):
            AppendBatcher(engine.store, engine.service._publish_pairs, engine.clock)
    # either way a customer message is stored and acknowledged with its index
    conv = await engine.session()
    posted = await engine.service.post_customer_message(CCID, conv.id, "hello")
    assert posted.index == 2 and posted.segment_id == await _open_segment_id(engine, conv.id)


# ---- many messages, grouped -------------------------------------------------------------


@pg_only
@pytest.mark.parametrize("max_batch", [None, 16])
async def test_concurrent_customer_messages_are_grouped_and_gapless(
    engine: Engine, max_batch: int | None
) -> None:
    """200 concurrent messages into 5 conversations: each stored once, at indexes without
    gaps, in the open segment, in fewer transactions than messages. With ``max_batch=16``
    several batches (two in flight at a time) contend for the same conversation rows."""
    service = engine.service
    assert service.batcher is not None
    if max_batch is not None:
        service.batcher.max_batch = max_batch
        service.batcher.max_inflight = 2  # as two processes would
    convs = [await engine.session() for _ in range(5)]
    segment_ids = {c.id: await _open_segment_id(engine, c.id) for c in convs}
    before = _counters(service)
    texts = [(convs[i % 5].id, f"m{i}") for i in range(200)]
    posted = await asyncio.gather(
        *(service.post_customer_message(CCID, cid, text) for cid, text in texts)
    )
    delta = _delta(service, before)
    assert delta.appended == 200 and delta.declined == 0
    assert 1 <= delta.batches < 200
    if max_batch is not None:
        assert delta.batches >= 200 // max_batch  # no batch was larger than allowed
    # every acknowledgement is the stored message
    for (cid, text), message in zip(texts, posted, strict=True):
        assert message.conversation_id == cid and message.text == text
        assert message.type is MessageType.TEXT and message.from_type.value == "Customer"
    by_id = {m.id: m for m in posted}
    assert len(by_id) == 200
    for conv in convs:
        stored = await _assert_gapless(engine, conv.id)
        assert len(stored) == 41  # ParticipantJoined + 40 texts
        texts_here = [m for m in stored if m.type is MessageType.TEXT]
        assert sorted(m.text for m in texts_here) == sorted(t for c, t in texts if c == conv.id)
        for message in texts_here:
            assert message.segment_id == segment_ids[conv.id]
            assert message.from_participant_id == conv.customer_id
            assert message.from_nickname == conv.customer_nickname
            assert by_id[message.id] == message  # acknowledged exactly as stored
    rows = await engine.store.fetch_all(
        sa.select(messages.c.id).where(messages.c.type == "Text")
    )
    assert len(rows) == 200
    # no segment was started by any of them
    assert len(await engine.store.fetch_all(sa.select(segments))) == 5


@pg_only
async def test_group_committed_message_equals_general_path_message(engine: Engine) -> None:
    """The batch stores the same row the general path would (participant, nickname,
    segment, provider id, type, timestamp), only faster."""
    service = engine.service
    conv = await engine.session(nickname="Ann")
    before = _counters(service)
    grouped = await service.post_customer_message(
        CCID, conv.id, "via batch", provider_message_id="pm-a"
    )
    assert _delta(service, before).appended == 1
    notice = await service.post_customer_message(CCID, conv.id, None, type="Notice")
    assert notice.type is MessageType.NOTICE and notice.text is None
    batcher, service.batcher = service.batcher, None
    try:
        general = await service.post_customer_message(
            CCID, conv.id, "via general", provider_message_id="pm-b"
        )
    finally:
        service.batcher = batcher
    assert (grouped.index, notice.index, general.index) == (2, 3, 4)
    stored = {m.index: m for m in await _assert_gapless(engine, conv.id)}
    assert stored[2] == grouped and stored[3] == notice and stored[4] == general
    differing = ("id", "index", "text", "providerMessageId")
    a = {k: v for k, v in grouped.as_dict().items() if k not in differing}
    b = {k: v for k, v in general.as_dict().items() if k not in differing}
    assert a == b and a["from"]["type"] == "Customer"
    assert (grouped.provider_message_id, general.provider_message_id) == ("pm-a", "pm-b")


# ---- inbound SMS by address -------------------------------------------------------------


@pg_only
async def test_concurrent_inbound_sms_by_address(engine: Engine) -> None:
    service = engine.service
    senders = await _sms_conversations(engine, 4)
    before = _counters(service)
    burst = [(senders[i % 4], f"sms{i}", f"pm-{i}") for i in range(120)]
    results = await asyncio.gather(
        *(
            service.post_inbound(CCID, SMS_CHANNEL, address, text, provider_message_id=pid)
            for (address, _), text, pid in burst
        )
    )
    delta = _delta(service, before)
    assert delta.appended == 120 and delta.declined == 0 and delta.batches < 120
    for ((_, conv), text, pid), (message, created) in zip(burst, results, strict=True):
        assert created and conv.id == message.conversation_id
        assert message.text == text and message.provider_message_id == pid
    for _, conv in senders:
        stored = await _assert_gapless(engine, conv.id)
        segment_id = await _open_segment_id(engine, conv.id)
        assert all(m.segment_id == segment_id for m in stored)
        assert sum((m.provider_message_id or "").startswith("pm-") for m in stored) == 30
    pids = await engine.store.fetch_all(
        sa.select(messages.c.provider_message_id).where(
            messages.c.provider_message_id.like("pm-%")
        )
    )
    assert Counter(r["provider_message_id"] for r in pids) == {f"pm-{i}": 1 for i in range(120)}
    # no second conversation for any sender
    assert len(await engine.store.fetch_all(sa.select(conversations))) == 4


@pg_only
async def test_one_conversation_named_by_id_and_by_address_in_one_burst(engine: Engine) -> None:
    """An SMS conversation gets messages by id (chat API) and by its sender's address
    (inbound) in the same burst: one conversation row, one reservation, gapless indexes."""
    service = engine.service
    [(address, conv)] = await _sms_conversations(engine, 1)
    initial = len(await service.read_messages(CCID, conv.id))
    before = _counters(service)
    results = await asyncio.gather(*(
        service.post_customer_message(CCID, conv.id, f"id{i}")
        if i % 2
        else service.post_inbound(CCID, SMS_CHANNEL, address, f"addr{i}")
        for i in range(20)
    ))
    delta = _delta(service, before)
    assert delta.appended == 20 and delta.declined == 0
    posted = [r if isinstance(r, Message) else r[0] for r in results]
    assert {m.conversation_id for m in posted} == {conv.id}
    assert sorted(m.index for m in posted) == list(range(initial + 1, initial + 21))
    stored = await _assert_gapless(engine, conv.id)
    assert len(stored) == initial + 20


@pg_only
async def test_repeated_provider_id_after_commit_is_answered_from_the_store(
    engine: Engine,
) -> None:
    service = engine.service
    [(address, conv)] = await _sms_conversations(engine, 1)
    before = _counters(service)
    first, created = await service.post_inbound(
        CCID, SMS_CHANNEL, address, "hello", provider_message_id="dup-1"
    )
    assert created and _delta(service, before).appended == 1
    # the provider retries: the batch's function leaves the stored provider id out, and
    # the general path answers the stored message
    before = _counters(service)
    again, created = await service.post_inbound(
        CCID, SMS_CHANNEL, address, "hello", provider_message_id="dup-1"
    )
    delta = _delta(service, before)
    assert not created and again.id == first.id and again.index == first.index
    assert again.conversation_id == conv.id
    assert delta.declined == 1 and delta.appended == 0
    # the same for a chat message with a client id
    chat = await engine.session()
    one = await service.post_customer_message(CCID, chat.id, "x", provider_message_id="c-1")
    before = _counters(service)
    two = await service.post_customer_message(CCID, chat.id, "x", provider_message_id="c-1")
    assert two == one and _delta(service, before).declined == 1
    stored = await _assert_gapless(engine, conv.id)
    assert [m.provider_message_id for m in stored].count("dup-1") == 1
    assert len(await _assert_gapless(engine, chat.id)) == 2


@pg_only
async def test_duplicate_provider_id_inside_one_burst_is_stored_once(engine: Engine) -> None:
    service = engine.service
    senders = await _sms_conversations(engine, 2)
    committed = await service.post_inbound(
        CCID, SMS_CHANNEL, senders[0][0], "earlier", provider_message_id="old-1"
    )
    before = _counters(service)
    burst = [(senders[i % 2][0], f"b{i}", f"burst-{i}") for i in range(30)]
    burst.insert(5, (senders[0][0], "twin", "twin"))
    burst.insert(20, (senders[0][0], "twin", "twin"))
    burst.append((senders[0][0], "earlier", "old-1"))  # and a retry of a committed one
    results = await asyncio.gather(
        *(
            service.post_inbound(CCID, SMS_CHANNEL, address, text, provider_message_id=pid)
            for address, text, pid in burst
        )
    )
    delta = _delta(service, before)
    # one batch (gather submits every request before the batch task runs): its function
    # left out the second twin and the retry, which the general path answered
    assert delta == Counters(batches=1, appended=len(burst) - 2, declined=2)
    twins = [results[5], results[20]]
    assert {m.id for m, _ in twins} == {twins[0][0].id}
    assert [created for _, created in twins] == [True, False]
    assert results[-1][0].id == committed[0].id and not results[-1][1]
    others = [r for i, r in enumerate(results[:-1]) if i not in (5, 20)]
    assert all(created for _, created in others)
    rows = await engine.store.fetch_all(sa.select(messages.c.provider_message_id))
    counts = Counter(r["provider_message_id"] for r in rows)
    assert counts["twin"] == 1 and counts["old-1"] == 1
    assert all(counts[f"burst-{i}"] == 1 for i in range(30))
    for _, conv in senders:
        await _assert_gapless(engine, conv.id)


# ---- two processes ----------------------------------------------------------------------


@pg_only
async def test_two_processes_append_concurrently_without_deadlock(
    engine: Engine, backend: tuple[str, str]
) -> None:
    convs = [await engine.session() for _ in range(4)]
    senders = await _sms_conversations(engine, 3)
    initial = {
        c.id: len(await engine.service.read_messages(CCID, c.id))
        for c in [*convs, *(conv for _, conv in senders)]
    }
    async with _second_process(engine, backend) as other:
        services = (engine.service, other)
        for service in services:
            assert service.batcher is not None
            service.batcher.max_batch = 8  # many small batches, several in flight
            service.batcher.max_inflight = 2
        before = [_counters(s) for s in services]
        chat_posts = [
            services[i % 2].post_customer_message(CCID, convs[i % 4].id, f"c{i}")
            for i in range(160)
        ]
        sms_posts = [
            services[i % 2].post_inbound(
                CCID, SMS_CHANNEL, senders[i % 3][0], f"s{i}", provider_message_id=f"two-{i}"
            )
            for i in range(90)
        ]
        results = await asyncio.gather(*chat_posts, *sms_posts)
        deltas = [_delta(s, b) for s, b in zip(services, before, strict=True)]
    # nothing fell back (a deadlock would have: the batch takes the general path then)
    assert [d.declined for d in deltas] == [0, 0]
    assert sum(d.appended for d in deltas) == 250
    assert all(d.appended > 0 for d in deltas)
    assert len({m.id for m in results[:160]}) == 160
    assert all(created for _, created in results[160:])
    for conv in convs:
        assert len(await _assert_gapless(engine, conv.id)) == initial[conv.id] + 40
    for _, conv in senders:
        assert len(await _assert_gapless(engine, conv.id)) == initial[conv.id] + 30


@pg_only
async def test_a_batch_that_deadlocks_takes_the_general_path(
    engine: Engine, backend: tuple[str, str]
) -> None:
    """A transaction of another shape (here: a raw connection locking two conversations in
    the opposite order) deadlocks with a batch; PostgreSQL aborts the batch (it has waited
    longer), whose messages are then stored by the general path."""
    service = engine.service
    first, second = sorted([await engine.session(), await engine.session()], key=lambda c: c.id)
    conn = await asyncpg.connect(backend[0], timeout=10)
    try:
        await conn.execute("SET deadlock_timeout = '30s'")  # the batch detects the cycle
        tx = conn.transaction()
        await tx.start()
        await conn.execute("SELECT 1 FROM conversations WHERE id = $1 FOR UPDATE", second.id)
        before = _counters(service)
        posts = asyncio.gather(
            service.post_customer_message(CCID, first.id, "to first"),
            service.post_customer_message(CCID, second.id, "to second"),
        )
        await _lock_waiters(backend[0], 1)  # the batch has locked `first`, waits for `second`
        await conn.execute("SELECT 1 FROM conversations WHERE id = $1 FOR UPDATE", first.id)
        await tx.commit()
        to_first, to_second = await posts
    finally:
        await conn.close()
    delta = _delta(service, before)
    assert delta.declined == 2 and delta.appended == 0
    assert (to_first.conversation_id, to_first.index) == (first.id, 2)
    assert (to_second.conversation_id, to_second.index) == (second.id, 2)
    for conv in (first, second):
        stored = await _assert_gapless(engine, conv.id)
        assert [m.text for m in stored if m.type is MessageType.TEXT] == [
            "to first" if conv is first else "to second"
        ]


# ---- not the common case: the batcher declines ------------------------------------------


@pg_only
async def test_no_open_segment_declines_and_the_general_path_starts_one(
    engine: Engine,
) -> None:
    service = engine.service
    conv = await engine.session()
    segment_id = await _open_segment_id(engine, conv.id)
    before = _counters(service)
    one = await service.post_customer_message(CCID, conv.id, "one")
    assert one.segment_id == segment_id and _delta(service, before).appended == 1
    await engine.router.end(CCID, segment_id, reason="test")
    assert await service.open_segment(CCID, conv.id) is None
    # a burst into the conversation without an open segment: all declined, one new segment
    before = _counters(service)
    posted = await asyncio.gather(
        *(service.post_customer_message(CCID, conv.id, f"after{i}") for i in range(10))
    )
    delta = _delta(service, before)
    assert delta.declined == 10 and delta.appended == 0
    new_segment_id = await _open_segment_id(engine, conv.id)
    assert new_segment_id != segment_id
    assert {m.segment_id for m in posted} == {new_segment_id}
    segment_rows = await engine.store.fetch_all(
        sa.select(segments).where(segments.c.conversation_id == conv.id)
    )
    assert len(segment_rows) == 2
    # the next one takes the batch again, into the new segment
    before = _counters(service)
    last = await service.post_customer_message(CCID, conv.id, "last")
    assert _delta(service, before).appended == 1 and last.segment_id == new_segment_id
    stored = await _assert_gapless(engine, conv.id)
    assert stored[-1] == last
    texts = [m.text for m in stored if m.type is MessageType.TEXT]
    assert texts[0] == "one" and texts[-1] == "last"
    assert sorted(texts[1:-1]) == sorted(f"after{i}" for i in range(10))


@pg_only
async def test_closed_conversations(engine: Engine) -> None:
    """A message into a closed conversation is declined by the batch and refused by the
    general path (ConversationClosed), without spoiling the other messages of its batch; an
    SMS sender whose conversation is closed gets a new one."""
    service = engine.service
    closed, open_ = await engine.session(), await engine.session()
    await service.post_customer_message(CCID, closed.id, "before")
    await engine.store.execute(
        sa.update(conversations).where(conversations.c.id == closed.id).values(state="closed")
    )
    before = _counters(service)
    with pytest.raises(ConversationClosed):
        await service.post_customer_message(CCID, closed.id, "too late")
    assert _delta(service, before).declined == 1
    # in one burst with messages into an open conversation: those are still grouped
    before = _counters(service)
    results = await asyncio.gather(
        *(
            service.post_customer_message(CCID, (closed if i % 2 else open_).id, f"x{i}")
            for i in range(20)
        ),
        return_exceptions=True,
    )
    delta = _delta(service, before)
    assert delta.appended == 10 and delta.declined == 10
    assert all(isinstance(r, ConversationClosed) for r in results[1::2])
    assert all(isinstance(r, Message) and r.conversation_id == open_.id for r in results[::2])
    assert len(await _assert_gapless(engine, closed.id)) == 2  # nothing after "before"
    assert len(await _assert_gapless(engine, open_.id)) == 11
    # an SMS sender whose conversation was closed gets a new one (by the general path)
    [(address, sms)] = await _sms_conversations(engine, 1)
    await engine.store.execute(
        sa.update(conversations).where(conversations.c.id == sms.id).values(state="closed")
    )
    before = _counters(service)
    message, created = await service.post_inbound(
        CCID, SMS_CHANNEL, address, "new topic", provider_message_id="new-1"
    )
    assert _delta(service, before).declined == 1
    assert created and message.conversation_id != sms.id
    assert message.segment_id == await _open_segment_id(engine, message.conversation_id)
    assert len(await _assert_gapless(engine, sms.id)) == 1
    # the same answer without group commit
    service.batcher = None
    with pytest.raises(ConversationClosed):
        await service.post_customer_message(CCID, closed.id, "too late")


@pg_only
async def test_other_tenants_or_unknown_conversation_is_not_found(engine: Engine) -> None:
    service = engine.service
    theirs = await engine.session()
    await engine.store.execute(
        sa.update(conversations)
        .where(conversations.c.id == theirs.id)
        .values(tenant="0f3c2a4e-0000-4000-8000-000000000000")
    )
    missing = "7b8e7f1c-0000-4000-8000-000000000000"
    for batcher in (service.batcher, None):  # the same answers with and without the batch
        service.batcher = batcher
        with pytest.raises(ConversationNotFound):
            await service.post_customer_message(CCID, theirs.id, "hi")
        with pytest.raises(ConversationNotFound):
            await service.post_customer_message(CCID, missing, "hi")
        with pytest.raises(InvalidContactCenter):
            await service.post_customer_message("no-such-ccid", theirs.id, "hi")
    rows = await engine.store.fetch_all(
        sa.select(messages).where(messages.c.conversation_id == theirs.id)
    )
    assert [r["type"] for r in rows] == ["ParticipantJoined"]


# ---- held segments, publish, marker -----------------------------------------------------


@pg_only
async def test_message_into_a_held_segment_wakes_it_like_the_general_path(
    engine: Engine,
) -> None:
    """A customer message into a held (async hold) segment is stored in it and wakes it
    (the wake strategy runs and its answer applies), with group commit as without."""
    service = engine.service
    engine.decider.answers["redirect_queue"] = [Redirect("other")]
    await engine.make_ready("alice", "bob")
    convs = [await engine.session(), await engine.session()]
    segment_ids = [await _open_segment_id(engine, c.id) for c in convs]
    assert await engine.router.dispatch(CCID) == 2
    for segment_id in segment_ids:
        offered = await service.get_interaction(CCID, segment_id)
        assert offered.offered_to is not None
        await engine.router.accept(CCID, offered.offered_to, segment_id)
        held = await engine.router.hold(CCID, offered.offered_to, segment_id)
        assert held.state is SegmentState.HELD
    outcomes = []
    for conv, segment_id, group_commit in zip(convs, segment_ids, (True, False), strict=True):
        batcher = service.batcher
        before = _counters(service)
        if not group_commit:
            service.batcher = None
        calls = len(engine.decider.calls)
        try:
            message = await service.post_customer_message(CCID, conv.id, "any news?")
        finally:
            service.batcher = batcher
        # group-committed (into the held segment), or not touched at all
        assert _delta(service, before).appended == int(group_commit)
        woken = await service.get_interaction(CCID, segment_id)
        wake_calls = [(name, info.id) for name, info in engine.decider.calls[calls:]]
        outcomes.append((
            message.segment_id == segment_id,
            woken.state,
            woken.queue,
            wake_calls == [("redirect_queue", segment_id)],
        ))
        await _assert_gapless(engine, conv.id)
    assert outcomes[0] == outcomes[1] == (True, SegmentState.QUEUED, "other", True)


@pg_only
async def test_subscriber_gets_every_group_committed_message_once_in_order(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = engine.service
    assert service.batcher is not None
    service.batcher.max_batch = 10
    service.poll_interval = 60.0  # the live publish must deliver them, not the store poll
    convs = [await engine.session() for _ in range(2)]
    publishes: list[int] = []
    original = engine.router.publish_pairs

    async def spy(pairs, sets=(), unheard=()):
        publishes.append(len(pairs))
        await original(pairs, sets, unheard)

    monkeypatch.setattr(engine.router, "publish_pairs", spy)
    streams = [service.subscribe(CCID, c.id, 1) for c in convs]
    for stream in streams:
        assert [m.index for m in await collect(stream, 1)] == [1]
    raw = await engine.cache.subscribe(conversation_channel(convs[0].id))
    collectors = [asyncio.create_task(collect(s, 31)) for s in streams]
    await asyncio.sleep(0)
    before = _counters(service)
    await asyncio.gather(
        *(service.post_customer_message(CCID, convs[i % 2].id, f"live{i}") for i in range(60))
    )
    delta = _delta(service, before)
    got = [await c for c in collectors]
    live = []
    while len(live) < 30:
        item = await raw.get(timeout=10)
        assert item is not None
        live.append(json.loads(item.data)["message"]["index"])
    await raw.close()
    for stream in streams:
        await stream.aclose()
    for conv, messages_ in zip(convs, got, strict=True):
        assert [m.index for m in messages_] == list(range(2, 32))
        assert messages_ == (await service.read_messages(CCID, conv.id))[1:]
    assert sorted(live) == list(range(2, 32))  # each published once
    # one publish per batch, every message in one of them
    assert delta.appended == 60 and len(publishes) == delta.batches >= 6
    assert sum(publishes) == 60


@pg_only
async def test_assigned_agent_feed_gets_group_committed_messages(engine: Engine) -> None:
    await engine.make_ready("alice")
    conv = await engine.session()
    segment_id = await _open_segment_id(engine, conv.id)
    await engine.router.dispatch(CCID)
    await engine.router.accept(CCID, "alice", segment_id)
    feed = await engine.cache.subscribe(agent_channel(CCID, "alice"))
    try:
        before = _counters(engine.service)
        posted = await asyncio.gather(
            *(engine.service.post_customer_message(CCID, conv.id, f"a{i}") for i in range(5))
        )
        assert _delta(engine.service, before).appended == 5
        seen: list[str] = []
        while len(seen) < 5:
            item = await feed.get(timeout=10)
            assert item is not None
            payload = json.loads(item.data)
            if payload.get("kind") == "message":
                seen.append(payload["message"]["id"])
    finally:
        await feed.close()
    assert sorted(seen) == sorted(m.id for m in posted)


@pg_only
async def test_only_streamed_conversations_get_group_commits_published(engine: Engine) -> None:
    service = engine.service
    conv = await engine.session()
    # a plain subscriber of the channel: it listens, but does not mark the conversation
    raw = await engine.cache.subscribe(conversation_channel(conv.id))

    async def next_live_index() -> int:
        item = await raw.get(timeout=10)
        assert item is not None
        return json.loads(item.data)["message"]["index"]

    try:
        before = _counters(service)
        await service.post_customer_message(CCID, conv.id, "nobody streams")  # index 2
        stream = service.subscribe(CCID, conv.id, 1)
        assert [m.text for m in await collect(stream, 2)][1:] == ["nobody streams"]
        await service.post_customer_message(CCID, conv.id, "streamed")  # index 3
        # published in order: had index 2 been published, it would come first
        assert await next_live_index() == 3
        assert [m.text for m in await collect(stream, 1)] == ["streamed"]
        await stream.aclose()
        # the mark lapses once no stream renews it
        engine.clock.advance(STREAM_MARK_SECONDS + 1)
        await service.post_customer_message(CCID, conv.id, "lapsed")  # index 4
        again = service.subscribe(CCID, conv.id, 4)
        assert [m.text for m in await collect(again, 1)] == ["lapsed"]
        await service.post_customer_message(CCID, conv.id, "streamed again")  # index 5
        assert await next_live_index() == 5
        assert [m.text for m in await collect(again, 1)] == ["streamed again"]
        await again.aclose()
        assert _delta(service, before) == Counters(batches=4, appended=4, declined=0)
    finally:
        await raw.close()
    row = await engine.store.fetch_one(
        sa.select(conversations.c.streamed_until).where(conversations.c.id == conv.id)
    )
    assert row is not None and row["streamed_until"] is not None


@pg_only
async def test_inbound_mark_is_written_after_a_group_commit(engine: Engine) -> None:
    service = engine.service
    senders = await _sms_conversations(engine, 2)
    before = _counters(service)
    results = await asyncio.gather(
        *(
            service.post_inbound(
                CCID, SMS_CHANNEL, senders[i % 2][0], f"t{i}", provider_message_id=f"mk-{i}",
                mark=(f"inb:test:mk-{i}", 60.0),
            )
            for i in range(20)
        ),
        service.post_inbound(  # no mark: nothing written for it
            CCID, SMS_CHANNEL, senders[0][0], "unmarked", provider_message_id="mk-none"
        ),
    )
    assert _delta(service, before).appended == 21
    for i, (message, created) in enumerate(results[:20]):
        assert created
        key = f"inb:test:mk-{i}"
        assert await engine.cache.get(key) == f"done:{message.id}"
        ttl = await engine.cache.client.pttl(engine.cache.key(key))
        assert 0 < ttl <= 60_000
    assert await engine.cache.get("inb:test:mk-none") is None
    # a retry of a marked one (marker gone) is answered from the store, and writes no marker
    await engine.cache.delete("inb:test:mk-3")
    again, created = await service.post_inbound(
        CCID, SMS_CHANNEL, senders[1][0], "t3", provider_message_id="mk-3",
        mark=("inb:test:mk-3", 60.0),
    )
    assert not created and again.id == results[3][0].id
    assert await engine.cache.get("inb:test:mk-3") is None


# ---- callers that go away ---------------------------------------------------------------


async def _in_flight(
    engine: Engine, prefix: str, count: int
) -> tuple[Conversation, list[asyncio.Task[Message]]]:
    """A new session and ``count`` customer messages posted into it at once, each by its own
    task; returns once every task has submitted its message to the batcher."""
    conv = await engine.session()
    tasks = [
        asyncio.create_task(engine.service.post_customer_message(CCID, conv.id, f"{prefix}{i}"))
        for i in range(count)
    ]
    await asyncio.sleep(0)
    return conv, tasks


@pg_only
async def test_a_cancelled_caller_does_not_cancel_the_batch(engine: Engine) -> None:
    service = engine.service
    assert service.batcher is not None
    conv, tasks = await _in_flight(engine, "c", 10)
    tasks[3].cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    await service.batcher.close()
    assert isinstance(results[3], asyncio.CancelledError)
    kept: Sequence[Message] = [r for i, r in enumerate(results) if i != 3]
    assert all(isinstance(m, Message) for m in kept)
    stored = await _assert_gapless(engine, conv.id)
    stored_ids = {m.id for m in stored}
    assert all(m.id in stored_ids for m in kept)
    # the cancelled caller was not acknowledged, but the batch it was part of committed
    assert sorted(m.text for m in stored if m.type is MessageType.TEXT) == sorted(
        f"c{i}" for i in range(10)
    )


@pg_only
async def test_batches_of_different_shapes_do_not_deadlock(
    engine: Engine, backend: tuple[str, str]
) -> None:
    """Two batches in flight at once, one naming conversation 1 by id and conversation 0
    by its sender's address, the other the reverse: both take their row locks in id order,
    so they wait for each other instead of deadlocking (no batch falls back). One process
    commits one batch at a time; two in flight here stand for two engine processes."""
    service = engine.service
    assert service.batcher is not None
    service.batcher.max_batch = 2
    service.batcher.max_inflight = 2
    (addr0, conv0), (addr1, conv1) = await _sms_conversations(engine, 2)
    initial = {c.id: len(await service.read_messages(CCID, c.id)) for c in (conv0, conv1)}
    conn = await asyncpg.connect(backend[0], timeout=10)
    try:
        # hold both rows, so that the two batches start their locking at the same moment
        tx = conn.transaction()
        await tx.start()
        await conn.execute(
            "SELECT 1 FROM conversations WHERE id = ANY($1::text[]) FOR UPDATE",
            [conv0.id, conv1.id],
        )
        before = _counters(service)
        posts = asyncio.gather(
            service.post_customer_message(CCID, conv1.id, "A by id"),
            service.post_inbound(CCID, SMS_CHANNEL, addr0, "A by address"),
            service.post_customer_message(CCID, conv0.id, "B by id"),
            service.post_inbound(CCID, SMS_CHANNEL, addr1, "B by address"),
        )
        await _lock_waiters(backend[0], 2)  # both batches are in flight
        await tx.commit()
        a_id, (a_addr, _), b_id, (b_addr, _) = await posts
    finally:
        await conn.close()
    assert _delta(service, before) == Counters(batches=2, appended=4, declined=0)
    assert {a_id.conversation_id, b_addr.conversation_id} == {conv1.id}
    assert {a_addr.conversation_id, b_id.conversation_id} == {conv0.id}
    for conv in (conv0, conv1):
        stored = await _assert_gapless(engine, conv.id)
        assert len(stored) == initial[conv.id] + 2


@pg_only
async def test_close_waits_for_the_batches_in_flight(engine: Engine) -> None:
    """At shutdown (ConversationService.close, called by the wiring before the router stops)
    the batches in flight commit and every caller gets its answer."""
    service = engine.service
    assert service.batcher is not None
    conv, tasks = await _in_flight(engine, "s", 20)
    assert service.batcher._tasks  # a batch is in flight
    await service.close()
    assert not service.batcher._tasks
    stored = await _assert_gapless(engine, conv.id)  # committed before close returned
    assert sorted(m.text for m in stored if m.type is MessageType.TEXT) == sorted(
        f"s{i}" for i in range(20)
    )
    results = await asyncio.wait_for(asyncio.gather(*tasks), 10)
    assert {m.id for m in results} <= {m.id for m in stored}
