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


# -- alarms ---------------------------------------------------------------------


def test_alarms_fire_when_the_clock_passes_them_in_time_order() -> None:
    """An alarm runs once the clock reads its time (advance, sleep, asleep), in time order."""
    clock = FakeClock()
    fired: list[tuple[str, float]] = []
    clock.call_at(3.0, lambda: fired.append(("c", clock.monotonic())))
    clock.call_at(1.0, lambda: fired.append(("a", clock.monotonic())))
    clock.call_at(1.0, lambda: fired.append(("b", clock.monotonic())))  # same time: call order
    assert clock.pending_alarms == 3
    clock.advance(0.5)
    assert fired == []
    clock.sleep(2.0)  # past 1.0 (both) but not 3.0; callbacks see the clock already moved
    assert fired == [("a", 2.5), ("b", 2.5)]
    clock.advance(0.5)  # exactly 3.0 is due
    assert fired[2:] == [("c", 3.0)]
    assert clock.pending_alarms == 0
    clock.advance(10)
    assert len(fired) == 3  # each alarm runs once


@pytest.mark.anyio
async def test_alarms_fire_from_async_sleep() -> None:
    """An async sleep moves the clock past an alarm and runs it (asyncio and trio)."""
    clock = FakeClock()
    fired: list[float] = []
    clock.call_at(5, lambda: fired.append(clock.monotonic()))
    await clock.asleep(4)
    assert fired == []
    await clock.asleep(2)
    assert fired == [6.0]


def test_a_cancelled_alarm_never_fires() -> None:
    """alarm.cancel() drops it; cancelling twice, or after it fired, does nothing."""
    clock = FakeClock()
    fired: list[str] = []
    dropped = clock.call_at(1, lambda: fired.append("dropped"))
    kept = clock.call_at(1, lambda: fired.append("kept"))
    dropped.cancel()
    dropped.cancel()
    assert not dropped.pending
    assert clock.pending_alarms == 1
    clock.advance(1)
    kept.cancel()
    assert fired == ["kept"]
    assert clock.pending_alarms == 0


def test_many_cancelled_alarms_do_not_pile_up() -> None:
    """Alarms cancelled before their time (a Timeout per call) are compacted away."""
    clock = FakeClock()
    for _ in range(10_000):
        clock.call_at(1e9, lambda: None).cancel()
    assert clock.pending_alarms == 0
    assert len(clock._alarms) < 100


def test_an_alarm_already_due_fires_inside_call_at() -> None:
    """An alarm for now or the past runs at once."""
    clock = FakeClock(start=10)
    fired: list[str] = []
    alarm = clock.call_at(10, lambda: fired.append("now"))
    clock.call_at(5, lambda: fired.append("past"))
    assert fired == ["now", "past"]
    assert not alarm.pending


def test_an_alarm_callback_may_move_the_clock_and_set_alarms() -> None:
    """Callbacks run outside the clock's lock: they may advance it and set further alarms."""
    clock = FakeClock()
    fired: list[float] = []

    def first() -> None:
        fired.append(clock.monotonic())
        clock.call_at(clock.monotonic() + 1, lambda: fired.append(clock.monotonic()))
        clock.advance(1)

    clock.call_at(1, first)
    clock.advance(1)
    assert fired == [1.0, 2.0]


def test_a_failing_alarm_raises_after_the_other_due_alarms_ran() -> None:
    """The first error propagates out of what moved the clock; the other due alarms still run."""
    clock = FakeClock()
    fired: list[str] = []

    def boom() -> None:
        raise ValueError("alarm failed")

    clock.call_at(1, boom)
    clock.call_at(2, lambda: fired.append("later"))
    with pytest.raises(ValueError, match="alarm failed"):
        clock.advance(5)
    assert fired == ["later"]
    assert clock.monotonic() == 5


def test_alarms_are_thread_safe() -> None:
    """Alarms set and passed from many threads each fire exactly once."""
    clock = FakeClock()
    fired: list[int] = []
    lock = threading.Lock()
    barrier = threading.Barrier(8)

    def worker(n: int) -> None:
        barrier.wait()
        for i in range(200):

            def record(value: int = n * 1000 + i) -> None:
                with lock:
                    fired.append(value)

            clock.call_at(clock.monotonic() + 0.5, record)
            clock.sleep(0.25)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    clock.advance(1)
    assert sorted(fired) == sorted(n * 1000 + i for n in range(8) for i in range(200))
    assert clock.pending_alarms == 0


@pytest.mark.parametrize(
    ("when", "callback", "error", "match"),
    [
        (math.nan, lambda: None, ValueError, "when="),
        (math.inf, lambda: None, ValueError, "when="),
        ("1", lambda: None, TypeError, "when="),
        (True, lambda: None, TypeError, "when="),
        (1.0, "not callable", TypeError, "callback="),
    ],
)
def test_call_at_rejects_bad_arguments(when, callback, error, match) -> None:
    """A bad alarm fails where it is set, not when it would fire."""
    clock = FakeClock()
    with pytest.raises(error, match=match):
        clock.call_at(when, callback)
    assert clock.pending_alarms == 0
