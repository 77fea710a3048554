"""Hedged requests against a tail: p50/p99/p99.9 and the extra load, next to httpx-hedged.

Cases (issue 18), one run, one loopback uvicorn server in a subprocess:
- tail: 2% of responses take 200 ms, the rest 5 ms (independent draws per
  request, seeded). 3,000 GETs, 4 at a time, per arm, the arms taking turns
  300 calls at a time (a loaded machine's noise falls on all): no hedging (bare
  httpx), `AsyncResilientTransport(retry=False)` without a hedge (its own
  cost), `AsyncResilientTransport(hedge=Hedge())` (defaults: p95 delay,
  5% budget; `retry=False` so that the hedges spend the hedge's own budget),
  and httpx-hedged's `HedgedTransport()` (defaults: p90 delay, 10% budget).
  Reported: p50, p99, p99.9 of the caller's latency, and the extra requests
  the server saw (hedges, as % of the calls). Targets: p99 >= 5x better
  than no hedging; extra load <= the budget (5%, plus its reserve of 10
  hedges per 10 s) + 0.5 points; no worse than httpx-hedged on p99 and on
  extra load.
- overload: every response takes 200 ms; 400 GETs, 20 at a time: the hedges
  sent stay within the budget (0.05 x calls + the reserve).

    python benchmarks/bench_hedge.py [--json PATH] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from _harness import write_json

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import resilience

SLOW, FAST = 0.2, 0.005
#: Calls in flight at once: few, so that the client is not CPU-bound (latency, not throughput).
CONCURRENCY = 4


class TailApp:
    """`/{arm}?slow=r`: a fraction r of responses takes 200 ms, the rest 5 ms; `/count/{arm}`."""

    def __init__(self) -> None:
        self.rng = random.Random(18)
        self.counts: dict[str, int] = {}

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        if path.startswith("/count/"):
            body = json.dumps(self.counts.get(path[len("/count/") :], 0)).encode()
        else:
            arm = path.strip("/")
            self.counts[arm] = self.counts.get(arm, 0) + 1
            query = dict(p.split("=", 1) for p in scope["query_string"].decode().split("&") if p)
            slow = self.rng.random() < float(query.get("slow", "0.02"))
            await asyncio.sleep(SLOW if slow else FAST)
            body = b"ok"
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})


def serve_forever() -> None:
    """The server process: print the URL, serve until stdin closes."""
    from resilience.demo._harness import serve

    with serve(TailApp()) as url:
        print(url, flush=True)
        sys.stdin.read()  # returns when the benchmark closes our stdin


def quantile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(fraction * len(ordered)), len(ordered) - 1)]


async def run_arms(
    url: str,
    arms: dict[str, httpx.AsyncBaseTransport],
    prefix: str,
    calls: int,
    concurrency: int,
    slow: float,
    rounds: int,
) -> dict[str, dict[str, Any]]:
    """Every arm in turn, `calls / rounds` calls at a time, so that they share the machine's mood.

    A loaded machine's noise (other processes) then falls on every arm alike.
    """
    names = list(arms)
    clients = {name: httpx.AsyncClient(transport=arms[name], timeout=30) for name in names}
    latencies: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(rounds):
        for index, name in enumerate(names):
            http, key = clients[name], f"{prefix}{index}"
            remaining = iter(range(calls // rounds))

            async def worker(
                http: httpx.AsyncClient = http,
                key: str = key,
                name: str = name,
                remaining: Any = remaining,
            ) -> None:
                for _ in remaining:
                    started = time.perf_counter()
                    response = await http.get(f"{url}/{key}?slow={slow}")
                    latencies[name].append(time.perf_counter() - started)
                    assert response.status_code == 200

            await asyncio.gather(*(worker() for _ in range(concurrency)))
    await asyncio.sleep(0.3)  # let the server count requests still being cancelled
    results = {}
    # The counts are read by a plain client: through an arm, the read would be
    # one more call in that arm's metrics (and could itself be hedged).
    async with httpx.AsyncClient() as plain:
        sent_by_arm = {
            name: int((await plain.get(f"{url}/count/{prefix}{index}")).text)
            for index, name in enumerate(names)
        }
    for name in names:
        http = clients[name]
        sent = sent_by_arm[name]
        await http.aclose()
        done = len(latencies[name])
        results[name] = {
            "calls": done,
            "p50_ms": round(quantile(latencies[name], 0.5) * 1000, 2),
            "p99_ms": round(quantile(latencies[name], 0.99) * 1000, 2),
            "p999_ms": round(quantile(latencies[name], 0.999) * 1000, 2),
            "server_requests": sent,
            "extra_pct": round((sent - done) / done * 100, 2),
        }
    return results


HEDGES: dict[str, resilience.Hedge] = {}


def ours(name: str, percentile: float = 0.95) -> resilience.AsyncResilientTransport:
    HEDGES[name] = resilience.Hedge(percentile=percentile)
    return resilience.AsyncResilientTransport(hedge=HEDGES[name], retry=False)


def transports() -> dict[str, Any]:
    from httpx_hedged import HedgedTransport

    return {
        "no hedging (httpx)": lambda: httpx.AsyncHTTPTransport(),
        "resilience, no hedge": lambda: resilience.AsyncResilientTransport(retry=False),
        "resilience Hedge()": lambda: ours("tail"),
        # httpx-hedged's own rule (p90 delay), to compare like with like:
        "resilience Hedge(percentile=0.9)": lambda: ours("tail-p90", 0.9),
        "httpx-hedged HedgedTransport()": lambda: HedgedTransport(),
    }


async def main(url: str, quick: bool) -> dict[str, Any]:
    calls = 1000 if quick else 3000
    arms = {name: make() for name, make in transports().items()}
    tail = await run_arms(url, arms, "tail", calls, CONCURRENCY, 0.02, rounds=10)
    overload_calls = 200 if quick else 400
    from httpx_hedged import HedgedTransport

    overloaded = {
        "resilience Hedge()": ours("overload"),
        "httpx-hedged HedgedTransport()": HedgedTransport(),
    }
    overload = await run_arms(url, overloaded, "overload", overload_calls, 20, 1.0, rounds=2)
    tail["resilience Hedge()"]["hedge_metrics"] = HEDGES["tail"].metrics()
    tail["resilience Hedge(percentile=0.9)"]["hedge_metrics"] = HEDGES["tail-p90"].metrics()
    overload["resilience Hedge()"]["hedge_metrics"] = HEDGES["overload"].metrics()
    return {"tail": tail, "overload": overload}


def report(results: dict[str, Any]) -> dict[str, Any]:
    tail, overload = results["tail"], results["overload"]
    plain = tail["no hedging (httpx)"]
    ours = tail["resilience Hedge()"]
    peer = tail["httpx-hedged HedgedTransport()"]
    at_p90 = tail["resilience Hedge(percentile=0.9)"]
    print("\ntail: 2% of responses 200 ms, the rest 5 ms")
    print(f"  {'arm':<34} {'p50 ms':>8} {'p99 ms':>8} {'p99.9 ms':>9} {'extra %':>8}")
    for name, row in tail.items():
        print(
            f"  {name:<34} {row['p50_ms']:>8} {row['p99_ms']:>8} {row['p999_ms']:>9} "
            f"{row['extra_pct']:>8}"
        )
    print(f"  resilience Hedge() metrics: {ours['hedge_metrics']}")
    reserve = 10 / ours["calls"] * 100
    checks = {
        "p99 no hedging / resilience (target >= 5)": round(plain["p99_ms"] / ours["p99_ms"], 1),
        "extra % (target <= 5 + reserve + 0.5)": ours["extra_pct"],
        "extra % allowed": round(5 + reserve + 0.5, 2),
        "p99 resilience / httpx-hedged (target <= 1)": round(ours["p99_ms"] / peer["p99_ms"], 2),
        "extra % resilience - httpx-hedged (target <= 0)": round(
            ours["extra_pct"] - peer["extra_pct"], 2
        ),
        "p99 resilience at p90 / httpx-hedged (its p90 rule)": round(
            at_p90["p99_ms"] / peer["p99_ms"], 2
        ),
        "extra % resilience at p90 - httpx-hedged": round(
            at_p90["extra_pct"] - peer["extra_pct"], 2
        ),
    }
    print("\noverload: every response 200 ms")
    for name, row in overload.items():
        allowed = 0.05 * row["calls"] + 10
        print(
            f"  {name:<34} hedges {row['server_requests'] - row['calls']:>4} "
            f"({row['extra_pct']}%); resilience's budget allows {allowed:.0f}"
        )
    ours_overload = overload["resilience Hedge()"]
    checks["overload hedges (target <= 0.05 x calls + 10)"] = (
        ours_overload["server_requests"] - ours_overload["calls"]
    )
    checks["overload hedges allowed"] = 0.05 * ours_overload["calls"] + 10
    print()
    for name, value in checks.items():
        print(f"  {name:<52} {value}")
    return checks


def start_server() -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [sys.executable, __file__, "--serve"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    url = process.stdout.readline().strip()
    if not url.startswith("http://127.0.0.1:"):
        process.kill()
        raise RuntimeError(f"the tail server did not start: {url!r}")
    return process, url


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--json")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve_forever()
        sys.exit(0)
    server, url = start_server()
    try:
        results = asyncio.run(main(url, args.quick))
    finally:
        assert server.stdin is not None
        server.stdin.close()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
    checks = report(results)
    if args.json:
        write_json(args.json, "hedge", results, checks=checks, quick=args.quick)
