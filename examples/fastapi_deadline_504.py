"""A 504 or a 503, not a 500: FastAPI handlers that catch nothing, on 127.0.0.1.

A client -> orders -> payments. Orders calls payments through
AsyncResilientTransport and has no try/except: when the client's deadline
runs out while orders waits on payments, or when orders' breaker for payments
is open, the exception escapes the handler. ASGIDeadlineMiddleware, added
with `app.add_middleware`, answers 504 (the deadline) or 503 with Retry-After
(the breaker) instead of a 500 with a traceback, and counts it for Prometheus.
An app that cannot run the middleware gets the same answers from
`resilience.starlette.install_exception_handlers(app)`.
Run: python examples/fastapi_deadline_504.py
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
from fastapi import FastAPI, Response
from prometheus_client import CollectorRegistry, generate_latest

import resilience
import resilience.prometheus
from resilience.middleware import ASGIDeadlineMiddleware


@contextmanager
def serve(app: Any) -> Iterator[str]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, log_level="warning", lifespan="off", timeout_graceful_shutdown=1)
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


def payments_app(release: threading.Event) -> FastAPI:
    app = FastAPI()
    app.add_middleware(ASGIDeadlineMiddleware)

    @app.get("/pay/{order}")
    async def pay(order: str, response: Response) -> dict[str, Any]:
        if order == "slow":  # hangs far beyond any caller's budget
            for _ in range(300):
                if release.is_set():
                    break
                await asyncio.sleep(0.01)
        if order == "broken":
            response.status_code = 503
            return {"paid": False}
        return {"paid": True}

    return app


def orders_app(payments_url: str, breaker: resilience.CircuitBreaker) -> FastAPI:
    app = FastAPI()
    # Inside Starlette's ServerErrorMiddleware: a route's exception reaches it first.
    app.add_middleware(ASGIDeadlineMiddleware, safety_margin=0.05, name="orders")

    @app.get("/orders/{order}")
    async def orders(order: str, response: Response) -> Any:
        transport = resilience.AsyncResilientTransport(retry=False, breaker=breaker)
        async with httpx.AsyncClient(transport=transport) as client:
            reply = await client.get(f"{payments_url}/pay/{order}")  # no try/except
        response.status_code = reply.status_code
        return reply.json()

    return app


def main() -> None:
    registry = CollectorRegistry()
    resilience.prometheus.register(registry)
    release = threading.Event()
    # Opens after two failures in a row (a timeout is one), for 30 s.
    breaker = resilience.CircuitBreaker("payments", consecutive_failures=2, open_duration=30)
    with ExitStack() as stack:
        payments_url = stack.enter_context(serve(payments_app(release)))
        orders_url = stack.enter_context(serve(orders_app(payments_url, breaker)))
        stack.callback(release.set)  # at exit, first: the slow payment returns
        with httpx.Client(transport=resilience.ResilientTransport(retry=False)) as client:
            with resilience.deadline(1.0):
                print(f"fast: {client.get(f'{orders_url}/orders/fast').status_code}")
            started = time.monotonic()
            with resilience.deadline(1.0):
                slow = client.get(f"{orders_url}/orders/slow")
            within = time.monotonic() - started < 1.0 + 0.05
            print(f"slow: {slow.status_code} {slow.text.strip()}")
            print(f"  answered within the deadline: {within}")
            broken = client.get(f"{orders_url}/orders/broken")  # payments answers 503
            print(f"broken: {broken.status_code} from payments; orders' breaker is {breaker.state}")
            shed = client.get(f"{orders_url}/orders/fast")  # refused by the breaker
            print(f"next: {shed.status_code} Retry-After: {shed.headers['retry-after']}")
    for line in generate_latest(registry).decode().splitlines():
        if line.startswith('resilience_middleware_responses_total{name="orders"'):
            print(line)


if __name__ == "__main__":
    main()
