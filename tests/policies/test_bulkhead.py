from __future__ import annotations

import asyncio
import datetime
import math
import threading
import time
from typing import Any

import anyio
import pytest

from resilience import Bulkhead, BulkheadFullError, MisuseError
from resilience.events import BulkheadRejected, Event
from resilience.testing import FakeClock


class Gauge:
    """Counts calls inside a section and remembers the peak (thread-safe)."""

    def __init__(self) -> None:
        self.now = 0
        self.peak = 0
        self.lock = threading.Lock()

    def enter(self) -> None:
        with self.lock:
            self.now += 1
            self.peak = max(self.peak, self.now)

    def exit(self) -> None:
        with self.lock:
            self.now -= 1


def test_rejects_at_once_when_full_without_max_wait() -> None:
    """max_wait=0: the call over the limit fails immediately."""
    bulkhead = Bulkhead(2, name="db")
    events: list[Event] = []
    bulkhead.events.subscribe(events.append)
    with bulkhead, bulkhead:
        assert bulkhead.in_flight == 2
        start = time.monotonic()
        with pytest.raises(BulkheadFullError) as caught:
            bulkhead.call(lambda: None)
        assert time.monotonic() - start < 0.5
    assert (caught.value.name, caught.value.max_concurrent, caught.value.waited) == ("db", 2, 0.0)
    assert bulkhead.in_flight == 0
    assert [type(e) for e in events] == [BulkheadRejected]
    assert bulkhead.metrics() == {"in_flight": 0, "waiting": 0, "rejected": 1}


def test_threads_never_exceed_the_limit_and_counts_stay_exact() -> None:
    """16 threads x 100 calls through max_concurrent=4: peak 4, none lost."""
    bulkhead = Bulkhead(4, max_wait=30)
    gauge = Gauge()
    done: list[int] = []

    @bulkhead
    def work(i: int) -> int:
        gauge.enter()
        time.sleep(0.0005)
        gauge.exit()
        return i

    def worker() -> None:
        for i in range(100):
            done.append(work(i))

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(done) == 1600
    assert gauge.peak == 4
    assert bulkhead.metrics() == {"in_flight": 0, "waiting": 0, "rejected": 0}


@pytest.mark.anyio
async def test_tasks_never_exceed_the_limit() -> None:
    """300 tasks through max_concurrent=5 with waiting: peak 5, all complete."""
    bulkhead = Bulkhead(5, max_wait=30)
    gauge = Gauge()
    finished = 0

    @bulkhead
    async def work() -> None:
        nonlocal finished
        gauge.enter()
        await anyio.sleep(0.001)
        gauge.exit()
        finished += 1

    with anyio.fail_after(60):
        async with anyio.create_task_group() as group:
            for _ in range(300):
                group.start_soon(work)
    assert finished == 300
    assert gauge.peak == 5
    assert bulkhead.in_flight == 0


@pytest.mark.anyio
async def test_waiting_times_out() -> None:
    """A task waits max_wait for a slot, then gets BulkheadFullError (real time)."""
    bulkhead = Bulkhead(1, max_wait=0.05)
    async with bulkhead:
        start = time.monotonic()
        with pytest.raises(BulkheadFullError) as caught:
            async with bulkhead:
                pass
        waited = time.monotonic() - start
    assert 0.04 <= waited < 2
    assert caught.value.waited >= 0.04
    assert bulkhead.metrics() == {"in_flight": 0, "waiting": 0, "rejected": 1}


def test_thread_waiting_times_out() -> None:
    """A thread waits max_wait, then is rejected; the queue is left clean."""
    bulkhead = Bulkhead(1, max_wait=0.05)
    with bulkhead, pytest.raises(BulkheadFullError):
        bulkhead.call(lambda: None)
    assert bulkhead.waiting == 0
    assert bulkhead.in_flight == 0


def test_released_slot_goes_to_the_longest_waiter() -> None:
    """FIFO: a waiter is served before a newcomer that arrives after the release."""
    bulkhead = Bulkhead(1, max_wait=10)
    order: list[str] = []

    def waiter() -> None:
        with bulkhead:
            order.append("waiter")

    with bulkhead:
        thread = threading.Thread(target=waiter)
        thread.start()
        while bulkhead.waiting == 0:
            time.sleep(0.001)
    # The slot was handed over: a newcomer cannot jump in before the waiter ran.
    thread.join(timeout=10)
    with bulkhead:
        order.append("newcomer")
    assert order == ["waiter", "newcomer"]


