"""Hedge semantics on a FakeClock: delays, budget, deadline, failures, cancellation.

The rules are those of docs/guide/hedging.md. Every attempt here waits on the
fake clock's alarms, and the test moves the clock a millisecond at a time
once every task is blocked: the schedule is exact on asyncio and trio.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import resilience
from resilience import (
    Bulkhead,
    BulkheadFullError,
    CircuitBreaker,
    CircuitOpenError,
    Hedge,
    MisuseError,
    Retry,
    RetryBudget,
    compose,
    deadline,
)
from resilience.events import Event, HedgeBudgetExhausted, HedgeSent, HedgeWon
from resilience.testing import FakeClock

pytestmark = pytest.mark.anyio

STEP = 0.001


async def wait_until(clock: FakeClock, at: float) -> None:
    """Sleep until the fake clock reads `at` (moved by the test, not by this sleep)."""
    event = anyio.Event()
    alarm = clock.call_at(at, event.set)
    try:
        await event.wait()
    finally:
        alarm.cancel()


class Downstream:
    """A scripted async callable: attempt i takes `latencies[i]`, then gives `outcomes[i]`."""

    def __init__(
        self, clock: FakeClock, latencies: list[float], outcomes: list[object] | None = None
    ) -> None:
        self.clock = clock
        self.latencies = latencies
        self.outcomes = outcomes or [f"answer {i + 1}" for i in range(len(latencies))]
        self.started: list[float] = []
        self.cancelled: list[int] = []
        self.finished: list[int] = []  # each attempt's finally block ran

    async def __call__(self) -> object:
        number = len(self.started) + 1
        self.started.append(self.clock.monotonic())
        try:
            await wait_until(self.clock, self.clock.monotonic() + self.latencies[number - 1])
        except BaseException:
            self.cancelled.append(number)
            raise
        finally:
            self.finished.append(number)
        outcome = self.outcomes[number - 1]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome


def next_alarm(clock: FakeClock) -> float | None:
    """When the fake clock's next pending alarm is due, if one is."""
    return min((when for when, _, alarm in clock._alarms if alarm.pending), default=None)


async def settle() -> None:
    """Let every task run until it waits (cheaper than anyio.wait_all_tasks_blocked on asyncio)."""
    for _ in range(40):
        await anyio.lowlevel.checkpoint()


async def drive(clock: FakeClock, call: Callable[[], Awaitable[Any]], limit: float = 5.0) -> Any:
    """Run `call()`, moving the clock to the next alarm whenever every task is blocked."""
    box: dict[str, Any] = {}

    async def run() -> None:
        try:
            box["value"] = await call()
        except Exception as exc:
            box["error"] = exc

    async with anyio.create_task_group() as group:
        group.start_soon(run)
        steps = 0
        while True:
            await settle()
            if box:
                break
            steps += 1
            assert steps < 1000, "the hedged call never ended"
            due = next_alarm(clock)
            if due is not None:
                clock.advance(max(due - clock.monotonic(), 0.0))
    if "error" in box:
        raise box["error"]
    return box["value"]


def hedge(clock: FakeClock, **options: Any) -> Hedge:
    options.setdefault("budget", RetryBudget(ratio=1.0, min_per_second=100, clock=clock))
    return Hedge(clock=clock, **options)


async def test_fixed_delay_sends_a_hedge_that_wins_and_cancels_the_first() -> None:
    """A hedge goes out after `delay`; the first answer wins; the loser is cancelled and awaited."""
    clock = FakeClock()
    policy = hedge(clock, delay=0.05)
    events: list[Event] = []
    policy.events.subscribe(events.append)
    downstream = Downstream(clock, [1.0, 0.01])
    result = await drive(clock, lambda: policy.acall(downstream))
    assert result == "answer 2"
    assert downstream.started == pytest.approx([0.0, 0.05])
    assert downstream.cancelled == [1]
    assert sorted(downstream.finished) == [1, 2]  # the loser's finally ran before the return
    assert clock.monotonic() == pytest.approx(0.06)
    assert policy.metrics() == {"calls": 1, "sent": 1, "won": 1, "refused": 0, "deadline": 0}
    assert [type(e) for e in events] == [HedgeSent, HedgeWon]
    sent, won = events
    assert isinstance(sent, HedgeSent)
    assert (sent.attempt, sent.reason) == (2, "delay")
    assert sent.elapsed == pytest.approx(0.05)
    assert isinstance(won, HedgeWon)
    assert won.attempt == 2
    assert won.elapsed == pytest.approx(0.06)


