"""Retries inside a deadline, with a budget and a fallback, on a fake clock.

Run: python examples/retry_deadline.py
"""

from __future__ import annotations

import random

import resilience
from resilience.testing import FakeClock

clock = FakeClock()
budget = resilience.RetryBudget("inventory", ratio=0.2, min_per_second=1, window=10, clock=clock)
retry = resilience.Retry(
    on=ConnectionError,
    attempts=5,
    wait=resilience.Backoff(initial=0.2, maximum=2.0, rng=random.Random(42)),
    budget=budget,
    clock=clock,
)
failures_left = 2
retry.events.subscribe(
    lambda event: (
        print(f"  {event.kind}: {getattr(event, 'reason', '')}")
        if isinstance(event, resilience.events.RetryGaveUp)
        else None
    )
)


@retry
def stock(sku: str) -> int:
    global failures_left
    clock.sleep(0.1)  # the call itself takes 100 ms
    if failures_left:
        failures_left -= 1
        raise ConnectionError("inventory unreachable")
    return 7


@resilience.Fallback(-1, on=ConnectionError)
@retry
def stock_or_unknown(sku: str) -> int:
    clock.sleep(0.3)
    raise ConnectionError("inventory unreachable")


def main() -> None:
    print(f"stock: {stock('sku-1')} after waits {[round(s, 3) for s in clock.sleeps[1::2]]}")
    start = clock.monotonic()
    with resilience.deadline(1.0, clock=clock):
        print(f"stock or unknown: {stock_or_unknown('sku-2')}")
    print(f"gave up within the deadline: {clock.monotonic() - start <= 1.0}")
    print(f"retry metrics: {retry.metrics()}")


if __name__ == "__main__":
    main()
