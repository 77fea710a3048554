from __future__ import annotations

import asyncio
import contextlib
import datetime
import math
import time
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from resilience import DeadlineExceededError, Timeout, deadline, remaining
from resilience.events import DeadlineExceeded, Event
from resilience.testing import FakeClock


@pytest.mark.anyio
async def test_async_call_is_cancelled_at_the_timeout() -> None:
    """A slow coroutine is cancelled and the caller gets DeadlineExceededError (real time)."""
    timeout = Timeout(0.05, name="payments")
    cancelled = False

    @timeout
    async def slow() -> None:
        nonlocal cancelled
        try:
            await anyio.sleep(10)
        except BaseException:
            cancelled = True
            raise

    start = time.monotonic()
    with pytest.raises(DeadlineExceededError) as caught:
        await slow()
    assert time.monotonic() - start < 2
    assert cancelled
    assert isinstance(caught.value, TimeoutError)
    assert (caught.value.name, caught.value.budget) == ("payments", 0.05)
    assert timeout.metrics() == {"deadline_exceeded": 1}


@pytest.mark.anyio
async def test_fast_async_call_passes_and_sees_its_deadline() -> None:
    """Within the timeout the result comes back; remaining() is set inside."""
    seen: list[float | None] = []

    @Timeout(5)
    async def quick() -> str:
        seen.append(remaining())
        return "ok"

    assert await quick() == "ok"
    assert seen[0] is not None
    assert 4 < seen[0] <= 5


@pytest.mark.anyio
async def test_enclosing_deadline_shortens_the_timeout() -> None:
    """Timeout(10) inside deadline(0.05) cancels at the deadline."""

    @Timeout(10)
    async def slow() -> None:
        await anyio.sleep(10)

    with deadline(0.05), pytest.raises(DeadlineExceededError) as caught:
        await slow()
    assert caught.value.budget is not None
    assert caught.value.budget <= 0.05


def test_the_calls_own_timeout_error_is_not_relabelled() -> None:
    """A TimeoutError raised by the function itself passes through unchanged."""

    @Timeout(10)
    async def own_timeout() -> None:
        raise TimeoutError("socket timeout")

    with pytest.raises(TimeoutError, match="socket timeout") as caught:
        asyncio.run(own_timeout())
    assert not isinstance(caught.value, DeadlineExceededError)


def test_outer_cancellation_stays_a_cancellation() -> None:
    """Cancelling the task is not reported as a timeout."""

    @Timeout(10)
    async def slow() -> None:
        await asyncio.sleep(10)

    async def main() -> None:
        task = asyncio.create_task(slow())
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())


def test_sync_call_runs_inside_a_deadline_and_is_not_preempted() -> None:
    """On sync code the timeout is a deadline: honoured by aware code, never a kill."""
    clock = FakeClock()
    timeout = Timeout(2, clock=clock)
    seen: list[float | None] = []

    @timeout
    def work() -> str:
        seen.append(remaining())
        clock.sleep(5)  # overruns; the function is not interrupted
        seen.append(remaining())
        return "late but done"

    assert work() == "late but done"
    assert seen == [2.0, 0.0]
    assert remaining() is None