async def test_a_fast_first_attempt_sends_no_hedge() -> None:
    """An answer before the delay: no hedge, nothing spent from the budget."""
    clock = FakeClock()
    budget = RetryBudget(ratio=1.0, min_per_second=100, clock=clock)
    policy = hedge(clock, delay=0.05, budget=budget)
    available = budget.available()
    downstream = Downstream(clock, [0.02])
    assert await drive(clock, lambda: policy.acall(downstream)) == "answer 1"
    assert len(downstream.started) == 1
    assert budget.available() == available
    assert policy.metrics()["sent"] == 0


async def test_hedges_go_out_every_delay_up_to_max_hedged_attempts() -> None:
    """Up to `max_hedged_attempts` extra attempts, one every delay; the original can still win."""
    clock = FakeClock()
    policy = hedge(clock, delay=datetime.timedelta(milliseconds=10), max_hedged_attempts=3)
    downstream = Downstream(clock, [0.045, 1.0, 1.0, 1.0])
    assert await drive(clock, lambda: policy.acall(downstream)) == "answer 1"
    assert downstream.started == pytest.approx([0.0, 0.01, 0.02, 0.03])
    assert sorted(downstream.cancelled) == [2, 3, 4]
    assert policy.metrics()["sent"] == 3
    assert policy.metrics()["won"] == 0


async def test_adaptive_delay_uses_warmup_then_the_percentile() -> None:
    """Before `min_samples` latencies: `warmup_delay`; then the percentile (>= `min_delay`)."""
    clock = FakeClock()
    policy = hedge(clock, window=10, min_samples=5, warmup_delay=0.2, percentile=0.8)
    assert policy.current_delay() == 0.2
    assert policy.expected_duration() == 0.0
    for latency in (0.01, 0.02, 0.03, 0.04):
        await drive(clock, lambda latency=latency: policy.acall(Downstream(clock, [latency])))
    assert policy.current_delay() == 0.2  # 4 samples: still warming up
    await drive(clock, lambda: policy.acall(Downstream(clock, [0.05])))
    # Nearest rank: the 0.8 percentile of 5 samples is the 4th smallest.
    assert policy.current_delay() == pytest.approx(0.04)
    assert policy.expected_duration() == pytest.approx(0.04)
    downstream = Downstream(clock, [1.0, 0.001])
    await drive(clock, lambda: policy.acall(downstream))
    assert downstream.started[1] - downstream.started[0] == pytest.approx(0.04)
    fast = hedge(clock, min_samples=1, window=1, min_delay=0.003)
    await drive(clock, lambda: fast.acall(Downstream(clock, [0.0])))
    assert fast.current_delay() == 0.003


async def test_the_window_keeps_only_recent_latencies() -> None:
    """The percentile is of the last `window` latencies."""
    clock = FakeClock()
    policy = hedge(clock, window=3, min_samples=3, percentile=1.0, warmup_delay=10)
    for latency in (0.5, 0.01, 0.01, 0.01):
        await drive(clock, lambda latency=latency: policy.acall(Downstream(clock, [latency])))
    assert policy.current_delay() == pytest.approx(0.01)


async def test_a_slow_loser_counts_as_at_least_the_time_it_ran() -> None:
    """A loser cancelled after the delay counts the time it ran; one cancelled sooner, nothing."""
    clock = FakeClock()
    policy = hedge(clock, delay=0.05, max_hedged_attempts=2, window=10, min_samples=1)
    downstream = Downstream(clock, [1.0, 0.02, 1.0])
    await drive(clock, lambda: policy.acall(downstream))
    assert sorted(policy._latencies._samples) == pytest.approx([0.02, 0.07])


async def test_budget_refusal_stops_hedging_for_the_call() -> None:
    """A spent budget refuses the hedge: counted, published, and the first attempt goes on alone."""
    clock = FakeClock()
    budget = RetryBudget(ratio=0.0, min_per_second=0.1, window=10, clock=clock)
    policy = hedge(clock, delay=0.01, budget=budget, max_hedged_attempts=2)
    events: list[Event] = []
    policy.events.subscribe(events.append)
    first = Downstream(clock, [0.5, 0.005])
    assert await drive(clock, lambda: policy.acall(first)) == "answer 2"  # the 1 token
    second = Downstream(clock, [0.5])
    assert await drive(clock, lambda: policy.acall(second)) == "answer 1"
    assert len(second.started) == 1
    assert policy.metrics()["refused"] == 1
    assert HedgeBudgetExhausted(name="hedge", time=pytest.approx(0.025)) in events  # type: ignore[arg-type]


async def test_own_budget_allows_ratio_of_calls_plus_a_small_reserve() -> None:
    """Without `budget=`, hedges <= ratio * calls + 1 per second over 10 s (a reserve of 10)."""
    clock = FakeClock()
    policy = Hedge(delay=0.0, ratio=0.05, clock=clock)
    sent = 0
    for _ in range(200):
        downstream = Downstream(clock, [0.001, 0.001])
        await drive(clock, lambda downstream=downstream: policy.acall(downstream))
        sent += len(downstream.started) - 1
    assert sent == policy.metrics()["sent"]
    assert sent <= 0.05 * 200 + 10
    assert policy.metrics()["refused"] == 200 - sent


