"""The API port's listening sockets: one per worker, so the kernel spreads connections evenly.

Sanic binds one socket in the main process and every worker accepts from it. Whichever
worker wakes first takes the connection, so the split is left to chance: 50 connections
opened one after another came out 1/49, 11/39 and 18/32 between two workers, and the worker
with most of them ran at its limit while the other idled. With ``SO_REUSEPORT`` the main
process binds one listening socket per worker on the same address, and the kernel hashes
each new connection to one of them (as nginx's ``reuseport`` does).

The main process binds them all before any worker starts, so a connection made while the
workers start waits in a backlog as before, and a port taken by another program (including
another Nexus) fails at once with a clear message. Each worker then puts its own socket
under the file descriptor Sanic listens on (:func:`adopt`), and once all have, the main
process closes its copies (:func:`release`): a worker that dies takes its socket along, and
the kernel hands new connections to the others. Where the kernel has no
``SO_REUSEPORT``, or with one worker, it is Sanic's single shared socket, as before.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Sequence
from ipaddress import ip_address
from typing import Any

log = logging.getLogger("nexus.server")

#: Sanic's worker processes are named ``Sanic-Server-<n>-<m>`` (sanic.worker.process).
_WORKER_PREFIX = "Sanic-Server-"


class ListenError(Exception):
    """The API address cannot be listened on; the message says where and why."""


def _family(host: str) -> socket.AddressFamily:
    try:
        return socket.AF_INET6 if ip_address(host).version == 6 else socket.AF_INET
    except ValueError:  # a hostname: IPv4, as Sanic's own bind_socket does
        return socket.AF_INET


def _socket(host: str, port: int, *, reuse_port: bool) -> socket.socket:
    sock = socket.socket(_family(host), socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def bind_listeners(host: str, port: int, count: int, *, backlog: int = 100) -> list[socket.socket]:
    """``count`` listening sockets on ``host:port`` sharing the port through
    ``SO_REUSEPORT``; one socket where that is not possible or ``count`` is 1.

    A plain socket is bound first, as a check: it fails on a port that anyone listens on,
    even with ``SO_REUSEPORT`` (which would otherwise let a second Nexus share the port
    silently), and it fixes the port when ``port`` is 0. Raises :class:`ListenError`."""
    where = f"{host}:{port}"
    try:
        probe = _socket(host, port, reuse_port=False)
    except OSError as exc:
        raise ListenError(f"cannot listen on {where}: {exc.strerror or exc}") from exc
    socks: list[socket.socket] = []
    try:
        port = probe.getsockname()[1]
        if count > 1 and hasattr(socket, "SO_REUSEPORT"):
            try:
                for _ in range(count):
                    socks.append(_socket(host, port, reuse_port=True))
            except OSError as exc:  # e.g. a kernel or sandbox without SO_REUSEPORT
                log.warning("one shared socket for %d workers on %s:%d (SO_REUSEPORT: %s)",
                            count, host, port, exc)
                for sock in socks:
                    sock.close()
                socks = []
        if not socks:
            probe.listen(backlog)
            probe.set_inheritable(True)
            socks, probe = [probe], None
        else:
            for sock in socks:
                sock.listen(backlog)
                sock.set_inheritable(True)
    except OSError as exc:
        for sock in socks:
            sock.close()
        raise ListenError(f"cannot listen on {where}: {exc.strerror or exc}") from exc
    finally:
        if probe is not None:
            probe.close()
    return socks


def worker_index(name: str | None = None) -> int | None:
    """This Sanic server worker's number (0, 1, ...), or None outside a server worker."""
    name = os.environ.get("SANIC_WORKER_NAME", "") if name is None else name
    if not name.startswith(_WORKER_PREFIX):
        return None
    number = name[len(_WORKER_PREFIX):].split("-", 1)[0]
    return int(number) if number.isdigit() else None


def adopt(app: Any, listeners: Sequence[socket.socket]) -> int | None:
    """In a worker, before its server starts: make the socket Sanic will listen on this
    worker's own one of ``listeners`` (``dup2`` onto Sanic's descriptor), then close the
    worker's copies of the others. Returns the index adopted, or None (Sanic's socket kept:
    one socket, or a process that is not a server worker)."""
    index = worker_index()
    target = _sanic_socket(app)
    adopted = None
    try:
        if len(listeners) > 1 and index is not None and target is not None:
            own = listeners[index % len(listeners)]
            if own.fileno() != target.fileno():
                os.dup2(own.fileno(), target.fileno())
            adopted = index % len(listeners)
            log.debug("worker %d accepts on its own socket", adopted)
    finally:
        for sock in listeners:
            # Sanic's socket may arrive as one of these very objects (one pickle): kept
            if target is None or sock.fileno() != target.fileno():
                sock.close()
    return adopted


def _sanic_socket(app: Any) -> socket.socket | None:
    for info in getattr(app.state, "server_info", None) or ():
        sock = info.settings.get("sock")
        if isinstance(sock, socket.socket) and sock.fileno() >= 0:
            return sock
    return None


def release(listeners: Sequence[socket.socket]) -> None:
    """The main process's copies of the workers' sockets, closed once every worker has
    adopted its own: a socket then lives exactly as long as its worker."""
    for sock in listeners:
        sock.close()
    log.info("each of the %d workers holds the only copy of its socket on the API port",
             len(listeners))