def test_events() -> None:
    """A timeout publishes DeadlineExceeded."""
    timeout = Timeout(0.01)
    events: list[Event] = []
    timeout.events.subscribe(events.append)

    @timeout
    async def slow() -> None:
        await asyncio.sleep(5)

    with pytest.raises(DeadlineExceededError):
        asyncio.run(slow())
    assert [type(e) for e in events] == [DeadlineExceeded]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"seconds": 0}, ValueError, "seconds="),
        ({"seconds": -1}, ValueError, "seconds="),
        ({"seconds": math.nan}, ValueError, "seconds="),
        ({"seconds": math.inf}, ValueError, "seconds="),
        ({"seconds": True}, TypeError, "seconds="),
        ({"seconds": "1"}, TypeError, "seconds="),
        ({"seconds": None}, TypeError, "seconds="),
        ({"seconds": datetime.timedelta(0)}, ValueError, "seconds="),
        ({"name": ""}, ValueError, "name="),
        ({"name": 3}, TypeError, "name="),
        ({"clock": "monotonic"}, TypeError, "clock="),
        ({"clock": time.monotonic}, TypeError, "clock="),
    ],
)
def test_bad_timeouts(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    """Every argument is validated at construction; the message names the parameter."""
    kwargs = {"seconds": 1.0, **kwargs}
    with pytest.raises(error, match=match):
        Timeout(**kwargs)


def test_seconds_takes_a_timedelta() -> None:
    """Timeout(timedelta) is the same as Timeout(its total seconds)."""
    assert Timeout(datetime.timedelta(milliseconds=1500)).seconds == 1.5


# -- misuse -------------------------------------------------------------------


async def _coroutine_function() -> str:
    return "never awaited by a sync entry point"


def test_sync_entry_points_refuse_a_coroutine() -> None:
    """Timeout.call and the sync decorator given an awaitable: TypeError, not a success."""
    timeout = Timeout(1)
    with pytest.raises(TypeError, match="returned an awaitable"):
        timeout.call(_coroutine_function)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="returned an awaitable"):
        timeout(lambda: _coroutine_function())()
    assert remaining() is None


@pytest.mark.anyio
async def test_async_entry_points_refuse_a_plain_value() -> None:
    """Timeout.acall given a sync function: TypeError pointing at call()."""
    with pytest.raises(TypeError, match=r"not an awaitable.*call\("):
        await Timeout(1).acall(lambda: 3)  # type: ignore[arg-type,return-value]
    with pytest.raises(TypeError, match="len") as caught:  # the call's own TypeError
        await Timeout(1).acall(len, 3)  # type: ignore[arg-type]
    assert "not an awaitable" not in str(caught.value)
    assert remaining() is None


# -- a deadline already spent -------------------------------------------------


@pytest.mark.anyio
async def test_async_call_with_the_deadline_already_spent_is_not_started() -> None:
    """An enclosing deadline with nothing left: DeadlineExceededError(before_call=True), no call."""
    clock = FakeClock()
    timeout = Timeout(5, name="payments", clock=clock)
    events: list[Event] = []
    timeout.events.subscribe(events.append)
    started: list[str] = []

    async def work() -> str:
        started.append("side effect before the first await")
        await anyio.lowlevel.checkpoint()
        return "ok"

    with deadline(0, clock=clock), pytest.raises(DeadlineExceededError) as caught:
        await timeout.acall(work)
    with deadline(1, clock=clock):
        clock.advance(1)
        with pytest.raises(DeadlineExceededError):
            await timeout(work)()
    assert started == []
    assert caught.value.before_call is True
    assert (caught.value.name, caught.value.budget) == ("payments", 0.0)
    assert timeout.metrics() == {"deadline_exceeded": 2}
    assert [type(e) for e in events] == [DeadlineExceeded, DeadlineExceeded]
    assert [e.budget for e in events if isinstance(e, DeadlineExceeded)] == [0.0, 0.0]
    with deadline(0.5, clock=clock):
        assert await timeout.acall(work) == "ok"  # time left: it runs


def test_sync_call_with_the_deadline_already_spent_is_not_started() -> None:
    """The sync path refuses a spent deadline the same way (the function would overrun it)."""
    clock = FakeClock()
    timeout = Timeout(5, clock=clock)
    ran: list[int] = []
    with deadline(0, clock=clock), pytest.raises(DeadlineExceededError) as caught:
        timeout.call(ran.append, 1)
    assert caught.value.before_call is True
    assert ran == []
    assert remaining() is None


@pytest.mark.anyio
async def test_a_cut_call_is_not_before_call() -> None:
    """A call cancelled at its timeout started: before_call is False."""

    @Timeout(0.01)
    async def slow() -> None:
        await anyio.sleep(10)

    with pytest.raises(DeadlineExceededError) as caught:
        await slow()
    assert caught.value.before_call is False