async def test_a_shared_budget_is_fed_by_the_retries_not_the_hedge() -> None:
    """With `budget=`, the hedge only withdraws: the Retry sharing it deposits once per call."""
    clock = FakeClock()
    budget = RetryBudget(ratio=0.5, min_per_second=0.1, clock=clock)
    policy = Hedge(delay=0.01, budget=budget, clock=clock)
    await drive(clock, lambda: policy.acall(Downstream(clock, [0.001])))
    assert budget.metrics()["requests"] == 0
    retry = Retry(on=ValueError, budget=budget, clock=clock)
    await drive(clock, lambda: compose(retry, policy).acall(Downstream(clock, [0.001])))
    assert budget.metrics()["requests"] == 1


async def test_no_hedge_that_cannot_finish_before_the_deadline() -> None:
    """Inside a deadline, a hedge is sent only if more time is left than the expected duration."""
    clock = FakeClock()
    policy = hedge(clock, delay=0.01, window=10, min_samples=1, percentile=1.0)
    await drive(clock, lambda: policy.acall(Downstream(clock, [0.1, 0.1])))  # expected: 0.1 s
    late = Downstream(clock, [0.5, 0.001])

    async def within(seconds: float) -> object:
        with deadline(seconds, clock=clock):
            return await policy.acall(late)

    assert await drive(clock, lambda: within(0.105)) == "answer 1"  # 0.095 s left < 0.1 s
    assert len(late.started) == 1
    assert policy.metrics()["deadline"] == 1
    early = Downstream(clock, [0.5, 0.001])
    late = early
    assert await drive(clock, lambda: within(1.0)) == "answer 2"
    assert len(early.started) == 2


async def test_a_non_fatal_failure_sends_the_next_hedge_at_once() -> None:
    """A failure matching `non_fatal` sends the next attempt at once, not after the delay."""
    clock = FakeClock()
    policy = hedge(clock, delay=0.5, non_fatal=ConnectionError)
    downstream = Downstream(clock, [0.01, 0.02], [ConnectionError("reset"), "ok"])
    assert await drive(clock, lambda: policy.acall(downstream)) == "ok"
    assert downstream.started == pytest.approx([0.0, 0.01])


async def test_a_non_fatal_result_sends_the_next_hedge_and_is_discarded() -> None:
    """A result `non_fatal_result` rejects: next hedge at once; unused ones go to discard_result."""
    clock = FakeClock()
    discarded: list[object] = []

    async def discard(result: object) -> None:
        discarded.append(result)

    policy = hedge(clock, delay=0.5, non_fatal_result=lambda r: r == 503, discard_result=discard)
    downstream = Downstream(clock, [0.01, 0.02], [503, 200])
    assert await drive(clock, lambda: policy.acall(downstream)) == 200
    assert discarded == [503]


async def test_a_fatal_failure_cancels_every_attempt_and_is_raised() -> None:
    """Any failure not `non_fatal` cancels the others (awaited) and is raised."""
    clock = FakeClock()
    policy = hedge(clock, delay=0.01, non_fatal=ConnectionError)
    downstream = Downstream(clock, [1.0, 0.01], ["slow", ValueError("bad request")])
    with pytest.raises(ValueError, match="bad request"):
        await drive(clock, lambda: policy.acall(downstream))
    assert downstream.cancelled == [1]
    assert sorted(downstream.finished) == [1, 2]


async def test_when_every_attempt_fails_the_first_error_is_raised() -> None:
    """All attempts fail non-fatally: the first attempt's error is raised."""
    clock = FakeClock()
    policy = hedge(clock, delay=0.01, non_fatal=OSError, max_hedged_attempts=2)
    first = OSError("first")
    downstream = Downstream(clock, [0.05, 0.05, 0.05], [first, OSError("2"), OSError("3")])
    with pytest.raises(OSError, match="first") as caught:
        await drive(clock, lambda: policy.acall(downstream))
    assert caught.value is first
    results = Downstream(clock, [0.01, 0.01], [503, 502])
    failing = hedge(clock, delay=0.5, non_fatal_result=lambda r: r >= 500)
    assert await drive(clock, lambda: failing.acall(results)) == 503


async def test_cancelling_the_caller_cancels_and_awaits_every_attempt() -> None:
    """Cancelling the caller cancels every attempt; the cancellation waits for their finally."""
    clock = FakeClock()
    policy = hedge(clock, delay=0.01)
    downstream = Downstream(clock, [1.0, 1.0])
    ended_after: list[list[int]] = []

    async def caller() -> None:
        try:
            await policy.acall(downstream)
        finally:
            ended_after.append(sorted(downstream.finished))

    async with anyio.create_task_group() as group:
        group.start_soon(caller)
        for _ in range(20):
            await settle()
            clock.advance(STEP)
        assert len(downstream.started) == 2
        group.cancel_scope.cancel()
    assert ended_after == [[1, 2]]
    assert sorted(downstream.cancelled) == [1, 2]


