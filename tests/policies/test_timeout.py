from __future__ import annotations

import asyncio
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
