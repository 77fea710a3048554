"""Scenario "cascade": gateway -> orders -> payments, and payments hangs for a while.

The traffic is a mix, as at a real shop's front door: four requests in five
are reads (GET /orders/{id}: orders answers them alone, payments is not
involved), one in five is a checkout (POST /checkout -> orders' POST /order
-> payments' POST /pay). Orders has a fixed number of workers
(`ORDERS_WORKERS`, `_harness.WorkerPool`): a request holds one until its
answer is sent, and requests over that wait in a queue, as in a thread pool
or a set of server processes. That bound is what turns a hung dependency
into a cascade: checkouts waiting on the hung payments hold orders' workers,
and the reads, which do not need payments at all, queue behind them and miss
their SLA. How long a checkout holds its worker is what the arms change.

The same load, the same workers, SLA and timeouts run on three arms:

- plain: plain httpx clients between the services (httpx's default 5 s
  timeout: a checkout holds its worker 5 s while payments hangs);
- haproxy sidecar: the same plain services, each calling the next through
  its own local HAProxy (a sidecar per caller, as a service mesh does),
  configured from the protected arm's settings (`_sidecar.haproxy_config`):
  its `timeout server` cuts each attempt, its layer-7 error limit marks
  payments down and answers 503 at once;
- resilience: `AsyncResilientTransport` between the services (breaker per
  origin, budgeted retries, an adaptive concurrency limit per origin),
  deadlines propagated by the middleware, load shedding in front of orders'
  workers, and a fallback for checkouts at orders ("payment pending").

Every answer is full, degraded (a checkout answered by the fallback) or
failed; reads have no fallback, so a read is full or failed.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import math
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
    OUTCOMES,
    Outcome,
    Sample,
    WorkerPool,
    count_outcomes,
    paired_latencies,
    per_second,
    percentile,
    recovery_row,
    recovery_seconds,
    run_load,
    serve,
)
from .._hop import BreakerSettings, HopSettings, resilient_transport
from .._scenario import Arm, ArmResult, Options, Phase, Plan, Row, Scenario, register, seconds_text

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from starlette.requests import Request

Mode = Literal["plain", "sidecar", "resilience"]

#: How long a request to payments hangs while it is down (longer than anyone waits).
HANG_SECONDS = 10.0
#: What each caller waits at most: the gateway's SLA, the load generator's timeout.
SLA_SECONDS = 2.0
#: Orders' workers, the same in every arm: gunicorn's advice for two cores
#: (2 x cores + 1). Unloaded, five workers serve far more than the load asks.
ORDERS_WORKERS = 5
#: The traffic mix, in order: four reads (no payments), then one checkout.
MIX = ("read", "read", "read", "read", "checkout")
#: The work behind a read at orders, and behind a payment (a database call, say).
READ_SECONDS = 0.005

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


def hop_calls(options: Options) -> int:
    """Calls each way (straight, via the hop) before an arm's load, to measure the hop."""
    return 100 if options.quick else 300


