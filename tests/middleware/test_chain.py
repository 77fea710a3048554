"""A real three-service chain on 127.0.0.1: gateway -> orders -> payments.

Each service runs under uvicorn with ASGIDeadlineMiddleware and calls the next
one through AsyncResilientTransport, so one deadline set by the client bounds
every hop.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import resilience
from resilience.middleware import ASGIDeadlineMiddleware
from tests.servers import serve_in_thread

MARGIN = 0.05


def payments_app(seen: dict[str, float | None]) -> ASGIDeadlineMiddleware:
    async def pay(request: Request) -> JSONResponse:
        seen["payments"] = resilience.remaining()
        if request.query_params.get("hang") == "1":
            await anyio.sleep(1.5)  # hangs beyond any caller's 1 s budget
        return JSONResponse({"paid": True})

    return ASGIDeadlineMiddleware(Starlette(routes=[Route("/pay", pay)]), safety_margin=MARGIN)


def relay_app(
    name: str, path: str, downstream: str, seen: dict[str, Any]
) -> ASGIDeadlineMiddleware:
    """A service that calls `downstream` and reports what happened."""

    async def handle(request: Request) -> JSONResponse:
        seen[name] = resilience.remaining()
        started = time.monotonic()
        transport = resilience.AsyncResilientTransport(retry=False, breaker=False)
        async with httpx.AsyncClient(transport=transport) as client:
            try:
                reply = await client.get(downstream, params=request.query_params)
            except httpx.TimeoutException:
                seen[f"{name}_waited"] = time.monotonic() - started
                return JSONResponse({"error": f"{name}: downstream timed out"}, status_code=504)
        seen[f"{name}_waited"] = time.monotonic() - started
        return JSONResponse(reply.json(), status_code=reply.status_code)

    return ASGIDeadlineMiddleware(Starlette(routes=[Route(path, handle)]), safety_margin=MARGIN)


@pytest.fixture
def chain() -> Iterator[tuple[str, dict[str, Any]]]:
    """Start payments, orders and gateway; yield the gateway URL and what each saw."""
    seen: dict[str, Any] = {}
    with ExitStack() as stack:
        payments = stack.enter_context(serve_in_thread(payments_app(seen)))
        orders = stack.enter_context(
            serve_in_thread(relay_app("orders", "/order", f"{payments}/pay", seen))
        )
        gateway = stack.enter_context(
            serve_in_thread(relay_app("gateway", "/checkout", f"{orders}/order", seen))
        )
        yield gateway, seen


def call_gateway(url: str, seconds: float, **params: str) -> tuple[httpx.Response, float]:
    transport = resilience.ResilientTransport(retry=False, breaker=False)
    started = time.monotonic()
    with httpx.Client(transport=transport) as client, resilience.deadline(seconds):
        response = client.get(f"{url}/checkout", params=params)
    return response, time.monotonic() - started


def test_every_hop_gets_less_of_the_same_budget(chain: tuple[str, dict[str, Any]]) -> None:
    """deadline(1.0) at the client: payments <= orders <= gateway <= 1.0."""
    url, seen = chain
    response, _ = call_gateway(url, 1.0)
    assert response.status_code == 200
    assert response.json() == {"paid": True}
    assert seen["payments"] is not None
    assert seen["payments"] <= seen["orders"] <= seen["gateway"] <= 1.0 - MARGIN
    # Each hop keeps back its margin, plus the time the hop above took.
    assert seen["gateway"] - seen["orders"] >= MARGIN
    assert seen["orders"] - seen["payments"] >= MARGIN


def test_a_hanging_payments_service_does_not_hold_the_chain(
    chain: tuple[str, dict[str, Any]],
) -> None:
    """Payments hangs for 1.5 s; the client's 1 s deadline holds at every hop."""
    url, seen = chain
    response, elapsed = call_gateway(url, 1.0, hang="1")
    assert response.status_code == 504
    assert response.json() == {"error": "orders: downstream timed out"}
    assert elapsed < 1.0 + 0.3  # the deadline plus scheduling noise, not the 1.5 s hang
    # Orders stopped waiting on payments at its own (smaller) deadline.
    assert seen["orders_waited"] <= seen["orders"] + 0.2
    assert seen["orders_waited"] < 1.0
