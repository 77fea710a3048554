"""Scenario "cascade": gateway -> orders -> payments, and payments hangs for a while.

The same load runs twice: once with plain httpx clients between the services,
once with `resilience` (transport with a per-origin breaker, budgeted retries,
an adaptive concurrency limit per origin, deadlines propagated by the
middleware, load shedding and a fallback at orders).
"""

from __future__ import annotations

import asyncio
import time
from contextlib import ExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

import resilience
from resilience.middleware import ASGIConcurrencyLimitMiddleware, ASGIDeadlineMiddleware

from ._harness import Gauge, RunResult, percentile, recovery_time, run_load, serve, success_rate

if TYPE_CHECKING:
    from collections.abc import Callable

    from starlette.requests import Request


@dataclass(frozen=True)
class Timeline:
    """When payments is down, in seconds since the run began."""

    duration: float
    down_from: float
    down_until: float
    hang: float  # how long a request to payments hangs while it is down


def timeline(duration: float) -> Timeline:
    return Timeline(duration, duration * 0.25, duration * 0.6, hang=10.0)


OPEN_DURATION = 1.0  # the demo breaker's open period: how fast it notices healing


def origin_limits(
    *, timeout: float, max_wait: float = 0.0
) -> Callable[[str], resilience.ConcurrencyLimit]:
    """A caller's adaptive limit, one per origin (the transports' `concurrency_limit=`).

    AIMD, the loss-based algorithm for clients: a hung downstream gives no
    error, only timeouts, and those are drops. `timeout` is the latency the
    caller accepts (a window's mean above it is a drop too), so the limit
    backs off as soon as calls queue, before attempts time out; a backoff
    of 0.5 halves it per window of drops, not by 10%.
    """

    def limit(origin: str) -> resilience.ConcurrencyLimit:
        algorithm = resilience.AIMDLimit(backoff_ratio=0.5, timeout=timeout)
        return resilience.ConcurrencyLimit(algorithm, name=origin, max_wait=max_wait)

    return limit


def orders_shedding(app: Any) -> ASGIConcurrencyLimitMiddleware:
    """Orders sheds what it cannot serve with 503 + Retry-After (latency-based, for a server)."""
    limit = resilience.ConcurrencyLimit(resilience.Gradient2Limit(), name="orders")
    return ASGIConcurrencyLimitMiddleware(app, limit=limit, name="orders")


class Clock:
    """Seconds since the run began, shared by the three services."""

    def __init__(self) -> None:
        self.begin = time.monotonic()

    def now(self) -> float:
        return time.monotonic() - self.begin


def payments_app(plan: Timeline, clock: Clock, counters: dict[str, float]) -> Any:
    async def pay(request: Request) -> JSONResponse:
        counters["payments_requests"] += 1
        now = clock.now()
        if plan.down_from <= now < plan.down_until:
            counters["payments_requests_while_down"] += 1
            await asyncio.sleep(plan.hang)  # hangs: no error, no answer
        else:
            await asyncio.sleep(0.005)
        return JSONResponse({"paid": True})

    return ASGIDeadlineMiddleware(Starlette(routes=[Route("/pay", pay, methods=["POST"])]))


