"""gRPC unary calls through resilience.grpc's interceptors, next to a bare stub call.

Cases (issue "gRPC: the same protection for the other request/response
protocol"): a unary call on 127.0.0.1 to a grpcio server running in another
process (so it does not share this process's GIL), made by

- a bare channel (no interceptor): the baseline;
- a channel with a do-nothing interceptor: grpcio's own interceptor cost,
  the floor for any interceptor;
- a channel with grpcio's built-in retry policy (service config, A6);
- a channel with `ResilientClientInterceptor` (default breakers, retry with
  a budget, deadline) on `channel_options()`.

Sync (`grpc`) and `grpc.aio`. Every call passes `timeout=5`, as calls in
production should (and the interceptor then clamps it: its costlier path).
Each round times every case once, back to back, in an order that rotates;
the figure is the median per-round ratio to the bare call (robust on a
shared machine) with its interquartile range (the noise: a case that does
no more work than the bare call, grpcio's retry policy, lands anywhere in
it), next to the best ns per call.

    python benchmarks/bench_grpc.py [--json PATH] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from concurrent import futures
from typing import Any

import grpc
import grpc.aio
from _harness import measure, print_table, write_json

import resilience.grpc

METHOD = "/bench.Echo/Unary"
SERVICE_CONFIG = json.dumps(
    {
        "methodConfig": [
            {
                "name": [{"service": "bench.Echo"}],
                "retryPolicy": {
                    "maxAttempts": 4,
                    "initialBackoff": "0.2s",
                    "maxBackoff": "5s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ],
        "retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1},
    }
)


def serve() -> None:
    """The server process: echo, print the port, run until stdin closes."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "bench.Echo", {"Unary": grpc.unary_unary_rpc_method_handler(lambda r, c: r)}
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    sys.stdin.read()
    server.stop(None)


class NoopInterceptor(grpc.UnaryUnaryClientInterceptor):
    """The least an interceptor does: call on (what grpcio charges for any interceptor)."""

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(details, request)


class AioNoopInterceptor(grpc.aio.UnaryUnaryClientInterceptor):
    """The same for grpc.aio."""

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(details, request)


def sync_channels(target: str) -> dict[str, grpc.Channel]:
    return {
        "bare stub call": grpc.insecure_channel(target),
        "no-op interceptor (grpcio floor)": grpc.intercept_channel(
            grpc.insecure_channel(target), NoopInterceptor()
        ),
        "grpcio retry policy (service config)": grpc.insecure_channel(
            target, options=[("grpc.service_config", SERVICE_CONFIG)]
        ),
        "resilience.grpc interceptor": grpc.intercept_channel(
            grpc.insecure_channel(target, options=resilience.grpc.channel_options()),
            resilience.grpc.ResilientClientInterceptor(target=target),
        ),
    }


def aio_channels(target: str) -> dict[str, grpc.aio.Channel]:
    return {
        "bare stub call": grpc.aio.insecure_channel(target),
        "no-op interceptor (grpcio floor)": grpc.aio.insecure_channel(
            target, interceptors=[AioNoopInterceptor()]
        ),
        "grpcio retry policy (service config)": grpc.aio.insecure_channel(
            target, options=[("grpc.service_config", SERVICE_CONFIG)]
        ),
        "resilience.grpc interceptor": grpc.aio.insecure_channel(
            target,
            options=resilience.grpc.channel_options(),
            interceptors=resilience.grpc.AsyncResilientClientInterceptor(target=target),
        ),
    }


TIMEOUT = 5.0

Figures = tuple[dict[str, float], dict[str, float], dict[str, list[float]]]


def summarize(rounds: dict[str, list[float]]) -> Figures:
    """Best ns per call, median per-round ratio to the bare call and its quartiles."""
    bare = rounds["bare stub call"]
    best = {name: min(values) for name, values in rounds.items()}
    per_round = {
        name: [ns / base for ns, base in zip(values, bare, strict=True)]
        for name, values in rounds.items()
    }
    ratios = {name: statistics.median(values) for name, values in per_round.items()}
    spread = {}
    for name, values in per_round.items():
        quartiles = statistics.quantiles(values, n=4)
        spread[name] = [quartiles[0], quartiles[2]]
    return best, ratios, spread


def rounds_of(calls: dict[str, Callable[[], float]], repeat: int) -> Figures:
    """Time each case once per round, in a rotating order."""
    names = list(calls)
    rounds: dict[str, list[float]] = {name: [] for name in names}
    for number in range(repeat):
        shift = number % len(names)
        for name in names[shift:] + names[:shift]:
            rounds[name].append(calls[name]())
    return summarize(rounds)


def run_sync(target: str, number: int, repeat: int) -> Figures:
    channels = sync_channels(target)
    stubs = {name: channel.unary_unary(METHOD) for name, channel in channels.items()}
    try:
        for stub in stubs.values():
            for _ in range(300):  # warm up: connection, registry entry
                stub(b"x", timeout=5)
        calls = {
            name: (
                lambda stub=stub: measure(
                    lambda: stub(b"x", timeout=TIMEOUT), number=number, repeat=1
                )
            )
            for name, stub in stubs.items()
        }
        return rounds_of(calls, repeat)
    finally:
        for channel in channels.values():
            channel.close()


