"""Testing code that uses resilience, without waiting: FakeClock.

The code under test takes a clock (as every policy does); the tests pass a
FakeClock and move time themselves. These functions run under pytest as they
are, or as a script: python examples/testing_with_fakeclock.py
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import resilience
from resilience.testing import FakeClock

E = TypeVar("E", bound=BaseException)


class PaymentsClient:
    """The code under test: a client that retries and stops calling a dead service."""

    def __init__(self, send: object, clock: resilience.Clock | None = None) -> None:
        self.breaker = resilience.CircuitBreaker(
            "payments", consecutive_failures=3, open_duration=30, clock=clock
        )
        self.retry = resilience.Retry(
            on=ConnectionError, attempts=3, wait=resilience.Backoff(initial=1.0), clock=clock
        )
        self.charge = self.retry(self.breaker(send))  # type: ignore[arg-type]


def raised(kind: type[E], call: Callable[[], object]) -> E:
    """The exception of type `kind` that `call()` raises (pytest.raises, without pytest)."""
    try:
        call()
    except kind as error:
        return error
    raise AssertionError(f"{call} did not raise {kind.__name__}")


def test_retries_wait_without_sleeping() -> None:
    """Two failures then success: the waits happen on the fake clock, instantly."""
    clock = FakeClock()
    answers = iter([ConnectionError(), ConnectionError(), "receipt"])

    def send() -> str:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    client = PaymentsClient(send, clock)
    assert client.charge() == "receipt"
    assert len(clock.sleeps) == 2  # two backoff waits, none of them real
    assert all(0 <= wait <= 2.0 for wait in clock.sleeps)


def test_the_breaker_opens_and_probes_after_its_open_period() -> None:
    """Three failures open the breaker; 30 fake seconds later it lets a probe through."""
    clock = FakeClock()
    calls = []

    def down() -> str:
        calls.append(clock.monotonic())
        raise ConnectionError("payments is down")

    client = PaymentsClient(down, clock)
    raised(ConnectionError, client.charge)
    assert client.breaker.state is resilience.State.OPEN
    rejection = raised(resilience.CircuitOpenError, client.charge)
    assert rejection.retry_after is not None
    assert round(rejection.retry_after, 9) <= 30  # float arithmetic on fake seconds
    clock.advance(30)
    assert client.breaker.state is resilience.State.HALF_OPEN
    assert len(calls) == 3  # the open breaker spared payments every other call


if __name__ == "__main__":
    for test in (
        test_retries_wait_without_sleeping,
        test_the_breaker_opens_and_probes_after_its_open_period,
    ):
        test()
        print(f"ok: {test.__name__}")
