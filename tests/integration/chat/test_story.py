"""The issue's "Done when" story end to end, on SQLite + memory:// and PostgreSQL + Redis
(two workers): a widget opens a chat with its form fields, the chat is offered to a ready
agent, accepted and answered (the customer sees it on the WebSocket), parked in async hold,
woken by the customer's message through the real ``redirect_queue`` strategy, offered again to
the last agent (although another agent has been idle longer), and marked Done."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from tests.integration.chat.clients import AgentClient, WidgetClient, eventually, receive
from tests.integration.chat.conftest import T1001, ChatEngine


async def feed_until(ws: Any, predicate: Any, timeout: float = 15.0) -> dict[str, Any]:
    """The first event of an agent feed that satisfies ``predicate``."""

    async def scan() -> dict[str, Any]:
        while True:
            event = json.loads(await ws.recv())
            if predicate(event):
                return event

    return await asyncio.wait_for(scan(), timeout)


async def test_chat_story(chat_engine: ChatEngine) -> None:
    api = chat_engine.api
    async with (
        AgentClient(api, T1001, "alice", chat_engine.password("alice")) as alice,
        AgentClient(api, T1001, "bob", chat_engine.password("bob")) as bob,
        WidgetClient(api, chat_engine.chat_key) as widget,
    ):
        await bob.presence("not-ready")
        await alice.presence("ready")
        async with alice.stream() as feed:
            snapshot = json.loads(await asyncio.wait_for(feed.recv(), 15))
            assert snapshot["kind"] == "snapshot"

            created = await widget.create(
                firstName="Ann", lastName="Lee", email="Ann.Lee@Example.com",
                endpoint="SMS_Main", subject="Order 42", userData={"orderId": "42"},
            )
            sid = created["entity"]["id"]
            assert created["entity"]["selfUri"] == f"/nexus/v3/chat/sessions/{sid}"

            async with widget.stream(1) as stream:
                [joined] = await receive(stream, 1)
                assert joined["index"] == 1 and joined["type"] == "ParticipantJoined"
                assert joined["from"]["type"] == "Customer"
                assert joined["from"]["nickname"] == "Ann Lee"

                offer = await feed_until(feed, lambda e: e["kind"] == "offer"
                                         and e["interaction"]["conversationId"] == sid)
                iid = offer["interaction"]["id"]
                listed = await alice.offer_for(sid)
                assert listed["id"] == iid
                assert listed["conversation"]["subject"] == "Order 42"
                assert listed["conversation"]["userData"]["orderId"] == "42"
                contact_id = listed["conversation"]["contactId"]
                assert contact_id

                assigned = await alice.act(iid, "accept")
                assert assigned["state"] == "assigned" and assigned["agent"] == "alice"
                await alice.send(iid, "Hello Ann, how can I help?")
                agent_joined, hello = await receive(stream, 2)
                assert (agent_joined["type"], agent_joined["from"]["type"]) == (
                    "ParticipantJoined", "Agent")
                assert hello["text"] == "Hello Ann, how can I help?"
                assert hello["from"] == {"nickname": "Alice", "participantId": "alice",
                                         "type": "Agent"}
                assert hello["index"] == 3

                # the customer writes (form body): the agent's feed shows it
                await widget.send("Where is my parcel?")
                event = await feed_until(feed, lambda e: e["kind"] == "message"
                                         and e["message"]["type"] == "Text"
                                         and e["message"]["from"]["type"] == "Customer")
                assert event["message"]["text"] == "Where is my parcel?"
                # typing is live only: on the stream with index null, never stored
                await widget.send(None, type="TypingStarted")
                mine, typing = await receive(stream, 2, stored_only=False)
                assert (mine["index"], mine["text"]) == (4, "Where is my parcel?")
                assert (typing["type"], typing["index"]) == ("TypingStarted", None)

                # async hold: bob gets ready first, so he is idle longer than alice
                await bob.presence("ready")
                held = await alice.act(iid, "hold")
                assert (held["state"], held["queue"]) == ("held", "asynchold")
                [left] = await receive(stream, 1)
                assert (left["type"], left["from"]["type"]) == ("ParticipantLeft", "Agent")
                assert not [i for i in await alice.interactions() if i["id"] == iid]

                # the customer leaves; the session stays open (async)
                assert (await widget.leave()).status_code == 200
                [gone] = await receive(stream, 1)
                assert (gone["type"], gone["from"]["type"]) == ("ParticipantLeft", "Customer")

                # ...and comes back later: the message wakes the interaction through the
                # redirect_queue strategy, and the last agent gets it although bob is idle
                # longer
                back = await widget.send("Any news?")
                assert back["type"] == "Text"
                again = await alice.offer_for(sid)
                assert again["id"] == iid and again["queue"] == "sms-support"
                assert not [i for i in await bob.interactions() if i["id"] == iid]
                await alice.act(iid, "accept")
                await alice.send(iid, "It ships today.")
                done = await alice.act(iid, "done")
                assert done["state"] == "done"

                tail = await receive(stream, 4)
                assert [m["type"] for m in tail] == ["Text", "ParticipantJoined", "Text",
                                                     "SegmentEnded"]
                indexes = [m["index"] for m in [joined, agent_joined, hello, left, gone, *tail]]
                assert indexes == sorted(indexes)

        # the transcript by polling equals what the stream delivered, without gaps
        transcript = await widget.messages(1)
        assert [m["index"] for m in transcript] == list(range(1, len(transcript) + 1))
        assert transcript[-1]["type"] == "SegmentEnded"
        # closed: the customer can no longer post
        resp = await widget.send_raw("hello?")
        assert resp.status_code == 409
        assert resp.json()["status"]["message"] == "SESSION_CLOSED"

        history = (await alice.ok("GET", f"/contacts/{contact_id}/history"))["history"]
        [entry] = [h for h in history if h["conversation"]["id"] == sid]
        assert [i["id"] for i in entry["interactions"]] == [iid]
        assert {m["text"] for m in entry["messages"]} >= {"Any news?", "It ships today."}

        await alice.presence("not-ready")
        await bob.presence("not-ready")


async def test_agent_transfer_and_reject(chat_engine: ChatEngine) -> None:
    """Reject sends the offer elsewhere; transfer moves an assigned chat to another queue."""
    api = chat_engine.api
    async with (
        AgentClient(api, T1001, "alice", chat_engine.password("alice")) as alice,
        AgentClient(api, T1001, "bob", chat_engine.password("bob")) as bob,
        WidgetClient(api, chat_engine.chat_key, prefix="/chat/v3") as widget,
    ):
        await bob.presence("not-ready")
        await alice.presence("ready")
        created = await widget.create(nickname="Zed", endpoint="chat.SMS_Main")
        sid = created["entity"]["id"]
        assert created["entity"]["selfUri"] == f"/chat/v3/sessions/{sid}"
        offer = await alice.offer_for(sid)
        await bob.presence("ready")
        rejected = await alice.act(offer["id"], "reject")
        assert rejected["state"] in ("queued", "offered")
        moved = await bob.offer_for(sid)
        await bob.act(moved["id"], "accept")
        resp = await bob.call("POST", f"/interactions/{moved['id']}/transfer",
                              json={"queue": "nope"})
        assert resp.status_code == 400 and resp.json()["status"]["message"] == "INVALID_QUEUE"
        resp = await alice.call("POST", f"/interactions/{moved['id']}/done")
        assert resp.status_code == 404
        assert resp.json()["status"]["message"] == "INTERACTION_NOT_FOUND"
        done = await bob.act(moved["id"], "done")
        assert done["state"] == "done"

        async def not_offered() -> bool:
            return all(i["conversationId"] != sid for i in await alice.interactions())

        await eventually(not_offered, "the offer to alice to disappear")
        await alice.presence("not-ready")
        await bob.presence("not-ready")