def run_aio(target: str, number: int, repeat: int) -> Figures:
    async def main() -> Figures:
        channels = aio_channels(target)
        stubs = {name: channel.unary_unary(METHOD) for name, channel in channels.items()}
        try:
            for stub in stubs.values():
                for _ in range(300):
                    await stub(b"x", timeout=5)
            names = list(stubs)
            rounds: dict[str, list[float]] = {name: [] for name in names}
            for round_number in range(repeat):
                shift = round_number % len(names)
                for name in names[shift:] + names[:shift]:
                    rounds[name].append(await timed(stubs[name], number))
            return summarize(rounds)
        finally:
            for channel in channels.values():
                await channel.close()

    return asyncio.run(main())


async def timed(stub: Callable[..., Awaitable[Any]], number: int) -> float:
    start = time.perf_counter()
    for _ in range(number):
        await stub(b"x", timeout=TIMEOUT)
    return (time.perf_counter() - start) / number * 1e9


class FinishedOutcome:
    """What a blocking sync call hands an interceptor: a finished, successful outcome."""

    def exception(self) -> None:
        return None


class FinishedCall:
    """What a grpc.aio continuation returns, already answered."""

    def __await__(self) -> Any:
        return b"x"
        yield  # a generator: awaitable without an event-loop turn


def without_network(number: int, repeat: int) -> dict[str, float]:
    """Nanoseconds per call of the interceptors alone: continuations that answer at once.

    The cost that a loaded machine's network noise hides: the interceptor's
    own work (deadline, retry bookkeeping, budget deposit, breaker permit).
    """
    outcome = FinishedOutcome()
    details = grpc.aio.ClientCallDetails(METHOD, TIMEOUT, None, None, None)
    sync_interceptor = resilience.grpc.ResilientClientInterceptor(target="bench")
    aio_interceptor = resilience.grpc.AsyncResilientClientInterceptor(target="bench")[0]

    def continuation(call_details: Any, request: Any) -> FinishedOutcome:
        return outcome

    async def aio_continuation(call_details: Any, request: Any) -> FinishedCall:
        return FinishedCall()

    async def aio_bare() -> Any:
        return await (await aio_continuation(details, b"x"))

    rows = {
        "sync: the continuation alone": measure(
            lambda: continuation(details, b"x"), number=number, repeat=repeat
        ),
        "sync: through ResilientClientInterceptor": measure(
            lambda: sync_interceptor.intercept_unary_unary(continuation, details, b"x"),
            number=number,
            repeat=repeat,
        ),
    }

    async def timed_async(fn: Callable[[], Awaitable[Any]]) -> float:
        best = float("inf")
        for _ in range(repeat):
            start = time.perf_counter()
            for _ in range(number):
                await fn()
            best = min(best, (time.perf_counter() - start) / number * 1e9)
        return best

    async def aio_rows() -> None:
        rows["aio: the continuation alone"] = await timed_async(aio_bare)
        rows["aio: through AsyncResilientClientInterceptor"] = await timed_async(
            lambda: aio_interceptor.intercept_unary_unary(aio_continuation, details, b"x"),
        )

    asyncio.run(aio_rows())
    return rows


def print_ratios(title: str, ratios: dict[str, float], spread: dict[str, list[float]]) -> None:
    print(f"\n{title}: median per-round ratio to the bare stub call [interquartile range]")
    for name, ratio in ratios.items():
        low, high = spread[name]
        print(f"  {name:<44} {ratio:>9.3f}  [{low:.3f}, {high:.3f}]")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--json", help="write results to this file")
    parser.add_argument("--quick", action="store_true", help="fewer calls (a smoke run)")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve()
        return
    number, repeat = (50, 3) if args.quick else (400, 21)
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        target = f"127.0.0.1:{int(server.stdout.readline())}"
        alone = without_network(number * 10, 5)
        sync_best, sync_ratios, sync_spread = run_sync(target, number, repeat)
        aio_best, aio_ratios, aio_spread = run_aio(target, number, repeat)
    finally:
        assert server.stdin is not None
        server.stdin.close()
        server.wait(timeout=10)
    print("\nthe interceptors alone (no network), best ns per call")
    for name, ns in alone.items():
        print(f"  {name:<48} {ns:>9.0f}")
    print_table("sync grpc: unary call on 127.0.0.1 (best)", sync_best, "bare stub call")
    print_ratios("sync grpc", sync_ratios, sync_spread)
    print_table("grpc.aio: unary call on 127.0.0.1 (best)", aio_best, "bare stub call")
    print_ratios("grpc.aio", aio_ratios, aio_spread)
    if args.json:
        write_json(
            args.json,
            "grpc",
            {
                "sync_ns_best": sync_best,
                "sync_ratio_median": sync_ratios,
                "sync_ratio_interquartile": sync_spread,
                "aio_ns_best": aio_best,
                "aio_ratio_median": aio_ratios,
                "aio_ratio_interquartile": aio_spread,
                "interceptor_alone_ns_best": alone,
            },
            grpcio=grpc.__version__,
            calls_per_round=number,
            rounds=repeat,
            target_ratio=1.10,
            timeout=TIMEOUT,
        )


if __name__ == "__main__":
    main()
