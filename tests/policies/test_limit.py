"""ConcurrencyLimit: admission (shared with Bulkhead), signals, windows, permits, events."""

from __future__ import annotations

import asyncio
import contextlib
import math
import subprocess
import sys
import threading
import time
from typing import Any

import anyio
import httpx
import pytest

import resilience
from resilience import (
    AIMDLimit,
    Bulkhead,
    BulkheadFullError,
    CircuitBreaker,
    CircuitOpenError,
    ConcurrencyLimit,
    ConcurrencyLimitExceededError,
    DeadlineExceededError,
    LimitAlgorithm,
    MisuseError,
    ResilienceError,
    Retry,
    Timeout,
    VegasLimit,
)
from resilience.events import Event, LimitChanged, LimitRejected
from resilience.testing import FakeClock


class Recorder(LimitAlgorithm):
    """Records every sample; the limit moves only when told (`next_limits`)."""

    def __init__(self, initial_limit: int = 2, *, window: float | None = None) -> None:
        super().__init__(initial_limit=initial_limit, min_limit=1, max_limit=100, window=window)
        self.samples: list[tuple[float, int, bool]] = []
        self.next_limits: list[float] = []

    def update(self, limit: float, rtt: float, in_flight: int, dropped: bool) -> float:
        self.samples.append((rtt, in_flight, dropped))
        return self.next_limits.pop(0) if self.next_limits else limit


class Response:
    """Anything with an int status_code is a response (httpx, requests...)."""

    def __init__(self, status_code: int) -> None:
        self.status_code = status_code


class StatusError(Exception):
    def __init__(self, status_code: int) -> None:
        super().__init__(status_code)
        self.response = Response(status_code)


def make(
    initial: int = 2, *, window: float | None = None, **kwargs: Any
) -> tuple[ConcurrencyLimit, Recorder, FakeClock]:
    clock = FakeClock()
    algorithm = Recorder(initial, window=window)
    return ConcurrencyLimit(algorithm, clock=clock, **kwargs), algorithm, clock


# -- admission ------------------------------------------------------------------------


def test_rejects_at_once_over_the_limit() -> None:
    """A call over the limit raises ConcurrencyLimitExceededError at once, a BulkheadFullError."""
    limit, _, _ = make(2, name="payments")
    events: list[Event] = []
    limit.events.subscribe(events.append)
    with limit, limit:
        with pytest.raises(ConcurrencyLimitExceededError) as caught:
            limit.call(lambda: None)
        assert limit.in_flight == 2
    error = caught.value
    assert isinstance(error, BulkheadFullError)
    assert isinstance(error, ResilienceError)
    assert (error.name, error.limit, error.max_concurrent, error.waited) == ("payments", 2, 2, 0.0)
    assert str(error) == (
        "concurrency limit 'payments' reached (2 concurrent calls); rejected after waiting 0.000s"
    )
    assert events == [LimitRejected(name="payments", time=0.0, limit=2, waited=0.0)]
    assert limit.metrics() == {
        "limit": 2,
        "in_flight": 0,
        "waiting": 0,
        "rejected": 1,
        "succeeded": 2,  # the fake clock did not move: counted, but no latency to learn from
        "dropped": 0,
        "ignored": 0,
    }


def test_the_default_algorithm_is_aimd() -> None:
    """ConcurrencyLimit() uses AIMDLimit() and starts at its initial limit."""
    limit = ConcurrencyLimit()
    assert isinstance(limit.algorithm, AIMDLimit)
    assert limit.limit == 20
    assert limit.window == 0.1
    assert repr(limit) == "<ConcurrencyLimit 'limit' 0/20 in flight, 0 waiting, AIMDLimit>"


