from __future__ import annotations

import asyncio
import contextlib
import datetime
import math
import random
import subprocess
import sys
import threading
import time

import anyio
import pytest
import tenacity

import resilience
from resilience import (
    Backoff,
    BulkheadFullError,
    CircuitBreaker,
    CircuitOpenError,
    DeadlineExceededError,
    ResilienceError,
    Retry,
    RetryBudget,
    RetryBudgetExhaustedError,
    RetryExhaustedError,
    deadline,
)
from resilience.events import Event, RetryGaveUp, RetryScheduled
from resilience.testing import FakeClock


class Transient(Exception):
    pass


class Fatal(Exception):
    pass


class Flaky:
    """Fails with the given errors in order, then returns "ok"."""

    def __init__(self, *errors: BaseException, clock: FakeClock | None = None, takes: float = 0):
        self.errors = list(errors)
        self.calls = 0
        self.clock = clock
        self.takes = takes

    def __call__(self) -> str:
        self.calls += 1
        if self.clock is not None and self.takes:
            self.clock.sleep(self.takes)
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def make(clock: FakeClock | None = None, **config) -> Retry:
    config.setdefault("clock", clock or FakeClock())
    config.setdefault("on", Transient)
    return Retry(**config)


# -- what is retried --------------------------------------------------------------


def test_on_is_required() -> None:
    """There is no catch-all default: the caller says what is transient."""
    with pytest.raises(TypeError, match="on"):
        Retry()  # type: ignore[call-arg]


def test_attempts_count_calls_first_included() -> None:
    """attempts=3: a call that fails twice succeeds on the third and last call."""
    flaky = Flaky(Transient(), Transient())
    assert make(attempts=3).call(flaky) == "ok"
    assert flaky.calls == 3
    flaky = Flaky(Transient(), Transient(), Transient())
    with pytest.raises(Transient):
        make(attempts=3).call(flaky)
    assert flaky.calls == 3


def test_attempts_one_means_no_retry() -> None:
    """attempts=1 makes exactly one call."""
    flaky = Flaky(Transient())
    with pytest.raises(Transient):
        make(attempts=1).call(flaky)
    assert flaky.calls == 1


def test_other_exceptions_propagate_untouched() -> None:
    """An exception outside on= is raised at once, with no note."""
    flaky = Flaky(Fatal("no"))
    with pytest.raises(Fatal) as caught:
        make().call(flaky)
    assert flaky.calls == 1
    assert not getattr(caught.value, "__notes__", [])


