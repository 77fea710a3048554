"""Regressions for the defects an outside review found in the breaker (issue 15).

Each test failed on the code before its fix.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import threading
import warnings
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import resilience
from resilience import (
    BreakerRegistry,
    Bulkhead,
    BulkheadFullError,
    CircuitBreaker,
    CircuitOpenError,
    CountWindow,
    DeadlineExceededError,
    Outcome,
    RetryBudgetExhaustedError,
    State,
    TimeWindow,
    exponential_open_duration,
)
from resilience.events import Event, ThresholdCrossed
from resilience.testing import FakeClock


def make(clock: FakeClock | None = None, **config: object) -> CircuitBreaker:
    config.setdefault("clock", clock or FakeClock())
    return CircuitBreaker("payments", **config)  # type: ignore[arg-type]


# -- the library's own rejections say nothing about the downstream --------------------


@pytest.mark.parametrize(
    "rejection",
    [
        CircuitOpenError("inner", State.OPEN, 1.0),
        BulkheadFullError("pool", 4),
        RetryBudgetExhaustedError("budget"),
        DeadlineExceededError("http", 1.0, before_call=True),
    ],
    ids=["circuit-open", "bulkhead-full", "budget-exhausted", "deadline-spent-before"],
)
def test_rejections_are_ignored_by_default(rejection: Exception) -> None:
    """A rejection raised inside the breaker's call is IGNORED, not a failure."""
    breaker = make(consecutive_failures=1)

    def rejected() -> None:
        raise rejection

    for _ in range(5):
        with pytest.raises(type(rejection)):
            breaker.call(rejected)
    assert breaker.state is State.CLOSED
    assert breaker.metrics().calls["ignored"] == 5
    assert breaker.metrics().calls["failure"] == 0


def test_a_deadline_that_ran_out_during_the_call_is_a_failure() -> None:
    """Only a deadline already spent before the call started is a rejection."""
    breaker = make(consecutive_failures=1)
    with pytest.raises(DeadlineExceededError):
        breaker.call(_raise, DeadlineExceededError("http", 1.0))
    assert breaker.state is State.OPEN


def test_naming_a_rejection_in_record_counts_it() -> None:
    """`record=` naming a resilience error class counts it as a failure again."""
    breaker = make(consecutive_failures=2, record=(BulkheadFullError,))
    for _ in range(2):
        with pytest.raises(BulkheadFullError):
            breaker.call(_raise, BulkheadFullError("pool", 1))
    assert breaker.state is State.OPEN


def _raise(error: Exception) -> None:
    raise error


def test_a_burst_through_the_recommended_pipeline_never_opens_the_breaker() -> None:
    """The recommended pipeline against a healthy downstream: the breaker stays closed.

    compose(Timeout, retry, breaker, bulkhead, Timeout): the bulkhead sheds the burst.
    """
    breaker = CircuitBreaker("orders", failure_rate_threshold=0.5, minimum_calls=5)
    bulkhead = Bulkhead(max_concurrent=2, max_wait=0, name="orders")
    pipeline = resilience.compose(
        resilience.Timeout(5.0),
        resilience.Retry(on=(TimeoutError,), attempts=2, wait=0),
        breaker,
        bulkhead,
        resilience.Timeout(1.0),
    )

    @pipeline
    async def healthy() -> str:
        await asyncio.sleep(0.01)
        return "ok"

    async def burst() -> list[object]:
        return await asyncio.gather(*(healthy() for _ in range(30)), return_exceptions=True)

    results = asyncio.run(burst())
    shed = [r for r in results if isinstance(r, BulkheadFullError)]
    assert len(shed) >= 20
    assert results.count("ok") + len(shed) == 30
    assert breaker.state is State.CLOSED
    assert breaker.metrics().calls["failure"] == 0
    assert breaker.metrics().calls["ignored"] == len(shed)


def test_an_inner_breakers_rejection_does_not_open_the_outer_one() -> None:
    """Nested breakers: the inner one open, the outer one still closed after many calls."""
    inner = make(consecutive_failures=1, open_duration=60)
    outer = CircuitBreaker("outer", consecutive_failures=2, clock=inner.clock)
    inner.force_open()
    guarded = outer(inner(lambda: "ok"))
    for _ in range(10):
        with pytest.raises(CircuitOpenError) as caught:
            guarded()
        assert caught.value.name == "payments"
    assert outer.state is State.CLOSED


