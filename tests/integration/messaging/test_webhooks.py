"""Interaction webhooks: STARTED/FINISHED signed to the tenant's target, the deliveries API
(list, get, replay) and an engine restart with undelivered webhooks in the outbox."""

from __future__ import annotations

import hashlib
import hmac
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.channels.fakeprovider import Recorded, Reply
from tests.integration.messaging.conftest import Setup
from tests.integration.messaging.support import (
    T1001,
    ThreadedFake,
    async_body,
    messaging_config,
    post_async,
    start,
    text_message,
    unique_phone,
    wait_until,
)
from tests.integration.provisioning.harness import make_backend


def _events(fake: ThreadedFake, iid: str, event: str) -> list[Recorded]:
    def match(r: Recorded) -> bool:
        entity = r.json()["data"]["entities"][0]
        return entity["entity"]["id"] == iid and entity["event"] == event

    return fake.matching("/hooks", match)


def _verify(request: Recorded, secret: str) -> None:
    expected = "sha1=" + hmac.new(secret.encode(), request.body, hashlib.sha1).hexdigest()
    assert request.headers["x-hub-signature"] == expected
    assert uuid.UUID(request.headers["x-nexus-delivery"])


def test_started_and_finished_are_signed_and_replayable(setup: Setup) -> None:
    mid = f"w-{uuid.uuid4()}"
    post_async(setup.engine, async_body(text_message(mid, unique_phone(), "hi")))
    iid = setup.console.find(mid)["interactionId"]
    secret = setup.engine.env["T1001_AI_CONNECTOR_SECRET"]
    (started,) = wait_until(lambda: _events(setup.fake, iid, "STARTED"), "STARTED")
    _verify(started, secret)
    entity = started.json()["data"]["entities"][0]["entity"]
    assert entity["interactionSubtype"] == "SMS"
    setup.console.take(iid)
    setup.console.done(iid)
    (finished,) = wait_until(lambda: _events(setup.fake, iid, "FINISHED"), "FINISHED")
    _verify(finished, secret)
    # the deliveries API
    admin = setup.console.headers
    delivery_id = started.headers["x-nexus-delivery"]
    listed = setup.engine.call("GET", f"/nexus/v3/webhooks/{T1001}/deliveries",
                               params={"status": "delivered", "limit": 500}, headers=admin)
    assert listed.status_code == 200
    assert delivery_id in {d["id"] for d in listed.json()["data"]["deliveries"]}
    one = setup.engine.call("GET", f"/nexus/v3/webhooks/{T1001}/deliveries/{delivery_id}",
                            headers=admin)
    assert one.json()["data"]["status"] == "delivered"
    replayed = setup.engine.call(
        "POST", f"/nexus/v3/webhooks/{T1001}/deliveries/{delivery_id}/replay", headers=admin)
    assert replayed.status_code == 200, replayed.text
    assert replayed.json()["data"]["replays"] == 1
    again = wait_until(lambda: [r for r in _events(setup.fake, iid, "STARTED")
                                if r.headers["x-nexus-delivery"] == delivery_id][1:],
                       "the replayed STARTED")
    assert again[0].body == started.body
    missing = setup.engine.call(
        "POST", f"/nexus/v3/webhooks/{T1001}/deliveries/{uuid.uuid4()}/replay", headers=admin)
    assert missing.status_code == 404
    other = setup.engine.call("GET", f"/nexus/v3/webhooks/{T1001}/deliveries",
                              headers={"x-api-key": setup.engine.env["T1001_CHAT_API_KEY"]})
    assert other.status_code == 403


@pytest.fixture(params=["sqlite", "pg"])
def restart_backend(request, tmp_path: Path) -> Iterator[tuple[str, object]]:
    if request.param == "pg":
        backend = make_backend("pg", tmp_path, request.getfixturevalue("pg_url"),
                               request.getfixturevalue("redis_url"))
    else:
        backend = make_backend("sqlite", tmp_path)
    try:
        yield request.param, backend
    finally:
        backend.close()


def test_undelivered_webhooks_survive_an_engine_restart(restart_backend, tmp_path: Path) -> None:
    _, backend = restart_backend
    receiver = ThreadedFake().start()
    try:
        receiver.default("/hooks", Reply(500))
        config = messaging_config(tmp_path, receiver.url, webhook_delay=1.0)
        engine = start(tmp_path, backend, config)
        try:
            phone = unique_phone()
            mid = f"r-{uuid.uuid4()}"
            assert post_async(engine, async_body(text_message(mid, phone, "hi"))).status_code \
                == 200
            first = wait_until(lambda: receiver.on("/hooks"), "a failed attempt")[0]
            delivery_id = first.headers["x-nexus-delivery"]
        finally:
            engine.stop()
        receiver.default("/hooks", Reply(200))
        engine = start(tmp_path, backend, config)
        try:
            def delivered() -> bool:
                resp = engine.call(
                    "GET", f"/nexus/v3/webhooks/{T1001}/deliveries/{delivery_id}",
                    headers={"Authorization": f"Bearer {engine.admin_token()}"})
                return resp.json()["data"]["status"] == "delivered"

            wait_until(delivered, "the delivery after the restart")
            attempts = [r for r in receiver.on("/hooks")
                        if r.headers["x-nexus-delivery"] == delivery_id]
            assert len(attempts) >= 2
            assert {r.body for r in attempts} == {first.body}
        finally:
            engine.stop()
    finally:
        receiver.close()
