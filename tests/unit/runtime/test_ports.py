"""The test servers' ports come from outside the ephemeral range (tests/ports.py)."""

from __future__ import annotations

import random
import socket

from tests import ports


def test_ports_are_free_and_below_the_ephemeral_range() -> None:
    low = ports._ephemeral_low()
    chosen = [ports.free_port() for _ in range(50)]
    assert all(ports._LOWEST <= port < low for port in chosen)
    assert len(set(chosen)) > 40  # random, so concurrent tests rarely pick the same one
    for port in chosen[:5]:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))  # nothing holds it


def test_a_seeded_random_module_does_not_repeat_the_ports() -> None:
    random.seed(7)
    first = [ports.free_port() for _ in range(5)]
    random.seed(7)
    assert [ports.free_port() for _ in range(5)] != first


def test_a_taken_port_is_never_chosen(monkeypatch) -> None:
    spare = ports.free_port()
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        taken = held.getsockname()[1]
        picks = iter([taken, taken, spare])
        monkeypatch.setattr(ports._random, "randint", lambda a, b: next(picks))
        monkeypatch.setattr(ports, "_ephemeral_low", lambda: max(taken, spare) + 2)
        assert ports.free_port() == spare