def test_cancelled_waiter_leaves_the_queue() -> None:
    """A task cancelled while queued takes no slot and leaves no ghost in the queue."""
    bulkhead = Bulkhead(1, max_wait=30)

    async def main() -> None:
        async with bulkhead:
            task = asyncio.create_task(bulkhead.acall(asyncio.sleep, 0))
            while bulkhead.waiting == 0:  # noqa: ASYNC110  (polls the bulkhead's own queue)
                await asyncio.sleep(0)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert bulkhead.waiting == 0
        assert bulkhead.in_flight == 0

    asyncio.run(main())


def test_threads_and_tasks_share_one_bulkhead() -> None:
    """Threads and an asyncio loop wait on the same bulkhead; peak stays at the limit."""
    bulkhead = Bulkhead(3, max_wait=30)
    gauge = Gauge()

    def sync_work() -> None:
        with bulkhead:
            gauge.enter()
            time.sleep(0.001)
            gauge.exit()

    async def async_work() -> None:
        async with bulkhead:
            gauge.enter()
            await asyncio.sleep(0.001)
            gauge.exit()

    async def tasks() -> None:
        await asyncio.gather(*(async_work() for _ in range(100)))

    threads = [threading.Thread(target=lambda: [sync_work() for _ in range(50)]) for _ in range(4)]
    for thread in threads:
        thread.start()
    asyncio.run(tasks())
    for thread in threads:
        thread.join(timeout=60)
    assert gauge.peak <= 3
    assert bulkhead.metrics() == {"in_flight": 0, "waiting": 0, "rejected": 0}


