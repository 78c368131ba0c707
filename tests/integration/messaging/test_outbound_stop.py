"""A reply waiting to retry when its engine stops: the stop does not sit out the backoff,
and the reply goes back to the queue, sent by the next engine (nothing lost)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.integration.channels.fakeprovider import Reply
from tests.integration.messaging.support import (
    ASYNC_CHANNEL,
    Console,
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

GATEWAY = f"/async/{ASYNC_CHANNEL}"
BACK_IN_QUEUE = "stopping before its next attempt; back in the queue"


@pytest.fixture
def fake() -> Iterator[ThreadedFake]:
    server = ThreadedFake().start()
    yield server
    server.close()


def test_a_stop_during_a_retry_backoff_requeues_the_reply(tmp_path, fake: ThreadedFake) -> None:
    backend = make_backend("sqlite", tmp_path)
    try:
        # the first attempt fails with a 500, and the next one is due a minute later
        engine = start(tmp_path, backend, messaging_config(tmp_path, fake.url, webhook_delay=60))
        try:
            console = Console(engine)
            phone, mid = unique_phone(), f"in-{uuid.uuid4()}"
            assert post_async(engine, async_body(text_message(mid, phone, "hi"))).status_code \
                == 200
            iid = console.find(mid)["interactionId"]
            console.take(iid)
            fake.script(GATEWAY, Reply(500))
            sent = console.reply(iid, "sent by the next engine")
            wait_until(lambda: "attempt 1 failed" in engine.logs(), "the failed first attempt")
        finally:
            engine.stop()
        logs = engine.logs()
        assert engine.proc.returncode == 0, logs[-3000:]
        assert BACK_IN_QUEUE in logs, logs[-3000:]
        assert "Task was destroyed but it is pending" not in logs
        attempts = fake.matching(GATEWAY, lambda r: r.json()["messages"][0]["id"] == sent["id"])
        assert len(attempts) == 1

        # the next engine (same database, short backoffs) sends it; the fake answers 200 now
        engine = start(tmp_path, backend, messaging_config(tmp_path / "next", fake.url))
        try:
            wait_until(lambda: len(fake.matching(
                GATEWAY, lambda r: r.json()["messages"][0]["id"] == sent["id"])) == 2,
                "the reply sent again")
        finally:
            engine.stop()
    finally:
        backend.close()
