"""The latency one hop adds when all is well: an HAProxy sidecar next to the library.

The demo's cascade compares a sidecar proxy (HAProxy, configured from the
library arm's settings) with `resilience` in-process. Here the hop alone:
GET requests to a uvicorn server on 127.0.0.1, sent straight, through
HAProxy configured as orders' sidecar (`resilience.demo._sidecar`), and
through `AsyncResilientTransport` built from the same settings
(`resilience.demo._hop`). Rounds interleave the three (direct, sidecar,
library), so the same moment's noise hits all; what a hop adds is the
per-round difference to the direct call, as median and p99, and the ratio of
the two medians. Needs haproxy (apt-get install haproxy).

    python benchmarks/bench_sidecar.py [--json PATH] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import time

import httpx
from _harness import write_json
from bench_transport import asgi_ok

from resilience.demo import _sidecar
from resilience.demo._harness import percentile, serve
from resilience.demo._hop import resilient_transport
from resilience.demo.scenarios._cascade import ORDERS_TO_PAYMENTS


async def rounds(direct_url: str, sidecar_url: str, count: int) -> dict[str, list[float]]:
    plain = httpx.AsyncClient()
    library = httpx.AsyncClient(transport=resilient_transport(ORDERS_TO_PAYMENTS))
    times: dict[str, list[float]] = {"direct": [], "haproxy sidecar": [], "resilience": []}
    calls = {
        "direct": lambda: plain.get(f"{direct_url}/ping"),
        "haproxy sidecar": lambda: plain.get(f"{sidecar_url}/ping"),
        "resilience": lambda: library.get(f"{direct_url}/ping"),
    }
    async with plain, library:
        for warm_up in (True, False):
            for _ in range(100 if warm_up else count):
                for name, call in calls.items():
                    started = time.perf_counter()
                    (await call()).raise_for_status()
                    if not warm_up:
                        times[name].append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    binary = _sidecar.find_haproxy()
    if binary is None:
        raise SystemExit(f"haproxy is not installed: {_sidecar.INSTALL_HINT}")
    count = 300 if args.quick else 3000
    with serve(asgi_ok) as url, _sidecar.sidecar(ORDERS_TO_PAYMENTS, url) as (sidecar_url, _):
        times = asyncio.run(rounds(url, sidecar_url, count))
    direct = times["direct"]
    latency = {
        name: {"median_us": 1e6 * statistics.median(values), "p99_us": 1e6 * percentile(values, 99)}
        for name, values in times.items()
    }
    added = {}
    for name in ("haproxy sidecar", "resilience"):
        differences = [hop - straight for hop, straight in zip(times[name], direct, strict=True)]
        added[name] = {
            "median_us": 1e6 * statistics.median(differences),
            "p99_us": 1e6 * percentile(differences, 99),
        }
    ratio = added["resilience"]["median_us"] / added["haproxy sidecar"]["median_us"]
    print(f"{count} rounds of GET /ping on 127.0.0.1 (direct, via HAProxy, via resilience)")
    print(f"{'':18}{'median':>12}{'p99':>12}{'added median':>15}{'added p99':>12}")
    for name, figures in latency.items():
        extra = added.get(name, {"median_us": 0.0, "p99_us": 0.0})
        print(
            f"{name:18}{figures['median_us']:>10.0f}us{figures['p99_us']:>10.0f}us"
            f"{extra['median_us']:>13.0f}us{extra['p99_us']:>10.0f}us"
        )
    print(f"added median, resilience / haproxy sidecar: {ratio:.2f}")
    if args.json:
        version = subprocess.run(
            [binary, "-v"], capture_output=True, text=True, check=False
        ).stdout.splitlines()[0]
        write_json(
            args.json,
            "sidecar",
            {"latency": latency, "added": added, "added_median_ratio_resilience_to_haproxy": ratio},
            rounds=count,
            haproxy=version,
        )


if __name__ == "__main__":
    main()
