"""httpx round trips through ResilientTransport, next to bare httpx and httpx-retries.

Cases (issue "The httpx transport"): a GET through httpx.Client on an
in-memory httpx.MockTransport (the transport's own overhead, amplified), and a
GET to a uvicorn server on 127.0.0.1 (what a real call sees). Ratios are to
bare httpx in the same run.

    python benchmarks/bench_transport.py [--json PATH] [--quick]
"""

from __future__ import annotations

import argparse
import platform
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


def transports(inner: Callable[[], httpx.BaseTransport]) -> dict[str, httpx.BaseTransport | None]:
    rows: dict[str, httpx.BaseTransport | None] = {
        "bare httpx": inner(),
        "resilience (breaker + retry + deadline)": resilience.ResilientTransport(inner()),
    }
    try:
        import httpx_retries

        rows["httpx-retries"] = httpx_retries.RetryTransport(transport=inner())
    except ImportError:
        rows["httpx-retries"] = None
    return rows


def run(
    url: str, inner: Callable[[], httpx.BaseTransport], number: int, repeat: int
) -> dict[str, float | None]:
    results: dict[str, float | None] = {}
    for name, transport in transports(inner).items():
        if transport is None:
            results[name] = None
            continue
        with httpx.Client(transport=transport) as client:
            client.get(url)  # warm up (connection, registry entry)
            results[name] = measure(
                lambda client=client: client.get(url), number=number, repeat=repeat
            )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write results to this file")
    parser.add_argument("--quick", action="store_true", help="fewer iterations (smoke run)")
    args = parser.parse_args()
    number, repeat = (300, 3) if args.quick else (3000, 5)

    mock = run("http://bench.test/", lambda: httpx.MockTransport(ok), number, repeat)
    with serve(asgi_ok) as base:
        loopback = run(f"{base}/", httpx.HTTPTransport, max(number // 3, 100), repeat)

    print(
        f"Python {platform.python_version()} on {platform.machine()}, {number} requests x {repeat}"
    )
    for title, rows in (("GET via MockTransport", mock), ("GET via loopback uvicorn", loopback)):
        available = {name: ns for name, ns in rows.items() if ns is not None}
        print_table(title, available, "bare httpx")
    if args.json:
        write_json(
            args.json,
            "transport",
            {"mock_ns": mock, "loopback_ns": loopback},
            number=number,
            repeat=repeat,
        )


if __name__ == "__main__":
    main()