@pytest.mark.anyio
async def test_a_waiter_is_rejected_when_fake_time_passes_max_wait() -> None:
    """max_wait: a queued task is rejected once the limit's clock passes it."""
    limit, _, clock = make(1, max_wait=5)
    outcome: list[object] = []

    async def waiter() -> None:
        try:
            async with limit:
                outcome.append("slot")
        except ConcurrencyLimitExceededError as error:
            outcome.append(error.waited)

    async with limit, anyio.create_task_group() as group:
        group.start_soon(waiter)
        await anyio.wait_all_tasks_blocked()
        assert limit.waiting == 1
        clock.advance(5)
    assert outcome == [5.0]
    assert limit.metrics()["rejected"] == 1


def test_a_rising_limit_grants_waiters_at_once() -> None:
    """When the algorithm raises the limit, queued callers are admitted without a release."""
    limit, algorithm, clock = make(1, max_wait=30)
    admitted = threading.Event()
    finished: list[str] = []

    def waiter(name: str) -> None:
        with limit:
            admitted.set()
            finished.append(name)

    holder = limit.acquire()
    threads = [threading.Thread(target=waiter, args=(n,)) for n in ("a", "b")]
    for thread in threads:
        thread.start()
    while limit.waiting < 2:
        time.sleep(0.001)
    # A sample from a call that finishes raises the limit to 3: both waiters get in.
    assert limit.in_flight == 1
    algorithm.next_limits = [3.0]
    clock.advance(0.01)
    holder.record_success()
    for thread in threads:
        thread.join(timeout=10)
    assert sorted(finished) == ["a", "b"]
    assert limit.limit == 3
    assert limit.metrics()["in_flight"] == 0


def test_set_limit_grants_every_waiter_the_new_limit_allows() -> None:
    """Raising the limit by 2 admits the two oldest waiters, not the third."""
    limit, _, _ = make(1, max_wait=30)
    order: list[int] = []
    release = threading.Event()

    def waiter(number: int) -> None:
        with limit:
            order.append(number)
            release.wait(10)

    permit = limit.acquire()
    threads = []
    for number in range(3):
        thread = threading.Thread(target=waiter, args=(number,))
        thread.start()
        threads.append(thread)
        while limit.waiting < number + 1:
            time.sleep(0.001)
    limit._set_limit(3)  # the two oldest get the two new slots
    while len(order) < 2:
        time.sleep(0.001)
    assert sorted(order) == [0, 1]  # granted together, they may run in any order
    assert limit.waiting == 1
    assert limit.in_flight == 3
    release.set()
    permit.release()
    for thread in threads:
        thread.join(timeout=10)
    assert order[2] == 2
    assert limit.in_flight == 0


def test_a_falling_limit_lets_calls_finish_and_admits_none_until_below_it() -> None:
    """Limit 3 -> 1 with 3 in flight: no admission until fewer than 1 remain."""
    limit, algorithm, clock = make(3)
    permits = [limit.acquire() for _ in range(3)]
    algorithm.next_limits = [1.0]
    clock.advance(0.01)
    permits[0].record_success()  # the limit falls to 1; two calls still in flight
    assert (limit.limit, limit.in_flight) == (1, 2)
    with pytest.raises(ConcurrencyLimitExceededError):
        limit.acquire()
    permits[1].record_success()
    assert limit.in_flight == 1
    with pytest.raises(ConcurrencyLimitExceededError):
        limit.acquire()
    permits[2].record_success()
    assert limit.in_flight == 0
    assert limit.call(lambda: "in") == "in"


def test_a_falling_limit_holds_waiters_back() -> None:
    """A released slot goes to a waiter only while in-flight calls stay under the new limit."""
    limit, algorithm, clock = make(2, max_wait=30)
    first, second = limit.acquire(), limit.acquire()
    got: list[str] = []
    thread = threading.Thread(target=lambda: got.append(limit.call(lambda: "waited")))
    thread.start()
    while limit.waiting == 0:
        time.sleep(0.001)
    algorithm.next_limits = [1.0]
    clock.advance(0.01)
    first.record_success()  # limit 1, one in flight: the waiter stays queued
    time.sleep(0.05)
    assert (limit.waiting, limit.in_flight, got) == (1, 1, [])
    second.record_success()  # none in flight: the waiter gets the slot
    thread.join(timeout=10)
    assert got == ["waited"]