async def test_the_first_attempt_is_cancelled_and_awaited_on_a_quick_hedge_win() -> None:
    """The loser's `finally` (even one that awaits) has run when the call returns."""
    clock = FakeClock()
    policy = hedge(clock, delay=0.01)
    cleaned: list[str] = []

    async def call() -> str:
        number = len(cleaned) + 1
        cleaned.append("started")
        try:
            await wait_until(clock, clock.monotonic() + (1.0 if number == 1 else 0.001))
            return f"answer {number}"
        finally:
            with anyio.CancelScope(shield=True):  # a cleanup that awaits
                await anyio.lowlevel.checkpoint()
            cleaned.append(f"cleaned {number}")

    assert await drive(clock, lambda: policy.acall(call)) == "answer 2"
    assert sorted(cleaned[2:]) == ["cleaned 1", "cleaned 2"]


async def test_rejections_are_non_fatal_and_an_attempt_gets_its_own_permit() -> None:
    """compose(hedge, breaker): a permit per attempt; a rejected hedge does not fail the call."""
    clock = FakeClock()
    breaker = CircuitBreaker("db", clock=clock)
    policy = hedge(clock, delay=0.01)
    downstream = Downstream(clock, [0.05, 1.0])
    assert await drive(clock, lambda: compose(policy, breaker).acall(downstream)) == "answer 1"
    assert breaker.metrics().calls["success"] == 1  # the cancelled hedge: ignored, not a call
    assert breaker.metrics().calls["ignored"] == 1
    bulkhead = Bulkhead(max_concurrent=1, clock=clock)
    crowded = Downstream(clock, [0.05, 1.0])
    assert await drive(clock, lambda: compose(policy, bulkhead).acall(crowded)) == "answer 1"
    assert len(crowded.started) == 1  # the hedge was rejected by the bulkhead, not run
    breaker.force_open()
    with pytest.raises(CircuitOpenError):
        await drive(clock, lambda: compose(policy, breaker).acall(Downstream(clock, [0.01])))
    assert issubclass(BulkheadFullError, resilience.ResilienceError)


async def test_retry_outside_hedge_retries_the_hedged_call() -> None:
    """compose(retry, hedge): a hedged call that fails is retried as a whole."""
    clock = FakeClock()
    retry = Retry(on=OSError, attempts=2, wait=0.0, clock=clock)
    policy = hedge(clock, delay=0.5)
    downstream = Downstream(clock, [0.01, 0.01], [OSError("down"), "ok"])
    assert await drive(clock, lambda: compose(retry, policy).acall(downstream)) == "ok"
    assert retry.metrics()["success_after_retry"] == 1
    assert policy.metrics()["calls"] == 2


async def test_sync_use_is_misuse() -> None:
    """A sync function, decorated or given to call(), raises MisuseError: hedging needs async."""
    policy = Hedge()

    def plain() -> int:
        return 1

    with pytest.raises(MisuseError, match="async def"):
        policy(plain)
    with pytest.raises(MisuseError, match="async def"):
        policy.call(plain)
    with pytest.raises(MisuseError, match="async def"):
        compose(policy, Retry(on=OSError))(plain)

    async def returns_plain() -> int:
        return 1

    with pytest.raises(MisuseError):
        await policy.acall(plain)  # type: ignore[arg-type]
    assert await policy(returns_plain)() == 1


@settings(max_examples=25, deadline=None)
@given(
    latencies=st.lists(
        st.lists(st.sampled_from([0.001, 0.004, 0.02, 0.3]), min_size=5, max_size=5),
        min_size=1,
        max_size=12,
    ),
    max_hedged=st.integers(1, 4),
    ratio=st.sampled_from([0.1, 0.5]),
)
def test_property_attempts_and_budget_are_bounded(
    latencies: list[list[float]], max_hedged: int, ratio: float
) -> None:
    """Over any schedule: attempts <= 1 + max_hedged_attempts; hedges <= ratio * calls + reserve."""
    clock = FakeClock()
    budget = RetryBudget(ratio=ratio, min_per_second=0.1, window=10, clock=clock)
    policy = Hedge(delay=0.003, max_hedged_attempts=max_hedged, budget=budget, clock=clock)
    retry = Retry(on=(), retry_if_result=lambda r: False, budget=budget, clock=clock)
    hedges = 0

    async def main() -> None:
        nonlocal hedges
        for script in latencies:
            downstream = Downstream(clock, script)
            await drive(clock, lambda d=downstream: compose(retry, policy).acall(d))
            assert 1 <= len(downstream.started) <= 1 + max_hedged
            hedges += len(downstream.started) - 1
            assert hedges <= ratio * budget.metrics()["requests"] + 0.1 * 10

    anyio.run(main)
    assert hedges == policy.metrics()["sent"]


