"""Real policies composed: the order matters, and the recommended pipeline holds together."""

from __future__ import annotations

import asyncio

import pytest

from resilience import (
    Bulkhead,
    CircuitBreaker,
    CircuitOpenError,
    DeadlineExceededError,
    Fallback,
    Retry,
    RetryBudget,
    State,
    Timeout,
    compose,
    events,
    remaining,
)
from resilience.events import Event
from resilience.testing import FakeClock


class Down(Exception):
    pass


def always_down() -> None:
    raise Down


def kinds(recorded: list[Event]) -> list[str]:
    return [event.kind for event in recorded]


def test_first_policy_is_outermost_retry_around_breaker() -> None:
    """compose(retry, breaker): each attempt goes through the breaker, which opens."""
    clock = FakeClock()
    breaker = CircuitBreaker("inner", consecutive_failures=1, clock=clock)
    retry = Retry(on=Down, attempts=3, wait=0, clock=clock, name="outer")
    recorded: list[Event] = []
    unsubscribe = events.subscribe(recorded.append)
    try:
        with pytest.raises(CircuitOpenError):
            compose(retry, breaker)(always_down)()
    finally:
        unsubscribe()
    assert kinds(recorded) == [
        "breaker.threshold_crossed",
        "breaker.state_changed",
        "retry.scheduled",
        "call.rejected",
    ]


def test_first_policy_is_outermost_breaker_around_retry() -> None:
    """compose(breaker, retry): the breaker sees one call, after all its retries."""
    clock = FakeClock()
    breaker = CircuitBreaker("outer", consecutive_failures=1, clock=clock)
    retry = Retry(on=Down, attempts=3, wait=0, clock=clock, name="inner")
    recorded: list[Event] = []
    unsubscribe = events.subscribe(recorded.append)
    try:
        with pytest.raises(Down):
            compose(breaker, retry)(always_down)()
    finally:
        unsubscribe()
    assert kinds(recorded) == [
        "retry.scheduled",
        "retry.scheduled",
        "retry.gave_up",
        "breaker.threshold_crossed",
        "breaker.state_changed",
    ]


def recommended(
    clock: FakeClock, **breaker_config
) -> tuple[object, CircuitBreaker, Retry, Bulkhead]:
    breaker_config.setdefault("consecutive_failures", 5)
    breaker = CircuitBreaker("payments", clock=clock, **breaker_config)
    retry = Retry(
        on=(Down, DeadlineExceededError),
        attempts=4,
        wait=0.1,
        budget=RetryBudget("payments", clock=clock),
        clock=clock,
    )
    bulkhead = Bulkhead(10)
    pipeline = compose(
        Timeout(2.0, clock=clock),  # total deadline
        retry,
        breaker,
        bulkhead,
        Timeout(0.5, clock=clock),  # per attempt
    )
    return pipeline, breaker, retry, bulkhead


def test_recommended_pipeline_recovers_from_transient_failures() -> None:
    """Deadline -> retry+budget -> breaker -> bulkhead -> timeout: two failures, then ok."""
    clock = FakeClock()
    pipeline, breaker, retry, bulkhead = recommended(clock)
    attempts: list[float | None] = []

    def flaky() -> str:
        attempts.append(remaining())
        if len(attempts) < 3:
            raise Down
        return "paid"

    assert pipeline(flaky)() == "paid"
    # Every attempt saw the per-attempt budget, never more than the total one.
    assert attempts == pytest.approx([0.5, 0.5, 0.5])
    assert breaker.metrics().calls == {"success": 1, "failure": 2, "ignored": 0, "rejected": 0}
    assert retry.metrics()["success_after_retry"] == 1
    assert bulkhead.in_flight == 0


def test_recommended_pipeline_stops_at_the_total_deadline() -> None:
    """Slow failing attempts: retries stop before the 2 s total deadline."""
    clock = FakeClock()
    pipeline, _, retry, _ = recommended(clock, consecutive_failures=10)

    def slow_failure() -> None:
        clock.sleep(0.6)
        raise Down

    with pytest.raises(Down) as caught:
        pipeline(slow_failure)()
    assert clock.monotonic() <= 2.0
    assert caught.value.__notes__[-1].endswith("(deadline)")
    assert retry.metrics()["failed_after_retry"] == 1


def test_recommended_pipeline_with_an_open_breaker_and_a_fallback() -> None:
    """Once the breaker opens, retries stop and the fallback answers at once."""
    clock = FakeClock()
    pipeline, breaker, _, _ = recommended(clock, consecutive_failures=2)
    guarded = compose(Fallback("cached", on=CircuitOpenError), pipeline)(always_down)
    assert guarded() == "cached"
    assert breaker.state is State.OPEN
    assert guarded() == "cached"


def test_async_pipeline_retries_an_attempt_that_timed_out() -> None:
    """The attempt timeout cancels a hung attempt; the retry makes a second one."""
    breaker = CircuitBreaker("async", consecutive_failures=5)
    calls = 0

    @compose(
        Timeout(5.0),
        Retry(on=DeadlineExceededError, attempts=3, wait=0),
        breaker,
        Bulkhead(2),
        Timeout(0.05),
    )
    async def sometimes_hangs() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            await asyncio.sleep(10)
        return "ok"

    assert asyncio.run(sometimes_hangs()) == "ok"
    assert calls == 2
    assert breaker.metrics().calls["failure"] == 1
