"""A/B of two source trees under the ingest benchmark's load, interleaved in one run.

Usage: .venv/bin/python bench/ingest_ab.py --db-url postgresql://postgres@127.0.0.1:5432/test
       --redis-url redis://127.0.0.1:6379/0 TREE[:NAME=VALUE+...] TREE[:...] [--rounds 5]
       [--seconds 5]

A change of a few per cent in the engine's CPU per message is lost in the noise of separate
ingest_bench.py runs on a shared VM (the same code gave 4,500 to 6,300 msg/s within an hour).
Here every tree's engine (``python -m engine.cli serve`` with the tree first on PYTHONPATH, as
ingest_bench.py starts it: 2 workers, its own throwaway PostgreSQL database, the real Redis) is
up at the same time, warmed the same way (one message from each of ``--senders`` senders,
each opening a conversation), and short ``wrk`` runs alternate between them, the order
reversed every round, so each tree sees the same spells of the machine. Per run: msg/s, the
engine's CPU per message and PostgreSQL's; at the end, each tree's median and mean.

A tree is any checkout, e.g. ``git worktree add /tmp/base HEAD`` beside the working tree.
``:NAME=VALUE+NAME=VALUE`` sets environment variables for that engine only (to compare a
switch in one tree: ``. .:SOME_SWITCH=1``). With the same tree twice, the two sides agreed
within 0.2% (5 rounds of 5 s).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import ingest_bench as ib  # also puts the repository and bench/ on sys.path

from tests.integration.messaging.support import messaging_config
from tests.integration.provisioning.harness import (
    Backend,
    base_env,
    dev_secrets,
    free_port,
    make_backend,
    serve_command,
    stop_process,
)


@dataclass
class Side:
    spec: str
    tree: Path
    env: dict[str, str]
    tmp: Path = Path()
    backend: Backend | None = None
    engine: subprocess.Popen[bytes] | None = None
    port: int = 0
    secret: str = ""
    runs: list[tuple[float, float, float]] = field(default_factory=list)


def parse_side(spec: str) -> Side:
    tree, _, extra = spec.partition(":")
    env = dict(pair.split("=", 1) for pair in extra.split("+")) if extra else {}
    path = Path(tree).resolve()
    if not (path / "engine" / "cli.py").is_file():
        raise SystemExit(f"{tree}: not a Nexus source tree (no engine/cli.py)")
    return Side(spec, path, env)


def start(side: Side, args: argparse.Namespace, receiver_port: int) -> None:
    side.tmp = Path(tempfile.mkdtemp(prefix="nexus-ingest-ab-"))
    side.backend = make_backend("pg", side.tmp, args.db_url, args.redis_url, workers=args.workers)
    config = messaging_config(side.tmp, f"http://127.0.0.1:{receiver_port}")
    secrets = dev_secrets(config, side.tmp / "dev.env")
    secrets.setdefault("T1001_ADMIN_PASSWORD", "unused")
    env = base_env(side.tmp, side.backend, secrets)
    env.update({"NEXUS_LOG_FORMAT": "json", "NEXUS_GROUP_COMMIT": "1",
                "PYTHONPATH": str(side.tree)})
    env.update(side.env)
    side.port, metrics_port = free_port(), free_port()
    log = (side.tmp / "engine.log").open("wb")
    side.engine = subprocess.Popen(serve_command(config, side.backend, side.port, metrics_port),
                                   cwd=side.tree, env=env, stdout=log,
                                   stderr=subprocess.STDOUT)
    side.secret = secrets["T1001_ASYNC_API_SECRET"]


def run_once(side: Side, args: argparse.Namespace, round_no: int) -> None:
    assert side.engine is not None
    script = side.tmp / f"round-{round_no}.lua"
    ib.make_script(script, side.secret, args.max_rate * args.seconds, args.senders, args.threads,
                   0, f"ab{round_no}-{uuid.uuid4().hex[:6]}")
    cpu0, pg0 = ib.cpu_seconds(side.engine.pid), ib.cpu_seconds_named("postgres")
    result = ib.run_wrk(f"http://127.0.0.1:{side.port}", script, args.seconds, args.connections,
                        args.threads)
    answered = max(1, result["total"])
    cpu = 1e6 * (ib.cpu_seconds(side.engine.pid) - cpu0) / answered
    pg = 1e6 * (ib.cpu_seconds_named("postgres") - pg0) / answered
    side.runs.append((result["rate"], cpu, pg))
    print(f"{side.spec:>30} {result['rate']:9.1f} msg/s  engine {cpu:6.1f} us/msg  "
          f"PostgreSQL {pg:5.1f} us/msg  p99 {result['p99']:.1f} ms  "
          f"non-2xx {result['non2xx']}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sides", nargs="+", metavar="TREE[:NAME=VALUE+...]")
    ib.add_load_arguments(parser, seconds=5)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is required (apt-get install wrk)")
    sides = [parse_side(spec) for spec in args.sides]
    receiver = ib.start_receiver()
    try:
        for side in sides:
            start(side, args, receiver.server_port)
        for side in sides:
            ib.wait_http(f"http://127.0.0.1:{side.port}/health")
            time.sleep(3)  # every worker up
            ib.warm_up(side.port, side.secret, args.senders, args.connections)
        time.sleep(3)  # the warm-up's STARTED webhooks delivered
        for round_no in range(args.rounds):
            for side in sides if round_no % 2 == 0 else sides[::-1]:
                time.sleep(1)
                run_once(side, args, round_no)
    finally:
        for side in sides:
            if side.engine is not None:
                stop_process(side.engine)
            if side.backend is not None:
                side.backend.close()
            shutil.rmtree(side.tmp, ignore_errors=True)
        receiver.shutdown()
    for side in sides:
        rates = [run[0] for run in side.runs]
        print(f"{side.spec:>30} median {statistics.median(rates):9.1f} msg/s  mean "
              f"{statistics.mean(rates):9.1f}  engine "
              f"{statistics.median(run[1] for run in side.runs):.1f} us/msg  PostgreSQL "
              f"{statistics.median(run[2] for run in side.runs):.1f} us/msg")


if __name__ == "__main__":
    main()