# -- half_open_max_wait runs from the oldest probe still out ---------------------------


def test_half_open_max_wait_runs_from_the_oldest_probe_still_out() -> None:
    """Probe A at t=0, probe B at t=5, A reports at t=6: B has until t=15."""
    clock = FakeClock()
    breaker = make(
        clock,
        consecutive_failures=1,
        open_duration=10,
        half_open_max_calls=3,
        half_open_max_wait=10,
    )
    breaker.acquire().record_failure()
    clock.advance(10)
    probe_a = breaker.acquire()
    clock.advance(5)
    probe_b = breaker.acquire()
    clock.advance(1)
    probe_a.record_success()
    clock.advance(4.1)  # t=10.1: B has been out 5.1 s of its 10 s
    assert breaker.state is State.HALF_OPEN
    clock.advance(4.9)  # t=15: B's 10 s are up
    assert breaker.state is State.OPEN
    probe_b.record_success()  # stale now: it cannot close the reopened breaker
    assert breaker.state is State.OPEN


def test_a_withdrawn_or_released_probe_no_longer_holds_the_wait() -> None:
    """A released probe is no longer out: the wait runs from the next oldest."""
    clock = FakeClock()
    breaker = make(
        clock,
        consecutive_failures=1,
        open_duration=10,
        half_open_max_calls=2,
        half_open_max_wait=10,
    )
    breaker.acquire().record_failure()
    clock.advance(10)
    first = breaker.acquire()
    clock.advance(8)
    second = breaker.acquire()
    first.release()
    clock.advance(9)  # 17 s after the first, 9 s after the second
    assert breaker.state is State.HALF_OPEN
    clock.advance(1)
    assert breaker.state is State.OPEN
    assert second.settled is False


def test_a_probe_reporting_after_half_open_max_wait_is_stale_without_a_state_read() -> None:
    """The wait is checked when the probe reports, not only when someone reads `state`."""
    clock = FakeClock()
    breaker = make(clock, consecutive_failures=1, open_duration=10, half_open_max_wait=5)
    breaker.acquire().record_failure()
    clock.advance(10)
    probe = breaker.acquire()
    clock.advance(90)  # nobody reads the state meanwhile
    probe.record_success()
    assert breaker.state is State.OPEN
    assert breaker.metrics().transitions == {
        (State.CLOSED, State.OPEN): 1,
        (State.OPEN, State.HALF_OPEN): 1,
        (State.HALF_OPEN, State.OPEN): 1,
    }


# -- stale outcomes never move what the state machine reads --------------------------


@pytest.mark.parametrize("path", ["decorator", "permit"])
def test_late_successes_do_not_move_an_open_breakers_figures(path: str) -> None:
    """Successes admitted before a trip and finished after it leave OPEN's figures alone."""
    breaker = CircuitBreaker("payments", minimum_calls=4, failure_rate_threshold=0.5)
    gate = threading.Event()
    started = threading.Barrier(4)

    def slow_success() -> int:
        started.wait(timeout=5)
        gate.wait(timeout=5)
        return 1

    if path == "decorator":
        target = breaker(slow_success)
    else:

        def target() -> int:
            permit = breaker.acquire()
            result = slow_success()
            permit.record_success()
            return result

    threads = [threading.Thread(target=target) for _ in range(3)]
    for thread in threads:
        thread.start()
    started.wait(timeout=5)
    for _ in range(4):
        breaker.acquire().record_failure()
    before = breaker.metrics()
    assert before.state is State.OPEN
    gate.set()
    for thread in threads:
        thread.join(timeout=5)
    after = breaker.metrics()
    assert after.calls["success"] == 3  # counted as calls...
    for figure in ("failure_rate", "window_calls", "window_failures", "consecutive_failures"):
        assert getattr(after, figure) == getattr(before, figure), figure  # ...not as window
    assert (after.failure_rate, after.consecutive_failures) == (1.0, 4)