def orders_app(protected: bool, payments: str, counters: dict[str, float]) -> Any:
    in_flight = Gauge()
    state: dict[str, httpx.AsyncClient] = {}

    def client() -> httpx.AsyncClient:
        if "client" not in state:
            if protected:
                transport = resilience.AsyncResilientTransport(
                    total_timeout=2.0,
                    attempt_timeout=0.5,
                    retry=resilience.Retry(
                        on=(httpx.TransportError,),
                        attempts=2,
                        budget=resilience.RetryBudget("payments"),
                        retry_if_result=lambda r: r.status_code >= 500,
                        name="orders->payments",
                    ),
                    breaker=resilience.CircuitBreaker(
                        "payments",
                        consecutive_failures=5,
                        failure_rate_threshold=0.5,
                        minimum_calls=10,
                        window=resilience.TimeWindow(seconds=5),
                        open_duration=OPEN_DURATION,
                    ),
                    # Half the attempt timeout: payments answers in milliseconds when well.
                    concurrency_limit=origin_limits(timeout=0.25),
                    idempotency_key=True,
                    limits=httpx.Limits(max_connections=500),
                )
                state["client"] = httpx.AsyncClient(transport=transport)
            else:
                limits = httpx.Limits(max_connections=500)
                state["client"] = httpx.AsyncClient(timeout=5.0, limits=limits)
        return state["client"]

    async def order(request: Request) -> JSONResponse:
        with in_flight:
            counters["orders_peak_in_flight"] = in_flight.peak
            try:
                reply = await client().post(f"{payments}/pay", json={"amount": 1})
                reply.raise_for_status()
                return JSONResponse({"order": "placed", "payment": "done"})
            except (httpx.HTTPError, resilience.ResilienceError):
                if protected:  # the fallback: accept the order, charge later
                    counters["orders_fallbacks"] += 1
                    return JSONResponse({"order": "placed", "payment": "pending"})
                return JSONResponse({"error": "payments failed"}, status_code=502)

    app = Starlette(routes=[Route("/order", order, methods=["POST"])])
    # Shedding outside the deadline middleware: a shed request costs nothing more.
    return orders_shedding(ASGIDeadlineMiddleware(app)) if protected else app


def gateway_app(protected: bool, orders: str) -> Any:
    state: dict[str, httpx.AsyncClient] = {}

    def client() -> httpx.AsyncClient:
        if "client" not in state:
            limits = httpx.Limits(max_connections=500)
            if protected:
                transport = resilience.AsyncResilientTransport(
                    total_timeout=2.0,
                    retry=False,
                    breaker=False,
                    # The 2 s SLA: orders, with its fallback, answers well within it.
                    # Waiting up to 0.5 s for a slot rides out bursts (all clients start at once).
                    concurrency_limit=origin_limits(timeout=2.0, max_wait=0.5),
                    limits=limits,
                )
                state["client"] = httpx.AsyncClient(transport=transport)
            else:
                state["client"] = httpx.AsyncClient(timeout=5.0, limits=limits)
        return state["client"]

    async def checkout(request: Request) -> JSONResponse:
        try:
            reply = await client().post(f"{orders}/order")
        except httpx.HTTPError:
            return JSONResponse({"error": "orders failed"}, status_code=504)
        return JSONResponse(reply.json(), status_code=reply.status_code)

    app = Starlette(routes=[Route("/checkout", checkout, methods=["POST"])])
    # The gateway gives every request 2 s (its SLA); below it, the budget travels.
    return ASGIDeadlineMiddleware(app, default=2.0) if protected else app


def run(
    protected: bool, plan: Timeline, clients: int, on_tick: Callable[[float], None] | None = None
) -> RunResult:
    counters: dict[str, float] = {
        "payments_requests": 0,
        "payments_requests_while_down": 0,
        "orders_peak_in_flight": 0,
        "orders_fallbacks": 0,
    }
    clock = Clock()
    with ExitStack() as stack:
        payments = stack.enter_context(serve(payments_app(plan, clock, counters)))
        orders = stack.enter_context(serve(orders_app(protected, payments, counters)))
        gateway = stack.enter_context(serve(gateway_app(protected, orders)))

        async def call(client: httpx.AsyncClient) -> bool:
            reply = await client.post(f"{gateway}/checkout")
            return reply.status_code == 200

        clock.begin = time.monotonic()
        samples = asyncio.run(
            run_load(
                call, clients=clients, duration=plan.duration, client_timeout=2.0, on_tick=on_tick
            )
        )
    return RunResult(samples, counters)


def summarize(result: RunResult, plan: Timeline) -> dict[str, float | None]:
    latencies = [s.latency for s in result.samples]
    return {
        "requests": len(result.samples),
        "success_rate": success_rate(result.samples),
        "p50_seconds": percentile(latencies, 50),
        "p99_seconds": percentile(latencies, 99),
        "payments_requests_while_down": result.counters["payments_requests_while_down"],
        "orders_peak_in_flight": result.counters["orders_peak_in_flight"],
        "recovery_seconds": recovery_time(result.samples, plan.down_until),
        "orders_fallbacks": result.counters["orders_fallbacks"],
    }