def test_max_queue_rejects_extra_waiters_at_once() -> None:
    """Beyond max_queue waiters, callers are rejected without waiting."""
    bulkhead = Bulkhead(1, max_wait=10, max_queue=1)
    release = threading.Event()

    def holder() -> None:
        with bulkhead:
            release.wait(10)

    def queued() -> None:
        bulkhead.call(lambda: None)

    first = threading.Thread(target=holder)
    first.start()
    while bulkhead.in_flight == 0:
        time.sleep(0.001)
    second = threading.Thread(target=queued)
    second.start()
    while bulkhead.waiting == 0:
        time.sleep(0.001)
    start = time.monotonic()
    with pytest.raises(BulkheadFullError):
        bulkhead.call(lambda: None)
    assert time.monotonic() - start < 1
    release.set()
    first.join(timeout=10)
    second.join(timeout=10)
    assert bulkhead.metrics()["in_flight"] == 0


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"max_concurrent": 0}, ValueError, "max_concurrent="),
        ({"max_concurrent": -1}, ValueError, "max_concurrent="),
        ({"max_concurrent": "4"}, TypeError, "max_concurrent="),
        ({"max_concurrent": 4.0}, TypeError, "max_concurrent="),
        ({"max_concurrent": True}, TypeError, "max_concurrent="),
        ({"max_concurrent": None}, TypeError, "max_concurrent="),
        ({"max_wait": -1}, ValueError, "max_wait="),
        ({"max_wait": math.nan}, ValueError, "max_wait="),
        ({"max_wait": math.inf}, ValueError, "max_wait="),
        ({"max_wait": True}, TypeError, "max_wait="),
        ({"max_wait": "1"}, TypeError, "max_wait="),
        ({"max_wait": None}, TypeError, "max_wait="),
        ({"max_wait": datetime.timedelta(seconds=-1)}, ValueError, "max_wait="),
        ({"max_wait": threading.TIMEOUT_MAX * 2}, ValueError, "max_wait="),
        ({"max_queue": 0}, ValueError, "max_queue="),
        ({"max_queue": -3}, ValueError, "max_queue="),
        ({"max_queue": 1.5}, TypeError, "max_queue="),
        ({"max_queue": False}, TypeError, "max_queue="),
        ({"max_queue": "10"}, TypeError, "max_queue="),
        ({"name": ""}, ValueError, "name="),
        ({"name": "  "}, ValueError, "name="),
        ({"name": None}, TypeError, "name="),
        ({"name": b"db"}, TypeError, "name="),
        ({"clock": "clock"}, TypeError, "clock="),
        ({"clock": time.monotonic}, TypeError, "clock="),
        ({"clock": 1.0}, TypeError, "clock="),
    ],
)
def test_bad_bulkheads(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    """Every argument is validated at construction; the message names the parameter."""
    kwargs = {"max_concurrent": 4, **kwargs}
    with pytest.raises(error, match=match):
        Bulkhead(**kwargs)


def test_max_wait_takes_a_timedelta() -> None:
    """Every seconds parameter also takes a datetime.timedelta."""
    assert Bulkhead(1, max_wait=datetime.timedelta(milliseconds=250)).max_wait == 0.25


def test_an_interrupted_waiter_never_strands_a_slot(monkeypatch: pytest.MonkeyPatch) -> None:
    """KeyboardInterrupt while a thread waits for a slot: the queue is left clean."""
    import resilience._bulkhead as module

    class InterruptedEvent(threading.Event):
        def wait(self, timeout: float | None = None) -> bool:
            raise KeyboardInterrupt

    bulkhead = Bulkhead(1, max_wait=5)
    with bulkhead:
        monkeypatch.setattr(module.threading, "Event", InterruptedEvent)
        with pytest.raises(KeyboardInterrupt):
            bulkhead.call(lambda: None)
        monkeypatch.undo()
        assert bulkhead.waiting == 0
    assert bulkhead.metrics() == {"in_flight": 0, "waiting": 0, "rejected": 0}
    assert bulkhead.call(lambda: "free") == "free"


def test_observers_may_read_the_bulkhead() -> None:
    """A rejection's observers run outside the lock: reading metrics() cannot deadlock."""
    bulkhead = Bulkhead(1)
    seen: list[dict[str, int]] = []
    bulkhead.events.subscribe(lambda event: seen.append(bulkhead.metrics()))
    with bulkhead, pytest.raises(BulkheadFullError):
        bulkhead.call(lambda: None)
    assert seen == [{"in_flight": 1, "waiting": 0, "rejected": 1}]


def test_max_wait_beyond_what_threads_support_is_refused() -> None:
    """A wait longer than threading.TIMEOUT_MAX is an error at construction."""
    with pytest.raises(ValueError, match="max_wait="):
        Bulkhead(1, max_wait=threading.TIMEOUT_MAX * 2)


# -- misuse -------------------------------------------------------------------


async def _coroutine_function() -> str:
    return "never awaited by a sync entry point"


def test_sync_entry_points_refuse_a_coroutine_and_release_the_slot() -> None:
    """call(), the sync decorator and `with`: TypeError, and the slot is free again."""
    bulkhead = Bulkhead(1)
    with pytest.raises(TypeError, match="returned an awaitable"):
        bulkhead.call(_coroutine_function)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="returned an awaitable"):
        bulkhead(lambda: _coroutine_function())()
    assert bulkhead.metrics() == {"in_flight": 0, "waiting": 0, "rejected": 0}
    assert bulkhead.call(lambda: "free") == "free"


@pytest.mark.anyio
async def test_async_entry_points_refuse_a_plain_value_and_release_the_slot() -> None:
    """acall() given a sync function: TypeError pointing at call(), the slot is released."""
    bulkhead = Bulkhead(1, max_wait=1)
    with pytest.raises(TypeError, match=r"not an awaitable.*call\("):
        await bulkhead.acall(lambda: "sync")  # type: ignore[arg-type,return-value]
    assert bulkhead.metrics() == {"in_flight": 0, "waiting": 0, "rejected": 0}


