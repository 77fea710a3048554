"""One deadline across two FastAPI services: a client -> orders -> payments, on 127.0.0.1.

Each service runs under ASGIDeadlineMiddleware (`app.add_middleware`) and
calls the next through AsyncResilientTransport. Payments is slow for one order: orders stops waiting
200 ms before the client's budget runs out and answers 504, instead of holding on.
Run: python examples/deadline_chain.py
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse

import resilience
from resilience.middleware import ASGIDeadlineMiddleware


@contextmanager
def serve(app: Any) -> Iterator[str]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, log_level="critical", lifespan="off", timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def payments_app() -> FastAPI:
    app = FastAPI()
    app.add_middleware(ASGIDeadlineMiddleware)

    @app.get("/pay/{order}")
    async def pay(order: str) -> dict[str, Any]:
        budget = resilience.remaining()
        if order == "slow":
            await asyncio.sleep(1.5)
        return {"paid": True, "payments_budget_ms": round((budget or 0) * 1000)}

    return app


def orders_app(payments_url: str) -> FastAPI:
    app = FastAPI()
    # The margin lets orders give up (and say so) 200 ms before its caller does.
    app.add_middleware(ASGIDeadlineMiddleware, safety_margin=0.2)

    @app.get("/orders/{order}")
    async def orders(order: str) -> Any:
        budget = resilience.remaining() or 0
        transport = resilience.AsyncResilientTransport(retry=False)
        async with httpx.AsyncClient(transport=transport) as client:
            try:
                reply = await client.get(f"{payments_url}/pay/{order}")
            except httpx.TimeoutException:
                return JSONResponse({"error": "payments too slow for our budget"}, status_code=504)
        return {**reply.json(), "orders_budget_ms": round(budget * 1000)}

    return app


def main() -> None:
    with ExitStack() as stack:
        payments_url = stack.enter_context(serve(payments_app()))
        orders_url = stack.enter_context(serve(orders_app(payments_url)))
        with httpx.Client(transport=resilience.ResilientTransport(retry=False)) as client:
            for order in ("fast", "slow"):
                started = time.monotonic()
                with resilience.deadline(1.0):
                    response = client.get(f"{orders_url}/orders/{order}")
                body = response.json()
                within = time.monotonic() - started < 1.0 + 0.25
                budgets_shrink = (
                    "payments_budget_ms" not in body
                    or 0 < body["payments_budget_ms"] <= body["orders_budget_ms"] <= 1000
                )
                print(
                    f"{order}: {response.status_code} "
                    f"{'paid' if body.get('paid') else body.get('error')}; "
                    f"answered within the deadline: {within}; budgets shrink: {budgets_shrink}"
                )


if __name__ == "__main__":
    main()
