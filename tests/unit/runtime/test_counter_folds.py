"""Buffered request counters: folded on collect, periodically, at stop, and before a scrape."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from prometheus_client import REGISTRY, Counter

from engine.observability import metrics

ROOT = Path(__file__).resolve().parents[3]


def _stored(counter: Counter) -> float:
    """The counter's Prometheus value itself (collecting it alone folds nothing)."""
    (family,) = counter.collect()
    return next(s.value for s in family.samples if s.name.endswith("_total"))


def test_increments_reach_the_counter_when_folded() -> None:
    counter = Counter("nexus_test_folded", "test", registry=None)
    front = metrics.buffered(counter)
    front.inc()
    front.inc(2)
    assert _stored(counter) == 0  # not yet folded
    metrics.fold_counters()
    assert _stored(counter) == 3
    metrics.fold_counters()  # nothing new: nothing added twice
    front.inc()
    metrics.fold_counters()
    assert _stored(counter) == 4


def test_collecting_the_registry_folds_first() -> None:
    before = REGISTRY.get_sample_value("nexus_request_total")
    for _ in range(5):
        metrics.REQUEST_COUNT.inc()
    metrics.ERROR_COUNT.inc()
    assert REGISTRY.get_sample_value("nexus_request_total") == before + 5
    assert f"nexus_request_total {before + 5}" in metrics.render().decode()


async def test_the_folder_folds_every_interval_and_at_stop() -> None:
    folder = metrics.CounterFolder(interval=0.001)
    folder.start()
    try:
        before = _stored(metrics.REQUESTS)
        metrics.REQUEST_COUNT.inc()
        for _ in range(5000):  # a few intervals
            if _stored(metrics.REQUESTS) == before + 1:
                break
            await asyncio.sleep(0.001)
        assert _stored(metrics.REQUESTS) == before + 1
    finally:
        await folder.stop()
    metrics.REQUEST_COUNT.inc(3)
    long_folder = metrics.CounterFolder(interval=3600)
    long_folder.start()
    metrics.REQUEST_COUNT.inc(4)
    await long_folder.stop()  # the last requests of a stopping worker still count
    assert _stored(metrics.REQUESTS) == before + 8


def test_the_default_interval_keeps_scrapes_within_a_second() -> None:
    assert metrics.CounterFolder().interval <= 1.0


WORKER = textwrap.dedent(
    """
    import asyncio, sys
    from engine.observability import metrics

    async def main() -> None:
        folder = metrics.CounterFolder(interval=3600)  # only a scrape or the stop folds
        folder.start()
        metrics.REQUEST_COUNT.inc(int(sys.argv[1]))
        metrics.ERROR_COUNT.inc()
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        metrics.REQUEST_COUNT.inc(int(sys.argv[2]))  # after the scrape, before the stop
        await folder.stop()

    asyncio.run(main())
    """
)


def _worker(env: dict[str, str], before: int, after: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", WORKER, str(before), str(after)], env=env, cwd=ROOT,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def _sample(name: str) -> float:
    text = metrics.render().decode()
    line = next(x for x in text.splitlines() if x.startswith(f"{name} "))
    return float(line.split()[1])


def test_a_scrape_folds_every_worker_first(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(metrics.MULTIPROC_ENV, "")  # so the variable is restored afterwards
    monkeypatch.setattr(metrics, "SCRAPE_FOLD_TIMEOUT", 60.0)  # a slow machine waits, no less
    directory = metrics.prepare_multiprocess_dir(tmp_path / "prom")
    env = {**os.environ, metrics.MULTIPROC_ENV: str(directory)}
    workers = [_worker(env, 3, 10), _worker(env, 4, 20)]
    try:
        assert len(list(directory.glob("fold-*.fifo"))) == 2
        assert _sample("nexus_request_total") == 7  # nothing was folded before the scrape
        assert _sample("nexus_errors_total") == 2
    finally:
        for worker in workers:
            worker.communicate("stop\n", timeout=60)
    assert [w.returncode for w in workers] == [0, 0]
    assert list(directory.glob("fold-*")) == []  # a stopped worker no longer listens
    assert _sample("nexus_request_total") == 37  # folded at stop


def test_a_dead_workers_fifo_is_dropped_without_waiting(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(metrics.MULTIPROC_ENV, "")
    monkeypatch.setattr(metrics, "SCRAPE_FOLD_TIMEOUT", 3600.0)  # waiting on it would hang
    directory = metrics.prepare_multiprocess_dir(tmp_path / "prom")
    env = {**os.environ, metrics.MULTIPROC_ENV: str(directory)}
    worker = _worker(env, 5, 0)
    worker.send_signal(signal.SIGKILL)  # no clean-up: its FIFO stays, with nobody reading
    worker.communicate(timeout=60)
    assert len(list(directory.glob("fold-*.fifo"))) == 1
    metrics.render()
    assert list(directory.glob("fold-*")) == []
    metrics.prepare_multiprocess_dir(directory)  # a new run also starts without them
    assert list(directory.iterdir()) == []


def test_a_forked_child_does_not_fold_its_parents_pending_counts() -> None:
    counter = Counter("nexus_test_forked", "test", registry=None)
    front = metrics.buffered(counter)
    front.inc(5)  # pending in the parent when it forks
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, and leave without running the parent's exit handlers
        try:
            front.inc(2)
            metrics.fold_counters()
            os.write(write_end, str(_stored(counter)).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        childs = float(pipe.read().decode())
    os.waitpid(pid, 0)
    metrics.fold_counters()
    assert (childs, _stored(counter)) == (2, 5)
