"""httpx round trips through ResilientTransport, next to bare httpx and httpx-retries.

Cases (issue "The httpx transport"): a GET through httpx.Client on an
in-memory httpx.MockTransport (the transport's own overhead, amplified), and a
GET to a uvicorn server on 127.0.0.1 (what a real call sees). Ratios are to
bare httpx in the same run: the best time of each, and the median of the
ratios measured round by round (see `run`).

    python benchmarks/bench_transport.py [--json PATH] [--quick]
"""

from __future__ import annotations

import argparse
import contextvars
import itertools
import platform
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
from _harness import measure, print_table, write_json

import resilience
from resilience.demo._harness import serve  # the one loopback uvicorn helper


def ok(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, content=b"ok")


async def asgi_ok(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
    )
    await send({"type": "http.response.body", "body": b"ok"})


class MinimalTransport(httpx.BaseTransport):
    """The least a wrapping transport does: forward the request (the floor for any wrapper)."""

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self.inner = inner

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return self.inner.handle_request(request)


class FloorTransport(httpx.BaseTransport):
    """The least work a breaker, a budgeted retry and a deadline need, inlined by hand.

    Per request: one origin lookup, one budget deposit, a deadline set in a
    context variable, the timeouts checked against it, the time left sent as
    a header on a copy of the request, one locked bucket increment for the
    breaker's time window, a status check. No per-request options, no
    permits, no events, no report, no retry loop (nothing fails here). It is
    not a usable transport: it measures how low a pure-Python pipeline with
    these three features can go on this benchmark with httpx's public API.
    """

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self.inner = inner
        self.origins: dict[tuple[str, bytes, int | None], list[int]] = {}
        self.lock = threading.Lock()
        self.deposits = itertools.count()
        self.deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar(
            "floor", default=None
        )

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        origin = (url.scheme, url.raw_host, url.port)
        buckets = self.origins.get(origin)
        if buckets is None:
            buckets = self.origins[origin] = [0] * 30
        next(self.deposits)
        started = time.monotonic()
        outer = self.deadline.get()
        expires = started + 30.0 if outer is None else min(outer, started + 30.0)
        token = self.deadline.set(expires)
        try:
            left = expires - time.monotonic()
            timeouts = request.extensions["timeout"].values()
            if None in timeouts or max(timeouts) > left:
                raise NotImplementedError("clamping is not exercised by this benchmark")
            sent = httpx.Request(
                request.method,
                url,
                headers=request.headers,
                stream=request.stream,
                extensions=request.extensions,
            )
            sent.headers["x-resilience-deadline-ms"] = str(int(left * 1000))
            response = self.inner.handle_request(sent)
            now = time.monotonic()
            with self.lock:
                buckets[int(now) % 30] += 1
            if response.status_code >= 500:
                raise NotImplementedError("failures are not exercised by this benchmark")
        finally:
            self.deadline.reset(token)
        return response


DEFAULT = "resilience: breaker + retry + deadline"
PARTS: dict[str, dict[str, Any]] = {
    "resilience: retry only": {"breaker": False, "total_timeout": None, "attempt_timeout": None},
    "resilience: breaker only": {"retry": False, "total_timeout": None, "attempt_timeout": None},
    "resilience: deadline only": {"retry": False, "breaker": False},
}


def transports(
    inner: Callable[[], httpx.BaseTransport], *, parts: bool
) -> dict[str, httpx.BaseTransport | None]:
    rows: dict[str, httpx.BaseTransport | None] = {
        "bare httpx": inner(),
        "minimal wrapping transport": MinimalTransport(inner()),
        DEFAULT: resilience.ResilientTransport(inner()),
    }
    if parts:
        for name, options in PARTS.items():
            rows[name] = resilience.ResilientTransport(inner(), **options)
        rows["floor: the same three features inlined"] = FloorTransport(inner())
    try:
        import httpx_retries

        rows["httpx-retries"] = httpx_retries.RetryTransport(transport=inner())
    except ImportError:
        rows["httpx-retries"] = None
    return rows


def run(
    url: str,
    inner: Callable[[], httpx.BaseTransport],
    number: int,
    repeat: int,
    *,
    parts: bool = False,
) -> tuple[dict[str, float | None], dict[str, float | None]]:
    """Best ns per GET for each transport, and its median per-round ratio to bare httpx.

    Each round times every transport once, back to back, in an order that
    rotates from round to round. The ratio of a round compares runs made
    moments apart, so a machine slowed down by other work for a while moves
    both sides of it: its median is the figure to trust on a shared machine,
    where the best times of different transports may come from different
    moments.
    """
    clients = {
        name: None if transport is None else httpx.Client(transport=transport)
        for name, transport in transports(inner, parts=parts).items()
    }
    best: dict[str, float | None] = dict.fromkeys(clients)
    rounds: dict[str, list[float]] = {name: [] for name, client in clients.items() if client}
    names = list(rounds)
    try:
        for client in clients.values():
            if client is not None:
                for _ in range(200):  # warm up: connection, registry entry, full window
                    client.get(url)
        for number_of_round in range(repeat):
            shift = number_of_round % len(names)
            for name in names[shift:] + names[:shift]:
                client = clients[name]
                ns = measure(lambda client=client: client.get(url), number=number, repeat=1)
                rounds[name].append(ns)
                previous = best[name]
                best[name] = ns if previous is None else min(previous, ns)
    finally:
        for client in clients.values():
            if client is not None:
                client.close()
    bare = rounds["bare httpx"]
    ratios: dict[str, float | None] = {
        name: statistics.median(ns / base for ns, base in zip(rounds[name], bare, strict=True))
        if name in rounds
        else None
        for name in clients
    }
    return best, ratios


def print_ratios(title: str, ratios: dict[str, float | None]) -> None:
    print(f"\n{title}: median per-round ratio to bare httpx")
    for name, ratio in ratios.items():
        if ratio is not None:
            print(f"  {name:<44} {ratio:>9.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write results to this file")
    parser.add_argument("--quick", action="store_true", help="fewer iterations (smoke run)")
    args = parser.parse_args()
    number, repeat = (300, 3) if args.quick else (200, 75)

    mock, mock_ratios = run(
        "http://bench.test/", lambda: httpx.MockTransport(ok), number, repeat, parts=True
    )
    with serve(asgi_ok) as base:
        loopback, loopback_ratios = run(
            f"{base}/", httpx.HTTPTransport, max(number // 5, 40), repeat
        )

    print(
        f"Python {platform.python_version()} on {platform.machine()}, {number} requests x {repeat}"
    )
    for title, rows in (("GET via MockTransport", mock), ("GET via loopback uvicorn", loopback)):
        available = {name: ns for name, ns in rows.items() if ns is not None}
        print_table(title, available, "bare httpx")
    print_ratios("GET via MockTransport", mock_ratios)
    print_ratios("GET via loopback uvicorn", loopback_ratios)
    if args.json:
        write_json(
            args.json,
            "transport",
            {
                "mock_ns": mock,
                "loopback_ns": loopback,
                "mock_ratio_median": mock_ratios,
                "loopback_ratio_median": loopback_ratios,
            },
            number=number,
            repeat=repeat,
        )


if __name__ == "__main__":
    main()
