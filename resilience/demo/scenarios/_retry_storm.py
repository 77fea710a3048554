"""Scenario "retry-storm": a short overload, and whether goodput comes back afterwards.

A downstream with fixed capacity (a few workers, a fixed service time) gets a
steady load below its capacity. For a short trigger the service time grows
(a slow disk, a GC pause). Callers time out and retry:

- naive callers retry 3 times at once (tenacity, no budget), and the
  downstream keeps working on requests whose callers already gave up;
- protected callers use a retry budget and a breaker, and send their
  deadline, which the downstream's middleware uses to drop work nobody waits for.

The HotOS 2021 paper "Metastable Failures in Distributed Systems" describes
the first outcome: retries keep the load above capacity after the trigger has
passed, and the system stays down.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import httpx
import tenacity
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

import resilience
from resilience.middleware import ASGIDeadlineMiddleware

from .._harness import count_outcomes, open_loop, per_second, recovery_row, recovery_seconds, serve
from .._scenario import Arm, ArmResult, Options, Phase, Plan, Row, Scenario, register, seconds_text

if TYPE_CHECKING:
    from collections.abc import Callable

    from starlette.requests import Request


@dataclass(frozen=True)
class Storm:
    """The downstream's capacity and the offered load."""

    workers: int = 4
    service_time: float = 0.02  # capacity: workers / service_time = 200 requests/s
    slowdown: float = 8.0  # service time multiplier during the trigger
    arrival_rate: float = 110.0  # requests/s offered, about 55% of capacity
    client_timeout: float = 0.3


STORM = Storm()


def plan(options: Options) -> Plan:
    """Steady load for a quarter of the run, the trigger (1.5 s at most), then the aftermath."""
    duration = options.duration or (5.0 if options.quick else 20.0)
    trigger = min(1.5, duration * 0.35)
    return Plan(
        (
            Phase("steady", duration * 0.25),
            Phase("trigger: service 8x slower", trigger, fault=True),
            Phase("after the trigger", duration * 0.75 - trigger),
        )
    )


def header(plan: Plan, options: Options) -> str:
    start, end = plan.fault
    return (
        f"retry-storm: {STORM.arrival_rate:.0f} requests/s to a {STORM.workers}-worker "
        f"service for {seconds_text(plan.duration)} s; {STORM.slowdown:.0f}x slower from "
        f"{seconds_text(start)} s to {seconds_text(end)} s"
    )


def inventory_app(plan: Plan, begin: list[float], counters: dict[str, float]) -> Any:
    """A service with a fixed number of workers that drops work its caller gave up on."""
    workers = asyncio.Semaphore(STORM.workers)
    trigger_from, trigger_until = plan.fault

    async def reserve(request: Request) -> JSONResponse:
        counters["downstream_requests"] += 1
        async with workers:
            left = resilience.remaining()
            if left is not None and left <= 0:  # the caller gave up while we queued
                counters["dropped_expired"] += 1
                return JSONResponse({"error": "deadline passed"}, status_code=504)
            now = time.monotonic() - begin[0]
            slow = trigger_from <= now < trigger_until
            await asyncio.sleep(STORM.service_time * (STORM.slowdown if slow else 1))
            counters["downstream_work_done"] += 1
        return JSONResponse({"reserved": True})

    # The middleware turns the callers' deadline into remaining(); naive callers send none.
    return ASGIDeadlineMiddleware(Starlette(routes=[Route("/reserve", reserve, methods=["POST"])]))


def naive_caller(url: str) -> Callable[[httpx.AsyncClient], Any]:
    """Three attempts at once on any error, no budget (tenacity)."""

    @tenacity.retry(stop=tenacity.stop_after_attempt(3), reraise=True)
    async def call(client: httpx.AsyncClient) -> bool:
        reply = await client.post(url, timeout=STORM.client_timeout)
        reply.raise_for_status()
        return True

    return call


