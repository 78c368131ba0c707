"""Prometheus metrics of the runtime, under the guide's names, correct with several workers.

Multiprocess mode (prometheus-client): ``PROMETHEUS_MULTIPROC_DIR`` is set and wiped by the main
process before any worker is spawned (:func:`prepare_multiprocess_dir`); spawned workers inherit
it and write their samples to mmap'd files there; the metrics server in the main process merges
them per scrape (:func:`render`). Without the variable (tests, tools) the default registry of
this process is served instead.

HTTP metrics (``nexus_request_total``, ``nexus_errors_total``) carry **no labels**, exactly as
the guide's table lists them: the guide's "Nexus error rate" alert divides one by the other per
pod, and unlabeled counters keep each request to two cheap increments with no cardinality risk.
Per-route detail is in the access log (route name, status, duration). An "error" is a response
with status >= 500 (an unhandled exception included): 4xx answers are the client's mistake and
would make the error-rate alert fire on bad widget keys or polling 404s.

Process metrics (``nexus_process_*``) are collected at scrape time by
:class:`ProcessTreeCollector` from ``/proc`` for the main process and every live process below
it (the workers), summed; the start time is the oldest. CPU of workers that already exited is
kept through the main process's ``cutime``/``cstime``, so the CPU counters never go backwards
when a worker is replaced.

Hot-path counters (:class:`BufferedCounter`, e.g. :data:`REQUEST_COUNT`) count in a plain int
and are folded into their Prometheus counter by :func:`fold_counters`: in a worker every second
(:class:`CounterFolder`), when the metrics server is about to serve a scrape (it asks every
worker through a FIFO in the multiprocess directory and waits for the answers,
:func:`fold_worker_counters`), whenever this process's registry is collected, at worker stop
and at exit. A multiprocess increment costs an mmap write and a pid check (~1.3 us); a plain
int about 50 ns.

Runtime metrics (the guide's ``nexus_nodejs_*`` names) are measured in each worker by
:class:`RuntimeSampler` and written as gauges with a ``live*`` multiprocess mode (summed, or
the maximum for event-loop lag); ``mark_process_dead`` drops a stopped worker's files. See
docs/metrics.md for which metrics are exact and which are Python equivalents.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import errno
import glob
import logging
import os
import platform
import shutil
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from engine.observability import procfs

log = logging.getLogger("nexus.metrics")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


# ---------------------------------------------------------------------- buffered counters
class BufferedCounter:
    """A counter (or labelled child) incremented in a plain int, folded in by fold_counters().

    Increment from one thread (the event loop's): ``counted`` is only ever written there and
    ``_folded`` only under the fold lock, so a fold from any thread loses no increment.
    """

    __slots__ = ("target", "counted", "_folded")

    def __init__(self, target: Counter) -> None:
        self.target = target
        self.counted = 0
        self._folded = 0

    def inc(self, amount: int = 1) -> None:
        self.counted += amount

    def fold(self) -> None:
        counted = self.counted
        delta = counted - self._folded
        if delta:
            self._folded = counted
            self.target.inc(delta)


_BUFFERED: list[BufferedCounter] = []
_FOLD_LOCK = threading.Lock()


def buffered(counter: Counter) -> BufferedCounter:
    """A :class:`BufferedCounter` for ``counter`` (an unlabelled counter or a child)."""
    front = BufferedCounter(counter)
    with _FOLD_LOCK:
        _BUFFERED.append(front)
    return front


def fold_counters() -> None:
    """Add every buffered increment of this process to its Prometheus counter."""
    with _FOLD_LOCK:
        for counter in _BUFFERED:
            counter.fold()


class _FoldOnCollect(Collector):
    """Registered ahead of the counters: collecting the registry folds them first."""

    def collect(self) -> Iterable[Metric]:
        fold_counters()
        return ()

    def describe(self) -> Iterable[Metric]:
        return ()


def _forget_parent_counts() -> None:
    """In a forked child: the parent folds its own pending increments."""
    global _FOLD_LOCK
    _FOLD_LOCK = threading.Lock()
    for counter in _BUFFERED:
        counter._folded = counter.counted


REGISTRY.register(_FoldOnCollect())
atexit.register(fold_counters)
os.register_at_fork(after_in_child=_forget_parent_counts)

# ---------------------------------------------------------------------- HTTP
REQUESTS = Counter("nexus_request", "The total number of requests.")
ERRORS = Counter("nexus_errors", "The total number of requests that resulted in an error.")
#: What the request middleware increments (one per response; errors: status >= 500).
REQUEST_COUNT = buffered(REQUESTS)
ERROR_COUNT = buffered(ERRORS)
CONFIG_RELOADS = Counter(
    "nexus_config_reload",
    "Config reloads (SIGHUP) per worker, by result: applied or rejected.",
    ["result"],
)

# ---------------------------------------------------------------------- runtime (per worker)
EVENTLOOP_LAG = Gauge(
    "nexus_nodejs_eventloop_lag_seconds",
    "The asyncio event loop lag, in seconds (the worst worker).",
    multiprocess_mode="livemax",
)
HANDLE_TYPES = ("Task", "Socket", "Pipe", "File", "Other")
ACTIVE_HANDLES = Gauge(
    "nexus_nodejs_active_handles",
    "The number of active asyncio tasks and open descriptors, grouped by type.",
    ["type"],
    multiprocess_mode="livesum",
)
ACTIVE_HANDLES_TOTAL = Gauge(
    "nexus_nodejs_active_handles_total",
    "The total number of active asyncio tasks and open descriptors.",
    multiprocess_mode="livesum",
)
REQUEST_TYPES = ("HttpRequest",)
ACTIVE_REQUESTS = Gauge(
    "nexus_nodejs_active_requests",
    "The number of in-flight requests, grouped by type.",
    ["type"],
    multiprocess_mode="livesum",
)
ACTIVE_REQUESTS_TOTAL = Gauge(
    "nexus_nodejs_active_requests_total",
    "The total number of in-flight requests.",
    multiprocess_mode="livesum",
)
HEAP_TOTAL = Gauge(
    "nexus_nodejs_heap_size_total_bytes",
    "Private writable memory reserved by the Python processes (VmData), in bytes.",
    multiprocess_mode="livesum",
)
HEAP_USED = Gauge(
    "nexus_nodejs_heap_size_used_bytes",
    "Resident anonymous memory of the Python processes (RssAnon), in bytes.",
    multiprocess_mode="livesum",
)
EXTERNAL = Gauge(
    "nexus_nodejs_external_memory_bytes",
    "Resident file-backed memory of the Python processes (RssFile), in bytes.",
    multiprocess_mode="livesum",
)
SPACE_TOTAL = Gauge(
    "nexus_nodejs_heap_space_size_total_bytes",
    "Size of the private writable mappings by space, in bytes.",
    ["space"],
    multiprocess_mode="livesum",
)
SPACE_USED = Gauge(
    "nexus_nodejs_heap_space_size_used_bytes",
    "Resident size of the private writable mappings by space, in bytes.",
    ["space"],
    multiprocess_mode="livesum",
)
SPACE_AVAILABLE = Gauge(
    "nexus_nodejs_heap_space_size_available_bytes",
    "Reserved but not resident size of the private writable mappings by space, in bytes.",
    ["space"],
    multiprocess_mode="livesum",
)

#: Every metric name the guide's table lists that this module publishes, with its type.
GUIDE_METRICS: dict[str, str] = {
    "nexus_errors_total": "counter",
    "nexus_request_total": "counter",
    "nexus_process_cpu_user_seconds_total": "counter",
    "nexus_process_cpu_system_seconds_total": "counter",
    "nexus_process_cpu_seconds_total": "counter",
    "nexus_process_start_time_seconds": "gauge",
    "nexus_process_resident_memory_bytes": "gauge",
    "nexus_process_virtual_memory_bytes": "gauge",
    "nexus_process_heap_bytes": "gauge",
    "nexus_process_open_fds": "gauge",
    "nexus_process_max_fds": "gauge",
    "nexus_nodejs_eventloop_lag_seconds": "gauge",
    "nexus_nodejs_active_handles": "gauge",
    "nexus_nodejs_active_handles_total": "gauge",
    "nexus_nodejs_active_requests": "gauge",
    "nexus_nodejs_active_requests_total": "gauge",
    "nexus_nodejs_heap_size_total_bytes": "gauge",
    "nexus_nodejs_heap_size_used_bytes": "gauge",
    "nexus_nodejs_external_memory_bytes": "gauge",
    "nexus_nodejs_heap_space_size_total_bytes": "gauge",
    "nexus_nodejs_heap_space_size_used_bytes": "gauge",
    "nexus_nodejs_heap_space_size_available_bytes": "gauge",
    "nexus_nodejs_version_info": "gauge",
}


# ---------------------------------------------------------------------- multiprocess directory
def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


def prepare_multiprocess_dir(path: str | os.PathLike[str]) -> Path:
    """Create ``path``, delete the files a previous run left, export the variable.

    Call in the main process before workers are spawned (``main_process_start``).
    """
    directory = Path(path).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    for pattern in ("*.db", "fold-*", ".fold-*"):
        for stale in glob.glob(str(directory / pattern)):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(stale)
    os.environ[MULTIPROC_ENV] = str(directory)
    return directory


def mark_worker_dead(pid: int | None = None) -> None:
    """Drop the ``live*`` gauge files of a stopped worker (``after_server_stop``)."""
    directory = multiprocess_dir()
    if directory:
        multiprocess.mark_process_dead(os.getpid() if pid is None else pid, directory)


def remove_multiprocess_dir(path: str | os.PathLike[str]) -> None:
    shutil.rmtree(path, ignore_errors=True)


OWNER_FILE = "main.pid"


def claim_multiprocess_dir(directory: Path, pid: int | None = None) -> None:
    """Mark ``directory`` (the default one in shared memory) as this main process's, and
    remove its siblings whose main process is gone (killed before it could clean up: their
    files would hold RAM until the next boot). A sibling without an owner file, or whose
    owner still runs, stays."""
    (directory / OWNER_FILE).write_text(str(os.getpid() if pid is None else pid))
    for sibling in directory.parent.glob(directory.name.rsplit("-", 1)[0] + "-*"):
        if sibling == directory or not sibling.is_dir():
            continue
        try:
            owner = int((sibling / OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue
        if not _running(owner):
            remove_multiprocess_dir(sibling)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, as another user's
        pass
    return True


# ---------------------------------------------------------------------- scrape-time collectors
class ProcessTreeCollector(Collector):
    """``nexus_process_*`` of a process tree (the main process and its workers)."""

    def __init__(self, root_pid: int | None = None) -> None:
        self.root_pid = root_pid

    def collect(self) -> Iterable[Metric]:
        stats = procfs.tree_stats(self.root_pid)
        user = CounterMetricFamily(
            "nexus_process_cpu_user_seconds", "The total user CPU time spent, in seconds."
        )
        user.add_metric([], stats.cpu_user)
        system = CounterMetricFamily(
            "nexus_process_cpu_system_seconds", "The total system CPU time spent, in seconds."
        )
        system.add_metric([], stats.cpu_system)
        total = CounterMetricFamily(
            "nexus_process_cpu_seconds", "The total user and system CPU time spent, in seconds."
        )
        total.add_metric([], stats.cpu_user + stats.cpu_system)
        yield user
        yield system
        yield total
        gauges = (
            ("nexus_process_start_time_seconds",
             "The start time of the process since the Unix epoch, in seconds.", stats.start_time),
            ("nexus_process_resident_memory_bytes", "The resident memory size, in bytes.",
             stats.resident),
            ("nexus_process_virtual_memory_bytes", "The virtual memory size, in bytes.",
             stats.virtual),
            ("nexus_process_heap_bytes", "The process heap size, in bytes.", stats.heap),
            ("nexus_process_open_fds", "The number of open file descriptors.", stats.open_fds),
            ("nexus_process_max_fds", "The maximum number of open file descriptors.",
             stats.max_fds),
        )
        for name, doc, value in gauges:
            yield GaugeMetricFamily(name, doc, value=value)
        version = GaugeMetricFamily(
            "nexus_nodejs_version_info",
            "Python version information (the runtime of Nexus, in place of Node.js).",
            labels=["version", "major", "minor", "patch"],
        )
        info = sys.version_info
        version.add_metric(
            [platform.python_version(), str(info.major), str(info.minor), str(info.micro)], 1
        )
        yield version


class _Forward(Collector):
    """Serves another registry's metrics from a per-scrape registry (single-process mode)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterable[Metric]:
        return self.registry.collect()


def build_registry(root_pid: int | None = None) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    if multiprocess_dir():
        multiprocess.MultiProcessCollector(registry)
    else:
        registry.register(_Forward(REGISTRY))
    registry.register(ProcessTreeCollector(root_pid))
    return registry


def render(root_pid: int | None = None) -> bytes:
    """The text exposition of every metric (aggregated over workers in multiprocess mode).

    Every worker's buffered counters are folded first, so the scrape is exact.
    """
    directory = multiprocess_dir()
    if directory:
        fold_worker_counters(directory)
    fold_counters()
    return generate_latest(build_registry(root_pid))


# ---------------------------------------------------------------------- folds across processes
#: How long a scrape waits for the workers' folds; a worker that does not answer in time (a
#: blocked event loop) is served as of its last periodic fold.
SCRAPE_FOLD_TIMEOUT = 0.5
_FOLD_PREFIX = "fold-"
_SEQ_BYTES = 8


def _fold_paths(directory: str | os.PathLike[str], pid: int) -> tuple[Path, Path]:
    """The FIFO a worker reads fold requests from, and the file it acknowledges them in."""
    base = Path(directory) / f"{_FOLD_PREFIX}{pid}"
    return base.with_suffix(".fifo"), base.with_suffix(".ack")


def fold_worker_counters(
    directory: str | os.PathLike[str], timeout: float | None = None
) -> None:
    """Ask every worker listening in ``directory`` to fold its counters; wait for the answers."""
    seq = time.monotonic_ns()
    own_fifo, _ = _fold_paths(directory, os.getpid())  # this process folds itself
    waiting = [
        fifo.with_suffix(".ack")
        for fifo in Path(directory).glob(f"{_FOLD_PREFIX}*.fifo")
        if fifo != own_fifo and _send_fold_request(fifo, seq)
    ]
    deadline = time.monotonic() + (SCRAPE_FOLD_TIMEOUT if timeout is None else timeout)
    while waiting:
        waiting = [ack for ack in waiting if _acknowledged(ack) < seq]
        if not waiting:
            return
        if time.monotonic() >= deadline:
            log.warning("%d worker(s) did not fold their counters for this scrape", len(waiting))
            return
        time.sleep(0.001)


def _send_fold_request(fifo: Path, seq: int) -> bool:
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # nobody reads it: its worker died without cleaning up
            for path in (fifo, fifo.with_suffix(".ack")):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
        return False
    try:
        os.write(fd, seq.to_bytes(_SEQ_BYTES, "big"))  # atomic: far below PIPE_BUF
    except BlockingIOError:
        return True  # requests queue up unread: the worker is busy, it answers the newest
    except OSError:
        return False  # the worker closed it meanwhile (it folds when it stops)
    finally:
        os.close(fd)
    return True


def _acknowledged(ack: Path) -> int:
    """The newest request the worker answered (a vanished worker counts as done)."""
    try:
        with ack.open("rb") as file:
            data = file.read(_SEQ_BYTES)
    except FileNotFoundError:
        return sys.maxsize
    return int.from_bytes(data, "big") if len(data) == _SEQ_BYTES else 0


class FoldRequests:
    """A worker's end: a FIFO in the multiprocess directory the metrics server writes to.

    The FIFO is made under a temporary name, opened, then renamed into place, so the server
    never finds one without a reader (which it takes for a dead worker's and removes).
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.fifo, self.ack = _fold_paths(directory, os.getpid())
        self._pending = self.fifo.with_name(f".{self.fifo.name}")
        self._fd = -1
        self._ack_fd = -1
        self._acked = 0
        self._loop: asyncio.AbstractEventLoop | None = None

    def open(self, loop: asyncio.AbstractEventLoop) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._pending.unlink()
        os.mkfifo(self._pending, 0o600)
        # Read-write, so the FIFO never reports end-of-file between two writers.
        self._fd = os.open(self._pending, os.O_RDWR | os.O_NONBLOCK)
        self._ack_fd = os.open(self.ack, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        os.rename(self._pending, self.fifo)
        loop.add_reader(self._fd, self._answer)
        self._loop = loop

    def _answer(self) -> None:
        newest = self._read_requests()
        fold_counters()
        # Never lower: of two concurrent scrapes, the later-numbered may have been read first.
        if newest > self._acked:
            self._acked = newest
            os.pwrite(self._ack_fd, newest.to_bytes(_SEQ_BYTES, "big"), 0)

    def _read_requests(self) -> int:
        """The newest request number waiting in the FIFO (each is written whole)."""
        newest = 0
        with contextlib.suppress(BlockingIOError):
            while data := os.read(self._fd, 4096):
                for start in range(0, len(data) - _SEQ_BYTES + 1, _SEQ_BYTES):
                    newest = max(newest, int.from_bytes(data[start:start + _SEQ_BYTES], "big"))
        return newest

    def close(self) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self._fd)
        self._loop = None
        for path in (self._pending, self.fifo, self.ack):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        for fd in (self._fd, self._ack_fd):
            if fd >= 0:
                os.close(fd)
        self._fd = self._ack_fd = -1


class CounterFolder:
    """Folds this worker's buffered counters every ``interval`` and when a scrape asks."""

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self._task: asyncio.Task[None] | None = None
        self._requests: FoldRequests | None = None

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self.run(), name="nexus-counter-fold")
        directory = multiprocess_dir()
        if directory:
            requests = FoldRequests(directory)
            try:
                requests.open(loop)
            except OSError:
                log.exception("scrape-time counter folds are off in this worker")
                requests.close()
            else:
                self._requests = requests

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            fold_counters()

    async def stop(self) -> None:
        """Stop folding and fold one last time (after the last request was answered)."""
        if self._requests is not None:
            self._requests.close()
            self._requests = None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        fold_counters()


