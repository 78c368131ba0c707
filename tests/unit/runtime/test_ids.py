"""engine.ids: pooled random ids in the formats of uuid.uuid4() and of trace ids."""

from __future__ import annotations

import os
import uuid

from engine import ids
from engine.observability.logging import trace_id_from


def test_uuid4_is_a_canonical_version_4_uuid() -> None:
    for _ in range(2000):  # several pool refills
        text = ids.uuid4()
        parsed = uuid.UUID(text)
        assert str(parsed) == text
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122


def test_ids_do_not_repeat() -> None:
    many = [ids.uuid4() for _ in range(20_000)]
    assert len(set(many)) == len(many)
    hexes = [ids.random_hex(16) for _ in range(5_000)]
    assert len(set(hexes)) == len(hexes)
    assert all(len(h) == 32 and int(h, 16) >= 0 for h in hexes)


def test_random_bytes_larger_than_what_is_left_refill_the_pool() -> None:
    ids.random_bytes(16 * 256 - 3)
    chunk = ids.random_bytes(100)
    assert len(chunk) == 100
    assert len(ids.random_bytes(5000)) == 5000


def test_trace_ids_come_from_the_pool() -> None:
    fresh = trace_id_from(None)
    assert len(fresh) == 32 and int(fresh, 16) >= 0
    assert trace_id_from("ABCDEF0123456789") == "abcdef0123456789"


def test_a_forked_child_does_not_repeat_its_parents_next_ids() -> None:
    ids.uuid4()  # the pool now holds the parent's next bytes
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next id and leave at once
        os.close(read)
        os.write(write, ids.uuid4().encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 64).decode()
    os.close(read)
    os.waitpid(pid, 0)
    assert ids.uuid4() != child