# -- a FakeClock drives async cancellation ---------------------------------------


@pytest.mark.anyio
async def test_fake_clock_cuts_an_async_call_when_fake_time_passes() -> None:
    """Timeout(1, clock=fake): a fake sleep of 5 s inside is cut at once, as a real one would be."""
    clock = FakeClock()
    timeout = Timeout(1.0, name="fake", clock=clock)
    events: list[Event] = []
    timeout.events.subscribe(events.append)
    after: list[str] = []

    @timeout
    async def slow() -> None:
        await clock.asleep(5)
        after.append("ran past the timeout")

    start = time.monotonic()
    with pytest.raises(DeadlineExceededError) as caught:
        await slow()
    assert time.monotonic() - start < 2
    assert after == []
    assert (caught.value.name, caught.value.budget, caught.value.before_call) == (
        "fake",
        1.0,
        False,
    )
    assert timeout.metrics() == {"deadline_exceeded": 1}
    assert events == [DeadlineExceeded(name="fake", time=5.0, budget=1.0)]
    assert clock.pending_alarms == 0


@pytest.mark.anyio
async def test_fake_clock_call_within_its_budget_is_not_cut() -> None:
    """Within the budget: the result comes back, remaining() reads fake time, no alarm is left."""
    clock = FakeClock()
    seen: list[float | None] = []

    @Timeout(1.0, clock=clock)
    async def quick() -> str:
        seen.append(remaining())
        await clock.asleep(0.75)
        seen.append(remaining())
        return "ok"

    assert await quick() == "ok"
    assert seen == [1.0, 0.25]
    assert clock.pending_alarms == 0
    clock.advance(10)  # the alarm is gone: nothing is cancelled later
    assert remaining() is None


@pytest.mark.anyio
async def test_fake_clock_advanced_by_another_task_cuts_the_call() -> None:
    """A call waiting on something else is cut when another task moves the fake clock past it."""
    clock = FakeClock()
    timeout = Timeout(2.0, clock=clock)
    never = anyio.Event()
    outcome: list[object] = []

    async def waiter() -> None:
        try:
            await timeout.acall(never.wait)
        except DeadlineExceededError as error:
            outcome.append(error)

    async with anyio.create_task_group() as group:
        group.start_soon(waiter)
        await anyio.wait_all_tasks_blocked()
        clock.advance(1.5)
        await anyio.wait_all_tasks_blocked()
        assert outcome == []
        clock.advance(0.5)
    assert len(outcome) == 1
    assert isinstance(outcome[0], DeadlineExceededError)


@pytest.mark.anyio
async def test_fake_clock_advanced_from_another_thread_cuts_the_call() -> None:
    """The alarm may fire in a worker thread: the cut reaches the loop thread-safely."""
    clock = FakeClock()
    never = anyio.Event()
    outcome: list[object] = []

    async def waiter() -> None:
        try:
            await Timeout(2.0, clock=clock).acall(never.wait)
        except DeadlineExceededError as error:
            outcome.append(error)

    async with anyio.create_task_group() as group:
        group.start_soon(waiter)
        await anyio.wait_all_tasks_blocked()
        await anyio.to_thread.run_sync(clock.advance, 3)
    assert len(outcome) == 1
    assert isinstance(outcome[0], DeadlineExceededError)
    assert clock.pending_alarms == 0


@pytest.mark.anyio
async def test_fake_clock_enclosing_deadline_shortens_the_timeout() -> None:
    """Timeout(10, clock=fake) inside deadline(1, clock=fake) is cut at fake second 1."""
    clock = FakeClock()

    @Timeout(10, clock=clock)
    async def slow() -> None:
        await clock.asleep(0.5)
        await clock.asleep(0.6)

    with deadline(1.0, clock=clock), pytest.raises(DeadlineExceededError) as caught:
        await slow()
    assert caught.value.budget == 1.0
    assert clock.monotonic() == 1.1


