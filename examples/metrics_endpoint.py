"""Expose the policies' metrics for Prometheus: /metrics on 127.0.0.1.

Run: python examples/metrics_endpoint.py   (prints a few lines of a scrape)
In a service, mount `resilience.prometheus.make_asgi_app()` at /metrics, or
call `resilience.prometheus.start_http_server(9464)` once at start-up.
"""

from __future__ import annotations

import socket
import urllib.request

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


if __name__ == "__main__":
    main()
