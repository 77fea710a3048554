from __future__ import annotations

import asyncio
import time

import pytest

from resilience import Clock, SystemClock
from resilience._clock import SYSTEM_CLOCK, async_sleep, resolve_clock
from resilience.testing import FakeClock


def test_system_clock_is_monotonic_time() -> None:
    """The system clock reads time.monotonic, never wall-clock time."""
    before = time.monotonic()
    reading = SystemClock().monotonic()
    assert before <= reading <= time.monotonic()


def test_system_clock_sleeps_nothing_for_zero_or_less() -> None:
    """A zero or negative sleep returns at once instead of raising."""
    clock = SystemClock()
    start = time.monotonic()
    clock.sleep(0)
    clock.sleep(-1.0)
    assert time.monotonic() - start < 0.5


def test_system_clock_sleep_really_waits() -> None:
    """A short real sleep is at least as long as asked (one small real sleep)."""
    start = time.monotonic()
    SystemClock().sleep(0.01)
    assert time.monotonic() - start >= 0.01


@pytest.mark.anyio
async def test_async_sleep_runs_on_both_event_loops() -> None:
    """Asleep works under asyncio and trio without the caller naming either."""
    start = time.monotonic()
    await SystemClock().asleep(0.005)
    await SystemClock().asleep(-1)
    assert time.monotonic() - start >= 0.005


def test_async_sleep_outside_an_event_loop_is_a_clear_error() -> None:
    """Driving the coroutine by hand, with no loop running, names the problem."""
    coroutine = async_sleep(0)
    with pytest.raises(RuntimeError, match="asyncio or trio"):
        coroutine.send(None)
    coroutine.close()


def test_async_sleep_is_cancellable_on_asyncio() -> None:
    """Cancelling a task that sleeps through the clock cancels the sleep."""

    async def main() -> None:
        task = asyncio.create_task(SystemClock().asleep(60))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    start = time.monotonic()
    asyncio.run(main())
    assert time.monotonic() - start < 5


def test_resolve_clock() -> None:
    """None means the system clock; any object with the Clock methods is accepted."""
    assert resolve_clock(None) is SYSTEM_CLOCK
    fake = FakeClock()
    assert resolve_clock(fake) is fake
    assert isinstance(fake, Clock)
    assert isinstance(SYSTEM_CLOCK, Clock)


@pytest.mark.parametrize("bad", [time.monotonic, 1.0, "clock", object()])
def test_resolve_clock_rejects_non_clocks(bad: object) -> None:
    """clock= gets a TypeError naming the parameter, not an AttributeError later."""
    with pytest.raises(TypeError, match="clock="):
        resolve_clock(bad)  # type: ignore[arg-type]