def test_sync_wait_inside_a_running_asyncio_loop_raises_instead_of_blocking_it() -> None:
    """`with bulkhead:` that would wait in a coroutine raises at once; nothing leaks."""
    bulkhead = Bulkhead(1, max_wait=5, name="db")
    ticks: list[float] = []

    async def ticker() -> None:
        for _ in range(5):
            ticks.append(time.monotonic())
            await asyncio.sleep(0.01)

    async def main() -> None:
        async with bulkhead:
            task = asyncio.create_task(ticker())
            await asyncio.sleep(0)
            start = time.monotonic()
            with pytest.raises(MisuseError, match=r"async with bulkhead") as caught, bulkhead:
                pass
            assert isinstance(caught.value, TypeError)
            with pytest.raises(MisuseError, match="asyncio event loop"):
                bulkhead.call(lambda: None)
            with pytest.raises(MisuseError, match="asyncio event loop"):
                bulkhead(lambda: None)()
            assert time.monotonic() - start < 1  # not the 5 s max_wait
            assert bulkhead.metrics() == {"in_flight": 1, "waiting": 0, "rejected": 0}
            await task
        assert ticks[-1] - ticks[0] < 1  # the loop kept running

    asyncio.run(asyncio.wait_for(main(), 10))
    assert bulkhead.metrics() == {"in_flight": 0, "waiting": 0, "rejected": 0}


def test_sync_wait_inside_trio_raises_instead_of_blocking_it() -> None:
    """The same under trio: the wait is refused, the queue is left clean."""
    import trio

    bulkhead = Bulkhead(1, max_wait=5)

    async def main() -> None:
        with trio.fail_after(10):
            async with bulkhead:
                with pytest.raises(MisuseError, match="trio event loop"):
                    bulkhead.call(lambda: None)
                assert bulkhead.metrics() == {"in_flight": 1, "waiting": 0, "rejected": 0}

    trio.run(main)
    assert bulkhead.metrics() == {"in_flight": 0, "waiting": 0, "rejected": 0}


def test_sync_entry_in_a_loop_is_fine_when_it_need_not_wait() -> None:
    """A free slot, or max_wait=0, never waits: the sync API works inside a loop."""
    waiting = Bulkhead(2, max_wait=5)
    at_once = Bulkhead(1)

    async def main() -> None:
        with waiting:  # a free slot: no wait
            assert waiting.call(lambda: "ok") == "ok"
        async with at_once:
            with pytest.raises(BulkheadFullError):  # rejected at once, no wait either
                at_once.call(lambda: None)

    asyncio.run(main())
    assert waiting.in_flight == 0
    assert at_once.metrics() == {"in_flight": 0, "waiting": 0, "rejected": 1}


def test_sync_wait_in_a_worker_thread_of_a_loop_still_waits() -> None:
    """asyncio.to_thread runs in another thread, with no loop of its own: it may wait."""
    bulkhead = Bulkhead(1, max_wait=5)

    async def main() -> str:
        async with bulkhead:
            worker = asyncio.create_task(asyncio.to_thread(bulkhead.call, lambda: "waited"))
            while bulkhead.waiting == 0:  # noqa: ASYNC110  (polls the bulkhead's own queue)
                await asyncio.sleep(0.001)
        return await worker

    assert asyncio.run(asyncio.wait_for(main(), 10)) == "waited"
    assert bulkhead.metrics() == {"in_flight": 0, "waiting": 0, "rejected": 0}


# -- clock= ---------------------------------------------------------------------------


def test_a_fake_clock_ends_a_thread_wait_in_fake_time_only() -> None:
    """clock=FakeClock(): real time never ends the wait; fake time past max_wait does."""
    clock = FakeClock(start=100)
    bulkhead = Bulkhead(1, max_wait=0.03125, name="db", clock=clock)
    events: list[Event] = []
    bulkhead.events.subscribe(events.append)
    outcome: list[BaseException | str] = []

    def waiter() -> None:
        try:
            outcome.append(bulkhead.call(lambda: "got a slot"))
        except BulkheadFullError as error:
            outcome.append(error)

    with bulkhead:
        thread = threading.Thread(target=waiter)
        thread.start()
        while bulkhead.waiting == 0:
            time.sleep(0.001)
        thread.join(timeout=0.1)  # three times max_wait in real time: still waiting
        assert thread.is_alive()
        assert outcome == []
        clock.advance(0.03125)
        thread.join(timeout=10)
    assert not thread.is_alive()
    assert len(outcome) == 1
    assert isinstance(outcome[0], BulkheadFullError)
    assert outcome[0].waited == 0.03125
    assert events == [BulkheadRejected(name="db", time=100.03125, max_concurrent=1, waited=0.03125)]
    assert clock.pending_alarms == 0
    assert bulkhead.metrics() == {"in_flight": 0, "waiting": 0, "rejected": 1}


