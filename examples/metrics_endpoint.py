"""Expose the policies' metrics for Prometheus, three ways.

- a standalone server on 127.0.0.1 (`start_http_server`),
- an ASGI app to mount at /metrics (Starlette, FastAPI),
- a WSGI app to mount at /metrics (Flask, Django).

Run: python examples/metrics_endpoint.py   (prints a few lines of each scrape)
"""

from __future__ import annotations

import asyncio
import socket
import urllib.request

import httpx
from starlette.applications import Starlette
from starlette.routing import Mount

import resilience
import resilience.prometheus


def main() -> None:
    breaker = resilience.CircuitBreaker("payments", consecutive_failures=2)
    for _ in range(2):
        breaker.acquire().record_failure()

    with socket.socket() as probe:  # a free port on loopback
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server, thread = resilience.prometheus.start_http_server(port)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
            text = reply.read().decode()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
    for line in text.splitlines():
        if line.startswith("resilience_breaker_state") and 'name="payments"' in line:
            print(line)
        if line.startswith('resilience_breaker_calls_total{name="payments",outcome="failure"}'):
            print(line)

    app = Starlette(routes=[Mount("/metrics", resilience.prometheus.make_asgi_app())])
    print("asgi:", open_state(asyncio.run(fetch_asgi(app))))
    wsgi = httpx.Client(transport=httpx.WSGITransport(app=resilience.prometheus.make_wsgi_app()))
    print("wsgi:", open_state(wsgi.get("http://service/metrics").text))


async def fetch_asgi(app: Starlette) -> str:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://service") as client:
        return (await client.get("/metrics/")).text


def open_state(text: str) -> str:
    wanted = 'resilience_breaker_state{name="payments",state="open"}'
    return next(line for line in text.splitlines() if line.startswith(wanted))


if __name__ == "__main__":
    main()