# ---------------------------------------------------------------------- per-worker runtime
def _fd_type(target: str) -> str:
    if target.startswith("socket:"):
        return "Socket"
    if target.startswith("pipe:"):
        return "Pipe"
    if target.startswith("/"):
        return "File"
    return "Other"


def _sample_process() -> dict[str, Any]:
    """The blocking part of a sample (procfs reads), run in a thread."""
    counts = dict.fromkeys(HANDLE_TYPES, 0)
    fd_dir = procfs.PROC / "self" / "fd"
    try:
        names = os.listdir(fd_dir)
    except OSError:
        names = []
    for name in names:
        try:
            counts[_fd_type(os.readlink(fd_dir / name))] += 1
        except OSError:
            continue
    return {
        "handles": counts,
        "memory": procfs.memory_usage(),
        "spaces": procfs.heap_spaces(),
    }


class RuntimeSampler:
    """Measures this worker's event-loop lag, tasks, descriptors, in-flight requests, memory."""

    def __init__(self, interval: float = 5.0) -> None:
        self.interval = interval
        self.inflight: weakref.WeakSet[Any] = weakref.WeakSet()
        self._handles = {t: ACTIVE_HANDLES.labels(type=t) for t in HANDLE_TYPES}
        self._requests = {t: ACTIVE_REQUESTS.labels(type=t) for t in REQUEST_TYPES}
        self._spaces = {
            s: (SPACE_TOTAL.labels(space=s), SPACE_USED.labels(space=s),
                SPACE_AVAILABLE.labels(space=s))
            for s in procfs.SPACES
        }
        self._task: asyncio.Task[None] | None = None

    async def sample(self, lag: float | None = None) -> None:
        if lag is not None:
            EVENTLOOP_LAG.set(max(lag, 0.0))
        tasks = len(asyncio.all_tasks())
        data = await asyncio.to_thread(_sample_process)
        handles = data["handles"]
        handles["Task"] = tasks
        for kind, child in self._handles.items():
            child.set(handles[kind])
        ACTIVE_HANDLES_TOTAL.set(sum(handles.values()))
        inflight = len(self.inflight)
        self._requests["HttpRequest"].set(inflight)
        ACTIVE_REQUESTS_TOTAL.set(inflight)
        memory: procfs.MemoryUsage = data["memory"]
        HEAP_TOTAL.set(memory.heap_total)
        HEAP_USED.set(memory.heap_used)
        EXTERNAL.set(memory.external)
        for space, (size, resident) in data["spaces"].items():
            total, used, available = self._spaces[space]
            total.set(size)
            used.set(resident)
            available.set(max(size - resident, 0))

    async def run(self, clock: Callable[[], float] | None = None) -> None:
        loop = asyncio.get_running_loop()
        now = clock or loop.time
        while True:
            start = now()
            await asyncio.sleep(self.interval)
            lag = now() - start - self.interval
            try:
                await self.sample(lag)
            except Exception:  # a failed sample must not end the sampler
                log.exception("runtime metrics sample failed")

    def start(self) -> asyncio.Task[None]:
        self._task = asyncio.get_running_loop().create_task(self.run(), name="nexus-metrics")
        return self._task

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