async def test_zero_delay_sends_every_attempt_at_once() -> None:
    """delay=0: all `1 + max_hedged_attempts` attempts start together (Polly's parallel mode)."""
    clock = FakeClock()
    policy = hedge(clock, delay=0, max_hedged_attempts=2)
    downstream = Downstream(clock, [0.03, 0.01, 0.02])
    assert await drive(clock, lambda: policy.acall(downstream)) == "answer 2"
    assert downstream.started == [0.0, 0.0, 0.0]


async def test_a_broken_result_predicate_is_fatal() -> None:
    """A `non_fatal_result` that raises: its error is raised, the others cancelled."""
    clock = FakeClock()

    def broken(result: object) -> bool:
        raise RuntimeError("predicate")

    policy = hedge(clock, delay=0.01, non_fatal_result=broken)
    with pytest.raises(RuntimeError, match="predicate"):
        await drive(clock, lambda: policy.acall(Downstream(clock, [0.001])))


def test_ratio_and_budget_are_exclusive() -> None:
    """`ratio=` shapes the hedge's own budget: with `budget=` it is an error."""
    with pytest.raises(ValueError, match="ratio"):
        Hedge(budget=RetryBudget(), ratio=0.1)
    assert Hedge(budget=(shared := RetryBudget())).budget is shared


async def test_an_attempt_cut_by_an_inner_timeout_is_fatal() -> None:
    """compose(hedge, Timeout): an attempt cut by its timeout fails the call, unless non-fatal."""
    clock = FakeClock()
    timeout = resilience.Timeout(0.03, clock=clock)
    policy = hedge(clock, delay=0.01)
    with pytest.raises(resilience.DeadlineExceededError):
        await drive(clock, lambda: compose(policy, timeout).acall(Downstream(clock, [1.0, 1.0])))
    tolerant = hedge(clock, delay=0.01, non_fatal=resilience.DeadlineExceededError)
    downstream = Downstream(clock, [1.0, 0.025])
    assert await drive(clock, lambda: compose(tolerant, timeout).acall(downstream)) == "answer 2"


async def test_defaults_and_failures_count_no_latency() -> None:
    """The default warm-up delay is 100 ms; a failed attempt adds no latency sample."""
    clock = FakeClock()
    policy = hedge(clock, non_fatal=OSError, min_samples=1)
    assert policy.current_delay() == 0.1
    downstream = Downstream(clock, [0.01, 0.02], [OSError("reset"), "ok"])
    assert await drive(clock, lambda: policy.acall(downstream)) == "ok"
    assert list(policy._latencies._samples) == pytest.approx([0.02])


class PlainClock:
    """A clock of one's own: real time, no alarms (the hedge sleeps on it in a task)."""

    def monotonic(self) -> float:
        import time

        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        raise AssertionError("not used by async code")

    async def asleep(self, seconds: float) -> None:
        await anyio.sleep(seconds)


async def test_real_time_hedges_on_the_loop_and_on_a_clock_without_alarms() -> None:
    """On real time (the system clock, or any clock without alarms) the delay is real too."""
    for clock in (None, PlainClock()):
        policy = Hedge(delay=0.01, clock=clock)  # type: ignore[arg-type]
        calls: list[int] = []

        async def call(calls: list[int] = calls) -> int:
            number = len(calls) + 1
            calls.append(number)
            await anyio.sleep(5 if number == 1 else 0)
            return number

        with anyio.fail_after(4):
            assert await policy.acall(call) == 2


async def test_a_broken_non_fatal_predicate_is_fatal() -> None:
    """A `non_fatal` predicate that raises: its error is raised, the others cancelled."""
    clock = FakeClock()

    def broken(exc: BaseException) -> bool:
        raise RuntimeError("predicate")

    policy = hedge(clock, delay=0.01, non_fatal=broken)
    downstream = Downstream(clock, [1.0, 0.001], ["slow", OSError("x")])
    with pytest.raises(RuntimeError, match="predicate"):
        await drive(clock, lambda: policy.acall(downstream))
    assert downstream.cancelled == [1]


async def test_a_loser_that_answered_too_is_discarded() -> None:
    """A loser that answers anyway (as it was cancelled) goes to discard_result."""
    clock = FakeClock()
    discarded: list[object] = []
    policy = hedge(clock, delay=0.01, discard_result=discarded.append)
    started: list[int] = []

    async def stubborn() -> str:
        number = len(started) + 1
        started.append(number)
        try:
            await wait_until(clock, clock.monotonic() + (1.0 if number == 1 else 0.001))
        except BaseException:
            return "late answer"  # swallows its cancellation, as a finished response would
        return f"answer {number}"

    assert await drive(clock, lambda: policy.acall(stubborn)) == "answer 2"
    assert discarded == ["late answer"]


