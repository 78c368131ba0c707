from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from sanic.response import empty

from engine.app import create_app, reload_config
from engine.observability import metrics, procfs
from engine.observability.server import MetricsServer
from engine.settings import Settings

ROOT = Path(__file__).resolve().parents[3]
TYPE_RE = re.compile(r"^# TYPE (\S+) (\S+)$", re.M)

CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from engine.observability import metrics
    for _ in range(int(sys.argv[1])):
        metrics.REQUESTS.inc()
    metrics.ERRORS.inc()
    asyncio.run(metrics.RuntimeSampler().sample(lag=float(sys.argv[2])))
    metrics.HEAP_USED.set(int(sys.argv[3]))
    print(__import__("os").getpid())
    """
)


def _types(text: str) -> dict[str, str]:
    return dict(TYPE_RE.findall(text))


def _value(text: str, name: str, labels: dict[str, str] | None = None) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and (labels is None or sample.labels == labels):
                return sample.value
    raise AssertionError(f"{name} {labels} not exposed")


async def test_every_guide_metric_is_exposed_with_its_type() -> None:
    await metrics.RuntimeSampler().sample(lag=0.002)
    text = metrics.render().decode()
    types = _types(text)
    for name, kind in metrics.GUIDE_METRICS.items():
        assert types.get(name) == kind, (name, types.get(name))
    assert _value(text, "nexus_process_resident_memory_bytes") > 0
    assert _value(text, "nexus_process_open_fds") > 0
    assert _value(text, "nexus_process_max_fds") > 0
    assert _value(text, "nexus_process_start_time_seconds") > 1.6e9
    info = sys.version_info
    assert _value(text, "nexus_nodejs_version_info", {
        "version": f"{info.major}.{info.minor}.{info.micro}", "major": str(info.major),
        "minor": str(info.minor), "patch": str(info.micro)}) == 1
    assert _value(text, "nexus_nodejs_active_handles", {"type": "Task"}) >= 1
    assert _value(text, "nexus_nodejs_heap_space_size_total_bytes", {"space": "anonymous"}) > 0


async def test_requests_and_errors_are_counted(settings: Settings) -> None:
    app = create_app(settings)

    @app.get("/t/fail", name="fail")
    async def fail(request):
        raise RuntimeError("boom")

    @app.get("/t/ok", name="ok")
    async def ok(request):
        return empty()

    def read() -> tuple[float, float]:
        return (REGISTRY.get_sample_value("nexus_request_total"),
                REGISTRY.get_sample_value("nexus_errors_total"))

    before = read()
    await app.asgi_client.get("/t/ok")
    await app.asgi_client.get("/no/such/route")  # a 404 is a request, not an error
    await app.asgi_client.get("/t/fail")
    after = read()
    assert after[0] - before[0] == 3
    assert after[1] - before[1] == 1


def _run_child(env: dict[str, str], count: int, lag: float, heap: int) -> int:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(count), str(lag), str(heap)],
        env=env, cwd=ROOT, capture_output=True, text=True, check=True, timeout=60,
    )
    return int(out.stdout.strip())


def test_multiprocess_aggregation_of_two_processes(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(metrics.MULTIPROC_ENV, "")  # so the variable is restored afterwards
    directory = metrics.prepare_multiprocess_dir(tmp_path / "prom")
    env = {**os.environ, metrics.MULTIPROC_ENV: str(directory)}
    pid1 = _run_child(env, 3, 0.25, 100)
    pid2 = _run_child(env, 4, 0.5, 250)
    text = metrics.render().decode()
    types = _types(text)
    for name, kind in metrics.GUIDE_METRICS.items():
        assert types.get(name) == kind, name
    assert _value(text, "nexus_request_total") == 7
    assert _value(text, "nexus_errors_total") == 2
    assert _value(text, "nexus_nodejs_heap_size_used_bytes") == 350  # livesum
    assert _value(text, "nexus_nodejs_eventloop_lag_seconds") == 0.5  # livemax
    # A stopped worker's live gauges go; its counters stay (they are totals).
    metrics.mark_worker_dead(pid2)
    text = metrics.render().decode()
    assert _value(text, "nexus_nodejs_heap_size_used_bytes") == 100
    assert _value(text, "nexus_request_total") == 7
    metrics.mark_worker_dead(pid1)
    # A new run wipes what the previous one left.
    metrics.prepare_multiprocess_dir(directory)
    assert list(directory.glob("*.db")) == []


def test_process_tree_sums_children() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; print('ready', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )
    try:
        # the child's interpreter is up (a child read mid-exec has almost no RSS), and this
        # process is read alone first: growing in between only makes the tree larger
        assert child.stdout is not None and child.stdout.readline() == b"ready\n"
        alone = procfs.read_stat(os.getpid())
        tree = procfs.tree_stats(os.getpid())
        assert child.pid in tree.pids and os.getpid() in tree.pids
        assert alone is not None and tree.resident > alone.rss
        assert tree.open_fds >= procfs.open_fds() and tree.max_fds > procfs.max_fds()
        assert tree.start_time <= alone.start_time
    finally:
        child.communicate(b"")
    assert child.pid not in procfs.tree_stats(os.getpid()).pids


def test_metrics_server_serves_metrics_only() -> None:
    server = MetricsServer("127.0.0.1", 0).start()
    try:
        base = f"http://127.0.0.1:{server.bound_port}"
        resp = httpx.get(f"{base}/metrics", timeout=10)
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/plain")
        assert "nexus_request_total" in resp.text
        assert httpx.get(f"{base}/other", timeout=10).status_code == 404
        gz = httpx.get(f"{base}/metrics", headers={"Accept-Encoding": "gzip"}, timeout=10)
        assert gz.headers.get("content-encoding") == "gzip" and "nexus_" in gz.text
    finally:
        server.stop()


async def test_sampler_measures_lag_and_inflight() -> None:
    sampler = metrics.RuntimeSampler(interval=0.01)

    class Req:
        pass

    held = [Req(), Req()]
    sampler.inflight.update(held)
    await sampler.sample(lag=0.0)
    assert REGISTRY.get_sample_value("nexus_nodejs_active_requests_total") == 2
    assert REGISTRY.get_sample_value("nexus_nodejs_active_requests", {"type": "HttpRequest"}) == 2
    del held  # requests that vanish without a response (cancelled) stop counting
    await sampler.sample(lag=0.0)
    assert REGISTRY.get_sample_value("nexus_nodejs_active_requests_total") == 0
    ticks = iter([0.0, 0.51, 0.51, 1.0])
    task = asyncio.get_running_loop().create_task(sampler.run(clock=lambda: next(ticks)))
    while REGISTRY.get_sample_value("nexus_nodejs_eventloop_lag_seconds") != pytest.approx(0.5):
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_config_reload_counter(settings: Settings) -> None:
    results = iter([({"v": 1}, []), (None, ["error: broken"])])
    app = create_app(settings, config_loader=lambda path: next(results))

    def value(result: str) -> float:
        return REGISTRY.get_sample_value("nexus_config_reload_total", {"result": result}) or 0

    applied, rejected = value("applied"), value("rejected")
    assert await reload_config(app) is True
    assert await reload_config(app) is False
    assert value("applied") == applied + 1 and value("rejected") == rejected + 1


def test_claimed_directory_sweeps_dead_siblings(tmp_path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    ours = tmp_path / "nexus-metrics-0-aaaaaaaaaaaa"
    gone = tmp_path / "nexus-metrics-0-bbbbbbbbbbbb"  # its engine was killed
    alive = tmp_path / "nexus-metrics-0-cccccccccccc"  # another engine, still running
    unknown = tmp_path / "nexus-metrics-0-dddddddddddd"  # no owner file: left alone
    other = tmp_path / "something-else"
    for directory in (ours, gone, alive, unknown, other):
        directory.mkdir()
        (directory / "counter_1.db").write_bytes(b"x")
    (gone / metrics.OWNER_FILE).write_text(str(dead.pid))
    (alive / metrics.OWNER_FILE).write_text(str(os.getppid()))
    (other / metrics.OWNER_FILE).write_text(str(dead.pid))
    metrics.claim_multiprocess_dir(ours)
    assert (ours / metrics.OWNER_FILE).read_text() == str(os.getpid())
    assert not gone.exists()
    assert alive.is_dir() and unknown.is_dir() and other.is_dir()