@pytest.mark.anyio
async def test_fake_clock_inner_timeout_error_stays_the_calls_own() -> None:
    """A TimeoutError raised by the call is not relabelled, with a fake clock either."""
    clock = FakeClock()

    @Timeout(10, clock=clock)
    async def own_timeout() -> None:
        await clock.asleep(1)
        raise TimeoutError("socket timeout")

    with pytest.raises(TimeoutError, match="socket timeout") as caught:
        await own_timeout()
    assert not isinstance(caught.value, DeadlineExceededError)


@pytest.mark.anyio
async def test_fake_clock_nested_timeouts_the_shorter_one_cuts() -> None:
    """An inner, shorter fake Timeout cuts its own call; the outer one goes on."""
    clock = FakeClock()
    inner = Timeout(1, name="inner", clock=clock)
    outer = Timeout(5, name="outer", clock=clock)

    @outer
    async def work() -> str:
        with pytest.raises(DeadlineExceededError) as caught:
            await inner.acall(clock.asleep, 2)
        assert caught.value.name == "inner"
        await clock.asleep(1)
        return "outer finished"

    assert await work() == "outer finished"
    assert (inner.metrics(), outer.metrics()) == (
        {"deadline_exceeded": 1},
        {"deadline_exceeded": 0},
    )


def test_fake_clock_outer_cancellation_stays_a_cancellation_on_asyncio() -> None:
    """Cancelling the task of a fake-clock Timeout call is a cancellation, not a timeout."""
    clock = FakeClock()

    async def main() -> None:
        task = asyncio.create_task(Timeout(10, clock=clock).acall(asyncio.Event().wait))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert clock.pending_alarms == 0

    asyncio.run(main())


def test_fake_clock_outer_cancellation_stays_a_cancellation_on_trio() -> None:
    """A cancelled enclosing trio scope is not reported as the fake Timeout's cut."""
    import trio

    clock = FakeClock()
    timeout = Timeout(10, clock=clock)

    async def main() -> None:
        with trio.CancelScope() as scope:
            scope.cancel()
            await timeout.acall(trio.sleep_forever)
        assert scope.cancelled_caught
        assert timeout.metrics() == {"deadline_exceeded": 0}

    trio.run(main)


@pytest.mark.anyio
async def test_fake_clock_misuse_is_still_misuse() -> None:
    """Misuse with a fake clock is still MisuseError; the call's own TypeError stays its own."""
    timeout = Timeout(1, clock=FakeClock())
    with pytest.raises(TypeError, match=r"not an awaitable.*call\("):
        await timeout.acall(lambda: 3)  # type: ignore[arg-type,return-value]
    with pytest.raises(TypeError, match="len") as caught:
        await timeout.acall(len, 3)  # type: ignore[arg-type]
    assert "not an awaitable" not in str(caught.value)


@pytest.mark.anyio
async def test_real_time_never_cuts_a_fake_clock_timeout() -> None:
    """Timeout(0.01, clock=fake) around a real 0.05 s wait: fake time did not move, no cut."""
    clock = FakeClock()

    @Timeout(0.01, clock=clock)
    async def real_wait() -> str:
        await anyio.sleep(0.05)
        return "not cut"

    assert await real_wait() == "not cut"


class AlarmClock:
    """A clock of one's own that offers call_at (here backed by a FakeClock)."""

    def __init__(self) -> None:
        self.fake = FakeClock()
        self.monotonic = self.fake.monotonic
        self.sleep = self.fake.sleep
        self.asleep = self.fake.asleep
        self.call_at = self.fake.call_at


class NoAlarmClock:
    """A clock of one's own without call_at: real time on the loop's timer."""

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    async def asleep(self, seconds: float) -> None:
        await anyio.sleep(seconds)


