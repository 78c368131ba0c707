"""The API port's sockets: one per worker through SO_REUSEPORT (engine/listeners.py)."""

from __future__ import annotations

import os
import socket
from types import SimpleNamespace

import pytest

from engine import listeners
from engine.listeners import ListenError, bind_listeners, worker_index


def _listening(sock: socket.socket) -> bool:
    return bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))


def _reuse_port(sock: socket.socket) -> bool:
    return bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT))


def _close(socks) -> None:
    for sock in socks:
        sock.close()


def test_one_listening_socket_per_worker_on_one_port() -> None:
    socks = bind_listeners("127.0.0.1", 0, 3)
    try:
        ports = {s.getsockname()[1] for s in socks}
        assert len(socks) == 3 and len(ports) == 1 and ports != {0}
        assert all(_listening(s) and _reuse_port(s) and s.get_inheritable() for s in socks)
        # the kernel hands each connection to one of them
        port = ports.pop()
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(30)]
        accepted = []
        for sock in socks:
            sock.setblocking(False)
            while True:
                try:
                    conn, _ = sock.accept()
                except BlockingIOError:
                    break
                accepted.append(sock)
                conn.close()
        _close(clients)
        assert len(accepted) == 30
        assert len(set(map(id, accepted))) > 1  # 30 connections never all hash to one
    finally:
        _close(socks)


def test_one_worker_gets_one_plain_socket() -> None:
    socks = bind_listeners("127.0.0.1", 0, 1)
    try:
        assert len(socks) == 1 and _listening(socks[0]) and not _reuse_port(socks[0])
    finally:
        _close(socks)


@pytest.mark.parametrize("count", [1, 2])
def test_a_port_another_nexus_listens_on_is_refused(count: int) -> None:
    first = bind_listeners("127.0.0.1", 0, 2)  # SO_REUSEPORT sockets would let a second join
    try:
        port = first[0].getsockname()[1]
        with pytest.raises(ListenError, match=rf"cannot listen on 127\.0\.0\.1:{port}: "
                                              "Address already in use"):
            bind_listeners("127.0.0.1", port, count)
    finally:
        _close(first)


def test_a_port_another_program_listens_on_is_refused() -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        with pytest.raises(ListenError, match="Address already in use"):
            bind_listeners("127.0.0.1", port, 2)


def test_an_address_not_on_this_host_is_refused() -> None:
    with pytest.raises(ListenError, match=r"cannot listen on 203\.0\.113\.9:0: "):
        bind_listeners("203.0.113.9", 0, 2)


def test_ipv6_and_hostnames() -> None:
    try:
        socks = bind_listeners("::1", 0, 2)
    except ListenError:  # pragma: no cover - a host without IPv6 loopback
        socks = []
    try:
        assert all(s.family == socket.AF_INET6 for s in socks)
    finally:
        _close(socks)
    socks = bind_listeners("localhost", 0, 2)
    try:
        assert all(s.family == socket.AF_INET for s in socks)
    finally:
        _close(socks)


def test_without_so_reuseport_the_workers_share_one_socket(monkeypatch, caplog) -> None:
    real = listeners._socket

    def no_reuse_port(host, port, *, reuse_port):
        if reuse_port:
            raise OSError(92, "Protocol not available")
        return real(host, port, reuse_port=False)

    monkeypatch.setattr(listeners, "_socket", no_reuse_port)
    socks = bind_listeners("127.0.0.1", 0, 2)
    try:
        assert len(socks) == 1 and _listening(socks[0])
        assert "one shared socket for 2 workers" in caplog.text
    finally:
        _close(socks)


@pytest.mark.parametrize(("name", "index"), [
    ("Sanic-Server-0-0", 0), ("Sanic-Server-3-0", 3), ("Sanic-Server-12-1", 12),
    ("", None), ("Sanic-Reloader-0", None), ("Sanic-Server-x-0", None), ("Sanic-Server-", None),
])
def test_worker_index(name: str, index: int | None) -> None:
    assert worker_index(name) == index


def _app(sock: socket.socket) -> SimpleNamespace:
    info = SimpleNamespace(settings={"sock": sock})
    return SimpleNamespace(state=SimpleNamespace(server_info=[info]))


def test_a_worker_adopts_its_own_socket_and_closes_the_others(monkeypatch) -> None:
    socks = bind_listeners("127.0.0.1", 0, 3)
    sanic_sock = socks[0]  # Sanic's socket: the first, as engine/server.py passes it
    inodes = [os.fstat(s.fileno()).st_ino for s in socks]
    assert len(set(inodes)) == 3
    monkeypatch.setenv("SANIC_WORKER_NAME", "Sanic-Server-2-0")
    try:
        assert listeners.adopt(_app(sanic_sock), socks) == 2
        assert sanic_sock.fileno() >= 0 and _listening(sanic_sock)
        assert os.fstat(sanic_sock.fileno()).st_ino == inodes[2]  # worker 2's own socket
        assert socks[1].fileno() == -1 and socks[2].fileno() == -1  # the copies are closed
    finally:
        _close(socks)


def test_outside_a_server_worker_sanic_socket_is_kept(monkeypatch) -> None:
    socks = bind_listeners("127.0.0.1", 0, 2)
    monkeypatch.delenv("SANIC_WORKER_NAME", raising=False)
    try:
        assert listeners.adopt(_app(socks[0]), socks) is None
        assert socks[0].fileno() >= 0 and socks[1].fileno() == -1
    finally:
        _close(socks)
