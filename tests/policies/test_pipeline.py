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
    deadline,
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


# -- misuse through a pipeline of real policies --------------------------------


async def _coroutine_function() -> str:
    return "never awaited by a sync entry point"


def test_a_sync_pipeline_refuses_a_coroutine_and_releases_everything() -> None:
    """compose(...).call(async_fn) and a decorated lambda returning a coroutine: TypeError."""
    bulkhead = Bulkhead(1)
    fallback = Fallback("fallback", on=Exception)
    pipeline = compose(fallback, Timeout(2.0), bulkhead, Timeout(0.5))
    with pytest.raises(TypeError, match="returned an awaitable"):
        pipeline.call(_coroutine_function)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="returned an awaitable"):
        pipeline(lambda: _coroutine_function())()
    assert bulkhead.metrics() == {"in_flight": 0, "waiting": 0, "rejected": 0}
    assert fallback.metrics() == {"used": 0}
    assert remaining() is None


def test_an_async_pipeline_refuses_a_plain_function() -> None:
    """compose(...).acall(sync_fn): TypeError pointing at call(), never the fallback."""
    bulkhead = Bulkhead(1)
    fallback = Fallback("fallback", on=Exception)
    pipeline = compose(fallback, Timeout(2.0), bulkhead, Timeout(0.5))

    async def main() -> None:
        with pytest.raises(TypeError, match=r"not an awaitable.*call\("):
            await pipeline.acall(lambda: "sync")  # type: ignore[arg-type,return-value]

    asyncio.run(main())
    assert bulkhead.metrics() == {"in_flight": 0, "waiting": 0, "rejected": 0}
    assert fallback.metrics() == {"used": 0}


def test_a_spent_deadline_stops_the_pipeline_before_the_call() -> None:
    """The attempt Timeout finds nothing left: before_call=True, nothing runs, slot released."""
    clock = FakeClock()
    bulkhead = Bulkhead(1)
    ran: list[int] = []
    pipeline = compose(bulkhead, Timeout(0.5, clock=clock))
    with deadline(0, clock=clock), pytest.raises(DeadlineExceededError) as caught:
        pipeline.call(ran.append, 1)
    assert caught.value.before_call
    assert ran == []
    assert bulkhead.in_flight == 0
