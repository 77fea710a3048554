from __future__ import annotations

import asyncio
import datetime
import math
import threading
from typing import Any

import pytest

import resilience
from resilience import current_deadline, deadline, remaining
from resilience._clock import SYSTEM_CLOCK as SYSTEM
from resilience.testing import FakeClock


def test_no_deadline_by_default() -> None:
    """Outside any deadline there is nothing to honour."""
    assert remaining() is None
    assert current_deadline() is None


def test_deadline_counts_down_and_expires() -> None:
    """remaining() falls with the clock and stops at zero."""
    clock = FakeClock()
    with deadline(2.0, clock=clock) as d:
        assert remaining() == 2.0
        clock.advance(0.5)
        assert remaining() == 1.5
        assert not d.expired
        clock.advance(5)
        assert remaining() == 0.0
        assert d.expired
    assert remaining() is None


def test_deadlines_nest_as_the_minimum() -> None:
    """An inner deadline cannot extend an outer one; a shorter inner one wins."""
    clock = FakeClock()
    with deadline(1.0, clock=clock):
        clock.advance(0.25)
        with deadline(5.0, clock=clock) as inner:
            assert inner.budget == 0.75
            assert remaining() == 0.75
        with deadline(0.1, clock=clock):
            assert remaining() == pytest.approx(0.1)
        assert remaining() == 0.75


def test_zero_deadline_is_already_expired() -> None:
    """deadline(0) is legal and expired at once (a caller that already gave up)."""
    with deadline(0, clock=FakeClock()) as d:
        assert d.expired
        assert remaining() == 0.0


@pytest.mark.anyio
async def test_async_deadline() -> None:
    """`async with deadline()` works on asyncio and trio."""
    clock = FakeClock()
    async with deadline(3.0, clock=clock) as d:
        await clock.asleep(1)
        assert d.remaining() == 2.0
    assert remaining() is None


def test_deadline_is_context_local() -> None:
    """Threads and tasks see their own deadlines, not each other's."""
    clock = FakeClock()
    seen: list[float | None] = []

    def other_thread() -> None:
        seen.append(remaining())

    with deadline(1.0, clock=clock):
        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join(timeout=10)

    async def main() -> list[float | None]:
        async def task(seconds: float) -> float | None:
            with deadline(seconds, clock=clock):
                await asyncio.sleep(0)
                return remaining()

        return list(await asyncio.gather(task(1.0), task(2.0)))

    assert seen == [None]
    assert asyncio.run(main()) == [1.0, 2.0]


def test_a_deadline_object_is_entered_once_at_a_time() -> None:
    """Re-entering the same deadline object is an error, exiting unentered too."""
    d = deadline(1.0, clock=FakeClock())
    with d, pytest.raises(RuntimeError, match="already entered"), d:
        pass
    with pytest.raises(RuntimeError, match="without __enter__"):
        d.__exit__(None, None, None)
    assert repr(d) == "deadline(1.0)"


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"seconds": -1}, ValueError, "seconds="),
        ({"seconds": math.nan}, ValueError, "seconds="),
        ({"seconds": math.inf}, ValueError, "seconds="),
        ({"seconds": True}, TypeError, "seconds="),
        ({"seconds": "1"}, TypeError, "seconds="),
        ({"seconds": None}, TypeError, "seconds="),
        ({"seconds": datetime.timedelta(seconds=-1)}, ValueError, "seconds="),
        ({"clock": 1.0}, TypeError, "clock="),
        ({"clock": "clock"}, TypeError, "clock="),
    ],
)
def test_bad_deadlines(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    """Negative, NaN, infinite, bools and non-numbers are refused at construction."""
    kwargs = {"seconds": 1.0, **kwargs}
    with pytest.raises(error, match=match):
        deadline(**kwargs)


def test_a_deadline_takes_a_timedelta() -> None:
    """deadline(timedelta) is deadline(its total seconds)."""
    with deadline(datetime.timedelta(milliseconds=1500), clock=FakeClock()) as d:
        assert d.budget == 1.5


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        ((math.nan, 1.0, SYSTEM), ValueError, "expires_at="),
        ((math.inf, 1.0, SYSTEM), ValueError, "expires_at="),
        (("5", 1.0, SYSTEM), TypeError, "expires_at="),
        ((False, 1.0, SYSTEM), TypeError, "expires_at="),
        ((5.0, -1.0, SYSTEM), ValueError, "budget="),
        ((5.0, math.nan, SYSTEM), ValueError, "budget="),
        ((5.0, True, SYSTEM), TypeError, "budget="),
        ((5.0, 1.0, None), TypeError, "clock="),
        ((5.0, 1.0, "clock"), TypeError, "clock="),
    ],
)
def test_bad_deadline_records(args: tuple[Any, ...], error: type[Exception], match: str) -> None:
    """resilience.Deadline (normally made by deadline()) validates what it is given too."""
    with pytest.raises(error, match=match):
        resilience.Deadline(*args)


def test_entering_a_spent_deadline_does_not_raise() -> None:
    """deadline() is only a bound: entering one with nothing left is legal (remaining() == 0).

    Deadline-aware code refuses to start work instead: Timeout raises
    DeadlineExceededError(before_call=True) without calling the function.
    """
    clock = FakeClock()
    timeout = resilience.Timeout(1, clock=clock)
    ran: list[int] = []
    with deadline(1, clock=clock):
        clock.advance(2)
        with deadline(5, clock=clock) as inner:
            assert inner.expired
            assert remaining() == 0.0
            with pytest.raises(resilience.DeadlineExceededError) as caught:
                timeout.call(ran.append, 1)
    assert caught.value.before_call
    assert ran == []


def test_deadline_repr() -> None:
    """The Deadline shows what is left."""
    with deadline(1.0, clock=FakeClock()) as d:
        assert repr(d) == "<Deadline remaining=1.000s budget=1.000s>"
    assert resilience.Deadline is type(d)
