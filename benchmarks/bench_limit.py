"""Adaptive concurrency limits: the 50-slot simulation, and the per-call cost of admission.

Cases (issue 17):
- the simulation of tests/policies/limit_sim.py, longer: a backend of 50
  workers x 10 ms (capacity 5,000 calls/s; latency flat up to 50 in flight,
  then queueing), Poisson load 0.5x for 5 s, 2x for 20 s, 0.5x for 10 s, in
  fake time. Each guard runs against the queueing backend and against one
  that sheds (503 at once when 5 calls are queued). Reported: seconds from
  the step to 2x until the limit stays within +-20% of 50, goodput at 2x
  (good calls per second / capacity, from 2 s after the step; target
  >= 0.9), p99 latency at 2x next to the no-load 10 ms (target <= 2x),
  calls rejected once the load is back at 0.5x (target < 1%), and the
  limit's range over the last 10 s at 2x. Guards: ConcurrencyLimit with
  AIMDLimit (default, and timeout=11 ms), Gradient2Limit, VegasLimit;
  Bulkhead(20) and Bulkhead(100); aioadaptive's VegasLimiter (the Python
  peer) driving the same reject-at-the-limit admission, if installed.
- the cost per call of admission: a decorated no-op through Bulkhead and
  through ConcurrencyLimit (each algorithm, default window; AIMD every
  sample), sync and async, and `with`; target <= 1.5x a Bulkhead call.

    python benchmarks/bench_limit.py [--json PATH] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import random
import sys
import time
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _harness import anoop, noop, print_table, write_json

import resilience
from resilience.testing import FakeClock

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.policies.limit_sim import (
    BulkheadGuard,
    LimitGuard,
    Phase,
    Result,
    simulate,
)

PHASES = [Phase(0.5, 5), Phase(2.0, 20), Phase(0.5, 10)]
QUICK_PHASES = [Phase(0.5, 2), Phase(2.0, 12), Phase(0.5, 4)]


class AioadaptiveGuard:
    """aioadaptive's VegasLimiter (update(rtt) per sample) behind reject-at-the-limit admission.

    Its own client queues callers in an anyio.CapacityLimiter instead of
    rejecting them; here its limit algorithm gets the same admission as the
    others, so that only the algorithms differ.
    """

    def __init__(self, clock: FakeClock) -> None:
        from aioadaptive.limiter import VegasLimiter

        self.algorithm = VegasLimiter()
        self.clock = clock
        self.in_flight = 0

    @property
    def limit(self) -> int:
        return int(self.algorithm.limit)

    def admit(self) -> float:
        if self.in_flight >= self.algorithm.limit:
            raise resilience.BulkheadFullError("aioadaptive", self.limit)
        self.in_flight += 1
        return self.clock.monotonic()

    def done(self, token: float, dropped: bool) -> None:
        self.in_flight -= 1
        rtt = self.clock.monotonic() - token
        if rtt > 0:
            self.algorithm.update(rtt)  # no drop signal in its API


def guards() -> dict[str, Callable[[FakeClock], Any] | None]:
    def limit(make: Callable[[], resilience.LimitAlgorithm]) -> Callable[[FakeClock], Any]:
        return lambda clock: LimitGuard(resilience.ConcurrencyLimit(make(), clock=clock))

    try:
        import aioadaptive  # noqa: F401
    except ImportError:
        aioadaptive_guard = None
    else:
        aioadaptive_guard = AioadaptiveGuard
    return {
        "AIMDLimit()": limit(resilience.AIMDLimit),
        "AIMDLimit(timeout=0.011)": limit(lambda: resilience.AIMDLimit(timeout=0.011)),
        "Gradient2Limit()": limit(resilience.Gradient2Limit),
        "Gradient2Limit(rtt_tolerance=1.5)": limit(
            lambda: resilience.Gradient2Limit(rtt_tolerance=1.5)
        ),
        "VegasLimit()": limit(lambda: resilience.VegasLimit(rng=random.Random(7))),
        "Bulkhead(20)": lambda clock: BulkheadGuard(resilience.Bulkhead(20, clock=clock)),
        "Bulkhead(100)": lambda clock: BulkheadGuard(resilience.Bulkhead(100, clock=clock)),
        "aioadaptive VegasLimiter": aioadaptive_guard,
    }


def summarize(result: Result) -> dict[str, Any]:
    settle = result.settle_time(1, 40, 60)
    low, high = result.limit_range(1, after=result.phases[1].end - result.phases[1].start - 10)
    return {
        "settle_s": None if settle is None else round(settle, 2),
        "goodput_2x": round(result.goodput(1, after=2), 3),
        "p99_2x_ms": round(result.phases[1].p99() * 1000, 1),
        "p99_over_no_load": round(result.phases[1].p99() / result.no_load_latency, 2),
        "rejected_after_pct": round(100 * result.phases[2].rejected_ratio, 2),
        "limit_last_10s": [low, high],
    }


def simulation(phases: list[Phase]) -> dict[str, dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    for backend, options in (("queueing", {}), ("shedding", {"shed_queue": 5})):
        print(f"\nsimulation, {backend} backend (50 slots x 10 ms; 0.5x -> 2x -> 0.5x)")
        header = (
            f"  {'guard':<36} {'settle s':>8} {'goodput':>8} {'p99 ms':>7} {'x no-load':>9} "
            f"{'rej after %':>11} {'limit (last 10 s)':>18}"
        )
        print(header)
        for name, make in guards().items():
            if make is None:
                print(f"  {name:<36} n/a (not installed)")
                continue
            clock = FakeClock()
            start = time.perf_counter()
            row = summarize(simulate(make(clock), clock, phases, **options))
            row["wall_s"] = round(time.perf_counter() - start, 2)
            rows[f"{backend}: {name}"] = row
            settle = "never" if row["settle_s"] is None else f"{row['settle_s']:.2f}"
            print(
                f"  {name:<36} {settle:>8} {row['goodput_2x']:>8.3f} {row['p99_2x_ms']:>7.1f} "
                f"{row['p99_over_no_load']:>9.2f} {row['rejected_after_pct']:>11.2f} "
                f"{row['limit_last_10s']!s:>18}"
            )
    return rows


def best_interleaved(
    rows: dict[str, Callable[[], object]], number: int, rounds: int
) -> dict[str, float]:
    """Best ns per call of each row, rounds interleaved (a loaded machine drifts less)."""
    best = dict.fromkeys(rows, float("inf"))
    for _ in range(rounds):
        for name, stmt in rows.items():
            best[name] = min(best[name], timeit.timeit(stmt, number=number) / number * 1e9)
    return best


def best_interleaved_async(
    rows: dict[str, Callable[[], Any]], number: int, rounds: int
) -> dict[str, float]:
    async def loop(fn: Callable[[], Any]) -> float:
        start = time.perf_counter()
        for _ in range(number):
            await fn()
        return time.perf_counter() - start

    best = dict.fromkeys(rows, float("inf"))
    for _ in range(rounds):
        for name, fn in rows.items():
            best[name] = min(best[name], asyncio.run(loop(fn)) / number * 1e9)
    return best


def overhead(number: int, rounds: int) -> dict[str, float]:
    bulkhead = resilience.Bulkhead(1000)
    # Default configurations; one call at a time, so nobody is ever rejected.
    limits = {
        "AIMDLimit": resilience.ConcurrencyLimit(resilience.AIMDLimit()),
        "Gradient2Limit": resilience.ConcurrencyLimit(resilience.Gradient2Limit()),
        "VegasLimit": resilience.ConcurrencyLimit(resilience.VegasLimit()),
        "AIMDLimit(window=None)": resilience.ConcurrencyLimit(resilience.AIMDLimit(window=None)),
    }
    decorated = bulkhead(noop)
    sync_rows: dict[str, Callable[[], object]] = {
        "bare call": lambda: noop(1),
        "Bulkhead decorator": lambda: decorated(1),
    }
    for name, limit in limits.items():
        fn = limit(noop)
        sync_rows[f"ConcurrencyLimit({name}) decorator"] = lambda fn=fn: fn(1)

    def bulkhead_block() -> None:
        with bulkhead:
            noop(1)

    aimd = limits["AIMDLimit"]

    def limit_block() -> None:
        with aimd:
            noop(1)

    sync_rows["`with bulkhead:`"] = bulkhead_block
    sync_rows["`with limit:` (AIMDLimit)"] = limit_block
    rows = best_interleaved(sync_rows, number, rounds)
    abulkhead = bulkhead(anoop)
    alimit = aimd(anoop)
    rows |= best_interleaved_async(
        {
            "Bulkhead decorator (async)": lambda: abulkhead(1),
            "ConcurrencyLimit(AIMDLimit) decorator (async)": lambda: alimit(1),
        },
        number,
        max(3, rounds // 4),
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write results to this file")
    parser.add_argument("--quick", action="store_true", help="shorter runs (smoke run)")
    args = parser.parse_args()
    number, rounds = (5_000, 5) if args.quick else (20_000, 40)
    print(f"Python {platform.python_version()} on {platform.machine()}")
    sim = simulation(QUICK_PHASES if args.quick else PHASES)
    rows = overhead(number, rounds)
    print_table("admission cost per call", rows, baseline="Bulkhead decorator")
    ratios = {name: ns / rows["Bulkhead decorator"] for name, ns in rows.items()}
    async_base = rows["Bulkhead decorator (async)"]
    ratios["ConcurrencyLimit(AIMDLimit) decorator (async)"] = (
        rows["ConcurrencyLimit(AIMDLimit) decorator (async)"] / async_base
    )
    ratios["Bulkhead decorator (async)"] = 1.0
    ratios["`with limit:` (AIMDLimit)"] = (
        rows["`with limit:` (AIMDLimit)"] / rows["`with bulkhead:`"]
    )
    ratios["`with bulkhead:`"] = 1.0
    if args.json:
        write_json(
            args.json,
            "limit",
            {
                "simulation": sim,
                "ns_per_call": rows,
                "ratio_to_bulkhead": ratios,
            },
            phases=[[p.load, p.seconds] for p in (QUICK_PHASES if args.quick else PHASES)],
            number=number,
            rounds=rounds,
        )


if __name__ == "__main__":
    main()
