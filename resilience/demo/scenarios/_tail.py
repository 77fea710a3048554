"""Scenario "tail": a downstream where 2% of responses are slow, and hedged requests.

A service calls a downstream over loopback; 2% of the downstream's responses
take 200 ms, the rest 5 ms (independent draws per request, as in
`benchmarks/bench_hedge.py` and issue 18). The same open-loop load of GETs
runs on two arms:

- plain: plain httpx;
- resilience: `AsyncResilientTransport(hedge=Hedge(), retry=False)`, the
  hedge's defaults: a hedge after the p95 of the recent latencies (100 ms
  while fewer than 20 are known), within a budget of 5% of the calls plus a
  reserve of 1 per second. `retry=False` so that the hedges spend the hedge's
  own budget: the downstream never fails here, so retries would do nothing,
  but with them the hedges would share their budget (20% by default).

The load runs in two phases: the tail (its latency percentiles are the first
rows), then an overload in which every response takes 50 ms. A hedge cannot
help there (the second attempt is as slow as the first), and the budget
keeps the extra load near its ratio. After an overload, the adaptive delay
stays high until the slow latencies leave its window (1,000 attempts, 5 s
at this rate): the plan ends with the overload so that the tail's
percentiles are not about that.

There is no HAProxy arm: HAProxy does not hedge. It retries a request that
failed or timed out (`retry-on`, giving up on the first), but never races a
second copy against a slow one.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import random
import time
from functools import partial
from typing import TYPE_CHECKING, Any

import httpx

import resilience

from .._harness import count_outcomes, open_loop, per_second, percentile, serve
from .._scenario import Arm, ArmResult, Options, Phase, Plan, Row, Scenario, register, seconds_text

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from .._harness import Sample

#: The downstream's latencies (seconds): most responses, the slow 2%, every one in the overload.
FAST, SLOW, OVERLOADED = 0.005, 0.2, 0.05
SLOW_SHARE = 0.02
#: GETs started per second (an open loop: the same calls on both arms).
RATE = 150.0
#: What the load generator waits at most for an answer.
GIVE_UP_AFTER = 2.0
#: Both arms draw the same sequence of slow and fast responses (the hedges draw too).
SEED = 18
#: The percentiles plotted: 0, 20.6, 36.9... 99.9 (ten per factor of 10 of 1 - q), then 100.
PERCENTILES = [*(100 * (1 - 10 ** (-k / 10)) for k in range(31)), 100.0]


def plan(options: Options) -> Plan:
    """The tail for three quarters of the run, then the overload."""
    duration = options.duration or (3.0 if options.quick else 12.0)
    return Plan(
        (
            Phase("2% of responses slow", duration * 0.75),
            Phase("overload: every response 50 ms", duration * 0.25, fault=True),
        )
    )


def header(plan: Plan, options: Options) -> str:
    start, end = plan.fault
    return (
        f"tail: {RATE:.0f} GETs/s for {seconds_text(plan.duration)} s; {SLOW_SHARE:.0%} of "
        f"responses take {SLOW * 1000:.0f} ms, the rest {FAST * 1000:.0f} ms; every "
        f"response {OVERLOADED * 1000:.0f} ms from {seconds_text(start)} s to {seconds_text(end)} s"
    )


class Downstream:
    """The slow-tailed service (plain ASGI): counts the requests it receives, per call.

    The load generator numbers its calls (`?call=N`): a hedge of call N is a
    second request with the same number, so the extra load can be counted
    per phase, exactly, on the server's side.
    """

    def __init__(self, plan: Plan, begin: list[float]) -> None:
        self.overload_from = plan.fault[0]
        self.begin = begin
        self.rng = random.Random(SEED)  # noqa: S311  (a simulation, not a secret)
        self.received: dict[int, int] = {}

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        call = int(scope["query_string"].decode().partition("call=")[2] or -1)
        self.received[call] = self.received.get(call, 0) + 1
        overloaded = time.monotonic() - self.begin[0] >= self.overload_from
        slow = self.rng.random() < SLOW_SHARE
        await asyncio.sleep(OVERLOADED if overloaded else SLOW if slow else FAST)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", b"2")],
            }
        )
        await send({"type": "http.response.body", "body": b"ok"})


def budget_allows(hedge: resilience.Hedge, calls: int, seconds: float) -> float:
    """The most hedges the budget lets `calls` calls send in `seconds` (ratio plus reserve).

    The budget allows, in any window, `ratio` x the calls in it plus
    `min_per_second` x `window` (`_budget.py`); a run shorter than the window
    fits in one window (plus a bucket, the windows being bucket-aligned).
    """
    budget = hedge.budget
    windows = math.ceil((seconds + budget.window / budget.buckets) / budget.window)
    return hedge.ratio * calls + budget.min_per_second * budget.window * windows


def extra_share(received: dict[int, int], numbers: list[int]) -> float:
    """Requests the downstream received beyond one per call, as a share of the calls.

    A call that never reached it (given up while connecting, on a loaded
    machine) is no negative extra load: it cannot offset another's hedge.
    """
    beyond = sum(max(received.get(n, 0) - 1, 0) for n in numbers)
    return beyond / (len(numbers) or 1)


async def _load(
    hedged: bool,
    url: str,
    plan: Plan,
    begin: list[float],
    on_tick: Callable[[float], None],
) -> tuple[list[Sample], dict[int, float], resilience.Hedge | None, dict[str, int]]:
    """The open loop through plain httpx or the hedging transport.

    Returns the samples, when each call started, the hedge, and its metrics
    when the first call of the overload started.
    """
    hedge = resilience.Hedge(name="tail") if hedged else None
    transport: httpx.AsyncBaseTransport = (
        resilience.AsyncResilientTransport(hedge=hedge, retry=False)
        if hedge is not None
        else httpx.AsyncHTTPTransport()
    )
    numbers = itertools.count()
    started: dict[int, float] = {}
    before_overload: dict[str, int] = {}
    overload_from = plan.fault[0]
    async with httpx.AsyncClient(transport=transport, timeout=GIVE_UP_AFTER) as client:

        async def call(_: httpx.AsyncClient) -> bool:
            number = next(numbers)
            started[number] = now = time.monotonic() - begin[0]
            if now >= overload_from and hedge is not None and not before_overload:
                before_overload.update(hedge.metrics())
            reply = await client.get(f"{url}/item", params={"call": number})
            return reply.status_code == 200

        samples = await open_loop(
            call,
            rate=RATE,
            duration=plan.duration,
            give_up_after=GIVE_UP_AFTER,
            begin=begin,
            on_tick=on_tick,
        )
    await asyncio.sleep(0.2)  # a hedge cancelled at the end still reaches the server's count
    return samples, started, hedge, before_overload


def run(hedged: bool, plan: Plan, options: Options, on_tick: Callable[[float], None]) -> ArmResult:
    """One arm: the downstream on loopback, the open-loop load, the totals."""
    begin = [math.inf]
    downstream = Downstream(plan, begin)
    with serve(downstream) as url:
        samples, started, hedge, before_overload = asyncio.run(
            _load(hedged, url, plan, begin, on_tick)
        )
    overload_from = plan.fault[0]
    tail = [s.latency for s in samples if s.started < overload_from]
    received = downstream.received

    def extra(numbers: list[int]) -> float:
        return extra_share(received, numbers)

    calls = list(started)
    in_overload = [n for n, t in started.items() if t >= overload_from]
    totals: dict[str, Any] = count_outcomes(samples)
    totals.update(
        calls=len(calls),
        calls_overload=len(in_overload),
        p50_ms=percentile(tail, 50) * 1000,
        p99_ms=percentile(tail, 99) * 1000,
        p999_ms=percentile(tail, 99.9) * 1000,
        downstream_requests=sum(received.values()),
        calls_not_received=sum(n not in received for n in calls),
        extra_share=extra(calls),
        extra_share_overload=extra(in_overload),
        budget_share=None,
        hedges_sent=0,
        hedges_won=0,
        hedges_refused=0,
    )
    details: dict[str, Any] = {
        "latency_by_percentile_ms": [[q, percentile(tail, q) * 1000] for q in PERCENTILES]
    }
    if hedge is not None:
        metrics = hedge.metrics()
        totals.update(
            budget_share=budget_allows(hedge, len(calls), plan.duration) / (len(calls) or 1),
            hedges_sent=metrics["sent"],
            hedges_won=metrics["won"],
            hedges_refused=metrics["refused"],
        )
        details["hedge_metrics"] = metrics
        details["hedge_metrics_overload"] = {
            key: value - before_overload.get(key, 0) for key, value in metrics.items()
        }
    return ArmResult(per_second(samples, plan.duration), totals, details)


def notes(results: dict[str, ArmResult]) -> list[str]:
    """The price of the shorter tail (the extra requests, next to the budget); the overload."""
    mine = results.get("resilience")
    if mine is None:
        return []
    totals = mine.totals
    overload = mine.details["hedge_metrics_overload"]
    return [
        f"resilience sent {totals['hedges_sent']} hedges ({totals['hedges_won']} answered "
        f"first): {totals['extra_share']:.1%} more requests to the downstream; its budget "
        f"allowed {totals['budget_share']:.1%} (5% of the calls plus a reserve of 1/s)",
        f"overload: {overload['sent']} hedges sent, {overload['refused']} refused by the "
        f"budget, {totals['extra_share_overload']:.1%} more requests; the budget counts "
        f"the calls of the last 10 s, so the overload could spend what the tail phase left",
    ]


def plot(path: Path, scenario: Scenario, plan: Plan, results: dict[str, ArmResult]) -> None:
    """Latency by percentile in the tail phase (the tail at the right), and p99 per second.

    The percentile axis is 1 / (1 - q) on a log scale, as HdrHistogram plots
    latency: 90%, 99% and 99.9% are evenly spaced, and the tail gets the room.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (by_percentile, per_second_p99) = plt.subplots(2, 1, figsize=(9, 6))
    for name, result in results.items():
        points = [(q, ms) for q, ms in result.details["latency_by_percentile_ms"] if q < 100]
        (line,) = by_percentile.plot(
            [1 / (1 - q / 100) for q, _ in points], [ms for _, ms in points], label=name
        )
        buckets = [b for b in result.buckets if b.answers]
        per_second_p99.plot(
            [b.start + 0.5 for b in buckets],
            [b.p99_seconds * 1000 for b in buckets],
            label=name,
            color=line.get_color(),
        )
    ticks = [0, 50, 90, 99, 99.9]
    by_percentile.set_xscale("log")
    by_percentile.set_xticks([1 / (1 - q / 100) for q in ticks], [f"{q:g}%" for q in ticks])
    by_percentile.minorticks_off()
    by_percentile.set_xlabel("percentile (2% of responses slow; the overload left out)")
    by_percentile.set_ylabel("latency (ms)")
    by_percentile.legend(loc="upper left", fontsize="small")
    per_second_p99.axvspan(*plan.fault, color="red", alpha=0.1, label="overload")
    per_second_p99.set_ylabel("p99 latency (ms)")
    per_second_p99.set_xlabel("seconds (requests grouped by the second they started in)")
    per_second_p99.legend(loc="upper left", fontsize="small")
    figure.suptitle(f"resilience demo: {scenario.name}")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


SCENARIO = register(
    Scenario(
        name="tail",
        order=30,
        plan=plan,
        header=header,
        arms=(
            Arm("plain", "baseline", partial(run, False)),
            Arm("resilience", "protected", partial(run, True)),
        ),
        rows=(
            Row("p50_ms", "p50 latency (2% slow)", "{:.1f} ms", "lower"),
            Row("p99_ms", "p99 latency (2% slow)", "{:.1f} ms", "lower"),
            Row("p999_ms", "p99.9 latency (2% slow)", "{:.1f} ms", "lower"),
            Row("extra_share", "extra requests downstream", "{:.1%}", "lower"),
            Row("budget_share", "hedge budget (with reserve)", "{:.1%}", None, missing="none"),
            Row("extra_share_overload", "extra requests, overload", "{:.1%}", "lower"),
            Row("hedges_sent", "hedges sent", "{:,}", None),
            Row("hedges_won", "hedges that answered first", "{:,}", None),
            Row("hedges_refused", "hedges refused by the budget", "{:,}", None),
            Row("full", "answered in full", "{:,}", "higher"),
            Row("failed", "failed", "{:,}", "lower"),
        ),
        notes=notes,
        plot=plot,
    )
)
