"""Campaign sends through every provider, pacing, opt-outs, statuses and receipts."""

from __future__ import annotations

import base64
import uuid

from tests.integration.messaging.conftest import Setup
from tests.integration.messaging.support import (
    ASYNC_CHANNEL,
    CXC_CHANNEL,
    MGAGE_CHANNEL,
    PORTICO_CHANNEL,
    T1001,
    unique_phone,
    wait_until,
)

AGENTLESS = "/portico/api/v2/conversations/messages/agentless"


def _cxc(setup: Setup) -> dict[str, str]:
    return {"x-api-key": setup.engine.env["T1001_CXC_API_KEY"], "x-ccid": T1001}


def _status(setup: Setup, media: str, message_id: str) -> str:
    resp = setup.engine.call("GET", f"/nexus/v3/cxc/{media}/{message_id}", headers=_cxc(setup))
    assert resp.status_code == 200, resp.text
    return resp.json()["data"]["status"]


def test_sms_through_every_provider(setup: Setup) -> None:
    phone = unique_phone()
    messages = [{"from": channel, "to": phone, "text": f"via {channel}", "externalId": channel}
                for channel in (ASYNC_CHANNEL, MGAGE_CHANNEL, PORTICO_CHANNEL)]
    resp = setup.engine.call("POST", "/nexus/v3/cxc/sms", headers=_cxc(setup),
                             json={"data": {"messages": messages}})
    assert resp.status_code == 202, resp.text
    results = resp.json()["data"]["messages"]
    assert [r["externalId"] for r in results] == [ASYNC_CHANNEL, MGAGE_CHANNEL, PORTICO_CHANNEL]
    for result in results:
        wait_until(lambda r=result: _status(setup, "sms", r["id"]) == "sent", "sent")
    (gateway,) = setup.fake.matching(
        f"/async/{ASYNC_CHANNEL}", lambda r: r.json()["messages"][0]["channel"]["to"]["id"]
        == phone)
    assert gateway.json()["messages"][0]["text"] == f"via {ASYNC_CHANNEL}"
    (kaleyra,) = setup.fake.matching("/mgage/send", lambda r: r.form().get("to") == phone)
    assert kaleyra.form()["from"] == MGAGE_CHANNEL
    assert kaleyra.form()["username"] == setup.engine.env["T1001_KALEYRA_USERNAME"]
    (portico,) = setup.fake.matching(AGENTLESS, lambda r: r.json()["toAddress"] == phone)
    assert portico.headers["authorization"] == "Bearer tok-1"
    assert portico.json()["fromAddress"] == PORTICO_CHANNEL


def test_email_through_async_and_sparkpost(setup: Setup) -> None:
    to = f"{uuid.uuid4().hex[:8]}@example.org"
    one = setup.engine.call("POST", "/nexus/v3/cxc/email", headers=_cxc(setup), json={"data": {
        "from": "offers@company.com", "to": to, "subject": "Hi", "html": "<p>Hi</p>",
        "text": "Hi"}})
    assert one.status_code == 202, one.text
    two = setup.engine.call("POST", "/nexus/v3/cxc/email", headers=_cxc(setup), json={"data": {
        "from": "news.company.com", "to": to, "subject": "News", "text": "News"}})
    assert two.status_code == 202, two.text
    for answer in (one, two):
        wait_until(lambda a=answer: _status(setup, "email", a.json()["data"]["id"]) == "sent",
                   "sent")
    (gateway,) = setup.fake.matching("/async/company.com",
                                     lambda r: r.json()["messages"][0]["channel"]["to"]["id"]
                                     == to)
    assert gateway.json()["messages"][0]["subject"] == "Hi"
    assert gateway.json()["messages"][0]["channel"]["from"]["address"] == "offers@company.com"
    (sparkpost,) = setup.fake.matching(
        "/sparkpost/api/v1/transmissions",
        lambda r: r.json()["recipients"][0]["address"]["email"] == to)
    assert sparkpost.headers["authorization"] == setup.engine.env["T1001_SPARKPOST_APIKEY"]


def test_bulk_is_paced_per_sender_in_order(setup: Setup) -> None:
    phones = [unique_phone() for _ in range(8)]
    messages = [{"from": CXC_CHANNEL, "to": p, "text": f"promo {i}"}
                for i, p in enumerate(phones)]
    resp = setup.engine.call("POST", "/nexus/v3/cxc/sms", headers=_cxc(setup),
                             json={"data": {"messages": messages}})
    assert resp.status_code == 202, resp.text
    wanted = set(phones)

    def arrived() -> list:
        got = setup.fake.matching(AGENTLESS, lambda r: r.json()["toAddress"] in wanted)
        return got if len(got) == len(phones) else []

    got = wait_until(arrived, "every paced message")
    assert [r.json()["toAddress"] for r in got] == phones
    assert [r.json()["textBody"] for r in got] == [f"promo {i}" for i in range(8)]


def test_validation_partial_success_and_unknown_ids(setup: Setup) -> None:
    bad = setup.engine.call("POST", "/nexus/v3/cxc/sms", headers=_cxc(setup),
                            json={"data": {"from": "19990000000", "to": "+16505550100",
                                           "text": "x"}})
    assert bad.status_code == 400
    assert bad.json()["status"]["field"] == "from"
    mixed = setup.engine.call("POST", "/nexus/v3/cxc/sms", headers=_cxc(setup), json={
        "data": {"messages": [{"from": CXC_CHANNEL, "to": unique_phone(), "text": "ok"},
                              {"from": CXC_CHANNEL, "text": "no recipient"}]}})
    assert mixed.status_code == 207
    body = mixed.json()
    assert body["status"]["code"] == 7
    assert [m["status"] for m in body["data"]["messages"]] == ["queued", "invalid"]
    assert body["data"]["messages"][1]["field"] == "messages[1].to"
    chat = {"x-api-key": setup.engine.env["T1001_CHAT_API_KEY"]}
    assert setup.engine.call("POST", "/nexus/v3/cxc/sms", headers=chat, json={
        "data": {"from": CXC_CHANNEL, "to": unique_phone(), "text": "x"}}).status_code == 403
    missing = setup.engine.call("GET", f"/nexus/v3/cxc/sms/{uuid.uuid4()}", headers=_cxc(setup))
    assert missing.status_code == 404


def test_receipts_update_the_status(setup: Setup) -> None:
    phone = unique_phone()
    resp = setup.engine.call("POST", "/nexus/v3/cxc/sms", headers=_cxc(setup), json={
        "data": {"from": PORTICO_CHANNEL, "to": phone, "text": "track me"}})
    message_id = resp.json()["data"]["id"]
    wait_until(lambda: _status(setup, "sms", message_id) == "sent", "sent")
    token = base64.b64encode(f"{T1001}:{setup.engine.env['T1001_CHAT_API_KEY']}".encode())
    headers = {"Authorization": f"Basic {token.decode()}"}
    for state in ("DELIVERED", "DELIVERED"):  # a repeated receipt changes nothing more
        dr = setup.engine.call("POST", "/nexus/v3/sms/receipt", headers=headers, data={
            "type": "receipt", "message_id": f"gc-{phone}", "message_state": state,
            "result_code": "0"})
        assert dr.status_code == 200, dr.text
    assert _status(setup, "sms", message_id) == "delivered"
    data = setup.engine.call("GET", f"/nexus/v3/cxc/sms/{message_id}",
                             headers=_cxc(setup)).json()["data"]
    assert data["providerMessageId"] == f"gc-{phone}"
