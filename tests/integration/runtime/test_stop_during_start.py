"""SIGTERM while the workers are still starting: the engine stops (no hang).

Sanic's main process waits for every worker's acknowledgement through its multiprocessing
manager; a shutdown signal handled in the middle of that wait deadlocked on the manager's
connection (sanic-org/sanic#2997), and only SIGKILL ended the engine. engine/server.py
defers SIGINT/SIGTERM until the workers are up, then shuts down as usual.

A worker that has acknowledged but still runs its after-start steps used to lose the stop
(its event loop's stop was swallowed by Sanic's start-up run) and served on until the main
process gave up 10 s later; it now stops as soon as it serves.
"""

from __future__ import annotations

import glob
import signal
import subprocess
import time

from tests.integration.runtime.test_serve import ROOT, _free_port, serve_args, serve_env


def test_sigterm_while_workers_start_stops_the_engine(tmp_path) -> None:
    config = tmp_path / "config"
    config.mkdir()
    marker = tmp_path / "starting"
    env = serve_env(tmp_path, NEXUS_TEST_START_MARKER=str(marker),
                    NEXUS_TEST_START_DELAY="2")
    out = (tmp_path / "out.log").open("wb")
    proc = subprocess.Popen(
        serve_args(_free_port(), _free_port(), config, "slow_start_wiring"),
        cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while len(glob.glob(f"{marker}.*")) < 2:  # both workers are connecting their store
            assert proc.poll() is None, (tmp_path / "out.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the workers never started"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        # a liveness bound, not a speed target: without the fix it waited for SIGKILL
        assert proc.wait(timeout=45) == 0, (tmp_path / "out.log").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        out.close()
    log = (tmp_path / "out.log").read_text()
    assert "Received signal SIGTERM. Shutting down." in log


def _run_until_starting(tmp_path, wiring: str) -> tuple[subprocess.Popen, str]:
    config = tmp_path / "config"
    config.mkdir()
    marker = tmp_path / "starting"
    env = serve_env(tmp_path, NEXUS_TEST_START_MARKER=str(marker), NEXUS_TEST_START_DELAY="2")
    out = (tmp_path / "out.log").open("wb")
    proc = subprocess.Popen(serve_args(_free_port(), _free_port(), config, wiring),
                            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    out.close()
    deadline = time.monotonic() + 60
    while len(glob.glob(f"{marker}.*")) < 2:  # both workers are in the slow step
        assert proc.poll() is None, (tmp_path / "out.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "the workers never started"
        time.sleep(0.05)
    return proc, str(marker)


def test_sigterm_while_workers_finish_starting_stops_them_at_once(tmp_path) -> None:
    proc, marker = _run_until_starting(tmp_path, "slow_after_start_wiring")
    try:
        proc.send_signal(signal.SIGTERM)  # the workers have acknowledged: handled at once
        assert proc.wait(timeout=45) == 0, (tmp_path / "out.log").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = (tmp_path / "out.log").read_text().splitlines()
    told = [line for line in lines if "arrived while this worker was starting: stopping" in line]
    assert len(told) == 2, "\n".join(lines[-40:])
    # each worker stopped on its own, before the main process finished; the lost stop
    # showed the other order: the main process gave up waiting, then the workers stopped
    stopped_main = next(i for i, line in enumerate(lines) if "Server Stopped" in line)
    for pid in {int(p.rsplit(".", 1)[1]) for p in glob.glob(f"{marker}.*")}:
        stopping = next(i for i, line in enumerate(lines) if f"Stopping worker [{pid}]" in line)
        assert stopping < stopped_main, "\n".join(lines[-40:])
