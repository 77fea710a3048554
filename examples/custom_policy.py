"""Write a policy of your own, compose it, and test it without waiting.

Run: python examples/custom_policy.py
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

import resilience
from resilience.testing import FakeClock

P = ParamSpec("P")
R = TypeVar("R")


class Stopwatch(resilience.Policy):
    """Measures every call on a clock and keeps the durations."""

    def __init__(self, clock: resilience.Clock) -> None:
        self.clock = clock
        self.durations: list[float] = []

    def call(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        start = self.clock.monotonic()
        try:
            return fn(*args, **kwargs)
        finally:
            self.durations.append(self.clock.monotonic() - start)

    async def acall(self, fn: Callable[P, Awaitable[R]], /, *args: P.args, **kwargs: P.kwargs) -> R:
        start = self.clock.monotonic()
        try:
            return await fn(*args, **kwargs)
        finally:
            self.durations.append(self.clock.monotonic() - start)


clock = FakeClock()
outer, inner = Stopwatch(clock), Stopwatch(clock)


@resilience.compose(outer, inner)
def lookup(key: str) -> str:
    clock.sleep(0.25)  # pretend to do I/O; the fake clock moves, nothing waits
    return key.upper()


@resilience.compose(outer, inner)
async def fetch(key: str) -> str:
    await clock.asleep(1.5)
    return key[::-1]


def main() -> None:
    print(lookup("orders"))
    print(asyncio.run(fetch("payments")))
    print("outer saw", outer.durations, "inner saw", inner.durations)
    print("time asked to wait:", clock.sleeps, "fake time now:", clock.monotonic())


if __name__ == "__main__":
    main()