# -- attack findings: misuse, stray exceptions, cancellation, budget, latencies ----------


async def test_a_coroutine_object_instead_of_a_function_is_misuse() -> None:
    """A coroutine object given to acall: MisuseError, and no never-awaited warning.

    docs/guide/hedging.md, Async only: pass the function, `await hedge.acall(fn, ...)`.
    """
    import gc
    import warnings

    async def fetch() -> int:
        return 1

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "coroutine ... was never awaited" would fail the test
        with pytest.raises(MisuseError, match=r"hedge\.acall\(fetch, url\)"):
            await Hedge().acall(fetch())  # type: ignore[arg-type]
        gc.collect()


async def test_a_callable_returning_a_plain_value_is_misuse_that_names_no_sync_api() -> None:
    """The misuse for a plain return says hedging has no sync API (not "use policy.call")."""
    policy = Hedge(delay=0.01, non_fatal=Exception)  # a MisuseError is fatal even so
    with pytest.raises(MisuseError, match="no sync API") as caught:
        await policy.acall(lambda: 5)  # type: ignore[arg-type, return-value]
    assert "policy.call" not in str(caught.value)


class Stop(BaseException):
    """A BaseException that is neither a cancellation nor KeyboardInterrupt/SystemExit."""


@pytest.mark.parametrize("error", [Stop("stop"), SystemExit(3), KeyboardInterrupt()])
async def test_a_base_exception_in_an_attempt_reaches_the_caller_plain(
    error: BaseException,
) -> None:
    """An attempt's BaseException is fatal: the others are cancelled, it is raised as is.

    Never wrapped in the task group's or nursery's exception group (docs/guide/hedging.md,
    The rules: "that exception is raised").
    """
    clock = FakeClock()
    policy = hedge(clock, delay=0.01)
    downstream = Downstream(clock, [1.0, 0.01], ["slow", error])

    async def call() -> object:
        try:
            return await policy.acall(downstream)
        except BaseException as exc:  # caught here: the drive helper only passes Exceptions
            return exc

    assert await drive(clock, call) is error
    assert downstream.cancelled == [1]
    assert sorted(downstream.finished) == [1, 2]


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_stray_cancelled_error_is_raised_not_turned_into_none() -> None:
    """A stray CancelledError in an attempt is raised, never turned into a `None` result.

    An attempt awaiting a future someone else cancelled fails the call with
    it, as the unhedged call would.
    """
    import asyncio

    policy = Hedge(delay=0.01, ratio=1.0)
    cancelled_elsewhere = asyncio.get_running_loop().create_future()
    cancelled_elsewhere.cancel()

    async def call() -> int:
        await cancelled_elsewhere
        return 1

    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(policy.acall(call), 2)
    assert policy.metrics()["sent"] == 0  # fatal at once: no hedge sent after it


async def test_the_caller_sees_its_cancellation_plain() -> None:
    """Cancelling the caller: `except <the backend's cancellation>` around the call catches it.

    On trio, a nursery wraps even cancellations in an exception group; the hedge
    hands the caller the plain `trio.Cancelled`.
    """
    clock = FakeClock()
    policy = hedge(clock, delay=0.01)
    downstream = Downstream(clock, [1.0, 1.0])
    seen: list[type[BaseException]] = []

    async def caller() -> None:
        try:
            await policy.acall(downstream)
        except anyio.get_cancelled_exc_class():
            seen.append(anyio.get_cancelled_exc_class())
            raise
        except BaseException as exc:
            seen.append(type(exc))
            raise

    async with anyio.create_task_group() as group:
        group.start_soon(caller)
        for _ in range(20):
            await settle()
            clock.advance(STEP)
        group.cancel_scope.cancel()
    assert seen == [anyio.get_cancelled_exc_class()]


async def test_a_result_nobody_receives_is_discarded() -> None:
    """A result that arrived before the caller was cancelled goes to discard_result.

    The caller is cancelled while the losers still clean up: the answer is
    discarded, so an HTTP response is closed, not leaked.

    docs/guide/hedging.md, The rules: cancelling the caller.
    """
    clock = FakeClock()
    discarded: list[object] = []
    policy = hedge(clock, delay=0, max_hedged_attempts=1, discard_result=discarded.append)
    started: list[int] = []

    async def call() -> str:
        number = len(started) + 1
        started.append(number)
        try:
            await wait_until(clock, clock.monotonic() + (0.01 if number == 1 else 1.0))
        except BaseException:
            with anyio.CancelScope(shield=True):  # a loser's slow cleanup
                await wait_until(clock, clock.monotonic() + 0.05)
            raise
        return f"answer {number}"

    scope = anyio.CancelScope()
    ended: list[str] = []

    async def caller() -> None:
        with scope:
            await policy.acall(call)
        ended.append("cancelled" if scope.cancelled_caught else "returned")

    async with anyio.create_task_group() as group:
        group.start_soon(caller)
        for _ in range(30):  # 30 ms: the first answered at 10 ms, the loser cleans up until 60
            await settle()
            clock.advance(STEP)
        scope.cancel()
        for _ in range(100):  # let the loser's cleanup end
            await settle()
            if ended:
                break
            clock.advance(STEP)
    assert ended == ["cancelled"]
    assert discarded == ["answer 1"]