@pytest.mark.anyio
async def test_any_clock_with_call_at_drives_the_cut() -> None:
    """A clock's call_at is what counts, not its type; without one the loop's timer cuts."""
    own = AlarmClock()
    with pytest.raises(DeadlineExceededError):
        await Timeout(1, clock=own).acall(own.asleep, 2)
    plain = Timeout(0.02, clock=NoAlarmClock())
    assert plain._call_at is None
    with pytest.raises(DeadlineExceededError):
        await plain.acall(anyio.sleep, 10)


def test_the_system_clock_keeps_the_event_loop_timer() -> None:
    """Only a clock with alarms changes how async calls are cut; the default uses none."""
    from resilience._clock import SYSTEM_CLOCK, alarms_of

    assert alarms_of(SYSTEM_CLOCK) is None
    assert Timeout(1)._call_at is None
    clock = FakeClock()
    assert alarms_of(clock) == clock.call_at


# -- as a context manager ----------------------------------------------------------


def test_with_timeout_is_a_deadline_for_the_block() -> None:
    """`with Timeout(2)`: the block sees the deadline; it is neither pre-empted nor raised."""
    clock = FakeClock()
    timeout = Timeout(2, clock=clock)
    with timeout as entered:
        assert entered.budget == 2.0
        assert remaining() == 2.0
        clock.sleep(5)  # overruns: not interrupted
        assert remaining() == 0.0
    assert remaining() is None
    assert timeout.metrics() == {"deadline_exceeded": 0}


@pytest.mark.anyio
async def test_async_with_timeout_cancels_the_block() -> None:
    """`async with Timeout(0.05)`: the block is cancelled in real time, DeadlineExceededError."""
    timeout = Timeout(0.05, name="block")
    events: list[Event] = []
    timeout.events.subscribe(events.append)
    reached: list[str] = []

    async def block() -> None:
        async with timeout:
            await anyio.sleep(10)
            reached.append("after the sleep")

    start = time.monotonic()
    with pytest.raises(DeadlineExceededError) as caught:
        await block()
    assert time.monotonic() - start < 2
    assert reached == []
    assert (caught.value.name, caught.value.budget) == ("block", 0.05)
    assert caught.value.before_call is False
    assert timeout.metrics() == {"deadline_exceeded": 1}
    assert [type(e) for e in events] == [DeadlineExceeded]
    assert remaining() is None


@pytest.mark.anyio
async def test_async_with_timeout_on_a_fake_clock() -> None:
    """`async with Timeout(1, clock=fake) as d`: d is the deadline; fake time past it cuts."""
    clock = FakeClock()
    timeout = Timeout(1, clock=clock)
    async with timeout as entered:
        assert entered.budget == 1.0
        await clock.asleep(0.5)
        assert remaining() == 0.5
    with deadline(0.25, clock=clock):
        async with timeout as entered:
            assert entered.budget == 0.25  # nested: the enclosing deadline's time left

    async def block() -> None:
        async with timeout:
            await clock.asleep(2)
            pytest.fail("the block went on past its timeout")

    with pytest.raises(DeadlineExceededError):
        await block()
    assert clock.pending_alarms == 0
    assert remaining() is None


@pytest.mark.anyio
async def test_async_with_timeout_lets_other_errors_through() -> None:
    """An error of the block, a TimeoutError included, propagates as itself."""
    timeout = Timeout(10, clock=FakeClock())
    with pytest.raises(TimeoutError, match="socket") as caught:
        async with timeout:
            raise TimeoutError("socket")
    assert not isinstance(caught.value, DeadlineExceededError)
    with pytest.raises(KeyError):
        async with Timeout(10):
            raise KeyError("x")
    assert remaining() is None


def test_async_with_timeout_outer_cancellation_stays_a_cancellation() -> None:
    """Cancelling a task inside `async with Timeout(...)` is a cancellation, both clocks."""

    async def block(policy: Timeout) -> None:
        async with policy:
            await asyncio.Event().wait()

    async def main() -> None:
        for policy in (Timeout(10), Timeout(10, clock=FakeClock())):
            task = asyncio.create_task(block(policy))
            await asyncio.sleep(0)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert policy.metrics() == {"deadline_exceeded": 0}

    asyncio.run(main())


