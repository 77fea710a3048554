"""ConcurrencyLimit under real threads and asyncio tasks, with a limit that keeps moving.

Invariants: no call is admitted while the calls in flight are at the limit
in force (checked at every admission, under the policy's lock); every
admission is settled exactly once; the counters add up exactly.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import time
from typing import Any

from resilience import ConcurrencyLimit, ConcurrencyLimitExceededError, LimitAlgorithm
from resilience._admission import Admission

_SLOT: Any = Admission._in_flight  # type: ignore[attr-defined]


class Jumpy(LimitAlgorithm):
    """Moves the limit on every sample: 2, 5, 3, 6, 1, 4, 2, ..."""

    def __init__(self) -> None:
        super().__init__(initial_limit=3, min_limit=1, max_limit=6, window=None)
        self.cycle = itertools.cycle([2, 5, 3, 6, 1, 4])

    def update(self, limit: float, rtt: float, in_flight: int, dropped: bool) -> float:
        return next(self.cycle)


class Checked(ConcurrencyLimit):
    """Checks, at every change of the in-flight count, that admissions respect the limit."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.violations: list[tuple[int, int]] = []
        self.admissions = 0
        super().__init__(*args, **kwargs)

    @property  # type: ignore[override]
    def _in_flight(self) -> int:
        return int(_SLOT.__get__(self))

    @_in_flight.setter
    def _in_flight(self, value: int) -> None:
        try:
            old = _SLOT.__get__(self)
        except AttributeError:  # the first assignment, in the constructor
            old = 0
        if value > old:
            self.admissions += 1
            if value > self._limit:
                self.violations.append((value, self._limit))
        _SLOT.__set__(self, value)


def outcome(i: int) -> None:
    if i % 7 == 0:
        raise TimeoutError  # a drop
    if i % 11 == 0:
        raise ValueError  # not a sample


def test_threads_never_exceed_the_limit_in_force() -> None:
    """16 threads x 100 calls, waiting for slots, while the limit moves at every sample."""
    limit = Checked(Jumpy(), max_wait=30)
    errors: list[BaseException] = []

    @limit
    def work(i: int) -> None:
        time.sleep(0.0002)
        outcome(i)

    def worker() -> None:
        for i in range(100):
            try:
                work(i)
            except (TimeoutError, ValueError):
                pass
            except BaseException as error:
                errors.append(error)

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    assert limit.violations == []
    metrics = limit.metrics()
    drops = 16 * sum(1 for i in range(100) if i % 7 == 0)
    ignored = 16 * sum(1 for i in range(100) if i % 7 and i % 11 == 0)
    assert metrics["dropped"] == drops
    assert metrics["ignored"] == ignored
    assert metrics["succeeded"] == 1600 - drops - ignored
    assert (metrics["in_flight"], metrics["waiting"], metrics["rejected"]) == (0, 0, 0)
    assert limit.admissions == 1600


def test_threads_rejected_at_once_are_counted_exactly() -> None:
    """max_wait=0: every call is either admitted and settled, or rejected; the sums agree."""
    limit = Checked(Jumpy())
    rejected = 0
    lock = threading.Lock()

    @limit
    def work() -> None:
        time.sleep(0.0002)

    def worker() -> None:
        nonlocal rejected
        for _ in range(200):
            try:
                work()
            except ConcurrencyLimitExceededError:
                with lock:
                    rejected += 1

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    metrics = limit.metrics()
    assert limit.violations == []
    assert rejected > 0
    assert metrics["rejected"] == rejected
    assert metrics["succeeded"] + metrics["dropped"] + metrics["ignored"] == 1600 - rejected
    assert limit.admissions == 1600 - rejected
    assert metrics["in_flight"] == 0


def test_tasks_never_exceed_the_limit_in_force() -> None:
    """300 asyncio tasks with waits, a moving limit, drops and errors; counts exact."""
    limit = Checked(Jumpy(), max_wait=30)
    now = peak = 0

    @limit
    async def work(i: int) -> None:
        nonlocal now, peak
        now += 1
        peak = max(peak, now)
        try:
            await asyncio.sleep(0.0005)
            outcome(i)
        finally:
            now -= 1

    async def one(i: int) -> None:
        with contextlib.suppress(TimeoutError, ValueError):
            await work(i)

    async def main() -> None:
        await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(300))), 60)

    asyncio.run(main())
    assert limit.violations == []
    assert peak <= 6
    metrics = limit.metrics()
    drops = sum(1 for i in range(300) if i % 7 == 0)
    ignored = sum(1 for i in range(300) if i % 7 and i % 11 == 0)
    assert (metrics["dropped"], metrics["ignored"]) == (drops, ignored)
    assert metrics["succeeded"] == 300 - drops - ignored
    assert (metrics["in_flight"], metrics["waiting"], metrics["rejected"]) == (0, 0, 0)


def test_threads_and_tasks_share_one_limit() -> None:
    """Threads and an event loop queue on the same limit; the invariant holds across both."""
    limit = Checked(Jumpy(), max_wait=30)

    def sync_work() -> None:
        with limit:
            time.sleep(0.0005)

    async def async_work() -> None:
        async with limit:
            await asyncio.sleep(0.0005)

    async def tasks() -> None:
        await asyncio.wait_for(asyncio.gather(*(async_work() for _ in range(100))), 60)

    threads = [threading.Thread(target=lambda: [sync_work() for _ in range(50)]) for _ in range(4)]
    for thread in threads:
        thread.start()
    asyncio.run(tasks())
    for thread in threads:
        thread.join(timeout=60)
    assert limit.violations == []
    metrics = limit.metrics()
    assert metrics["succeeded"] == 300
    assert (metrics["in_flight"], metrics["waiting"], metrics["rejected"]) == (0, 0, 0)