async def test_rejections_send_no_hedge_and_spend_no_budget() -> None:
    """A refused attempt is non-fatal but sends no hedge at once, and spends no budget.

    An open breaker (or a full bulkhead) would refuse the hedge too, and the
    budget the retries share would be drained for nothing.

    docs/guide/hedging.md, The rules: Failures.
    """
    clock = FakeClock()
    budget = RetryBudget(ratio=0.1, min_per_second=1, clock=clock)
    breaker = CircuitBreaker("open", clock=clock)
    breaker.force_open()
    policy = Hedge(delay=0.01, budget=budget, clock=clock)
    retry = Retry(on=OSError, attempts=2, wait=0.0, budget=budget, clock=clock)
    available = budget.available()
    guarded = compose(retry, policy, breaker)
    for _ in range(20):
        with pytest.raises(CircuitOpenError):
            await drive(clock, lambda: guarded.acall(Downstream(clock, [1.0])))
    assert policy.metrics() == {"calls": 20, "sent": 0, "won": 0, "refused": 0, "deadline": 0}
    assert budget.available() >= available  # the retries' budget is untouched
    assert clock.monotonic() == 0.0  # refused at once: nothing waited for the delay


def test_the_percentile_is_the_nearest_rank_of_the_last_window() -> None:
    """The percentile is the nearest rank of a sorted list of the last `window` latencies.

    The window is small enough here for the percentile to be recomputed on
    every sample.
    """
    import random

    from resilience._hedge import _Latencies

    rng = random.Random(18)
    window = 50
    latencies = _Latencies(window)
    kept: list[float] = []
    for _ in range(300):
        sample = rng.choice([0.0, 0.0, 0.001, rng.random()])  # ties and zeros too
        latencies.add(sample)
        kept = [*kept, sample][-window:]
        for fraction in (0.5, 0.95, 1.0):
            expected = sorted(kept)[max(math.ceil(fraction * len(kept)) - 1, 0)]
            assert latencies.percentile(fraction, 1) == expected


def test_a_large_window_follows_recent_latencies_while_it_fills() -> None:
    """A large window still holding few latencies follows them as they come.

    The percentile is recomputed once 1% of what it holds is new, not 1% of
    its size.
    """
    from resilience._hedge import _Latencies

    latencies = _Latencies(100_000)
    latencies.add(0.5)
    assert latencies.percentile(0.5, 1) == 0.5
    for _ in range(99):
        latencies.add(0.01)
    assert latencies.percentile(0.5, 1) == 0.01


class BackwardsClock:
    """A clock of one's own (no alarms) that steps back a second on every reading."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        self.now -= 1.0
        return self.now

    def sleep(self, seconds: float) -> None:
        raise AssertionError("not used by async code")

    async def asleep(self, seconds: float) -> None:
        await anyio.sleep(seconds)


async def test_a_clock_going_back_records_no_negative_latency() -> None:
    """A latency is never negative, so a clock stepping back cannot drag the delay below 0."""
    policy = Hedge(delay=5.0, min_samples=1, window=10, clock=BackwardsClock())  # type: ignore[arg-type]

    async def fast() -> int:
        return 1

    assert await policy.acall(fast) == 1
    assert list(policy._latencies._samples) == [0.0]
    assert policy.expected_duration() == 0.0


def test_the_documented_defaults() -> None:
    """The defaults of docs/guide/hedging.md, The rules.

    p95 of the last 1,000 latencies, >= 1 ms, after 20 samples, 100 ms until
    then; 1 hedge; 5% of the calls.
    """
    policy = Hedge()
    assert (policy.delay, policy.percentile, policy.window) == (None, 0.95, 1000)
    assert (policy.min_samples, policy.warmup_delay, policy.min_delay) == (20, 0.1, 0.001)
    assert (policy.max_hedged_attempts, policy.ratio) == (1, 0.05)
    assert policy.non_fatal.matches(OSError()) is False  # gRPC A6: every failure is fatal


async def test_every_attempt_runs_inside_the_callers_deadline() -> None:
    """docs/guide/hedging.md, Deadlines: each attempt sees the caller's deadline."""
    clock = FakeClock()
    policy = hedge(clock, delay=0.01)
    seen: list[object] = []

    async def call() -> int:
        seen.append(resilience.current_deadline())
        await wait_until(clock, clock.monotonic() + (1.0 if len(seen) == 2 else 0.001))
        return len(seen)

    async def within() -> int:
        with deadline(5.0, clock=clock) as given:
            seen.append(given)
            return await policy.acall(call)

    assert await drive(clock, within) == 3
    assert seen[1] is seen[0]
    assert seen[2] is seen[0]


