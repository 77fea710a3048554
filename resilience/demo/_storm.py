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
from typing import TYPE_CHECKING, Any

import httpx
import tenacity
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

import resilience
from resilience.middleware import ASGIDeadlineMiddleware

from ._harness import RunResult, Sample, serve

if TYPE_CHECKING:
    from collections.abc import Callable

    from starlette.requests import Request


@dataclass(frozen=True)
class StormPlan:
    duration: float
    trigger_from: float
    trigger_until: float
    workers: int = 4
    service_time: float = 0.02  # capacity: workers / service_time = 200 requests/s
    slowdown: float = 8.0  # service time multiplier during the trigger
    arrival_rate: float = 110.0  # requests/s offered, about 55% of capacity
    client_timeout: float = 0.3


def plan(duration: float) -> StormPlan:
    return StormPlan(duration, trigger_from=duration * 0.25, trigger_until=duration * 0.25 + 1.5)


def inventory_app(storm: StormPlan, begin: list[float], counters: dict[str, float]) -> Any:
    workers = asyncio.Semaphore(storm.workers)

    async def reserve(request: Request) -> JSONResponse:
        counters["downstream_requests"] += 1
        async with workers:
            left = resilience.remaining()
            if left is not None and left <= 0:  # the caller gave up while we queued
                counters["dropped_expired"] += 1
                return JSONResponse({"error": "deadline passed"}, status_code=504)
            now = time.monotonic() - begin[0]
            slow = storm.trigger_from <= now < storm.trigger_until
            await asyncio.sleep(storm.service_time * (storm.slowdown if slow else 1))
            counters["downstream_work_done"] += 1
        return JSONResponse({"reserved": True})

    # The middleware turns the callers' deadline into remaining(); naive callers send none.
    return ASGIDeadlineMiddleware(Starlette(routes=[Route("/reserve", reserve, methods=["POST"])]))


def naive_caller(url: str, storm: StormPlan) -> Callable[[httpx.AsyncClient], Any]:
    @tenacity.retry(stop=tenacity.stop_after_attempt(3), reraise=True)
    async def call(client: httpx.AsyncClient) -> bool:
        reply = await client.post(url, timeout=storm.client_timeout)
        reply.raise_for_status()
        return True

    return call


def protected_caller(url: str, storm: StormPlan) -> Callable[[httpx.AsyncClient], Any]:
    transport = resilience.AsyncResilientTransport(
        total_timeout=storm.client_timeout,
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


async def open_loop(
    call: Callable[[httpx.AsyncClient], Any],
    storm: StormPlan,
    begin: list[float],
    on_tick: Callable[[float], None] | None,
) -> list[Sample]:
    """Arrivals at a fixed rate, whatever happens to earlier requests (as real users do)."""
    samples: list[Sample] = []
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=1000)
    async with httpx.AsyncClient(limits=limits) as client:

        async def one(started: float) -> None:
            try:
                ok = bool(await asyncio.wait_for(call(client), storm.client_timeout * 4))
            except Exception:  # noqa: BLE001  (a failed request is a data point)
                ok = False
            samples.append(Sample(started, time.monotonic() - begin[0] - started, ok))

        tasks = set()
        begin[0] = time.monotonic()
        interval = 1 / storm.arrival_rate
        next_arrival = 0.0
        last_tick = 0.0
        while (now := time.monotonic() - begin[0]) < storm.duration:
            if now >= next_arrival:
                task = asyncio.create_task(one(now))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                next_arrival += interval
            if on_tick is not None and now - last_tick > 0.2:
                on_tick(now)
                last_tick = now
            await asyncio.sleep(max(0.0, min(next_arrival - now, 0.01)))
        await asyncio.gather(*tasks, return_exceptions=True)
    return samples


def run(
    protected: bool, storm: StormPlan, on_tick: Callable[[float], None] | None = None
) -> RunResult:
    counters: dict[str, float] = {
        "downstream_requests": 0,
        "downstream_work_done": 0,
        "dropped_expired": 0,
    }
    begin = [time.monotonic()]
    with serve(inventory_app(storm, begin, counters)) as url:
        endpoint = f"{url}/reserve"
        call = protected_caller(endpoint, storm) if protected else naive_caller(endpoint, storm)
        samples = asyncio.run(open_loop(call, storm, begin, on_tick))
    return RunResult(samples, counters)


def summarize(result: RunResult, storm: StormPlan) -> dict[str, float | None]:
    def goodput(start: float, end: float) -> float:
        done = [s for s in result.samples if start <= s.started < end and s.ok]
        return len(done) / (end - start) if end > start else 0.0

    after_start = storm.trigger_until + 0.5  # let the queue drain a moment
    before = goodput(0.5, storm.trigger_from)
    after = goodput(after_start, storm.duration - storm.client_timeout * 4)
    return {
        "offered_per_second": storm.arrival_rate,
        "goodput_before_per_second": before,
        "goodput_during_per_second": goodput(storm.trigger_from, storm.trigger_until),
        "goodput_after_per_second": after,
        "recovered": after >= 0.8 * before,
        "downstream_requests": result.counters["downstream_requests"],
        "downstream_work_done": result.counters["downstream_work_done"],
        "dropped_expired": result.counters["dropped_expired"],
    }
