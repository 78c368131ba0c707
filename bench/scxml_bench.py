"""Benchmark of the SCXML interpreter (engine/routing/statechart).

Usage: .venv/bin/python bench/scxml_bench.py [--sessions 20000] [--runs 3]

1. Wall time of running every test of ../shared/scxml-irp (tests.csv) with the simulated clock
   (goal: under 10 s).
2. Sessions per second for a small strategy-like document: start, receive interaction.added,
   request <ixn:redirect>, receive ixn.redirect.done, end (goal: at least 5,000/s).
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.routing.statechart import (  # noqa: E402
    Runtime,
    SimulatedClock,
    SimulatedHost,
    parse_document,
    run_test_file,
)

IRP = ROOT.parent / "shared" / "scxml-irp"

STRATEGY = """\
<scxml xmlns="http://www.w3.org/2005/07/scxml"
       xmlns:ixn="http://www.genesyslab.com/modules/interaction"
       version="1.0" initial="wait" datamodel="ecmascript" name="bench">
  <datamodel>
    <data id="ixnid" expr="null"/>
    <data id="req"/>
  </datamodel>
  <state id="wait">
    <transition event="interaction.added" target="route">
      <assign location="ixnid" expr="_event.data.interactionid"/>
    </transition>
  </state>
  <state id="route">
    <onentry>
      <ixn:redirect interactionidexpr="ixnid" queue="vq_sales" requestid="req"/>
    </onentry>
    <transition event="ixn.redirect.done" cond="_event.data.requestid == req" target="done"/>
    <transition event="error.ixn.redirect" target="failed"/>
  </state>
  <final id="done"/>
  <final id="failed"/>
</scxml>
"""


def bench_irp() -> tuple[float, int, int]:
    with (IRP / "tests.csv").open(encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    start = time.perf_counter()
    passed = sum(run_test_file(IRP / "ecma" / r["ecma_files"]).passed for r in rows)
    return time.perf_counter() - start, passed, len(rows)


def bench_sessions(n: int) -> float:
    doc = parse_document(STRATEGY)  # parsed once, instantiated n times
    host = SimulatedHost(auto="done")
    runtime = Runtime(SimulatedClock(), host=host)
    start = time.perf_counter()
    for i in range(n):
        session = runtime.start(doc)
        runtime.interaction_added(session, {"id": f"ixn-{i}", "udata": {"lang": "en"}})
        if session.final_state_ids != ["done"]:
            raise SystemExit(f"session {i} ended in {session.final_state_ids}")
        if i % 1000 == 999:
            host.requests.clear()
    return n / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    irp_times = []
    for _ in range(args.runs):
        elapsed, passed, total = bench_irp()
        irp_times.append(elapsed)
    print(f"IRP: {total} tests, {passed} passed, wall time "
          f"{statistics.median(irp_times):.3f} s (median of {args.runs}; goal < 10 s)")

    bench_sessions(500)  # warm-up
    rates = [bench_sessions(args.sessions) for _ in range(args.runs)]
    print(f"strategy sessions: {statistics.median(rates):,.0f} sessions/s "
          f"(median of {args.runs} x {args.sessions}; goal >= 5,000/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