async def test_many_callers_race_for_the_last_hedge_token() -> None:
    """Concurrent calls on real tasks: one token, one hedge; every call counted exactly once."""
    budget = RetryBudget(ratio=0.0, min_per_second=0.1, window=10)  # 1 token in all
    policy = Hedge(delay=0, budget=budget)
    sent: list[int] = []

    async def call() -> int:
        sent.append(1)
        await anyio.lowlevel.checkpoint()
        return 1

    async with anyio.create_task_group() as group:
        for _ in range(50):
            group.start_soon(policy.acall, call)
    assert len(sent) == 51
    counts = policy.metrics()
    assert (counts["calls"], counts["sent"], counts["refused"]) == (50, 1, 49)
    assert counts["deadline"] == 0
    assert counts["won"] <= 1


async def test_a_cancelled_hedge_holding_the_only_probe_gives_it_back() -> None:
    """A hedge that took the only half-open probe and lost gives it back.

    compose(hedge, breaker): the cancelled probe is settled as ignored, so the
    breaker is not stuck half-open: the next call probes and closes it.
    """
    clock = FakeClock()
    breaker = CircuitBreaker(
        "probe",
        consecutive_failures=1,
        failure_rate_threshold=None,
        open_duration=0.05,
        half_open_max_calls=1,
        clock=clock,
    )
    policy = hedge(clock, delay=0.1)
    started: list[int] = []

    async def call() -> str:
        number = len(started) + 1
        started.append(number)
        if number == 1:  # while it runs, the downstream fails for someone else
            await wait_until(clock, 0.01)
            breaker.acquire().record_failure()
            await wait_until(clock, 0.2)
        else:  # the hedge (at 0.1 s, half-open) holds the only probe, and loses
            await wait_until(clock, 5.0)
        return f"answer {number}"

    assert await drive(clock, lambda: compose(policy, breaker).acall(call)) == "answer 1"
    assert started == [1, 2]
    assert breaker.state is resilience.State.HALF_OPEN
    assert breaker.metrics().calls["ignored"] == 1  # the cancelled probe: no verdict
    assert await drive(clock, lambda: compose(policy, breaker).acall(call)) == "answer 3"
    assert breaker.state is resilience.State.CLOSED


async def test_a_timeout_around_the_hedge_cancels_every_attempt() -> None:
    """compose(Timeout, hedge): the whole hedged call is cut, every attempt's finally has run."""
    clock = FakeClock()
    policy = hedge(clock, delay=0.01)
    downstream = Downstream(clock, [1.0, 1.0])
    timeout = resilience.Timeout(0.05, clock=clock)
    with pytest.raises(resilience.DeadlineExceededError):
        await drive(clock, lambda: compose(timeout, policy).acall(downstream))
    assert sorted(downstream.cancelled) == [1, 2]
    assert sorted(downstream.finished) == [1, 2]


def test_call_with_an_async_function_says_to_await_acall() -> None:
    """hedge.call(an async def): the MisuseError says to await acall, not that it is sync."""
    policy = Hedge()

    async def fetch() -> int:
        return 1

    with pytest.raises(MisuseError, match=r"await hedge\.acall\(") as caught:
        policy.call(fetch)  # type: ignore[arg-type]
    assert "not a coroutine function" not in str(caught.value)


async def test_a_refusal_as_the_delay_runs_out_sends_no_hedge() -> None:
    """The delay and a refusal seen at once (a stalled process): no hedge, the refusal raised.

    docs/guide/hedging.md, The rules: Failures (a refused attempt sends no
    hedge). Found under load: the transport's open breaker refused the first
    attempt, but the loop woke after the delay too and sent a hedge.
    """
    clock = FakeClock()
    policy = hedge(clock, delay=0.01)
    calls: list[int] = []

    async def refused() -> str:
        calls.append(1)
        clock.advance(0.02)  # the hedge's timer fires before the refusal is judged
        raise CircuitOpenError("open", resilience.State.OPEN, 1.0)

    with pytest.raises(CircuitOpenError):
        await drive(clock, lambda: policy.acall(refused))
    assert calls == [1]
    assert policy.metrics() == {"calls": 1, "sent": 0, "won": 0, "refused": 0, "deadline": 0}
