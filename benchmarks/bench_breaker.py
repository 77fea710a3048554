"""Circuit breaker overhead, side by side with the Python peers, in one process run.

Cases (DESIGN section 13, issue "Circuit breaker"):
- a closed-breaker call of a no-op function, sync and async;
- a rejected call of an open breaker (raise and catch), sync and async;
- bytes per breaker, for 10,000 breakers.
Each next to a bare call and a minimal hand-written decorator. A peer that is
not installed, or does not support a case, is reported as n/a.

    python benchmarks/bench_breaker.py [--json PATH] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import platform
import tracemalloc
from collections.abc import Callable
from typing import Any

from _harness import (
    anoop,
    measure,
    measure_async,
    minimal_decorator,
    noop,
    print_table,
    write_json,
)

import resilience


class Rejected(Exception):
    """What the minimal decorator raises when 'open'."""


def minimal_async(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return await fn(*args, **kwargs)
        except Exception:
            raise

    return wrapper


def minimal_open(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A minimal 'open breaker': raise a fresh exception without calling."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        raise Rejected

    return wrapper


def minimal_open_async(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        raise Rejected

    return wrapper


def boom() -> None:
    raise ValueError


# -- peers: each returns a decorated function, or raises if unavailable --------------


def resilience_closed(fn: Callable[..., Any]) -> Callable[..., Any]:
    return resilience.CircuitBreaker("bench")(fn)


def resilience_closed_with_collector(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The same breaker, with the Prometheus collector registered (it reads at scrape time)."""
    from prometheus_client import CollectorRegistry

    import resilience.prometheus

    resilience.prometheus.register(CollectorRegistry())
    return resilience.CircuitBreaker("bench-collected")(fn)


def resilience_open(fn: Callable[..., Any]) -> Callable[..., Any]:
    breaker = resilience.CircuitBreaker("bench", consecutive_failures=1, open_duration=3600)
    with contextlib.suppress(ValueError):
        breaker.call(boom)
    return breaker(fn)


def pybreaker_closed(fn: Callable[..., Any]) -> Callable[..., Any]:
    import pybreaker

    return pybreaker.CircuitBreaker()(fn)


def pybreaker_open(fn: Callable[..., Any]) -> Callable[..., Any]:
    import pybreaker

    breaker = pybreaker.CircuitBreaker(reset_timeout=3600)
    breaker.open()
    return breaker(fn)


def circuitbreaker_closed(fn: Callable[..., Any]) -> Callable[..., Any]:
    import circuitbreaker

    return circuitbreaker.CircuitBreaker(name=f"bench-{id(fn)}-{fn.__name__}")(fn)


def circuitbreaker_open(fn: Callable[..., Any]) -> Callable[..., Any]:
    import circuitbreaker

    breaker = circuitbreaker.CircuitBreaker(failure_threshold=1, recovery_timeout=3600)
    with contextlib.suppress(ValueError):
        breaker(boom)()
    return breaker(fn)


def aiobreaker_closed(fn: Callable[..., Any]) -> Callable[..., Any]:
    import aiobreaker

    return aiobreaker.CircuitBreaker()(fn)


def aiobreaker_open(fn: Callable[..., Any]) -> Callable[..., Any]:
    import aiobreaker

    breaker = aiobreaker.CircuitBreaker()
    breaker.open()
    return breaker(fn)


def purgatory_closed(fn: Callable[..., Any]) -> Callable[..., Any]:
    import purgatory

    return purgatory.SyncCircuitBreakerFactory()("bench")(fn)


def purgatory_async_closed(fn: Callable[..., Any]) -> Callable[..., Any]:
    import purgatory

    return purgatory.AsyncCircuitBreakerFactory()("bench")(fn)


def pyresilience_closed(fn: Callable[..., Any]) -> Callable[..., Any]:
    import pyresilience

    return pyresilience.resilient(circuit_breaker=pyresilience.CircuitBreakerConfig())(fn)


PEERS_CLOSED = {
    "resilience": resilience_closed,
    "resilience, Prometheus collector registered": resilience_closed_with_collector,
    "pybreaker": pybreaker_closed,
    "circuitbreaker": circuitbreaker_closed,
    "aiobreaker": aiobreaker_closed,
    "purgatory": purgatory_closed,
    "pyresilience": pyresilience_closed,
}
PEERS_ASYNC = {
    "resilience": resilience_closed,
    "circuitbreaker": circuitbreaker_closed,
    "aiobreaker": aiobreaker_closed,
    "purgatory": purgatory_async_closed,
    "pyresilience": pyresilience_closed,
}
PEERS_OPEN = {
    "resilience": resilience_open,
    "pybreaker": pybreaker_open,
    "circuitbreaker": circuitbreaker_open,
    "aiobreaker": aiobreaker_open,
}