def test_base_exceptions_are_never_retried() -> None:
    """KeyboardInterrupt passes even when a predicate would accept anything."""
    flaky = Flaky(KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        make(on=lambda exc: True).call(flaky)
    assert flaky.calls == 1


def test_cancellation_is_never_retried() -> None:
    """A cancelled attempt ends the call; no second attempt starts."""
    calls = 0
    retry = Retry(on=lambda exc: True, attempts=5, clock=FakeClock())

    @retry
    async def slow() -> None:
        nonlocal calls
        calls += 1
        await asyncio.sleep(3600)

    async def main() -> None:
        task = asyncio.create_task(slow())
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert calls == 1


def test_circuit_open_is_not_retried_unless_asked() -> None:
    """An inner breaker's rejection ends the call, unless retry_circuit_open=True."""
    clock = FakeClock()
    breaker = CircuitBreaker("inner", consecutive_failures=1, open_duration=2, clock=clock)
    breaker.acquire().record_failure()
    calls = 0

    @breaker
    def guarded() -> str:
        nonlocal calls
        calls += 1
        return "ok"

    with pytest.raises(CircuitOpenError):
        Retry(on=Exception, clock=clock).call(guarded)
    assert calls == 0
    # Opted in: waits the breaker's retry_after, then the probe succeeds.
    retry = Retry(on=Exception, retry_circuit_open=True, wait=0, clock=clock)
    assert retry.call(guarded) == "ok"
    assert clock.sleeps == [2.0]


def test_a_spent_budget_and_a_deadline_spent_before_the_call_are_never_retried() -> None:
    """They can never succeed on a retry: even on=Exception does not retry them."""
    for error in (
        RetryBudgetExhaustedError("b"),
        DeadlineExceededError("d", 1.0, before_call=True),
    ):
        flaky = Flaky(error)
        retry = make(on=Exception, wait=0)
        with pytest.raises(type(error)) as caught:
            retry.call(flaky)
        assert flaky.calls == 1
        assert caught.value is error
        assert not getattr(error, "__notes__", [])
        assert retry.metrics()["failed_not_retryable"] == 1
    # Named explicitly, still not retried.
    for error in (
        RetryBudgetExhaustedError("b"),
        DeadlineExceededError("d", 1.0, before_call=True),
    ):
        flaky = Flaky(error)
        with pytest.raises(type(error)):
            make(on=(RetryBudgetExhaustedError, DeadlineExceededError)).call(flaky)
        assert flaky.calls == 1


def test_an_attempt_that_ran_out_of_time_is_retried() -> None:
    """A DeadlineExceededError raised during the call (an attempt timeout) is retryable."""
    flaky = Flaky(DeadlineExceededError("attempt", 0.5))
    assert make(on=TimeoutError, wait=0).call(flaky) == "ok"
    assert flaky.calls == 2


def test_a_full_bulkhead_is_retried_only_when_named() -> None:
    """on=Exception or on=ResilienceError does not retry BulkheadFullError; naming it does."""
    for on in (Exception, ResilienceError, lambda exc: True):
        flaky = Flaky(BulkheadFullError("pool", 4))
        with pytest.raises(BulkheadFullError):
            make(on=on).call(flaky)
        assert flaky.calls == 1
    clock = FakeClock()
    flaky = Flaky(BulkheadFullError("pool", 4), BulkheadFullError("pool", 4))
    retry = make(clock, on=(ValueError, BulkheadFullError), wait=Backoff(jitter="none"))
    assert retry.call(flaky) == "ok"
    assert flaky.calls == 3
    assert clock.sleeps == [0.1, 0.2]  # with backoff


@pytest.mark.anyio
async def test_own_rejections_are_not_retried_in_async_code() -> None:
    calls = 0

    @make(on=Exception, wait=0)
    async def spent() -> None:
        nonlocal calls
        calls += 1
        raise DeadlineExceededError("d", 1.0, before_call=True)

    with pytest.raises(DeadlineExceededError):
        await spent()
    assert calls == 1


# -- giving up ------------------------------------------------------------------------


def test_exhaustion_raises_the_last_exception_itself_with_a_note() -> None:
    """The caller gets the original exception object, not a wrapper, plus a note."""
    last = Transient("third")
    flaky = Flaky(Transient("first"), Transient("second"), last)
    with pytest.raises(Transient) as caught:
        make(attempts=3, name="payments").call(flaky)
    assert caught.value is last
    (note,) = caught.value.__notes__
    assert note.startswith("resilience: retry 'payments' gave up after 3 attempts in ")
    assert note.endswith("(attempts)")
    # No misleading chain: the last error was not raised while handling the first.
    assert caught.value.__context__ is None


def test_failing_result_is_returned_or_raised() -> None:
    """retry_if_result retries; the last failing result is returned unless asked to raise."""
    results = iter([503, 503, 503, 503])
    retry = make(retry_if_result=lambda status: status >= 500, attempts=3)
    assert retry.call(lambda: next(results)) == 503
    results = iter([503, 502, 200])
    assert retry.call(lambda: next(results)) == 200
    strict = make(retry_if_result=lambda status: status >= 500, attempts=2, raise_on_result=True)
    with pytest.raises(RetryExhaustedError) as caught:
        strict.call(lambda: 503)
    assert (caught.value.attempts, caught.value.last_result) == (2, 503)
    assert "2 attempts" in str(caught.value)


# -- waiting --------------------------------------------------------------------------


def test_default_wait_is_full_jitter_backoff() -> None:
    """Waits follow Backoff: uniform(0, min(cap, initial * 2 ** (n - 1)))."""
    clock = FakeClock()
    backoff = Backoff(initial=1, maximum=3, rng=random.Random(7))
    expected = Backoff(initial=1, maximum=3, rng=random.Random(7))
    flaky = Flaky(*(Transient() for _ in range(4)))
    assert make(clock, wait=backoff, attempts=5).call(flaky) == "ok"
    assert clock.sleeps == [expected(n) for n in (1, 2, 3, 4)]
    assert all(s <= c for s, c in zip(clock.sleeps, (1, 2, 3, 3), strict=True))


def test_zero_wait_makes_no_sleep_call() -> None:
    """wait=0 retries at once: the clock is never asked to sleep (peers sleep(0))."""
    clock = FakeClock()
    make(clock, wait=0, attempts=4).call(Flaky(Transient(), Transient(), Transient()))
    assert clock.sleeps == []


def test_tenacity_waits_are_accepted() -> None:
    """A tenacity wait strategy gets a RetryCallState with the right attempt number."""
    clock = FakeClock()
    wait = tenacity.wait_exponential(multiplier=1, min=0, max=100)
    make(clock, wait=wait, attempts=4).call(Flaky(Transient(), Transient(), Transient()))
    assert clock.sleeps == [1, 2, 4]
    clock = FakeClock()
    combined = tenacity.wait_fixed(1) + tenacity.wait_fixed(0.5)
    make(clock, wait=combined, attempts=2).call(Flaky(Transient()))
    assert clock.sleeps == [1.5]


def test_tenacity_waits_see_the_policy_clock() -> None:
    """seconds_since_start, outcome_timestamp and idle_for come from the policy's clock."""
    clock = FakeClock(start=100.0)
    seen: list[tuple[float | None, float, float | None, int]] = []

    class Recording(tenacity.wait.wait_base):
        def __call__(self, retry_state: tenacity.RetryCallState) -> float:
            seen.append(
                (
                    retry_state.seconds_since_start,
                    retry_state.idle_for,
                    retry_state.outcome_timestamp,
                    retry_state.attempt_number,
                )
            )
            return 2.0

    flaky = Flaky(Transient(), Transient(), clock=clock, takes=5)
    make(clock, wait=Recording(), attempts=3).call(flaky)
    assert seen == [(5.0, 0.0, 105.0, 1), (12.0, 2.0, 112.0, 2)]


@pytest.mark.anyio
async def test_tenacity_waits_see_the_policy_clock_in_async_code() -> None:
    clock = FakeClock(start=100.0)
    seen: list[float | None] = []

    class Recording(tenacity.wait.wait_base):
        def __call__(self, retry_state: tenacity.RetryCallState) -> float:
            seen.append(retry_state.seconds_since_start)
            return 1.0

    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        clock.advance(3)
        if calls < 3:
            raise Transient
        return "ok"

    assert await make(clock, wait=Recording(), attempts=3).acall(flaky) == "ok"
    assert seen == [3.0, 7.0]


def test_a_user_subclass_of_wait_base_is_accepted() -> None:
    """Any tenacity.wait.wait_base instance is a wait, not only tenacity's own classes."""

    class Linear(tenacity.wait.wait_base):
        def __call__(self, retry_state: tenacity.RetryCallState) -> float:
            return float(retry_state.attempt_number)

    clock = FakeClock()
    make(clock, wait=Linear(), attempts=3).call(Flaky(Transient(), Transient()))
    assert clock.sleeps == [1.0, 2.0]
    clock = FakeClock()
    make(clock, wait=Linear() + tenacity.wait_fixed(0.5), attempts=2).call(Flaky(Transient()))
    assert clock.sleeps == [1.5]


@pytest.mark.parametrize(
    ("wait", "match"),
    [
        (tenacity.stop_after_attempt(3), r"wait=.*stop strategy.*attempts="),
        (tenacity.stop_after_delay(3), r"wait=.*stop strategy.*deadline"),
        (tenacity.retry_if_exception_type(ValueError), r"wait=.*retry condition.*on="),
        (tenacity.Retrying(), r"wait=.*tenacity.Retrying"),
        (lambda state: 1, r"wait=.*wait_base"),
        (print, r"wait=.*wait_base"),
        (object(), r"wait="),
        ("1s", r"wait="),
        (None.__class__, r"wait="),
    ],
)
def test_wrong_objects_given_to_wait_are_refused(wait: object, match: str) -> None:
    """A tenacity stop or retry object, or a plain callable, is a clear TypeError naming wait=."""
    with pytest.raises(TypeError, match=match):
        make(wait=wait)


def test_a_tenacity_wait_returning_nonsense_names_wait() -> None:
    class Broken(tenacity.wait.wait_base):
        def __call__(self, retry_state: tenacity.RetryCallState) -> float:
            return math.nan

    with pytest.raises(ValueError, match=r"wait=.*returned nan"):
        make(wait=Broken()).call(Flaky(Transient()))


def test_tenacity_is_imported_only_for_a_tenacity_wait() -> None:
    """Building policies, refusing a bad wait= and retrying import no tenacity."""
    probe = """
import sys, resilience
from resilience.testing import FakeClock
retry = resilience.Retry(on=ValueError, wait=resilience.Backoff(), clock=FakeClock())
resilience.Retry(on=ValueError, wait=1.5)
try:
    resilience.Retry(on=ValueError, wait=lambda state: 1)
except TypeError:
    pass
calls = []
def flaky():
    calls.append(1)
    if len(calls) < 2:
        raise ValueError
retry.call(flaky)
print("tenacity" in sys.modules)
"""
    output = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert output.stdout.strip() == "False"


def test_retry_after_is_honoured_as_a_minimum() -> None:
    """A server's Retry-After is never undercut by a shorter backoff."""

    class Response:
        headers = {"Retry-After": "5"}

    class Throttled(Transient):
        response = Response()

    clock = FakeClock()
    make(clock, wait=0.1).call(Flaky(Throttled()))
    assert clock.sleeps == [5.0]


def test_retry_after_above_the_maximum_fails_at_once() -> None:
    """A server-chosen hour is not slept: the call fails now, the delay in the note."""

    class Response:
        headers = {"Retry-After": "3600"}

    class Throttled(Transient):
        response = Response()

    clock = FakeClock()
    flaky = Flaky(Throttled())
    with pytest.raises(Throttled) as caught:
        make(clock, max_retry_after=60).call(flaky)
    assert flaky.calls == 1
    assert clock.sleeps == []
    assert "retry_after 3600.000s > max_retry_after" in caught.value.__notes__[0]


def test_result_retry_after_is_honoured() -> None:
    """A failing response's Retry-After sets the wait before the next attempt."""

    class Response:
        def __init__(self, status: int, retry_after: str | None = None) -> None:
            self.status = status
            self.headers = {"Retry-After": retry_after} if retry_after else {}

    responses = iter([Response(429, "2"), Response(200)])
    clock = FakeClock()
    retry = make(clock, wait=0, retry_if_result=lambda r: r.status == 429)
    assert retry.call(lambda: next(responses)).status == 200
    assert clock.sleeps == [2.0]


# -- deadlines -----------------------------------------------------------------------


def test_retry_never_sleeps_past_the_deadline() -> None:
    """Inside deadline(1.0), no retry starts that cannot finish before it."""
    clock = FakeClock()
    flaky = Flaky(*(Transient() for _ in range(10)), clock=clock, takes=0.2)
    retry = make(clock, wait=Backoff(initial=0.3, jitter="none"), attempts=10)
    with deadline(1.0, clock=clock), pytest.raises(Transient) as caught:
        retry.call(flaky)
    assert clock.monotonic() <= 1.0
    assert caught.value.__notes__[0].endswith("(deadline)")
    assert flaky.calls == 2  # 0.2 + 0.3 + 0.2 = 0.7; a third would end at 0.7 + 0.6 + 0.2


def test_the_deadline_estimate_is_the_longest_attempt_so_far() -> None:
    """Attempts of 0.9, 0.1, 0.1 s in a 2 s deadline: a fourth would need 0.9 s of 0.9 left."""
    clock = FakeClock()
    durations = iter([0.9, 0.1, 0.1, 0.1])
    calls = 0

    def flaky() -> str:
        nonlocal calls
        calls += 1
        clock.advance(next(durations))
        raise Transient

    with deadline(2.0, clock=clock), pytest.raises(Transient) as caught:
        make(clock, wait=0, attempts=10).call(flaky)
    assert calls == 3  # the average (0.37 s) would have allowed a fourth
    assert caught.value.__notes__[0].endswith("(deadline)")


def test_retry_respects_a_real_one_second_deadline() -> None:
    """Real time: with 0.9 s waits and a 1 s deadline, the call ends within the second.

    stamina overruns the same setup to 2.7 s. Generous bound for loaded machines.
    """
    retry = Retry(on=Transient, attempts=5, wait=Backoff(initial=0.9, jitter="none"))
    start = time.monotonic()
    with deadline(1.0), pytest.raises(Transient):
        retry.call(Flaky(*(Transient() for _ in range(5))))
    assert time.monotonic() - start < 1.0 + 0.25


# -- budget ----------------------------------------------------------------------------


def test_budget_stops_retries_when_spent() -> None:
    """With the budget spent, the original error is raised at once with a note."""
    clock = FakeClock()
    budget = RetryBudget("payments", ratio=0.0, min_per_second=0.1, window=10, clock=clock)
    retry = make(clock, wait=0, budget=budget, attempts=3)
    assert retry.call(Flaky(Transient())) == "ok"  # the one retry the floor allows
    flaky = Flaky(Transient())
    with pytest.raises(Transient) as caught:
        retry.call(flaky)
    assert flaky.calls == 1
    assert caught.value.__notes__[0].endswith("(budget)")
    assert retry.metrics()["budget_exhausted"] == 1
    assert budget.metrics() == {"requests": 2, "exhausted": 1}


# -- concurrency, async, events, metrics ----------------------------------------------------


def test_one_retry_shared_by_threads_keeps_calls_apart() -> None:
    """8 threads x 200 calls through one Retry: each call retries on its own."""
    retry = Retry(on=Transient, attempts=3, wait=0)
    barrier = threading.Barrier(8, timeout=30)
    results: list[str] = []

    def worker() -> None:
        barrier.wait()
        for _ in range(200):
            results.append(retry.call(Flaky(Transient(), Transient())))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert results == ["ok"] * 1600
    metrics = retry.metrics()
    assert metrics["success_after_retry"] == 1600
    assert metrics["retries"] == 3200


@pytest.mark.anyio
async def test_async_retry_on_both_loops() -> None:
    """Coroutines are retried with the clock's async sleep."""
    clock = FakeClock()
    attempts = 0

    @make(clock, wait=Backoff(initial=1, jitter="none"), attempts=3)
    async def fetch() -> str:
        nonlocal attempts
        attempts += 1
        await anyio.lowlevel.checkpoint()
        if attempts < 3:
            raise Transient
        return "ok"

    assert await fetch() == "ok"
    assert clock.sleeps == [1, 2]


def test_events_and_metrics() -> None:
    """Each retry is announced; giving up too; counters add up per outcome."""
    retry = make(wait=0, attempts=2, name="orders")
    events: list[Event] = []
    retry.events.subscribe(events.append)
    retry.call(Flaky())
    retry.call(Flaky(Transient()))
    with pytest.raises(Transient):
        retry.call(Flaky(Transient(), Transient()))
    with pytest.raises(Fatal):
        retry.call(Flaky(Fatal()))
    assert [type(e) for e in events] == [RetryScheduled, RetryScheduled, RetryGaveUp]
    gave_up = events[-1]
    assert isinstance(gave_up, RetryGaveUp)
    assert (gave_up.attempts, gave_up.reason, gave_up.error_type) == (2, "attempts", "Transient")
    assert retry.metrics() == {
        "success_first_try": 1,
        "success_after_retry": 1,
        "failed_after_retry": 1,
        "failed_not_retryable": 1,
        "retries": 2,
        "budget_exhausted": 0,
        "cancelled": 0,
    }


@pytest.mark.parametrize(
    ("config", "error", "match"),
    [
        ({"on": None}, TypeError, "on="),
        ({"on": "Transient"}, TypeError, "on="),
        ({"on": 3}, TypeError, "on="),
        ({"on": (Transient, 3)}, TypeError, "on="),
        ({"on": int}, TypeError, "on="),
        ({"on": KeyboardInterrupt}, ValueError, "on="),
        ({"on": ()}, ValueError, "on="),  # and no retry_if_result: nothing could be retried
        ({"attempts": 0}, ValueError, "attempts="),
        ({"attempts": -1}, ValueError, "attempts="),
        ({"attempts": 2.5}, TypeError, "attempts="),
        ({"attempts": 3.0}, TypeError, "attempts="),
        ({"attempts": True}, TypeError, "attempts="),
        ({"attempts": "3"}, TypeError, "attempts="),
        ({"attempts": None}, TypeError, "attempts="),
        ({"wait": -1}, ValueError, "wait="),
        ({"wait": math.nan}, ValueError, "wait="),
        ({"wait": math.inf}, ValueError, "wait="),
        ({"wait": datetime.timedelta(seconds=-1)}, ValueError, "wait="),
        ({"wait": True}, TypeError, "wait="),
        ({"wait": "1s"}, TypeError, "wait="),
        ({"wait": lambda state: 1}, TypeError, "wait="),
        ({"retry_if_result": 503}, TypeError, "retry_if_result="),
        ({"retry_if_result": True}, TypeError, "retry_if_result="),
        ({"budget": 0.2}, TypeError, "budget="),
        ({"budget": True}, TypeError, "budget="),
        ({"max_retry_after": -1}, ValueError, "max_retry_after="),
        ({"max_retry_after": math.nan}, ValueError, "max_retry_after="),
        ({"max_retry_after": math.inf}, ValueError, "max_retry_after="),
        ({"max_retry_after": True}, TypeError, "max_retry_after="),
        ({"max_retry_after": "60"}, TypeError, "max_retry_after="),
        ({"max_retry_after": None}, TypeError, "max_retry_after="),
        ({"raise_on_result": 1}, TypeError, "raise_on_result="),
        ({"raise_on_result": None}, TypeError, "raise_on_result="),
        ({"retry_circuit_open": "yes"}, TypeError, "retry_circuit_open="),
        ({"retry_circuit_open": 0}, TypeError, "retry_circuit_open="),
        ({"discard_result": "close"}, TypeError, "discard_result="),
        ({"name": ""}, ValueError, "name="),
        ({"name": "  "}, ValueError, "name="),
        ({"name": 3}, TypeError, "name="),
        ({"name": None}, TypeError, "name="),
        ({"clock": "now"}, TypeError, "clock="),
    ],
)
def test_bad_configuration(config, error, match) -> None:
    """Every argument is validated at construction, naming the parameter."""
    config.setdefault("on", Transient)
    with pytest.raises(error, match=match):
        Retry(**config)


def test_seconds_accept_a_timedelta() -> None:
    """wait= and max_retry_after= take a datetime.timedelta, as stamina does."""

    class Throttled(Transient):
        retry_after = 90.0

    clock = FakeClock()
    retry = make(clock, wait=datetime.timedelta(milliseconds=250), attempts=2)
    retry.call(Flaky(Transient()))
    assert clock.sleeps == [0.25]
    assert make(max_retry_after=datetime.timedelta(minutes=2)).max_retry_after == 120.0
    assert make(clock, max_retry_after=datetime.timedelta(minutes=2)).call(Flaky(Throttled()))
    assert clock.sleeps == [0.25, 90.0]


def test_on_may_be_empty_when_results_are_retried() -> None:
    """on=() is accepted with retry_if_result: results only."""
    assert make(on=(), retry_if_result=lambda r: r is None).on.types == ()


def test_repr() -> None:
    """The repr says what is retried and how often."""
    assert (
        repr(make(attempts=4)) == "Retry(name='retry', on=ExceptionFilter(Transient), attempts=4)"
    )
    assert resilience.RetryExhaustedError.__mro__[1] is resilience.ResilienceError


def test_discard_result_is_called_for_each_retried_result_only() -> None:
    """A failing result that will be retried is discarded; the returned one is not."""
    discarded: list[int] = []
    results = iter([503, 502, 503])
    retry = make(
        wait=0, attempts=3, retry_if_result=lambda s: s >= 500, discard_result=discarded.append
    )
    assert retry.call(lambda: next(results)) == 503
    assert discarded == [503, 502]


@pytest.mark.anyio
async def test_async_discard_result_is_awaited() -> None:
    """An async discard (closing an async response) is awaited before the retry."""
    discarded: list[int] = []

    async def discard(status: int) -> None:
        await anyio.lowlevel.checkpoint()
        discarded.append(status)

    statuses = iter([503, 200])

    async def call() -> int:
        return next(statuses)

    retry = make(wait=0, retry_if_result=lambda s: s >= 500, discard_result=discard)
    assert await retry.acall(call) == 200
    assert discarded == [503]
    with pytest.raises(TypeError, match="discard_result="):
        make(discard_result=3)


def test_a_call_never_retried_is_not_counted_as_failed_after_retry() -> None:
    """attempts=1 (or a give-up before any retry) counts as failed_not_retryable."""
    retry = make(attempts=1)
    with pytest.raises(Transient):
        retry.call(Flaky(Transient()))
    metrics = retry.metrics()
    assert (metrics["failed_not_retryable"], metrics["failed_after_retry"]) == (1, 0)


# -- names and statuses that identify the downstream ---------------------------------


def test_an_unnamed_retry_takes_its_budgets_name() -> None:
    """Retry(name left at "retry") with RetryBudget("payments") is named "payments"."""
    budget = RetryBudget("payments")
    retry = Retry(on=Transient, wait=0, attempts=2, budget=budget)
    assert retry.name == "payments"
    events: list[Event] = []
    retry.events.subscribe(events.append)
    with pytest.raises(Transient) as caught:
        retry.call(Flaky(Transient(), Transient()))
    assert {event.name for event in events} == {"payments"}
    assert "retry 'payments' gave up" in caught.value.__notes__[-1]
    # A name given, or a budget without a name of its own, changes nothing.
    assert Retry(on=Transient, budget=budget, name="charge").name == "charge"
    assert Retry(on=Transient, budget=RetryBudget()).name == "retry"
    assert Retry(on=Transient).name == "retry"


class Response:
    """Just enough of an HTTP response: an int status_code."""

    def __init__(self, status_code: object) -> None:
        self.status_code = status_code


class StatusError(Exception):
    """Like httpx.HTTPStatusError: the response that failed rides on the exception."""

    def __init__(self, status_code: object) -> None:
        super().__init__(f"status {status_code}")
        self.response = Response(status_code)


class Outcomes:
    """Raises or returns the given outcomes in order (exceptions are raised), then "ok"."""

    def __init__(self, *outcomes: object) -> None:
        self.outcomes = list(outcomes)

    def __call__(self) -> object:
        outcome = self.outcomes.pop(0) if self.outcomes else "ok"
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome


def _scheduled(retry: Retry, *outcomes: object) -> list[int | None]:
    events: list[Event] = []
    retry.events.subscribe(events.append)
    with contextlib.suppress(Exception):  # only the events matter here
        retry.call(Outcomes(*outcomes))
    return [e.status for e in events if isinstance(e, RetryScheduled)]


def test_retry_scheduled_carries_the_status_that_triggered_it() -> None:
    """A failing response's status_code, or an exception's .response.status_code; else None."""
    on_result = Retry(
        on=Transient,
        wait=0,
        attempts=5,
        retry_if_result=lambda r: isinstance(r, Response) and r.status_code != 200,
    )
    assert _scheduled(on_result, Response(503), Response(429), Transient()) == [503, 429, None]
    on_error = Retry(on=StatusError, wait=0, attempts=3)
    assert _scheduled(on_error, StatusError(502), StatusError(500)) == [502, 500]
    # Not an int status (a bool, a string): no status rather than a wrong one.
    odd = Retry(on=StatusError, wait=0, attempts=3)
    assert _scheduled(odd, StatusError(True), StatusError("503")) == [None, None]


def test_retry_scheduled_status_is_optional_for_older_callers() -> None:
    """Built without status=, the event has status None; it compares and pickles as before."""
    import pickle

    old = RetryScheduled(name="r", time=1.0, attempt=1, delay=0.5, error_type="E")
    assert old.status is None
    assert old == RetryScheduled(
        name="r", time=1.0, attempt=1, delay=0.5, error_type="E", status=None
    )
    new = RetryScheduled(name="r", time=1.0, attempt=1, delay=0.5, error_type=None, status=503)
    assert pickle.loads(pickle.dumps(new)) == new
    assert "status=503" in repr(new)


def test_the_structlog_observer_logs_the_status() -> None:
    """retry.scheduled log lines carry status (None when no response triggered the retry)."""
    from structlog.testing import capture_logs

    from resilience.logging import StructlogObserver

    retry = Retry(
        on=Transient,
        wait=0,
        attempts=3,
        name="log-status",
        retry_if_result=lambda r: isinstance(r, Response),
    )
    retry.events.subscribe(StructlogObserver())
    with capture_logs() as logs:
        retry.call(Outcomes(Response(503), Transient()))
    scheduled = [log for log in logs if log["event"] == "retry.scheduled"]
    assert [log["status"] for log in scheduled] == [503, None]