# -- METRICS_ONLY: every path reports every crossing ----------------------------------


@pytest.mark.parametrize("path", ["decorator", "permit", "with"])
def test_metrics_only_reports_a_new_crossing_after_a_dip_on_every_path(path: str) -> None:
    """Above, below (by a success), above again: two ThresholdCrossed on every path."""
    breaker = make(failure_rate_threshold=0.5, minimum_calls=3, window=CountWindow(5))
    breaker.metrics_only()
    events: list[Event] = []
    breaker.events.subscribe(events.append)
    ok = breaker(lambda: "ok")

    def success() -> None:
        if path == "decorator":
            ok()
        elif path == "permit":
            breaker.acquire().record_success()
        else:
            with breaker:
                pass

    for step in "FSFSFSF":  # rates: -, -, .67 (crossed), .5, .6, .4 (dip), .6 (crossed again)
        if step == "F":
            breaker.acquire().record_failure()
        else:
            success()
    crossings = [e for e in events if isinstance(e, ThresholdCrossed)]
    assert [e.metric for e in crossings] == ["failure_rate", "failure_rate"]
    assert breaker.state is State.METRICS_ONLY


# -- HALF_OPEN metrics show the probes ------------------------------------------------


def test_half_open_metrics_show_the_probes() -> None:
    """In HALF_OPEN the window figures are the probes' outcomes, as in resilience4j."""
    clock = FakeClock()
    breaker = make(clock, consecutive_failures=2, open_duration=5, half_open_max_calls=3)
    for _ in range(2):
        breaker.acquire().record_failure()
    clock.advance(5)
    first, second = breaker.acquire(), breaker.acquire()
    metrics = breaker.metrics()
    assert metrics.state is State.HALF_OPEN
    assert (metrics.window_calls, metrics.window_failures, metrics.consecutive_failures) == (
        0,
        0,
        0,
    )
    first.record_failure()
    second.record(Outcome.FAILURE)
    metrics = breaker.metrics()
    assert (metrics.window_calls, metrics.window_failures, metrics.consecutive_failures) == (
        2,
        2,
        2,
    )
    assert metrics.failure_rate != metrics.failure_rate  # NaN until every probe is in
    breaker.acquire().record_success()
    assert breaker.state is State.OPEN  # 2 of 3 probes failed


# -- misuse: a sync entry point given a coroutine --------------------------------------


async def _failing() -> None:
    raise ValueError("down")