@pytest.mark.anyio
async def test_with_timeout_refuses_a_spent_deadline() -> None:
    """Entering with the enclosing deadline spent raises before_call=True; the block never runs."""
    clock = FakeClock()
    timeout = Timeout(5, clock=clock)
    ran: list[str] = []
    with deadline(0, clock=clock):
        with pytest.raises(DeadlineExceededError) as sync_caught, timeout:
            ran.append("sync")
        with pytest.raises(DeadlineExceededError) as async_caught:
            async with timeout:
                ran.append("async")
        assert remaining() == 0.0  # the refused entries left nothing behind
    assert ran == []
    assert sync_caught.value.before_call
    assert async_caught.value.before_call
    assert timeout.metrics() == {"deadline_exceeded": 2}


@pytest.mark.anyio
async def test_one_timeout_entered_by_many_tasks_keeps_each_block_apart() -> None:
    """Blocks of one Timeout in concurrent tasks: each has its own deadline and its own cut."""
    clock = FakeClock()
    timeout = Timeout(10, clock=clock)
    release = anyio.Event()
    results: dict[int, object] = {}

    async def task(number: int) -> None:
        try:
            async with timeout as entered:
                results[number] = entered.expires_at
                await release.wait()
        except DeadlineExceededError:
            results[number] = "cut"

    async with anyio.create_task_group() as group:
        for number in range(6):
            group.start_soon(task, number)
            await anyio.wait_all_tasks_blocked()
            clock.advance(1)  # task n entered at fake time n: its deadline is n + 10
        assert results == {n: n + 10.0 for n in range(6)}
        clock.advance(6.5)  # now 12.5: the deadlines 10, 11 and 12 have passed
        await anyio.wait_all_tasks_blocked()
        release.set()
    assert results == {0: "cut", 1: "cut", 2: "cut", 3: 13.0, 4: 14.0, 5: 15.0}
    assert timeout.metrics() == {"deadline_exceeded": 3}
    assert clock.pending_alarms == 0


def test_one_timeout_entered_by_many_threads() -> None:
    """`with timeout:` from several threads at once: each thread sees its own deadline."""
    import threading

    clock = FakeClock()
    timeout = Timeout(10, clock=clock)
    barrier = threading.Barrier(4)
    seen: list[float] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            for _ in range(50):
                with timeout as entered:
                    barrier.wait(timeout=10)
                    seen.append(entered.budget)
                    assert remaining() is not None
                assert remaining() is None
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    assert seen == [10.0] * 200


def test_timeout_blocks_nest_and_must_end_where_they_began() -> None:
    """The same Timeout may nest; exiting a block never entered here is a RuntimeError."""
    clock = FakeClock()
    timeout = Timeout(10, clock=clock)
    with timeout:
        clock.advance(4)
        with timeout as inner:
            assert inner.budget == 6.0  # nested: the outer one's time left
        assert remaining() == 6.0
    with contextlib.ExitStack() as stack:
        stack.enter_context(timeout)
        clock.advance(1)
        assert stack.enter_context(timeout).budget == 9.0
    assert remaining() is None
    with pytest.raises(RuntimeError, match="end where it began"):
        timeout.__exit__(None, None, None)


def test_timeout_blocks_exited_out_of_order_raise() -> None:
    """Leaving an enclosing Timeout before the one inside it is refused, loudly.

    Deadlines nest: allowing it would restore a stale deadline for the block
    still open, and keep it after both ended.
    """
    import resilience

    outer, inner = Timeout(5.0), Timeout(10.0)
    outer.__enter__()
    inner.__enter__()
    with pytest.raises(RuntimeError, match="innermost first"):
        outer.__exit__(None, None, None)
    inner.__exit__(None, None, None)
    outer.__exit__(None, None, None)
    assert resilience.current_deadline() is None
