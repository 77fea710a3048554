"""Shared timing and reporting for the benchmarks: best-of-N, ns per call, ratios."""

from __future__ import annotations

import asyncio
import functools
import json
import platform
import sys
import time
import timeit
from collections.abc import Callable
from typing import Any


def noop(x: int) -> int:
    """The protected function of every case: does nothing."""
    return x


async def anoop(x: int) -> int:
    """The async protected function: does nothing."""
    return x


def minimal_decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The least a decorator that watches outcomes does: try/except around the call."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception:
            raise

    return wrapper


def measure(stmt: Callable[[], object], *, number: int, repeat: int) -> float:
    """Best time per call of `stmt`, in nanoseconds (min over `repeat` runs)."""
    return min(timeit.repeat(stmt, number=number, repeat=repeat)) / number * 1e9


def measure_async(fn: Callable[[], Any], *, number: int, repeat: int) -> float:
    """Best time per `await fn()` inside one running loop, in nanoseconds."""

    async def loop() -> float:
        start = time.perf_counter()
        for _ in range(number):
            await fn()
        return time.perf_counter() - start

    return min(asyncio.run(loop()) for _ in range(repeat)) / number * 1e9


def print_table(title: str, rows: dict[str, float], baseline: str) -> None:
    """Print rows as ns/call and as a ratio to the `baseline` row."""
    print(f"\n{title}")
    print(f"  {'case':<44} {'ns/call':>9} {'x ' + baseline:>22}")
    for name, ns in rows.items():
        print(f"  {name:<44} {ns:>9.0f} {ns / rows[baseline]:>22.2f}")


def write_json(path: str, benchmark: str, sections: dict[str, Any], **extra: Any) -> None:
    """Write results with the machine, Python and date they were measured on."""
    result = {
        "benchmark": benchmark,
        "date": time.strftime("%Y-%m-%d"),
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        **extra,
        **sections,
    }
    with open(path, "w", encoding="utf-8") as file:
        json.dump(result, file, indent=2)
        file.write("\n")
    print(f"\nwrote {path}")
