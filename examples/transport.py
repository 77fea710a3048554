"""A resilient httpx client against a flaky local service, sync and async.

Starts a small service on 127.0.0.1 (a free port) that fails the first call
of every order with a 503, then calls it through ResilientTransport.
Run: python examples/transport.py
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections import Counter

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import resilience

seen: Counter[str] = Counter()


async def order(request: Request) -> JSONResponse:
    order_id = request.path_params["order_id"]
    seen[order_id] += 1
    if seen[order_id] == 1:
        return JSONResponse({"error": "busy"}, status_code=503, headers={"Retry-After": "0"})
    deadline_ms = int(request.headers.get(resilience.DEADLINE_HEADER, "0"))
    return JSONResponse({"order": order_id, "deadline_ok": 0 < deadline_ms <= 5000})


def serve() -> tuple[uvicorn.Server, threading.Thread, str]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    app = Starlette(routes=[Route("/orders/{order_id}", order, methods=["GET", "POST"])])
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    return server, thread, f"http://127.0.0.1:{sock.getsockname()[1]}"


def show(response: httpx.Response) -> str:
    info = response.extensions["resilience"]
    return f"{response.status_code} {response.json()} after {info['attempts']} attempts"


async def async_main(url: str) -> None:
    transport = resilience.AsyncResilientTransport(total_timeout=5.0)
    async with httpx.AsyncClient(transport=transport) as client:
        print("async:", show(await client.get(f"{url}/orders/b-2")))


def main() -> None:
    server, thread, url = serve()
    try:
        with httpx.Client(transport=resilience.ResilientTransport(total_timeout=5.0)) as client:
            print("sync:", show(client.get(f"{url}/orders/a-1")))
            posted = client.post(f"{url}/orders/c-3", json={"qty": 1})
            print(f"POST is not retried: {posted.status_code}")
        asyncio.run(async_main(url))
    finally:
        server.should_exit = True
        thread.join(timeout=10)


if __name__ == "__main__":
    main()
