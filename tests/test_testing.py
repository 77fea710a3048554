from __future__ import annotations

import math
import threading

import anyio
import pytest

from resilience.testing import FakeClock


def test_fake_clock_moves_only_when_told() -> None:
    """Reading the clock does not move it; advance() does."""
    clock = FakeClock(start=100.0)
    assert clock.monotonic() == clock.monotonic() == 100.0
    clock.advance(2.5)
    assert clock.monotonic() == 102.5
    clock.advance(0)
    assert clock.monotonic() == 102.5


def test_fake_sleep_returns_at_once_and_moves_time() -> None:
    """sleep(s) records s and moves the clock by s."""
    clock = FakeClock()
    clock.sleep(1.5)
    clock.sleep(0)
    clock.sleep(3)
    assert clock.sleeps == [1.5, 0.0, 3.0]
    assert clock.monotonic() == 4.5
    assert clock.slept == 4.5


@pytest.mark.anyio
async def test_fake_async_sleep_moves_time_and_yields() -> None:
    """asleep(s) records s, moves the clock, and lets another task run."""
    clock = FakeClock()
    ran: list[str] = []

    async def other() -> None:
        ran.append("other")

    async with anyio.create_task_group() as group:
        group.start_soon(other)
        # trio may run a new task one scheduling batch later; a sleep that never
        # yields would starve it for all ten.
        for _ in range(10):
            await clock.asleep(2.0)
            if ran:
                break
        assert ran == ["other"]
    assert clock.sleeps == [2.0] * len(clock.sleeps)
    assert clock.monotonic() == 2.0 * len(clock.sleeps)


@pytest.mark.anyio
async def test_fake_async_sleep_is_a_cancellation_point() -> None:
    """A cancelled scope interrupts a fake sleep like a real one."""
    clock = FakeClock()
    with anyio.CancelScope() as scope:
        scope.cancel()
        await clock.asleep(10)
        pytest.fail("the cancelled sleep returned")
    assert scope.cancelled_caught


def test_fake_clock_is_thread_safe() -> None:
    """Sleeps from many threads at once are all recorded and all move the clock."""
    clock = FakeClock()
    barrier = threading.Barrier(8)

    def sleeper() -> None:
        barrier.wait()
        for _ in range(500):
            clock.sleep(0.5)

    threads = [threading.Thread(target=sleeper) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(clock.sleeps) == 8 * 500
    assert clock.monotonic() == 8 * 500 * 0.5


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda c: c.advance(-1), ValueError),
        (lambda c: c.advance(math.nan), ValueError),
        (lambda c: c.advance(math.inf), ValueError),
        (lambda c: c.advance("1"), TypeError),
        (lambda c: c.advance(True), TypeError),
        (lambda c: c.sleep(-0.1), ValueError),
        (lambda c: c.sleep(None), TypeError),
    ],
)
def test_fake_clock_rejects_bad_times(call, error) -> None:
    """Time cannot go back or be NaN; a bad sleep in code under test is caught."""
    clock = FakeClock()
    with pytest.raises(error, match="seconds="):
        call(clock)
    assert clock.monotonic() == 0
    assert clock.sleeps == []


@pytest.mark.parametrize(
    ("start", "error"), [(-1, ValueError), (math.nan, ValueError), ("0", TypeError)]
)
def test_fake_clock_rejects_bad_start(start, error) -> None:
    """start= is validated at construction."""
    with pytest.raises(error, match="start="):
        FakeClock(start=start)
