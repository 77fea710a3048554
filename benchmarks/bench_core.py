"""Per-call overhead of the shared decorator machinery (resilience._compose).

Every policy's hot path sits on this machinery, so its cost is the floor under
the breaker's and the retry's. Measured in one process run, side by side with
a bare call and a minimal hand-written try/except decorator, and reported as
nanoseconds per call and as ratios to the minimal decorator.

    python benchmarks/bench_core.py [--json PATH] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import platform
import sys
import time
import timeit
from collections.abc import Callable
from typing import Any

from resilience import compose
from resilience._compose import Guard


class NoopGuard(Guard[None]):
    """A guard that admits everything and records nothing: pure machinery cost."""

    def _enter(self) -> None:
        return None

    def _on_error(self, token: None, exc: BaseException) -> None:
        pass

    def _on_exit(self, token: None) -> None:
        pass


def minimal_decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The least a decorator that watches outcomes can do."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception:
            raise

    return wrapper


def noop(x: int) -> int:
    return x


async def anoop(x: int) -> int:
    return x


def measure(stmt: Callable[[], object], *, number: int, repeat: int) -> float:
    """Return the best time per call in nanoseconds (min over repeats)."""
    return min(timeit.repeat(stmt, number=number, repeat=repeat)) / number * 1e9


def measure_async(fn: Callable[[int], Any], *, number: int, repeat: int) -> float:
    """Time `number` awaits of fn inside one coroutine, best of `repeat`."""

    async def loop() -> float:
        start = time.perf_counter()
        for i in range(number):
            await fn(i)
        return time.perf_counter() - start

    best = min(asyncio.run(loop()) for _ in range(repeat))
    return best / number * 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write results to this file")
    parser.add_argument("--quick", action="store_true", help="fewer iterations (smoke run)")
    args = parser.parse_args()
    number, repeat = (20_000, 3) if args.quick else (200_000, 7)

    guard = NoopGuard()
    guarded = guard(noop)
    minimal = minimal_decorator(noop)
    three = compose(NoopGuard(), NoopGuard(), NoopGuard())(noop)

    def with_block() -> None:
        with guard:
            noop(1)

    sync_rows = {
        "bare call": measure(lambda: noop(1), number=number, repeat=repeat),
        "minimal try/except decorator": measure(lambda: minimal(1), number=number, repeat=repeat),
        "resilience Guard decorator": measure(lambda: guarded(1), number=number, repeat=repeat),
        "resilience guard.call(fn, x)": measure(
            lambda: guard.call(noop, 1), number=number, repeat=repeat
        ),
        "resilience `with guard:`": measure(with_block, number=number, repeat=repeat),
        "resilience compose(3 guards)": measure(lambda: three(1), number=number, repeat=repeat),
    }
    async_rows = {
        "bare await": measure_async(anoop, number=number, repeat=repeat),
        "resilience Guard decorator (async)": measure_async(
            guard(anoop), number=number, repeat=repeat
        ),
    }
    baseline = sync_rows["minimal try/except decorator"]
    print(f"Python {platform.python_version()} on {platform.machine()}, {number} calls x {repeat}")
    print(f"{'case':<38} {'ns/call':>9} {'x minimal':>10}")
    for name, ns in {**sync_rows, **async_rows}.items():
        print(f"{name:<38} {ns:>9.0f} {ns / baseline:>10.2f}")
    if args.json:
        result = {
            "benchmark": "core",
            "date": time.strftime("%Y-%m-%d"),
            "python": sys.version.split()[0],
            "machine": platform.machine(),
            "number": number,
            "repeat": repeat,
            "ns_per_call": {**sync_rows, **async_rows},
            "ratio_to_minimal_decorator": {
                name: ns / baseline for name, ns in {**sync_rows, **async_rows}.items()
            },
        }
        with open(args.json, "w", encoding="utf-8") as file:
            json.dump(result, file, indent=2)
            file.write("\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
