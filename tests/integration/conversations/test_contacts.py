"""Contacts: tenant-scoped matching, merge rules, concurrent first contacts, history; the UCS
adapter against a fake UCS server on loopback."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import sqlalchemy as sa

from engine.routing.contacts import ContactData, ContactDirectory, Contacts
from engine.routing.conversation_models import ContactNotFound, UcsUnavailable
from engine.routing.conversations import ConversationService
from engine.routing.ucs import UcsClient
from engine.store.conversation_tables import contacts

from .conftest import CCID, Engine, build_model


def _data(**fields) -> ContactData:
    return ContactData.parse(**fields)


async def test_matching_is_case_insensitive_and_tenant_scoped(engine: Engine) -> None:
    directory = ContactDirectory(engine.store, engine.clock)
    a = await directory.identify("t-a", _data(email=" Ann@Example.com", first_name="Ann"))
    again = await directory.identify("t-a", _data(email="ann@EXAMPLE.com", phone="6505550100"))
    assert a is not None and again is not None and again.id == a.id
    assert again.phone == "+16505550100" and again.first_name == "Ann"  # filled, kept
    other_tenant = await directory.identify("t-b", _data(email="ann@example.com"))
    assert other_tenant is not None and other_tenant.id != a.id
    by_phone = await directory.identify("t-a", _data(phone="+1 650 555 0100", first_name="X"))
    assert by_phone is not None and by_phone.id == a.id and by_phone.first_name == "Ann"
    assert await directory.identify("t-a", _data(nickname="anonymous")) is None


async def test_email_and_phone_of_two_contacts_merge_into_the_older(engine: Engine) -> None:
    directory = ContactDirectory(engine.store, engine.clock)
    older = await directory.identify("t-a", _data(email="old@x.com"))
    engine.clock.advance(10)
    younger = await directory.identify("t-a", _data(phone="+33123456789", last_name="Y"))
    assert older is not None and younger is not None and older.id != younger.id
    merged = await directory.identify("t-a", _data(email="old@x.com", phone="+33123456789"))
    assert merged is not None and merged.id == older.id
    assert merged.phone == "+33123456789" and merged.last_name == "Y"
    loser = await directory.get("t-a", younger.id, follow=False)
    assert loser is not None and loser.merged_into == older.id
    followed = await directory.get("t-a", younger.id)
    assert followed is not None and followed.id == older.id
    # the phone now matches the survivor
    again = await directory.identify("t-a", _data(phone="0033 1 23 45 67 89"))
    assert again is not None and again.id == older.id
    # never across tenants: the same identifiers elsewhere stay separate
    elsewhere = await directory.identify("t-b", _data(email="old@x.com", phone="+33123456789"))
    assert elsewhere is not None and elsewhere.id != older.id


async def test_concurrent_first_contacts_create_one(engine: Engine) -> None:
    directory = ContactDirectory(engine.store, engine.clock)
    found = await asyncio.gather(
        *(directory.identify("t-a", _data(email="race@x.com")) for _ in range(20))
    )
    assert len({c.id for c in found if c is not None}) == 1
    rows = await engine.store.fetch_all(sa.select(contacts).where(contacts.c.tenant == "t-a"))
    assert len(rows) == 1


async def test_history_of_a_contact(engine: Engine) -> None:
    await engine.make_ready("alice")
    first = await engine.session(email="hist@x.com")
    seg = await engine.service.open_segment(CCID, first.id)
    assert seg is not None
    await engine.router.dispatch(CCID)
    await engine.router.accept(CCID, "alice", seg.id)
    await engine.service.post_customer_message(CCID, first.id, "question")
    await engine.router.done(CCID, "alice", seg.id)
    engine.clock.advance(60)
    second = await engine.session(email="HIST@x.com", phone="650 555 0199")
    assert second.contact_id == first.contact_id
    history = await engine.service.contacts.history(CCID, first.contact_id or "")
    assert [h["conversation"]["id"] for h in history] == [first.id, second.id]
    assert history[0]["interactions"][0]["state"] == "done"
    assert [m["text"] for m in history[0]["messages"] if m["type"] == "Text"] == ["question"]
    with pytest.raises(ContactNotFound):
        await engine.service.contacts.history(CCID, "nope")


class FakeUcs:
    """A UCS on loopback: identify by email/phone, store interactions, answer history."""

    def __init__(self) -> None:
        self.contacts: dict[str, str] = {}
        self.interactions: dict[str, list[dict]] = {}
        self.requests: list[tuple[str, str, dict | None, str | None]] = []
        self.fail = False
        ucs = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                return

            def _answer(self, status: int, body: dict) -> None:
                raw = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def _body(self) -> dict | None:
                length = int(self.headers.get("Content-Length") or 0)
                return json.loads(self.rfile.read(length)) if length else None

            def do_POST(self) -> None:  # noqa: N802
                body = self._body()
                ucs.requests.append(("POST", self.path, body, self.headers.get("x-ccid")))
                if ucs.fail:
                    return self._answer(503, {})
                if self.path == "/ucs/contacts/identify":
                    attrs = body["attributes"]
                    key = attrs.get("email") or attrs.get("phone")
                    created = key not in ucs.contacts
                    cid = ucs.contacts.setdefault(key, f"ucs-{len(ucs.contacts) + 1}")
                    return self._answer(200, {"contactId": cid, "created": created})
                parts = self.path.split("/")
                if len(parts) == 5 and parts[4] == "interactions":
                    ucs.interactions.setdefault(parts[3], []).append(body["interaction"])
                    return self._answer(201, {})
                return self._answer(404, {})

            def do_GET(self) -> None:  # noqa: N802
                ucs.requests.append(("GET", self.path, None, self.headers.get("x-ccid")))
                parts = self.path.split("?")[0].split("/")
                if len(parts) == 5 and parts[4] == "history" and parts[3] in ucs.interactions:
                    return self._answer(200, {"interactions": ucs.interactions[parts[3]]})
                return self._answer(404, {})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/ucs"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)


@pytest.fixture
def fake_ucs() -> Iterator[FakeUcs]:
    ucs = FakeUcs()
    ucs.thread.start()
    try:
        yield ucs
    finally:
        ucs.server.shutdown()
        ucs.server.server_close()


async def test_ucs_adapter_against_a_fake_server(fake_ucs: FakeUcs) -> None:
    client = UcsClient(timeout=2)
    try:
        cid = await client.identify(fake_ucs.url, CCID, {"email": "u@x.com"})
        assert cid == "ucs-1"
        assert await client.identify(fake_ucs.url + "/", CCID, {"email": "u@x.com"}) == cid
        await client.add_interaction(fake_ucs.url, CCID, cid, {"conversation": {"id": "c1"}})
        assert await client.history(fake_ucs.url, CCID, cid) == [{"conversation": {"id": "c1"}}]
        with pytest.raises(ContactNotFound):
            await client.history(fake_ucs.url, CCID, "unknown")
        fake_ucs.fail = True
        with pytest.raises(UcsUnavailable):
            await client.identify(fake_ucs.url, CCID, {"email": "u@x.com"})
        assert all(r[3] == CCID for r in fake_ucs.requests)
    finally:
        await client.close()
    closed = UcsClient(timeout=0.5)
    try:
        with pytest.raises(UcsUnavailable):
            await closed.identify("http://127.0.0.1:9/ucs", CCID, {})
    finally:
        await closed.close()


async def test_service_uses_ucs_when_provisioned(engine: Engine, fake_ucs: FakeUcs) -> None:
    model = build_model(ucs_url=fake_ucs.url)
    service = ConversationService(
        engine.store,
        engine.cache,
        model,
        router=engine.router,
        contacts=Contacts(engine.store, model, clock=engine.clock),
    )
    engine.router.contacts = service.contacts
    engine.router._model = model
    await engine.make_ready("alice")
    conv = await service.create_session(CCID, endpoint="Main", email="ucs@x.com")
    assert conv.contact_id == "ucs-1"
    assert await engine.store.fetch_all(sa.select(contacts)) == []  # no local contact
    seg = await service.open_segment(CCID, conv.id)
    assert seg is not None
    await engine.router.dispatch(CCID)
    await engine.router.accept(CCID, "alice", seg.id)
    await engine.router.done(CCID, "alice", seg.id)
    history = await service.contacts.history(CCID, "ucs-1")
    assert history[0]["conversation"]["id"] == conv.id
    assert history[0]["interactions"][0]["id"] == seg.id
    await service.contacts.close()