def header(plan: Plan, options: Options) -> str:
    start, end = plan.fault
    return (
        f"cascade: gateway -> orders -> payments, {clients(options)} clients for "
        f"{seconds_text(plan.duration)} s; payments hangs "
        f"from {seconds_text(start)} s to {seconds_text(end)} s"
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


def _client(hop: HopSettings | None) -> httpx.AsyncClient:
    """A plain client (httpx's 5 s timeout), or one on the library's transport set for `hop`."""
    if hop is None:
        return httpx.AsyncClient(timeout=5.0, limits=httpx.Limits(max_connections=500))
    return httpx.AsyncClient(transport=resilient_transport(hop))


def _client_on_first_use(hop: HopSettings | None) -> Callable[[], httpx.AsyncClient]:
    """`_client(hop)`, made when a request first needs it (on the server's own event loop)."""
    return functools.cache(lambda: _client(hop))


def orders_app(mode: Mode, payments: str, counters: dict[str, float]) -> tuple[Any, WorkerPool]:
    """Orders and its workers: reads alone, checkouts via payments (plain, sidecar, protected).

    Its routes run on `ORDERS_WORKERS` workers in every arm. In the protected
    arm the library's middleware runs in front of them (as Starlette runs
    middleware on the event loop and sync endpoints in its thread pool): the
    deadline is taken when a request arrives, and shedding turns requests
    away instead of queueing them.
    """
    protected = mode == "resilience"
    client = _client_on_first_use(ORDERS_TO_PAYMENTS if protected else None)

    async def read(request: Request) -> JSONResponse:
        await asyncio.sleep(READ_SECONDS)  # its own database, not payments
        return JSONResponse({"order": request.path_params["order_id"], "status": "shipped"})

    async def order(request: Request) -> JSONResponse:
        try:
            reply = await client().post(f"{payments}/pay", json={"amount": 1})
            reply.raise_for_status()
            return JSONResponse({"order": "placed", "payment": "done"})
        except (httpx.HTTPError, resilience.ResilienceError):
            if protected:  # the fallback: accept the order, charge later
                counters["orders_fallbacks"] += 1
                return JSONResponse({"order": "placed", "payment": "pending"})
            return JSONResponse({"error": "payments failed"}, status_code=502)

    routes = [
        Route("/orders/{order_id:int}", read),
        Route("/order", order, methods=["POST"]),
    ]
    pool = WorkerPool(Starlette(routes=routes), ORDERS_WORKERS)
    # Shedding outside the deadline middleware: a shed request costs nothing more.
    return (orders_shedding(ASGIDeadlineMiddleware(pool)) if protected else pool), pool


def gateway_app(mode: Mode, orders: str) -> Any:
    protected = mode == "resilience"
    client = _client_on_first_use(GATEWAY_TO_ORDERS if protected else None)

    async def forward(method: str, url: str) -> JSONResponse:
        try:
            reply = await client().request(method, url)
        except httpx.HTTPError:
            return JSONResponse({"error": "orders failed"}, status_code=504)
        if reply.headers.get("content-type") != "application/json":
            # HAProxy's own 503/504 pages are HTML.
            return JSONResponse({"error": "orders failed"}, status_code=502)
        return JSONResponse(reply.json(), status_code=reply.status_code)

    async def read(request: Request) -> JSONResponse:
        return await forward("GET", f"{orders}/orders/{request.path_params['order_id']}")

    async def checkout(request: Request) -> JSONResponse:
        return await forward("POST", f"{orders}/order")

    app = Starlette(
        routes=[
            Route("/orders/{order_id:int}", read),
            Route("/checkout", checkout, methods=["POST"]),
        ]
    )
    # The gateway gives every request its SLA; below it, the budget travels.
    return ASGIDeadlineMiddleware(app, default=SLA_SECONDS) if protected else app


def outcome(kind: str, reply: httpx.Response) -> Outcome:
    """Full, degraded or failed, by the kind of request.

    A read is full if answered, else failed (reads have no fallback). A
    checkout is full if paid now, degraded if accepted with the payment
    pending (the fallback), else failed.
    """
    if reply.status_code != 200:
        return "failed"
    body = reply.json()
    if kind == "read":
        return "full" if body.get("status") == "shipped" else "failed"
    if body.get("payment") == "done":
        return "full"
    return "degraded" if body.get("payment") == "pending" else "failed"


async def hop_latency(mode: Mode, payments: str, via: str, count: int) -> dict[str, float | None]:
    """What one hop adds when all is well: `count` calls straight to payments and via the hop.

    plain has no hop (no figure); the sidecar adds a network hop through
    HAProxy (`via` is its URL); the library adds its transport's work in-process.
    """
    if mode == "plain":
        return {"hop_added_median_ms": None, "hop_added_p99_ms": None}
    direct = _client(None)
    through = _client(ORDERS_TO_PAYMENTS if mode == "resilience" else None)
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
        orders_asgi, workers = orders_app(mode, payments_for_orders, counters)
        orders = stack.enter_context(serve(orders_asgi, stops=stops))
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

        order_ids = itertools.count(1)

        async def call(client: httpx.AsyncClient, kind: str) -> Outcome:
            if kind == "read":
                reply = await client.get(f"{gateway}/orders/{next(order_ids)}")
            else:
                reply = await client.post(f"{gateway}/checkout")
            return outcome(kind, reply)

        async def measure() -> tuple[dict[str, float | None], list[Sample]]:
            hop = await hop_latency(mode, payments, payments_for_orders, hop_calls(options))
            for counter in counters:
                counters[counter] = 0  # the hop measurement is not part of the run
            clock.begin = time.monotonic()
            samples = await run_load(
                call,
                clients=clients(options),
                duration=plan.duration,
                client_timeout=SLA_SECONDS,
                mix=MIX,
                on_tick=on_tick,
            )
            return hop, samples

        hop, samples = asyncio.run(measure())
    fault_from, fault_until = plan.fault
    totals: dict[str, Any] = count_outcomes(samples)
    answers = totals["answers"] or 1
    latencies = [s.latency for s in samples]
    by_kind = {
        kind: {
            outcome: sum(s.outcome == outcome for s in samples if s.kind == kind)
            for outcome in OUTCOMES
        }
        for kind in dict.fromkeys(MIX)
    }
    totals.update(
        by_kind=by_kind,
        full_share=totals["full"] / answers,
        degraded_share=totals["degraded"] / answers,
        failed_share=totals["failed"] / answers,
        **during_fault(samples, fault_from, fault_until),
        p50_seconds=percentile(latencies, 50),
        p99_seconds=percentile(latencies, 99),
        payments_requests_while_down=counters["payments_requests_while_down"],
        orders_workers=ORDERS_WORKERS,
        orders_peak_busy=workers.busy.peak,
        orders_peak_queued=workers.queued.peak,
        orders_fallbacks=counters["orders_fallbacks"],
        recovery_seconds=recovery_seconds(samples, fault_until, plan.duration),
        **hop,
    )
    return ArmResult(per_second(samples, plan.duration), totals, details)


def during_fault(samples: Sequence[Sample], start: float, end: float) -> dict[str, float]:
    """The requests started during the fault, by kind: reads (no payments) and checkouts."""
    window = [s for s in samples if start <= s.started < end]
    reads = [s for s in window if s.kind == "read"]
    checkouts = [s for s in window if s.kind == "checkout"]
    reads_full = sum(s.outcome == "full" for s in reads)
    checkouts_full = sum(s.outcome == "full" for s in checkouts)
    return {
        "reads_during_fault": len(reads),
        "reads_full_during_fault": reads_full,
        "reads_full_share_during_fault": reads_full / len(reads) if reads else math.nan,
        "checkouts_during_fault": len(checkouts),
        "checkouts_full_during_fault": checkouts_full,
        "checkouts_degraded_during_fault": sum(s.outcome == "degraded" for s in checkouts),
        "full_during_fault": reads_full + checkouts_full,
    }


def negative_hop_notes(results: dict[str, ArmResult]) -> list[str]:
    """A hop cannot make a call faster: a negative figure is the machine's noise."""
    return [
        f"{name}: a hop latency below 0 means this run's noise (other work on the "
        "machine) was larger than what the hop costs: the hop rows say little here"
        for name, result in results.items()
        if (result.totals.get("hop_added_median_ms") or 0.0) < 0
    ]


SCENARIO = register(
    Scenario(
        name="cascade",
        order=10,
        plan=plan,
        header=header,
        arms=(
            Arm("plain", "baseline", functools.partial(run, "plain")),
            Arm(
                "haproxy",
                "rival",
                functools.partial(run, "sidecar"),
                unavailable=_sidecar.unavailable,
            ),
            Arm("resilience", "protected", functools.partial(run, "resilience")),
        ),
        rows=(
            Row("answers", "answers", "{:,.0f}", None),
            Row("full", "  in full", "{:,.0f}", "higher"),
            Row("degraded", "  degraded (fallback)", "{:,.0f}", None),
            Row("failed", "  failed", "{:,.0f}", "lower"),
            Row("full_during_fault", "fault: in full", "{:,.0f}", "higher"),
            Row("reads_full_during_fault", "  reads (no payments)", "{:,.0f}", "higher"),
            Row("reads_full_share_during_fault", "    share of reads", "{:.1%}", "higher"),
            Row("checkouts_full_during_fault", "  checkouts", "{:,.0f}", "higher"),
            Row("checkouts_degraded_during_fault", "fault: degraded", "{:,.0f}", None),
            Row("p50_seconds", "p50 latency", "{:.3f} s", "lower"),
            Row("p99_seconds", "p99 latency", "{:.3f} s", "lower"),
            Row("payments_requests_while_down", "reached hung payments", "{:,.0f}", "lower"),
            Row("orders_peak_queued", "peak queue at orders", "{:,.0f}", "lower"),
            recovery_row("recovery"),
            Row(
                "hop_added_median_ms",
                "hop latency, median",
                "{:.3f} ms",
                "lower",
                missing="no hop",
                versus_baseline=False,
            ),
            Row(
                "hop_added_p99_ms",
                "hop latency, p99",
                "{:.3f} ms",
                "lower",
                missing="no hop",
                versus_baseline=False,
            ),
        ),
        notes=negative_hop_notes,
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
                "both answer every read while payments hangs; how many reads that is "
                "follows how fast each arm's clients got their answers, and the "
                "library's work shares the services' Python process (HAProxy runs in "
                "processes of its own)"
            ),
            "reads_full_during_fault": (
                "both answer every read while payments hangs; how many reads that is "
                "follows how fast each arm's clients got their answers"
            ),
            "reads_full_share_during_fault": (
                "until the breaker opened, checkouts held orders' workers for up to "
                "their attempt timeouts, and a few reads queued past their SLA"
            ),
            "orders_peak_queued": (
                "what queues at orders is what its callers let through; HAProxy's fast "
                "503s free orders' workers sooner than the library's fallback answers"
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
