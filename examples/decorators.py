"""The policies as decorators, on a sync and an async function.

A fake clock makes every wait instant and every line of output the same on
each run. Run: python examples/decorators.py
"""

from __future__ import annotations

import asyncio
import random

import resilience
from resilience.testing import FakeClock

clock = FakeClock()
breaker = resilience.CircuitBreaker("inventory", consecutive_failures=3, clock=clock)
retry = resilience.Retry(
    on=ConnectionError,
    attempts=3,
    wait=resilience.Backoff(initial=0.1, rng=random.Random(7)),
    clock=clock,
)
failures = {"sync": 1, "async": 2}


@retry  # outermost: each attempt goes through the breaker
@breaker
def stock(sku: str) -> int:
    """A sync call that fails once, then answers."""
    if failures["sync"]:
        failures["sync"] -= 1
        raise ConnectionError("inventory unreachable")
    return 7


@resilience.compose(retry, breaker, resilience.Timeout(1.0))
async def price(sku: str) -> float:
    """An async call that fails twice, then answers (the Timeout cancels it if it hangs)."""
    await asyncio.sleep(0)
    if failures["async"]:
        failures["async"] -= 1
        raise ConnectionError("pricing unreachable")
    return 9.5


def main() -> None:
    print(f"stock: {stock('sku-1')}")
    print(f"price: {asyncio.run(price('sku-1'))}")
    print(f"waits: {[round(s, 3) for s in clock.sleeps]}")
    print(f"breaker: {breaker.state}, calls: {breaker.metrics().calls}")
    print(f"retry: {retry.metrics()['success_after_retry']} calls succeeded after retrying")


if __name__ == "__main__":
    main()