def test_sync_wait_inside_a_running_loop_raises_misuse() -> None:
    """As for Bulkhead: a sync wait that would block the event loop raises MisuseError."""
    limit, _, _ = make(1, max_wait=5, name="db")

    async def main() -> None:
        async with limit:
            with pytest.raises(MisuseError, match=r"async with limit"), limit:
                pass
            assert limit.metrics()["rejected"] == 0

    asyncio.run(main())
    assert limit.in_flight == 0


def test_trio_tasks_wait_and_get_slots() -> None:
    """Trio tasks queue and are granted like asyncio tasks and threads."""
    import trio

    limit = ConcurrencyLimit(VegasLimit(initial_limit=2), max_wait=30)
    peak = 0
    now = 0

    async def work() -> None:
        nonlocal peak, now
        async with limit:
            now += 1
            peak = max(peak, now)
            await trio.sleep(0.001)
            now -= 1

    async def main() -> None:
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                for _ in range(20):
                    nursery.start_soon(work)

    trio.run(main)
    assert peak <= limit.algorithm.max_limit
    assert limit.in_flight == 0
    assert limit.metrics()["rejected"] == 0


# -- signals --------------------------------------------------------------------------


def test_latency_is_measured_on_the_clock_from_admission() -> None:
    """A sample's RTT is the policy clock's time from admission to the end of the call."""
    limit, algorithm, clock = make(5)

    @limit
    def call(seconds: float) -> str:
        clock.advance(seconds)
        return "ok"

    assert call(0.25) == "ok"
    with limit:
        clock.advance(0.5)
    assert algorithm.samples == [(0.25, 1, False), (0.5, 1, False)]


def _open_error() -> CircuitOpenError:
    return CircuitOpenError("b", resilience.State.OPEN, 1.0)


def _spent() -> DeadlineExceededError:
    return DeadlineExceededError("t", 0.0, before_call=True)


def raiser(exc: BaseException) -> Any:
    def fn() -> None:
        raise exc

    return fn


def _outcome(limit: ConcurrencyLimit, clock: FakeClock, fn: Any) -> None:
    def timed() -> Any:
        clock.advance(0.01)
        return fn()

    with contextlib.suppress(BaseException):
        limit.call(timed)


DROPS: list[tuple[str, Any]] = [
    ("a 503 response", lambda: Response(503)),
    ("a 429 response", lambda: Response(429)),
    ("TimeoutError", raiser(TimeoutError())),
    ("DeadlineExceededError", raiser(DeadlineExceededError("t", 1.0))),
    ("httpx.ReadTimeout", raiser(httpx.ReadTimeout("slow"))),
    ("an error carrying a 503", raiser(StatusError(503))),
]
SAMPLES: list[tuple[str, Any]] = [
    ("a value", lambda: "ok"),
    ("a 200 response", lambda: Response(200)),
    ("a 500 response", lambda: Response(500)),
]
IGNORED: list[tuple[str, Any]] = [
    ("ValueError", raiser(ValueError())),
    ("an error carrying a 500", raiser(StatusError(500))),
    ("CircuitOpenError", raiser(_open_error())),
    ("BulkheadFullError", raiser(BulkheadFullError("b", 1))),
    ("a deadline spent before the call", raiser(_spent())),
    ("MisuseError", raiser(MisuseError("wrong entry point"))),
    ("RetryBudgetExhaustedError", raiser(resilience.RetryBudgetExhaustedError("b"))),
    ("ConnectionRefusedError", raiser(ConnectionRefusedError())),
    ("KeyboardInterrupt", raiser(KeyboardInterrupt())),
    ("asyncio.CancelledError", raiser(asyncio.CancelledError())),
]