def rejected_await(fn: Callable[[int], Any]) -> Callable[[], Any]:
    async def run() -> None:
        try:
            await fn(1)
        except Exception:
            pass
        else:
            raise AssertionError("the open breaker admitted the call")

    return run


def rejected_call(fn: Callable[[int], Any]) -> Callable[[], None]:
    def run() -> None:
        try:
            fn(1)
        except Exception:
            pass
        else:
            raise AssertionError("the open breaker admitted the call")

    return run


def bytes_per_breaker(factory: Callable[[int], object], count: int = 10_000) -> float:
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    kept = [factory(i) for i in range(count)]
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    size = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    del kept
    return size / count


def memory_rows() -> dict[str, float]:
    import circuitbreaker
    import pybreaker

    factories: dict[str, Callable[[int], object]] = {
        "resilience": lambda i: resilience.CircuitBreaker(f"b{i}"),
        "resilience (TimeWindow 60 s)": lambda i: resilience.CircuitBreaker(
            f"b{i}", window=resilience.TimeWindow(seconds=60)
        ),
        "pybreaker": lambda i: pybreaker.CircuitBreaker(name=f"b{i}"),
        "circuitbreaker": lambda i: circuitbreaker.CircuitBreaker(name=f"b{i}"),
    }
    return {name: bytes_per_breaker(factory) for name, factory in factories.items()}


def run_peers(
    peers: dict[str, Callable[[Callable[..., Any]], Callable[..., Any]]],
    target: Callable[..., Any],
    timer: Callable[[Callable[..., Any]], float],
) -> dict[str, float | None]:
    rows: dict[str, float | None] = {}
    for name, make in peers.items():
        try:
            decorated = make(target)
        except ImportError:
            rows[name] = None
            continue
        rows[name] = timer(decorated)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write results to this file")
    parser.add_argument("--quick", action="store_true", help="fewer iterations (smoke run)")
    args = parser.parse_args()
    number, repeat = (10_000, 3) if args.quick else (100_000, 7)

    def sync_timer(fn: Callable[..., Any]) -> float:
        return measure(lambda: fn(1), number=number, repeat=repeat)

    def async_timer(fn: Callable[..., Any]) -> float:
        return measure_async(lambda: fn(1), number=number, repeat=repeat)

    def rejected_timer(fn: Callable[..., Any]) -> float:
        return measure(rejected_call(fn), number=number, repeat=repeat)

    closed = {
        "bare call": sync_timer(noop),
        "minimal decorator": sync_timer(minimal_decorator(noop)),
    }
    closed |= run_peers(PEERS_CLOSED, noop, sync_timer)  # type: ignore[arg-type]
    closed_async = {
        "bare await": async_timer(anoop),
        "minimal decorator": async_timer(minimal_async(anoop)),
    }
    closed_async |= run_peers(PEERS_ASYNC, anoop, async_timer)  # type: ignore[arg-type]

    def rejected_async_timer(fn: Callable[..., Any]) -> float:
        return measure_async(rejected_await(fn), number=number, repeat=repeat)

    rejected = {"minimal raise-and-catch": rejected_timer(minimal_open(noop))}
    rejected |= run_peers(PEERS_OPEN, noop, rejected_timer)  # type: ignore[arg-type]
    rejected_async = {"minimal raise-and-catch": rejected_async_timer(minimal_open_async(anoop))}
    rejected_async |= run_peers(PEERS_OPEN, anoop, rejected_async_timer)  # type: ignore[arg-type]
    memory = memory_rows()

    print(f"Python {platform.python_version()} on {platform.machine()}, {number} calls x {repeat}")
    for title, rows, baseline in (
        ("closed breaker, sync no-op call", closed, "minimal decorator"),
        ("closed breaker, async no-op call", closed_async, "minimal decorator"),
        ("open breaker, rejected sync call", rejected, "minimal raise-and-catch"),
        ("open breaker, rejected async call", rejected_async, "minimal raise-and-catch"),
    ):
        available = {name: ns for name, ns in rows.items() if ns is not None}
        print_table(title, available, baseline)
        for name in rows.keys() - available.keys():
            print(f"  {name:<44} {'n/a':>9}")
    print("\nbytes per breaker (10,000 breakers)")
    for name, size in memory.items():
        print(f"  {name:<44} {size:>9.0f}")

    if args.json:
        write_json(
            args.json,
            "breaker",
            {
                "closed_sync_ns": closed,
                "closed_async_ns": closed_async,
                "rejected_sync_ns": rejected,
                "rejected_async_ns": rejected_async,
                "bytes_per_breaker": memory,
            },
            number=number,
            repeat=repeat,
        )


if __name__ == "__main__":
    main()
