"""The metrics endpoint: ``GET /metrics`` on ``--metrics-port``, served from the main process.

Sanic's main process runs no event loop while it supervises the workers (it blocks in the
worker manager), so this is a small threaded ``http.server`` in a daemon thread. Each scrape
first asks every worker to fold its buffered counters into its multiprocess file (through a
FIFO the worker's event loop reads: :func:`~engine.observability.metrics.fold_worker_counters`),
then builds a fresh registry that merges every worker's files and reads the process tree from
/proc (:func:`engine.observability.metrics.render`), so it works with any number of workers.
"""

from __future__ import annotations

import gzip
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST

from engine.observability import metrics

log = logging.getLogger("nexus.metrics")


class _Handler(BaseHTTPRequestHandler):
    server: _MetricsHTTPServer
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        path = self.path.split("?", 1)[0]
        if path.rstrip("/") != "/metrics":
            self._send(404, b"not found\n", "text/plain; charset=utf-8")
            return
        try:
            body = self.server.render()
        except Exception:
            log.exception("metrics rendering failed")
            self._send(500, b"metrics unavailable\n", "text/plain; charset=utf-8")
            return
        encoding = None
        if "gzip" in (self.headers.get("Accept-Encoding") or ""):
            body, encoding = gzip.compress(body), "gzip"
        self._send(200, body, CONTENT_TYPE_LATEST, encoding)

    def do_HEAD(self) -> None:  # noqa: N802
        self._send(200 if self.path.startswith("/metrics") else 404, b"", CONTENT_TYPE_LATEST)

    def _send(self, status: int, body: bytes, ctype: str, encoding: str | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        if encoding:
            self.send_header("Content-Encoding", encoding)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        return  # scrapes every 15 s are not worth a log line


class _MetricsHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], render: Callable[[], bytes]) -> None:
        super().__init__(address, _Handler)
        self.render = render


class MetricsServer:
    def __init__(
        self,
        host: str,
        port: int,
        render: Callable[[], bytes] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self._render = render or metrics.render
        self._server: _MetricsHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def bound_port(self) -> int:
        if self._server is None:
            raise RuntimeError("the metrics server is not running")
        return int(self._server.server_address[1])

    def start(self) -> MetricsServer:
        self._server = _MetricsHTTPServer((self.host, self.port), self._render)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="nexus-metrics-http", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
