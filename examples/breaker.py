"""A circuit breaker in front of a flaky dependency, step by step.

A fake clock drives time, so the example runs instantly and prints the same
lines every time. Run: python examples/breaker.py
"""

from __future__ import annotations

import asyncio

import resilience
from resilience.testing import FakeClock

clock = FakeClock()
breaker = resilience.CircuitBreaker(
    "payments",
    consecutive_failures=3,
    open_duration=resilience.exponential_open_duration(10, multiplier=2, maximum=60),
    clock=clock,
)
resilience.events.subscribe(
    lambda event: print(f"  event: {event.kind} {getattr(event, 'reason', '')}".rstrip())
)

healthy = False


@breaker
def charge(order_id: str) -> str:
    if not healthy:
        raise ConnectionError("payments is down")
    return f"charged {order_id}"


@breaker
async def refund(order_id: str) -> str:
    await clock.asleep(0.1)
    return f"refunded {order_id}"


def attempt(order_id: str) -> None:
    try:
        print(charge(order_id))
    except ConnectionError as error:
        print(f"failed: {error}")
    except resilience.CircuitOpenError as error:
        print(f"rejected at once: {error}")


def main() -> None:
    global healthy
    for n in range(4):
        attempt(f"o-{n}")  # three failures open the breaker; the fourth is rejected
    clock.advance(10)
    print(f"after 10 s the breaker is {breaker.state}")
    attempt("o-4")  # the probe fails: open again, for 20 s this time
    print(f"retry after {breaker.retry_after()} s")
    clock.advance(20)
    healthy = True
    attempt("o-5")  # the probe succeeds: closed
    print(asyncio.run(refund("o-5")))
    calls = breaker.metrics().calls
    print(f"state={breaker.state} calls={calls}")


if __name__ == "__main__":
    main()
