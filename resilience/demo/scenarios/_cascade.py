"""Scenario "cascade": gateway -> orders -> payments, and payments hangs for a while.

The same load runs on three arms:

- plain: plain httpx clients between the services;
- haproxy sidecar: the same plain services, each calling the next through its
  own local HAProxy (a sidecar per caller, as a service mesh does), configured
  from the protected arm's settings (`_sidecar.haproxy_config`);
- resilience: `AsyncResilientTransport` between the services (breaker per
  origin, budgeted retries, an adaptive concurrency limit per origin),
  deadlines propagated by the middleware, load shedding and a fallback at orders.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import ExitStack
from typing import TYPE_CHECKING, Any, Literal

import httpx
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

import resilience
from resilience.middleware import ASGIConcurrencyLimitMiddleware, ASGIDeadlineMiddleware

from .. import _sidecar
from .._harness import (
    Gauge,
    Outcome,
    count_outcomes,
    paired_latencies,
    per_second,
    percentile,
    recovery_seconds,
    run_load,
    serve,
)
from .._hop import BreakerSettings, HopSettings, resilient_transport
from .._scenario import Arm, ArmResult, Options, Phase, Plan, Row, Scenario, register

if TYPE_CHECKING:
    from collections.abc import Callable

    from starlette.requests import Request

Mode = Literal["plain", "sidecar", "resilience"]

#: How long a request to payments hangs while it is down (longer than anyone waits).
HANG_SECONDS = 10.0
#: What each caller waits at most: the gateway's SLA, the load generator's timeout.
SLA_SECONDS = 2.0

# One place for each hop's settings: the protected arm's transports and the
# sidecar arm's HAProxy configurations are both built from these.
ORDERS_TO_PAYMENTS = HopSettings(
    caller="orders",
    callee="payments",
    total_timeout=SLA_SECONDS,
    attempt_timeout=0.5,
    attempts=2,
    breaker=BreakerSettings(
        consecutive_failures=5,
        failure_rate_threshold=0.5,
        minimum_calls=10,
        window_seconds=5.0,
        open_duration=1.0,  # how fast it notices healing
    ),
    # Half the attempt timeout: payments answers in milliseconds when well.
    limit_timeout=0.25,
    idempotency_key=True,
)
GATEWAY_TO_ORDERS = HopSettings(
    caller="gateway",
    callee="orders",
    total_timeout=SLA_SECONDS,
    attempt_timeout=SLA_SECONDS,
    attempts=1,
    breaker=None,
    # The 2 s SLA: orders, with its fallback, answers well within it. Waiting
    # up to 0.5 s for a slot rides out bursts (all clients start at once).
    limit_timeout=SLA_SECONDS,
    max_wait=0.5,
)


def plan(options: Options) -> Plan:
    duration = options.duration or (5.0 if options.quick else 30.0)
    return Plan(
        (
            Phase("healthy", duration * 0.25),
            Phase("payments hangs", duration * 0.35, fault=True),
            Phase("payments healed", duration * 0.40),
        )
    )


def clients(options: Options) -> int:
    """Concurrent clients: a load the healthy chain serves within its SLA on two busy cores.

    (50, the earlier default, saturated the one Python process that runs the
    three services: a p99 of 2 s and failures before any fault.)
    """
    return options.clients or (10 if options.quick else 20)


def _seconds(value: float) -> str:
    return f"{value:.1f}".removesuffix(".0")


def header(plan: Plan, options: Options) -> str:
    start, end = plan.fault
    return (
        f"cascade: gateway -> orders -> payments, {clients(options)} clients for "
        f"{_seconds(plan.duration)} s; payments hangs from {_seconds(start)} s to {_seconds(end)} s"
    )


class Clock:
    """Seconds since the load began, shared by the three services (before: -inf)."""

    def __init__(self) -> None:
        self.begin = float("inf")

    def now(self) -> float:
        return time.monotonic() - self.begin


def orders_shedding(app: Any) -> ASGIConcurrencyLimitMiddleware:
    """Orders sheds what it cannot serve with 503 + Retry-After (latency-based, for a server)."""
    limit = resilience.ConcurrencyLimit(resilience.Gradient2Limit(), name="orders")
    return ASGIConcurrencyLimitMiddleware(app, limit=limit, name="orders")


def payments_app(plan: Plan, clock: Clock, counters: dict[str, float]) -> Any:
    """Answers in 5 ms; during the fault every request (health checks too) hangs."""
    fault_from, fault_until = plan.fault

    async def answer(work: float) -> None:
        counters["payments_requests"] += 1
        if fault_from <= clock.now() < fault_until:
            counters["payments_requests_while_down"] += 1
            await asyncio.sleep(HANG_SECONDS)  # hangs: no error, no answer
        else:
            await asyncio.sleep(work)

    async def pay(request: Request) -> JSONResponse:
        await answer(0.005)
        return JSONResponse({"paid": True})

    async def ping(request: Request) -> JSONResponse:
        await answer(0.0)
        return JSONResponse({"ok": True})

    routes = [
        Route("/pay", pay, methods=["POST"]),
        Route("/ping", ping),
        Route(_sidecar.HEALTH_PATH, ping),
    ]
    return ASGIDeadlineMiddleware(Starlette(routes=routes))


def _plain_client() -> httpx.AsyncClient:
    return httpx.AsyncClient(timeout=5.0, limits=httpx.Limits(max_connections=500))


def orders_app(mode: Mode, payments: str, counters: dict[str, float]) -> Any:
    """Orders calls payments: plainly, via its sidecar (same code), or with resilience."""
    in_flight = Gauge()
    state: dict[str, httpx.AsyncClient] = {}
    protected = mode == "resilience"

    def client() -> httpx.AsyncClient:
        if "client" not in state:
            if protected:
                transport = resilient_transport(ORDERS_TO_PAYMENTS)
                state["client"] = httpx.AsyncClient(transport=transport)
            else:
                state["client"] = _plain_client()
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


def gateway_app(mode: Mode, orders: str) -> Any:
    state: dict[str, httpx.AsyncClient] = {}
    protected = mode == "resilience"

    def client() -> httpx.AsyncClient:
        if "client" not in state:
            if protected:
                transport = resilient_transport(GATEWAY_TO_ORDERS)
                state["client"] = httpx.AsyncClient(transport=transport)
            else:
                state["client"] = _plain_client()
        return state["client"]

    async def checkout(request: Request) -> JSONResponse:
        try:
            reply = await client().post(f"{orders}/order")
        except httpx.HTTPError:
            return JSONResponse({"error": "orders failed"}, status_code=504)
        if reply.headers.get("content-type") != "application/json":
            # HAProxy's own 503/504 pages are HTML.
            return JSONResponse({"error": "orders failed"}, status_code=502)
        return JSONResponse(reply.json(), status_code=reply.status_code)

    app = Starlette(routes=[Route("/checkout", checkout, methods=["POST"])])
    # The gateway gives every request its SLA; below it, the budget travels.
    return ASGIDeadlineMiddleware(app, default=SLA_SECONDS) if protected else app


def outcome(reply: httpx.Response) -> Outcome:
    """Full: paid now; degraded: accepted with payment pending (the fallback); else failed."""
    if reply.status_code != 200:
        return "failed"
    return "full" if reply.json().get("payment") == "done" else "degraded"


async def hop_latency(mode: Mode, payments: str, via: str, count: int) -> dict[str, float]:
    """What one hop adds when all is well: `count` calls straight to payments and via the hop.

    plain has no hop (0 by definition); the sidecar adds a network hop through
    HAProxy (`via` is its URL); the library adds its transport's work in-process.
    """
    if mode == "plain":
        return {"hop_added_median_ms": 0.0, "hop_added_p99_ms": 0.0}
    direct = _plain_client()
    through = (
        httpx.AsyncClient(transport=resilient_transport(ORDERS_TO_PAYMENTS))
        if mode == "resilience"
        else _plain_client()
    )
    async with direct, through:

        async def straight() -> object:
            return (await direct.get(f"{payments}/ping")).raise_for_status()

        async def hop() -> object:
            return (await through.get(f"{via}/ping")).raise_for_status()

        await paired_latencies(straight, hop, 20)  # warm up: connections, caches
        plain, via_hop = await paired_latencies(straight, hop, count)
    # Per pair: what the hop added to that call (the same moment's noise cancels out).
    added = [through - direct for through, direct in zip(via_hop, plain, strict=True)]
    return {
        "hop_added_median_ms": 1000 * percentile(added, 50),
        "hop_added_p99_ms": 1000 * percentile(added, 99),
    }


def run(mode: Mode, plan: Plan, options: Options, on_tick: Callable[[float], None]) -> ArmResult:
    counters: dict[str, float] = {
        "payments_requests": 0,
        "payments_requests_while_down": 0,
        "orders_peak_in_flight": 0,
        "orders_fallbacks": 0,
    }
    details: dict[str, Any] = {}
    clock = Clock()
    with ExitStack() as stack:
        stops: list[Callable[[], None]] = []
        payments = stack.enter_context(serve(payments_app(plan, clock, counters), stops=stops))
        payments_for_orders = payments
        if mode == "sidecar":
            payments_for_orders, pid = stack.enter_context(
                _sidecar.sidecar(ORDERS_TO_PAYMENTS, payments)
            )
            details.setdefault("sidecar_pids", []).append(pid)
        orders = stack.enter_context(
            serve(orders_app(mode, payments_for_orders, counters), stops=stops)
        )
        orders_for_gateway = orders
        if mode == "sidecar":
            orders_for_gateway, pid = stack.enter_context(
                _sidecar.sidecar(GATEWAY_TO_ORDERS, orders)
            )
            details["sidecar_pids"].append(pid)
        gateway = stack.enter_context(serve(gateway_app(mode, orders_for_gateway), stops=stops))

        def stop_together() -> None:
            for stop in stops:
                stop()

        stack.callback(stop_together)  # unwinding runs it first: the servers stop together

        async def call(client: httpx.AsyncClient) -> Outcome:
            return outcome(await client.post(f"{gateway}/checkout"))

        async def measure() -> tuple[dict[str, float], list[Any]]:
            hop = await hop_latency(
                mode, payments, payments_for_orders, 100 if options.quick else 300
            )
            for counter in counters:
                counters[counter] = 0  # the hop measurement is not part of the run
            clock.begin = time.monotonic()
            samples = await run_load(
                call,
                clients=clients(options),
                duration=plan.duration,
                client_timeout=SLA_SECONDS,
                on_tick=on_tick,
            )
            return hop, samples

        hop, samples = asyncio.run(measure())
    fault_from, fault_until = plan.fault
    totals: dict[str, Any] = count_outcomes(samples)
    answers = totals["answers"] or 1
    latencies = [s.latency for s in samples]
    totals.update(
        full_share=totals["full"] / answers,
        degraded_share=totals["degraded"] / answers,
        failed_share=totals["failed"] / answers,
        full_during_fault=sum(
            s.outcome == "full" for s in samples if fault_from <= s.started < fault_until
        ),
        p50_seconds=percentile(latencies, 50),
        p99_seconds=percentile(latencies, 99),
        payments_requests_while_down=counters["payments_requests_while_down"],
        orders_peak_in_flight=counters["orders_peak_in_flight"],
        orders_fallbacks=counters["orders_fallbacks"],
        recovery_seconds=recovery_seconds(samples, fault_until, plan.duration),
        **hop,
    )
    return ArmResult(per_second(samples, plan.duration), totals, details)


def _arm(mode: Mode) -> Callable[[Plan, Options, Callable[[float], None]], ArmResult]:
    def run_arm(plan: Plan, options: Options, on_tick: Callable[[float], None]) -> ArmResult:
        return run(mode, plan, options, on_tick)

    return run_arm


SCENARIO = register(
    Scenario(
        name="cascade",
        order=10,
        plan=plan,
        header=header,
        arms=(
            Arm("plain", "baseline", _arm("plain")),
            Arm("haproxy", "rival", _arm("sidecar"), unavailable=_sidecar.unavailable),
            Arm("resilience", "protected", _arm("resilience")),
        ),
        rows=(
            Row("answers", "answers", "{:,.0f}", None),
            Row("full", "  in full", "{:,.0f}", "higher"),
            Row("degraded", "  degraded (fallback)", "{:,.0f}", None),
            Row("failed", "  failed", "{:,.0f}", "lower"),
            Row("full_during_fault", "in full during the fault", "{:,.0f}", "higher"),
            Row("p50_seconds", "p50 latency", "{:.3f} s", "lower"),
            Row("p99_seconds", "p99 latency", "{:.3f} s", "lower"),
            Row(
                "payments_requests_while_down",
                "requests reaching hung payments",
                "{:,.0f}",
                "lower",
            ),
            Row("orders_peak_in_flight", "peak in flight at orders", "{:,.0f}", "lower"),
            Row(
                "recovery_seconds",
                "time to recover (full > 99%)",
                "{:.0f} s",
                "lower",
                missing="not in run",
            ),
            Row("hop_added_median_ms", "latency a hop adds, median", "{:.3f} ms", "lower"),
            Row("hop_added_p99_ms", "latency a hop adds, p99", "{:.3f} ms", "lower"),
        ),
        why_behind={
            "recovery_seconds": (
                "after the fault the breaker stays open until its next probe succeeds "
                "(one per second), and the adaptive limit, cut during the fault, grows "
                "back one slot per window: calls over it get the fallback meanwhile"
            ),
            "payments_requests_while_down": (
                "the breaker's probes are real requests (one per second), and the "
                "adaptive limit lets its current limit through before the breaker opens"
            ),
            "full": (
                "the library's work runs in the services' own Python process and takes "
                "its CPU (HAProxy runs in processes of its own), and orders' adaptive "
                "limit, whose yardstick is 0.25 s, sends calls to the fallback whenever "
                "the busy process slows payments' answers past it, even when healthy"
            ),
            "failed": "HAProxy fails fast too, and its callers then send more requests",
            "full_during_fault": (
                "full answers during the fault come from requests that reached payments "
                "just before it hung: a handful either way"
            ),
            "orders_peak_in_flight": (
                "what orders holds is what its callers let through; HAProxy's fast 503s "
                "free orders' requests sooner than the library's fallback answers them"
            ),
            "p50_seconds": "the library's work shares the services' Python process",
            "p99_seconds": "the library's work shares the services' Python process",
            "hop_added_median_ms": (
                "the library's work is Python in the caller's process (timeouts, retry, "
                "breaker and limit bookkeeping); HAProxy's extra hop is C on another "
                "core, and a loopback hop costs it only tens of microseconds"
            ),
            "hop_added_p99_ms": (
                "the library's work is Python in the caller's process, paused whenever "
                "that process is; HAProxy runs on another core"
            ),
        },
    )
)