@pytest.mark.anyio
async def test_a_fake_clock_ends_a_task_wait() -> None:
    """A task waiting for a slot is rejected when fake time passes max_wait (asyncio and trio)."""
    clock = FakeClock()
    bulkhead = Bulkhead(1, max_wait=5, clock=clock)
    outcome: list[BaseException | str] = []

    async def waiter() -> None:
        try:
            async with bulkhead:
                outcome.append("got a slot")
        except BulkheadFullError as error:
            outcome.append(error)

    async with bulkhead, anyio.create_task_group() as group:
        group.start_soon(waiter)
        await anyio.wait_all_tasks_blocked()
        clock.advance(4.5)
        await anyio.wait_all_tasks_blocked()
        assert outcome == []
        assert bulkhead.waiting == 1
        clock.advance(0.5)
    assert len(outcome) == 1
    assert isinstance(outcome[0], BulkheadFullError)
    assert outcome[0].waited == 5.0
    assert clock.pending_alarms == 0
    assert bulkhead.metrics() == {"in_flight": 0, "waiting": 0, "rejected": 1}


@pytest.mark.anyio
async def test_a_fake_clock_waiter_given_a_slot_in_time_keeps_it() -> None:
    """A slot released before fake max_wait goes to the waiter; its alarm is dropped."""
    clock = FakeClock()
    bulkhead = Bulkhead(1, max_wait=5, clock=clock)
    outcome: list[str] = []

    async def waiter() -> None:
        async with bulkhead:
            outcome.append("got a slot")

    async with anyio.create_task_group() as group, bulkhead:
        group.start_soon(waiter)
        await anyio.wait_all_tasks_blocked()
        clock.advance(4.9)
    assert outcome == ["got a slot"]
    assert clock.pending_alarms == 0
    clock.advance(10)
    assert bulkhead.metrics() == {"in_flight": 0, "waiting": 0, "rejected": 0}


def test_the_default_clock_waits_in_real_time() -> None:
    """Without clock=, waits end on the thread's timer: the existing real-time behaviour."""
    from resilience._clock import SYSTEM_CLOCK

    bulkhead = Bulkhead(1, max_wait=0.01)
    assert bulkhead.clock is SYSTEM_CLOCK
    with bulkhead, pytest.raises(BulkheadFullError) as caught:
        bulkhead.call(lambda: None)
    assert caught.value.waited >= 0.01


@pytest.mark.anyio
async def test_a_slot_freed_before_queueing_is_taken_without_waiting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A slot that frees up between the first look and joining the queue is used at once."""
    real_try_take = Bulkhead._try_take
    looks: list[int] = []

    def full_at_first_look(self: Bulkhead) -> bool:
        looks.append(1)
        return False if len(looks) == 1 else real_try_take(self)

    monkeypatch.setattr(Bulkhead, "_try_take", full_at_first_look)
    bulkhead = Bulkhead(1, max_wait=30)
    start = time.monotonic()
    with anyio.fail_after(10):
        assert await bulkhead.acall(anyio.sleep, 0) is None
    assert time.monotonic() - start < 5
    assert len(looks) == 2
    assert bulkhead.metrics() == {"in_flight": 0, "waiting": 0, "rejected": 0}


class StepClock:
    """A clock of one's own without call_at: each reading is one second after the last."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        self.now += 1.0
        return self.now

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    async def asleep(self, seconds: float) -> None:
        await anyio.sleep(seconds)


def test_a_clock_without_alarms_measures_but_real_time_ends_the_wait() -> None:
    """Without call_at, the wait ends on the thread's timer; `waited` is read from the clock."""
    clock = StepClock()
    bulkhead = Bulkhead(1, max_wait=0.01, clock=clock)
    with bulkhead, pytest.raises(BulkheadFullError) as caught:
        bulkhead.call(lambda: None)
    assert caught.value.waited == 1.0  # two readings of the step clock, one step apart
