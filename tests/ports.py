"""A free TCP port on the loopback for a server a test starts.

The port is chosen below the kernel's ephemeral range (``ip_local_port_range``), where
``connect()`` never picks local ports: a port taken from that range (``bind(0)``) can be
handed to an outgoing connection (the engine's own pool opening connections to PostgreSQL,
say) between the choice and the server's bind, which then fails with "Address already in
use". Outside it, only another explicit bind can take it, and the choice is random.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LOWEST = 10_000
_random = random.SystemRandom()  # independent of any test seeding the random module


def _ephemeral_low() -> int:
    try:
        return int(_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768  # Linux's default


def free_port() -> int:
    """A port no socket is bound to now, outside the ephemeral range where possible."""
    high = _ephemeral_low() - 1
    if high - _LOWEST >= 1_000:
        for _ in range(200):
            port = _random.randint(_LOWEST, high)
            with socket.socket() as sock:
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    with socket.socket() as sock:  # a machine with an unusual range: any free port
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
