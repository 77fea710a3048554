"""Retry overhead, side by side with the Python peers, in one process run.

Cases (issue "Retry..."):
- a first-try success of a no-op function, sync and async: the cost a retry
  policy adds to every healthy call;
- the cost per retry attempt with zero waits: a function that fails 4 times
  and then succeeds, divided by the 4 retries. Peers sleep (time.sleep(0) or
  asyncio.sleep(0)) even for a zero wait; resilience makes no sleep call.
Each next to a bare call and a minimal hand-written retry loop.

    python benchmarks/bench_retry.py [--json PATH] [--quick]
"""

from __future__ import annotations

import argparse
import functools
import platform
from collections.abc import Callable
from typing import Any

from _harness import anoop, measure, measure_async, noop, print_table, write_json

import resilience


class Transient(Exception):
    """The retried error."""


def minimal_retry(fn: Callable[..., Any], attempts: int = 5) -> Callable[..., Any]:
    """The least a retry decorator does: a loop with try/except, no waits."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        for attempt in range(attempts):
            try:
                return fn(*args, **kwargs)
            except Transient:
                if attempt == attempts - 1:
                    raise
        raise AssertionError("unreachable")

    return wrapper


def minimal_retry_async(fn: Callable[..., Any], attempts: int = 5) -> Callable[..., Any]:
    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        for attempt in range(attempts):
            try:
                return await fn(*args, **kwargs)
            except Transient:
                if attempt == attempts - 1:
                    raise
        raise AssertionError("unreachable")

    return wrapper


def resilience_retry(fn: Callable[..., Any]) -> Callable[..., Any]:
    return resilience.Retry(on=Transient, attempts=5, wait=0)(fn)


def resilience_retry_budget(fn: Callable[..., Any]) -> Callable[..., Any]:
    budget = resilience.RetryBudget(ratio=1.0, min_per_second=1e9)
    return resilience.Retry(on=Transient, attempts=5, wait=0, budget=budget)(fn)


def tenacity_retry(fn: Callable[..., Any]) -> Callable[..., Any]:
    import tenacity

    return tenacity.retry(
        stop=tenacity.stop_after_attempt(5),
        retry=tenacity.retry_if_exception_type(Transient),
        wait=tenacity.wait_none(),
        reraise=True,
    )(fn)


def stamina_retry(fn: Callable[..., Any]) -> Callable[..., Any]:
    import stamina
    import stamina.instrumentation

    stamina.instrumentation.set_on_retry_hooks([])  # no log line per retry in a benchmark
    return stamina.retry(on=Transient, attempts=5, wait_initial=0, wait_max=0, wait_jitter=0)(fn)


def backoff_retry(fn: Callable[..., Any]) -> Callable[..., Any]:
    import backoff

    return backoff.on_exception(
        backoff.constant, Transient, max_tries=5, interval=0, jitter=None, logger=None
    )(fn)


PEERS = {
    "resilience": resilience_retry,
    "resilience + RetryBudget": resilience_retry_budget,
    "tenacity": tenacity_retry,
    "stamina": stamina_retry,
    "backoff": backoff_retry,
}


def fails_four_times() -> Callable[[int], int]:
    """A function that fails with Transient 4 times out of every 5 calls."""
    calls = 0

    def flaky(x: int) -> int:
        nonlocal calls
        calls += 1
        if calls % 5:
            raise Transient
        return x

    return flaky


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write results to this file")
    parser.add_argument("--quick", action="store_true", help="fewer iterations (smoke run)")
    args = parser.parse_args()
    number, repeat = (5_000, 3) if args.quick else (50_000, 5)
    slow_number = max(number // 10, 500)  # tenacity and stamina take ~12 us a call

    def timer(fn: Callable[..., Any], n: int = number) -> float:
        return measure(lambda: fn(1), number=n, repeat=repeat)

    def async_timer(fn: Callable[..., Any], n: int = number) -> float:
        return measure_async(lambda: fn(1), number=n, repeat=repeat)

    first_try = {"bare call": timer(noop), "minimal retry loop": timer(minimal_retry(noop))}
    first_try_async = {
        "bare await": async_timer(anoop),
        "minimal retry loop": async_timer(minimal_retry_async(anoop)),
    }
    per_retry = {"minimal retry loop": timer(minimal_retry(fails_four_times())) / 4}
    for name, make in PEERS.items():
        n = number if name.startswith("resilience") else slow_number
        first_try[name] = timer(make(noop), n)
        per_retry[name] = timer(make(fails_four_times()), n) / 4
        if name != "backoff":
            first_try_async[name] = async_timer(make(anoop), n)
    first_try_async["backoff"] = async_timer(backoff_retry(anoop), slow_number)

    print(f"Python {platform.python_version()} on {platform.machine()}, {number} calls x {repeat}")
    print_table("first-try success, sync no-op", first_try, "minimal retry loop")
    print_table("first-try success, async no-op", first_try_async, "minimal retry loop")
    print_table("cost per retry attempt, zero wait (sync)", per_retry, "minimal retry loop")
    if args.json:
        write_json(
            args.json,
            "retry",
            {
                "first_try_sync_ns": first_try,
                "first_try_async_ns": first_try_async,
                "per_retry_zero_wait_ns": per_retry,
            },
            number=number,
            repeat=repeat,
        )


if __name__ == "__main__":
    main()
