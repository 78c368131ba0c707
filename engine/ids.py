"""Random ids on the request path, from pooled ``os.urandom`` bytes.

``uuid.uuid4()`` makes one ``getrandom`` syscall per id and builds a ``UUID`` object only for
its text; the ingest path makes two per message (the message id and the response's
operationId) and one trace id. Here the bytes come from a pool refilled with one syscall per
256 ids, and the text is formatted directly. The bytes are the kernel's CSPRNG output either
way; a forked child starts with an empty pool, so it never repeats its parent's next ids.
"""

from __future__ import annotations

import os
import threading

_POOL_SIZE = 16 * 256
_pool = memoryview(b"")
_lock = threading.Lock()


def random_bytes(count: int) -> bytes:
    """``count`` bytes of ``os.urandom``, taken from the pool (a count larger than the pool
    gets a pool of its own size)."""
    global _pool
    with _lock:
        if len(_pool) < count:
            _pool = memoryview(os.urandom(max(_POOL_SIZE, count)))
        chunk, _pool = _pool[:count], _pool[count:]
    return chunk.tobytes()


def random_hex(count: int) -> str:
    """``count`` random bytes as lower-case hex (``2 * count`` characters)."""
    return random_bytes(count).hex()


def uuid4() -> str:
    """A random (version 4, RFC 4122 variant) UUID in its canonical text form, as
    ``str(uuid.uuid4())`` gives."""
    raw = bytearray(random_bytes(16))
    raw[6] = (raw[6] & 0x0F) | 0x40
    raw[8] = (raw[8] & 0x3F) | 0x80
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _forget_pool() -> None:
    """In a forked child: its own bytes (not the parent's next ones), and a free lock."""
    global _pool, _lock
    _pool = memoryview(b"")
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_pool)
