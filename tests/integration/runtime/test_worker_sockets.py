"""A worker that dies takes its listening socket along: new connections go to the others.

Each worker accepts on its own SO_REUSEPORT socket (engine/listeners.py). Sanic does not
restart a dead worker, so if the main process still held that socket, the kernel would keep
handing it a share of the new connections that nobody accepts.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from tests.integration.provisioning.harness import stop_process
from tests.integration.runtime.test_serve import (
    ROOT,
    _children,
    _free_port,
    _socket_inodes,
    serve_args,
    serve_env,
)

RELEASED = "each of the 2 workers holds the only copy of its socket on the API port"


def _listening_inodes(port: int) -> set[int]:
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port and fields[3] == "0A":  # LISTEN
            inodes.add(int(fields[9]))
    return inodes


def _get_health(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
        client.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        return client.recv(65536)


def test_new_connections_skip_a_dead_worker(tmp_path) -> None:
    config = tmp_path / "config"
    config.mkdir()
    port = _free_port()
    log = (tmp_path / "out.log").open("wb")
    # its own session: stopping an engine with a dead worker, Sanic kills the worker's
    # whole process group, which would otherwise be this test's
    proc = subprocess.Popen(serve_args(port, _free_port(), config, "wiring"), cwd=ROOT,
                            env=serve_env(tmp_path), stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    log.close()
    try:
        deadline = time.monotonic() + 60
        # both workers are up and the main process has let go of their sockets
        while RELEASED not in (tmp_path / "out.log").read_text():
            assert proc.poll() is None, (tmp_path / "out.log").read_text()[-3000:]
            assert time.monotonic() < deadline, (tmp_path / "out.log").read_text()[-3000:]
            time.sleep(0.1)
        listening = _listening_inodes(port)
        workers = [pid for pid in _children(proc.pid) if _socket_inodes(pid) & listening]
        assert len(listening) == 2 and len(workers) == 2
        assert not _socket_inodes(proc.pid) & listening

        os.kill(workers[0], signal.SIGKILL)
        # its socket goes with it (when its last thread has exited, a little after the
        # process turned zombie); held by the main process, it would stay, and about half
        # of the new connections would hang in its backlog
        while len(_listening_inodes(port)) != 1:
            assert time.monotonic() < deadline, "the dead worker's socket stays open"
            time.sleep(0.05)
        for _ in range(30):
            assert _get_health(port).startswith(b"HTTP/1.1 200")
    finally:
        stop_process(proc)