def protected_caller(url: str) -> Callable[[httpx.AsyncClient], Any]:
    """Budgeted retries with backoff, a breaker, and the deadline sent along."""
    transport = resilience.AsyncResilientTransport(
        total_timeout=STORM.client_timeout,
        retry=resilience.Retry(
            on=(httpx.TransportError,),
            attempts=3,
            wait=resilience.Backoff(initial=0.01, maximum=0.1),
            retry_if_result=lambda r: r.status_code >= 500,
            budget=resilience.RetryBudget("inventory", ratio=0.1, min_per_second=2, window=2),
            name="storm",
        ),
        breaker=resilience.CircuitBreaker(
            "inventory",
            failure_rate_threshold=0.5,
            minimum_calls=20,
            window=resilience.TimeWindow(seconds=2),
            open_duration=0.5,
            half_open_max_calls=5,
        ),
        limits=httpx.Limits(max_connections=1000),
    )
    client = httpx.AsyncClient(transport=transport)

    async def call(_: httpx.AsyncClient) -> bool:
        reply = await client.post(url)
        return reply.status_code == 200

    return call


def run(
    protected: bool, plan: Plan, options: Options, on_tick: Callable[[float], None]
) -> ArmResult:
    """One arm: the inventory service on loopback, the open-loop load, the totals."""
    counters: dict[str, float] = {
        "downstream_requests": 0,
        "downstream_work_done": 0,
        "dropped_expired": 0,
    }
    begin = [time.monotonic()]
    with serve(inventory_app(plan, begin, counters)) as url:
        endpoint = f"{url}/reserve"
        call = protected_caller(endpoint) if protected else naive_caller(endpoint)
        samples = asyncio.run(
            open_loop(
                call,
                rate=STORM.arrival_rate,
                duration=plan.duration,
                give_up_after=STORM.client_timeout * 4,
                begin=begin,
                on_tick=on_tick,
            )
        )
    trigger_from, trigger_until = plan.fault

    def goodput(start: float, end: float) -> float:
        done = [s for s in samples if start <= s.started < end and s.outcome == "full"]
        return len(done) / (end - start) if end > start else 0.0

    totals: dict[str, Any] = count_outcomes(samples)
    before = goodput(0.5, trigger_from)
    after = goodput(trigger_until + 0.5, plan.duration)  # the queue drains a moment first
    totals.update(
        offered_per_second=STORM.arrival_rate,
        full_share=totals["full"] / (totals["answers"] or 1),
        goodput_before_per_second=before,
        goodput_during_per_second=goodput(trigger_from, trigger_until),
        goodput_after_per_second=after,
        recovered=after >= 0.8 * before,
        recovery_seconds=recovery_seconds(samples, trigger_until, plan.duration),
        **counters,
    )
    return ArmResult(per_second(samples, plan.duration), totals)


def notes(results: dict[str, ArmResult]) -> list[str]:
    """Whether goodput came back after the trigger, per arm."""
    return [
        f"{name}: goodput after the trigger "
        + ("recovered" if result.totals["recovered"] else "did NOT recover (metastable)")
        for name, result in results.items()
    ]


SCENARIO = register(
    Scenario(
        name="retry-storm",
        order=20,
        plan=plan,
        header=header,
        arms=(
            Arm("naive retries", "baseline", partial(run, False)),
            Arm("resilience", "protected", partial(run, True)),
        ),
        rows=(
            Row("goodput_before_per_second", "goodput before the trigger", "{:.0f}/s", "higher"),
            Row("goodput_during_per_second", "goodput during the trigger", "{:.0f}/s", "higher"),
            Row("goodput_after_per_second", "goodput after the trigger", "{:.0f}/s", "higher"),
            Row("full_share", "answered, share of requests", "{:.1%}", "higher"),
            recovery_row("time to recover"),
            Row("downstream_requests", "requests sent downstream", "{:,.0f}", "lower"),
            Row("downstream_work_done", "work done downstream", "{:,.0f}", None),
            Row("dropped_expired", "stale requests dropped", "{:,.0f}", None),
        ),
        notes=notes,
    )
)
