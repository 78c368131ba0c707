"""Benchmark of the strategy runner (engine/routing/runner.py) with the sample config.

Usage: .venv/bin/python bench/strategy_bench.py [--runs 20000] [--repeat 3]

1. redirect_queue runs per second: StrategyRunner.run() of a woken-up interaction with a queue
   in its user data, default executor (goal: at least 5,000/s).
2. undelivered decisions per second: run() of a failed interaction up to its deferred Retry
   (the backoff is virtual time).
3. GET-equivalent: checked renders per second from the catalog cache.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.config.validate import validate_paths  # noqa: E402
from engine.routing.runner import InteractionInfo, Retry, StrategyRunner  # noqa: E402
from engine.routing.strategies import StrategyCatalog  # noqa: E402


async def bench_runs(runner: StrategyRunner, name: str, n: int) -> float:
    start = time.perf_counter()
    for i in range(n):
        if name == "redirect_queue":
            outcome = await runner.run(name, InteractionInfo(f"i{i}", udata={"queue": "q1"}))
            if outcome.final_state != "redirected":
                raise SystemExit(f"run {i}: {outcome}")
        else:
            outcome = await runner.run(name, InteractionInfo(f"i{i}"))
            if not isinstance(outcome.deferred, Retry):
                raise SystemExit(f"run {i}: {outcome}")
    return n / (time.perf_counter() - start)


def bench_render(catalog: StrategyCatalog, model: object, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        catalog.render_checked("redirect_queue", model, {"fallback": "q"})  # type: ignore[arg-type]
    return n / (time.perf_counter() - start)


async def main_async(args: argparse.Namespace) -> int:
    result = validate_paths([ROOT / "config"])
    if result.model is None:
        raise SystemExit("the sample config does not validate")
    catalog = StrategyCatalog()
    runner = StrategyRunner(catalog, result.model)
    start = time.perf_counter()
    catalog.render_checked("redirect_queue", result.model)
    print(f"first render + validation of redirect_queue: "
          f"{(time.perf_counter() - start) * 1000:.1f} ms (XSD: "
          f"{'yes' if catalog.schema is not None else 'not found, skipped'})")
    for name, goal in (("redirect_queue", " (goal >= 5,000/s)"), ("undelivered", "")):
        await bench_runs(runner, name, 500)  # warm-up
        rates = [await bench_runs(runner, name, args.runs) for _ in range(args.repeat)]
        print(f"{name} runs: {statistics.median(rates):,.0f}/s "
              f"(median of {args.repeat} x {args.runs}){goal}")
    rate = bench_render(catalog, result.model, args.runs)
    print(f"cached checked renders: {rate:,.0f}/s")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    return asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