def test_call_with_a_coroutine_function_raises_and_records_nothing() -> None:
    """breaker.call(async_fn) used to record SUCCESS for a coroutine that later failed."""
    breaker = make(consecutive_failures=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "coroutine was never awaited"
        for _ in range(3):
            with pytest.raises(TypeError, match="acall"):
                breaker.call(_failing)
    assert breaker.metrics().calls == {"success": 0, "failure": 0, "ignored": 3, "rejected": 0}


@pytest.mark.parametrize("state", ["closed", "half_open"])
def test_sync_decorator_on_a_function_returning_a_coroutine_raises(state: str) -> None:
    """A sync wrapper around an async function is refused; a probe slot is handed back.

    (A plain decorator between the breaker and an `async def` makes one.)
    """
    clock = FakeClock()
    breaker = make(clock, consecutive_failures=1, open_duration=1)
    if state == "half_open":
        breaker.acquire().record_failure()
        clock.advance(1)

    @breaker
    def sync_wrapper() -> object:
        return _failing()

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(TypeError, match="returned an awaitable"):
            sync_wrapper()
    assert breaker.metrics().calls["ignored"] == 1
    assert breaker.acquire().probe is (state == "half_open")  # the slot is free again


# -- property: stale outcomes never move an OPEN breaker's figures ----------------------

FIGURES = (
    "state",
    "failure_rate",
    "slow_call_rate",
    "window_calls",
    "window_failures",
    "window_slow",
    "consecutive_failures",
    "openings",
)


def _figures(breaker: CircuitBreaker) -> tuple[object, ...]:
    metrics = breaker.metrics()
    return tuple(
        "nan" if isinstance(v, float) and v != v else v
        for v in (getattr(metrics, f) for f in FIGURES)
    )


@given(
    held=st.lists(st.sampled_from(["success", "failure", "ignored", "slow"]), max_size=8),
    nested=st.integers(0, 3),
    before=st.lists(st.booleans(), max_size=6),
    order=st.randoms(use_true_random=False),
    count_window=st.booleans(),
)
@settings(max_examples=200, deadline=None)
def test_stale_outcomes_never_move_an_open_breakers_figures(
    held: list[str], nested: int, before: list[bool], order: object, count_window: bool
) -> None:
    """Calls admitted before a trip and settled after it never move OPEN's figures.

    Permits and lock-free decorated calls, in any order, with any outcome: every
    figure the state machine reads stays as it was at the trip.
    """
    import random

    assert isinstance(order, random.Random)
    clock = FakeClock()
    breaker = make(
        clock,
        failure_rate_threshold=0.5,
        minimum_calls=4,
        consecutive_failures=3,
        slow_call_duration=1.0,
        window=CountWindow(10) if count_window else resilience.TimeWindow(seconds=100),
        open_duration=1000,
    )
    for failed in before:  # some history, short of a trip
        if breaker.state is not State.CLOSED:
            break
        (breaker.acquire().record_failure if failed else breaker.acquire().record_success)()
    if breaker.state is not State.CLOSED:
        return
    permits = [(breaker.acquire(), outcome) for outcome in held]
    snapshot: list[tuple[object, ...]] = []

    def trip_inside() -> str:
        # Admitted (lock-free) before the trip, returns after it: a late success.
        while breaker.state is State.CLOSED:
            breaker.acquire().record_failure()
        if not snapshot:
            snapshot.append(_figures(breaker))
        return "ok"

    call = breaker(trip_inside)
    for _ in range(nested):
        call = breaker(lambda inner=call: inner())  # more late successes, nested
    assert call() == "ok"
    assert breaker.state is State.OPEN
    order.shuffle(permits)
    for permit, outcome in permits:
        clock.advance(0.5 if outcome != "slow" else 2.0)
        if outcome == "ignored":
            permit.release()
        elif outcome == "failure":
            permit.record_failure()
        else:
            permit.record_success()
        assert _figures(breaker) == snapshot[0]
    assert breaker.state is State.OPEN


# -- every parameter: wrong types, bools, NaN, inf, negatives; timedelta accepted ------


@pytest.mark.parametrize(
    ("param", "value", "error"),
    [
        (param, value, error)
        for param, values in {
            "failure_rate_threshold": [
                (True, TypeError),
                (math.nan, ValueError),
                (math.inf, ValueError),
                (-0.5, ValueError),
                (0, ValueError),
                (1.01, ValueError),
                ("0.5", TypeError),
            ],
            "minimum_calls": [(True, TypeError), (1.0, TypeError), (-1, ValueError)],
            "consecutive_failures": [(True, TypeError), (2.5, TypeError), (-3, ValueError)],
            "slow_call_duration": [
                (True, TypeError),
                (math.nan, ValueError),
                (math.inf, ValueError),
                (-1, ValueError),
                (dt.timedelta(seconds=-1), ValueError),
            ],
            "slow_call_rate_threshold": [
                (False, TypeError),
                (math.nan, ValueError),
                (2, ValueError),
            ],
            "open_duration": [
                (True, TypeError),
                (math.inf, ValueError),
                (-1, ValueError),
                (dt.timedelta(0), ValueError),
                ("30s", TypeError),
            ],
            "half_open_max_calls": [(True, TypeError), (0, ValueError), (1.5, TypeError)],
            "half_open_max_wait": [(True, TypeError), (math.nan, ValueError), (-2, ValueError)],
            "record_durations": [(1, TypeError), (None, TypeError)],
            "window": [(CountWindow, TypeError), ("100", TypeError)],
        }.items()
        for value, error in values
    ],
)
def test_every_breaker_parameter_rejects_bad_values(
    param: str, value: object, error: type[Exception]
) -> None:
    """The error is raised at construction and its message names the parameter."""
    with pytest.raises(error, match=f"{param}"):
        CircuitBreaker("payments", **{param: value})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("factory", "error", "match"),
    [
        (lambda: CountWindow(True), TypeError, "size="),
        (lambda: CountWindow(0), ValueError, "size="),
        (lambda: TimeWindow(seconds=math.nan), ValueError, "seconds="),
        (lambda: TimeWindow(seconds=-1), ValueError, "seconds="),
        (lambda: TimeWindow(seconds=10, buckets=True), TypeError, "buckets="),
        (lambda: TimeWindow(seconds=10, buckets=0), ValueError, "buckets="),
        (lambda: exponential_open_duration(math.inf), ValueError, "initial="),
        (lambda: exponential_open_duration(1, multiplier=math.nan), ValueError, "multiplier="),
        (lambda: exponential_open_duration(1, multiplier=True), TypeError, "multiplier="),
        (lambda: exponential_open_duration(1, maximum=-1), ValueError, "maximum="),
        (lambda: BreakerRegistry(max_size=0), ValueError, "max_size="),
        (lambda: BreakerRegistry(max_size=True), TypeError, "max_size="),
        (lambda: BreakerRegistry(minimum_calls=0), ValueError, "minimum_calls="),
        (lambda: BreakerRegistry(name="x"), TypeError, "name="),
    ],
)
def test_windows_helpers_and_registry_reject_bad_values(
    factory: Callable[[], object], error: type[Exception], match: str
) -> None:
    """Windows, exponential_open_duration and the registry name the bad parameter too."""
    with pytest.raises(error, match=match):
        factory()