@pytest.mark.parametrize(("what", "fn"), DROPS, ids=[d[0] for d in DROPS])
def test_drops(what: str, fn: Any) -> None:
    """Timeouts and overload answers (429/503, returned or carried by an error) are drops."""
    limit, algorithm, clock = make()
    _outcome(limit, clock, fn)
    assert algorithm.samples == [(0.01, 1, True)]
    assert limit.metrics()["dropped"] == 1


@pytest.mark.parametrize(("what", "fn"), SAMPLES, ids=[s[0] for s in SAMPLES])
def test_samples(what: str, fn: Any) -> None:
    """A returned value that is not an overload answer is a latency sample (a 500 too)."""
    limit, algorithm, clock = make()
    _outcome(limit, clock, fn)
    assert algorithm.samples == [(0.01, 1, False)]
    assert limit.metrics()["succeeded"] == 1


@pytest.mark.parametrize(("what", "fn"), IGNORED, ids=[i[0] for i in IGNORED])
def test_not_samples(what: str, fn: Any) -> None:
    """Other errors, the library's own rejections, misuse and cancellation are not samples."""
    limit, algorithm, clock = make()
    _outcome(limit, clock, fn)
    assert algorithm.samples == []
    assert limit.metrics()["ignored"] == 1
    assert limit.in_flight == 0