def test_seconds_parameters_take_a_timedelta() -> None:
    """Every seconds parameter accepts a datetime.timedelta, as stamina does."""
    clock = FakeClock()
    breaker = CircuitBreaker(
        "payments",
        consecutive_failures=1,
        open_duration=dt.timedelta(seconds=30),
        half_open_max_wait=dt.timedelta(seconds=5),
        slow_call_duration=dt.timedelta(milliseconds=500),
        window=TimeWindow(seconds=dt.timedelta(minutes=1)),
        clock=clock,
    )
    assert breaker.half_open_max_wait == 5.0
    assert breaker.slow_call_duration == 0.5
    assert breaker.window.seconds == 60.0
    breaker.acquire().record_failure()
    assert breaker.retry_after() == 30.0
    growing = exponential_open_duration(dt.timedelta(seconds=1), maximum=dt.timedelta(minutes=1))
    assert [growing(n) for n in (1, 2, 10)] == [1.0, 2.0, 60.0]


# -- the permit API the transport uses, and misuse that record= cannot count ---------------


def test_record_exception_settles_by_the_breakers_own_classification() -> None:
    """record_exception: record= and ignore= decide, as for a decorated call."""
    breaker = make(consecutive_failures=2, ignore=(KeyError,))
    breaker.acquire().record_exception(KeyError("ignored"))
    breaker.acquire().record_exception(ValueError("failure"))
    permit = breaker.acquire()
    permit.record_exception(ValueError("failure"))
    assert breaker.metrics().calls == {"success": 0, "failure": 2, "ignored": 1, "rejected": 0}
    assert breaker.state is State.OPEN
    with pytest.raises(RuntimeError, match="exactly once"):
        permit.record_exception(ValueError())


@pytest.mark.anyio
async def test_aacquire_admits_and_rejects_like_acquire() -> None:
    """aacquire() is acquire() for async code: a permit, or CircuitOpenError."""
    breaker = make(consecutive_failures=1)
    (await breaker.aacquire()).record_failure()
    with pytest.raises(CircuitOpenError):
        await breaker.aacquire()


@pytest.mark.parametrize("path", ["decorator", "call"])
def test_a_misuse_is_never_a_failure_even_when_named_in_record(path: str) -> None:
    """record=MisuseError cannot make a bug in the calling code a downstream failure."""
    breaker = make(consecutive_failures=1, record=(resilience.MisuseError, ValueError))

    def nested_misuse() -> None:
        raise resilience.MisuseError("from a policy nested inside")

    for _ in range(3):
        with pytest.raises(resilience.MisuseError):
            breaker(nested_misuse)() if path == "decorator" else breaker.call(nested_misuse)
    assert breaker.state is State.CLOSED
    assert breaker.metrics().calls["ignored"] == 3