def test_grpc_errors_are_read_without_importing_grpc(monkeypatch: pytest.MonkeyPatch) -> None:
    """A grpc.RpcError (if grpc was imported) with an overload or deadline code is a drop."""
    import types

    class Code:
        def __init__(self, name: str) -> None:
            self.name = name

    class RpcError(Exception):
        def __init__(self, code: str) -> None:
            super().__init__(code)
            self._code = Code(code)

        def code(self) -> Code:
            return self._code

    monkeypatch.setitem(sys.modules, "grpc", types.SimpleNamespace(RpcError=RpcError))
    limit, algorithm, clock = make(5)
    for code in ("UNAVAILABLE", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED", "INTERNAL"):
        _outcome(limit, clock, raiser(RpcError(code)))
    assert [dropped for _, _, dropped in algorithm.samples] == [True, True, True]
    assert limit.metrics()["ignored"] == 1  # INTERNAL says nothing about load


def test_httpx_and_grpc_are_never_imported_for_the_drop_rules() -> None:
    """Classifying a timeout and a response imports neither httpx nor grpc."""
    code = (
        "import sys, resilience\n"
        "limit = resilience.ConcurrencyLimit()\n"
        "class R:\n    status_code = 503\n"
        "limit.call(R)\n"
        "try:\n    limit.call(lambda: (_ for _ in ()).throw(TimeoutError()))\n"
        "except TimeoutError:\n    pass\n"
        "print(limit.metrics()['dropped'], 'httpx' in sys.modules, 'grpc' in sys.modules)\n"
    )
    output = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert output.split() == ["2", "False", "False"]


def test_a_deadline_cut_is_a_drop() -> None:
    """An error raised once the deadline in force has run out is a drop; before, it is not."""
    limit, algorithm, clock = make()

    def runs_out() -> None:
        clock.advance(2)
        raise ValueError("gave up: no time left")

    with resilience.deadline(1, clock=clock), pytest.raises(ValueError, match="no time"):
        limit.call(runs_out)
    with resilience.deadline(5, clock=clock), pytest.raises(ValueError, match="no time"):
        limit.call(runs_out)  # 2 s of 5: the deadline did not cut it
    assert algorithm.samples == [(2.0, 1, True)]
    assert limit.metrics()["ignored"] == 1


@pytest.mark.anyio
async def test_an_outer_timeout_that_cancels_the_call_is_a_drop() -> None:
    """`compose(Timeout(1), limit)`: the timeout cancels the call; the limit sees a deadline cut."""
    clock = FakeClock()
    algorithm = Recorder(2)
    limit = ConcurrencyLimit(algorithm, clock=clock)
    guarded = resilience.compose(Timeout(1, clock=clock), limit)

    async def slow() -> None:
        await clock.asleep(3)
        await anyio.sleep(1)  # the timeout's alarm fired: cancelled here

    with pytest.raises(DeadlineExceededError):
        await guarded.acall(slow)
    assert algorithm.samples == [(3.0, 1, True)]


@pytest.mark.anyio
async def test_cancellation_without_a_deadline_is_not_a_sample() -> None:
    """A task cancelled for another reason says nothing about the downstream's load."""
    limit, algorithm, clock = make()

    async def forever() -> None:
        clock.advance(0.5)
        await anyio.sleep(30)

    with anyio.move_on_after(0.01):
        await limit.acall(forever)
    assert algorithm.samples == []
    assert limit.metrics()["ignored"] == 1
    assert limit.in_flight == 0


def test_drop_if_and_drop_on_are_configurable() -> None:
    """drop_if= (results) and drop_on= (exception types or predicates) replace the defaults."""

    class Busy(Exception):
        pass

    clock = FakeClock()
    algorithm = Recorder(5)
    limit = ConcurrencyLimit(
        algorithm,
        drop_if=lambda result: result == "busy",
        drop_on=(Busy, lambda exc: "overloaded" in str(exc)),
        clock=clock,
    )
    for fn in (
        lambda: "busy",
        lambda: Response(503),  # no longer a drop: drop_if replaced the default
        raiser(Busy()),
        raiser(RuntimeError("overloaded")),
        raiser(TimeoutError()),  # not in drop_on: no sample
    ):
        _outcome(limit, clock, fn)
    assert [dropped for _, _, dropped in algorithm.samples] == [True, False, True, True]
    assert limit.metrics()["ignored"] == 1


def test_no_result_drops_and_no_exception_drops() -> None:
    """drop_if=None and drop_on=(): only deadline cuts remain drops."""
    clock = FakeClock()
    algorithm = Recorder(5)
    limit = ConcurrencyLimit(algorithm, drop_if=None, drop_on=(), clock=clock)
    _outcome(limit, clock, lambda: Response(503))
    _outcome(limit, clock, raiser(TimeoutError()))
    assert algorithm.samples == [(0.01, 1, False)]


def test_default_drop_rules_are_public_and_extendable() -> None:
    """DEFAULT_DROP_ON holds the predicates; add your own exceptions to it."""

    class Shed(Exception):
        pass

    limit = ConcurrencyLimit(drop_on=(*ConcurrencyLimit.DEFAULT_DROP_ON, Shed))
    assert limit._drop_on.matches(Shed())
    assert limit._drop_on.matches(TimeoutError())
    assert not limit._drop_on.matches(ValueError())


def test_a_failing_drop_if_releases_the_slot() -> None:
    """A predicate that raises: the error propagates, the slot is released, no sample."""
    limit = ConcurrencyLimit(
        Recorder(1), drop_if=lambda result: 1 / 0 if isinstance(result, Response) else False
    )
    with pytest.raises(ZeroDivisionError):
        limit.call(lambda: Response(200))
    assert limit.metrics()["ignored"] == 1
    assert limit.call(lambda: "free again") == "free again"


# -- windows --------------------------------------------------------------------------


def test_a_window_feeds_one_aggregate() -> None:
    """Mean RTT, the most calls in flight and any drop of a window of >= 10 samples."""
    limit, algorithm, clock = make(20, window=0.1)
    permits = [limit.acquire() for _ in range(4)]  # in flight 1..4
    for permit in permits:
        clock.advance(0.01)
        permit.record_success()  # RTTs 0.01 .. 0.04, all before the window ends
    for _ in range(5):
        with limit:
            clock.advance(0.01)
    assert algorithm.samples == []  # 9 samples, 0.09 s: the window is still open
    last = limit.acquire()
    clock.advance(0.02)
    last.record_drop()  # the 10th sample, at 0.11 s, after the window's end: it closes
    # RTTs: 0.01, 0.02, 0.03, 0.04, five of 0.01, and 0.02 -> sum 0.17, mean 0.017
    assert len(algorithm.samples) == 1
    rtt, in_flight, dropped = algorithm.samples[0]
    assert rtt == pytest.approx(0.017)
    assert (in_flight, dropped) == (4, True)


def test_a_window_backs_off_once_per_burst_of_slow_calls() -> None:
    """30 slow calls ending together: one backoff with a window, a collapse without one."""
    results = {}
    for window in (0.1, None):
        clock = FakeClock()
        limit = ConcurrencyLimit(
            AIMDLimit(initial_limit=30, timeout=0.05, window=window), clock=clock
        )
        permits = [limit.acquire() for _ in range(30)]
        clock.advance(0.1)  # every call took 0.1 s, over the 0.05 s timeout
        for permit in permits:
            permit.record_success()
        results[window] = limit.limit
    # window: one aggregate of the first 10 samples -> int(30 * 0.9) = 27; the other 20 wait
    # for the next window. Every sample: 30, 27, 24, 21, 18, 16, 14, 12, 10, 9, 8, 7, 6, 5,
    # 4, 3, 2, 1, then 1 (int(0.9) = 0 -> min_limit 1).
    assert results == {0.1: 27, None: 1}


def test_a_window_waits_for_ten_samples() -> None:
    """A window with fewer than 10 samples stays open past its end."""
    limit, algorithm, clock = make(20, window=0.1)
    for _ in range(9):
        with limit:
            clock.advance(1)
    assert algorithm.samples == []
    with limit:
        clock.advance(1)
    assert algorithm.samples == [(pytest.approx(1.0), 1, False)]


def test_the_next_window_lasts_twice_the_shortest_rtt() -> None:
    """A window is at least `window` long and at least twice the last window's shortest RTT."""
    limit, algorithm, clock = make(20, window=0.1)
    for _ in range(10):
        with limit:
            clock.advance(0.5)  # the window closes at the 10th sample, t = 5.0
    assert len(algorithm.samples) == 1
    for _ in range(10):  # next window ends at 5.0 + 2*0.5 = 6.0
        with limit:
            clock.advance(0.05)  # t = 5.5 after ten: still open
    assert len(algorithm.samples) == 1
    clock.advance(0.5)
    with limit:
        clock.advance(0.05)  # t = 6.05: closes
    assert len(algorithm.samples) == 2


# -- permits ----------------------------------------------------------------------------


def test_permits_settle_exactly_once() -> None:
    """acquire() returns a permit; each settle method works once; a second raises."""
    limit, algorithm, clock = make(5)
    permits = [limit.acquire() for _ in range(5)]
    clock.advance(0.1)
    permits[0].record_success()
    permits[1].record_drop()
    permits[2].release()
    permits[3].record_result(Response(503))
    permits[4].record_exception(TimeoutError())
    assert [d for _, _, d in algorithm.samples] == [False, True, True, True]
    with pytest.raises(RuntimeError, match="already settled"):
        permits[0].record_success()
    assert limit.metrics() == {
        "limit": 5,
        "in_flight": 0,
        "waiting": 0,
        "rejected": 0,
        "succeeded": 1,
        "dropped": 3,
        "ignored": 1,
    }
    assert "settled=True" in repr(permits[0])


def test_a_permit_settled_inside_its_block_is_not_settled_again() -> None:
    """`with limit as permit:` may mark a drop by hand; the block's end adds nothing."""
    limit, algorithm, clock = make(5)
    with limit as permit:
        clock.advance(0.2)
        permit.record_drop()
    assert algorithm.samples == [(0.2, 1, True)]
    assert limit.metrics()["succeeded"] == 0


@pytest.mark.anyio
async def test_aacquire() -> None:
    """The async two-step form waits without blocking the loop."""
    limit, _, _ = make(1, max_wait=10)
    first = await limit.aacquire()

    async def release_soon() -> None:
        await anyio.sleep(0.01)
        first.release()

    async with anyio.create_task_group() as group:
        group.start_soon(release_soon)
        second = await limit.aacquire()
    second.release()
    assert limit.in_flight == 0


# -- composition and the library's rules for its own rejections -------------------------


def test_breakers_ignore_its_rejections_and_retry_needs_it_named() -> None:
    """A rejection is IGNORED by breakers; Retry(on=Exception) does not retry it."""
    breaker = CircuitBreaker("limit-b", consecutive_failures=1)
    limit = ConcurrencyLimit(Recorder(1))
    calls: list[int] = []

    def rejected() -> None:
        calls.append(1)
        raise AssertionError("never runs")

    with limit:
        with pytest.raises(ConcurrencyLimitExceededError):
            resilience.compose(Retry(on=Exception, attempts=3, wait=0), breaker, limit).call(
                rejected
            )
        assert breaker.state is resilience.State.CLOSED
        assert breaker.metrics().calls["ignored"] == 1
        assert calls == []
        for named in (BulkheadFullError, ConcurrencyLimitExceededError):
            retry = Retry(on=named, attempts=3, wait=0)
            with pytest.raises(ConcurrencyLimitExceededError):
                retry.call(limit.call, rejected)
            assert retry.metrics()["retries"] == 2
    assert limit.metrics()["rejected"] == 1 + 3 + 3


def test_the_middleware_answers_503_for_its_rejection() -> None:
    """Server middleware sheds it like a full bulkhead: 503 with Retry-After."""
    from resilience.middleware import ErrorAnswers

    answer = ErrorAnswers(name="limit").answer(ConcurrencyLimitExceededError("l", 3), None)
    assert answer is not None
    assert answer.status == 503
    assert ("retry-after", "1") in answer.headers


def test_an_inner_limit_rejection_is_not_a_sample_of_an_outer_one() -> None:
    """Nested limits: the inner's rejection says nothing about the outer's downstream."""
    outer_algorithm = Recorder(5)
    outer = ConcurrencyLimit(outer_algorithm)
    inner = ConcurrencyLimit(Recorder(1))
    with inner, pytest.raises(ConcurrencyLimitExceededError):
        resilience.compose(outer, inner).call(lambda: None)
    assert outer_algorithm.samples == []
    assert outer.metrics()["ignored"] == 1


@pytest.mark.anyio
async def test_async_decorator_and_sync_entry_point_misuse() -> None:
    """Acall of a plain function and call of a coroutine function: MisuseError, not a sample."""
    limit, algorithm, _ = make(2)
    with pytest.raises(MisuseError):
        await limit.acall(lambda: "sync")  # type: ignore[arg-type,return-value]

    async def coroutine() -> str:
        return "async"

    with pytest.raises(MisuseError):
        limit.call(coroutine)  # type: ignore[arg-type]
    with pytest.raises(MisuseError):
        limit(lambda: coroutine())()
    assert algorithm.samples == []
    assert limit.metrics()["ignored"] == 3
    assert await limit(coroutine)() == "async"


# -- events and custom algorithms ---------------------------------------------------------


def test_limit_changes_are_published() -> None:
    """LimitChanged on every change of the whole limit, with the calls still in flight."""
    limit, algorithm, clock = make(4, name="orders")
    events: list[Event] = []
    limit.events.subscribe(events.append)
    held = limit.acquire()
    algorithm.next_limits = [4.6, 7.2]  # 4 -> 4 (no event), then 4 -> 7
    for _ in range(2):
        with limit:
            clock.advance(0.1)
    held.release()
    assert events == [LimitChanged(name="orders", time=0.2, from_limit=4, to_limit=7, in_flight=1)]


def test_a_custom_algorithm_is_clamped_and_nan_is_ignored() -> None:
    """Whatever update() returns, the limit stays in [min_limit, max_limit]; NaN changes nothing."""
    limit, algorithm, clock = make(5)
    algorithm.next_limits = [1000.0, math.nan, -3.0]
    for expected in (100, 100, 1):
        with limit:
            clock.advance(0.1)
        assert limit.limit == expected


def test_an_algorithm_drives_one_limit() -> None:
    """Sharing an algorithm object between two limits is refused: it learns per limit."""
    shared = AIMDLimit()
    ConcurrencyLimit(shared)
    with pytest.raises(ValueError, match="one algorithm object per limit"):
        ConcurrencyLimit(shared)


def test_a_failing_algorithm_still_frees_the_slot() -> None:
    """A bug in update() propagates from the settle, and the slot is given back."""

    class Broken(Recorder):
        def update(self, limit: float, rtt: float, in_flight: int, dropped: bool) -> float:
            raise ZeroDivisionError

    clock = FakeClock()
    limit = ConcurrencyLimit(Broken(1), clock=clock)
    with pytest.raises(ZeroDivisionError), limit:
        clock.advance(0.1)
    assert limit.in_flight == 0


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"algorithm": 10}, TypeError, "algorithm="),
        ({"algorithm": AIMDLimit}, TypeError, "algorithm="),
        ({"drop_if": 503}, TypeError, "drop_if="),
        ({"drop_on": "TimeoutError"}, TypeError, "drop_on="),
        ({"drop_on": KeyboardInterrupt}, ValueError, "drop_on="),
        ({"max_wait": -1}, ValueError, "max_wait="),
        ({"max_queue": 0}, ValueError, "max_queue="),
        ({"name": ""}, ValueError, "name="),
        ({"clock": "clock"}, TypeError, "clock="),
    ],
)
def test_bad_limits(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    """Every parameter is checked at construction; the message names it."""
    with pytest.raises(error, match=match):
        ConcurrencyLimit(**kwargs)


def test_bulkhead_and_limit_share_the_admission_core() -> None:
    """One machinery: Bulkhead is the fixed-limit case of the same admission core."""
    from resilience._admission import Admission

    assert issubclass(Bulkhead, Admission)
    assert issubclass(ConcurrencyLimit, Admission)
    assert Bulkhead._enter is Admission._admit


def test_recording_a_result_or_an_exception_on_a_settled_permit_raises() -> None:
    """Every way of settling a permit a second time raises, as the docs promise."""
    limit, _, _ = make()
    for first, second in (
        ("record_success", lambda permit: permit.record_result("x")),
        ("record_success", lambda permit: permit.record_exception(ValueError())),
        ("release", lambda permit: permit.record_result("x")),
    ):
        permit = limit.acquire()
        getattr(permit, first)()
        with pytest.raises(RuntimeError, match="exactly once"):
            second(permit)
    assert limit.in_flight == 0


def test_an_algorithm_that_raises_still_wakes_the_waiter_it_granted() -> None:
    """A slot freed by a settle whose algorithm raised goes to the waiter at once.

    Not after the waiter's max_wait.
    """
    import threading
    import time

    class Broken(resilience.LimitAlgorithm):
        def __init__(self) -> None:
            super().__init__(initial_limit=1, min_limit=1, max_limit=1, window=None)

        def update(self, limit: float, rtt: float, in_flight: int, dropped: bool) -> float:
            raise ArithmeticError("the algorithm's bug")

    limit = resilience.ConcurrencyLimit(Broken(), max_wait=5.0)
    holder = limit.acquire()
    waited: list[float] = []

    def wait() -> None:
        started = time.monotonic()
        limit.acquire().release()
        waited.append(time.monotonic() - started)

    waiter = threading.Thread(target=wait)
    waiter.start()
    for _ in range(200):  # until the waiter is queued (2 s at most)
        if limit.metrics()["waiting"]:
            break
        time.sleep(0.01)
    time.sleep(0.01)  # a measurable rtt
    with pytest.raises(ArithmeticError):
        holder.record_success()
    waiter.join(timeout=5)
    assert waited
    assert waited[0] < 2.0
