"""Real threads and real tasks against one breaker: nothing lost, nothing serialized."""

from __future__ import annotations

import asyncio
import contextlib
import threading

import pytest

from resilience import CircuitBreaker, CircuitOpenError, State
from resilience.testing import FakeClock


def half_open_breaker(clock: FakeClock) -> CircuitBreaker:
    breaker = CircuitBreaker(
        "probe", consecutive_failures=1, open_duration=5, half_open_max_calls=1, clock=clock
    )
    breaker.acquire().record_failure()
    clock.advance(5)
    return breaker


def race_32_threads_at_a_half_open_breaker() -> tuple[int, int, CircuitBreaker]:
    """Release 32 threads at once at a half-open breaker; return (ran, rejected, breaker)."""
    clock = FakeClock()
    breaker = half_open_breaker(clock)
    barrier = threading.Barrier(32, timeout=30)
    release_probe = threading.Event()
    ran: list[int] = []
    rejected: list[int] = []

    @breaker
    def protected(index: int) -> None:
        ran.append(index)
        release_probe.wait(timeout=30)  # hold the slot until everyone has tried

    def worker(index: int) -> None:
        barrier.wait()
        try:
            protected(index)
        except CircuitOpenError:
            rejected.append(index)
            if len(rejected) == 31:
                release_probe.set()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return len(ran), len(rejected), breaker


def test_half_open_admits_exactly_one_of_32_threads() -> None:
    """32 threads released together at a half-open breaker: one probe runs, 31 rejected."""
    for _ in range(30):
        ran, rejected, breaker = race_32_threads_at_a_half_open_breaker()
        assert (ran, rejected) == (1, 31)
        assert breaker.state is State.CLOSED
        assert breaker.metrics().calls["rejected"] == 31


def test_half_open_admits_exactly_one_of_1000_tasks() -> None:
    """1,000 asyncio tasks at a half-open breaker: one probe, 999 rejected at once."""
    clock = FakeClock()
    breaker = half_open_breaker(clock)
    ran = 0

    @breaker
    async def protected() -> None:
        nonlocal ran
        ran += 1
        await asyncio.sleep(0.01)

    async def main() -> list[BaseException | None]:
        return await asyncio.gather(*(protected() for _ in range(1000)), return_exceptions=True)

    results = asyncio.run(main())
    assert ran == 1
    assert sum(isinstance(r, CircuitOpenError) for r in results) == 999
    assert breaker.state is State.CLOSED


def test_cancelled_probe_frees_its_slot() -> None:
    """Cancelling the only probe hands the slot back; the next caller probes."""
    clock = FakeClock()
    breaker = half_open_breaker(clock)
    started = asyncio.Event()

    @breaker
    async def hang() -> None:
        started.set()
        await asyncio.sleep(3600)

    @breaker
    async def quick() -> str:
        return "probe"

    async def main() -> str:
        task = asyncio.create_task(hang())
        await started.wait()
        with pytest.raises(CircuitOpenError):
            await quick()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return await quick()

    assert asyncio.run(main()) == "probe"
    assert breaker.state is State.CLOSED


def test_calls_through_one_breaker_run_in_parallel() -> None:
    """No lock is held while user code runs: 4 threads are inside the call at once."""
    breaker = CircuitBreaker("parallel")
    inside = threading.Barrier(4, timeout=10)

    @breaker
    def protected() -> str:
        inside.wait()  # raises BrokenBarrierError if the calls were serialized
        return "ok"

    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(protected())) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert results == ["ok"] * 4


@pytest.mark.parametrize("fast_path", [True, False])
def test_counters_never_miss_a_call_under_threads(fast_path: bool) -> None:
    """8 threads x 3,000 mixed calls: every outcome is counted exactly once."""
    breaker = CircuitBreaker("count", failure_rate_threshold=1.0, minimum_calls=100)
    threads_n, calls_n = 8, 3000

    @breaker
    def work(i: int) -> int:
        if i % 7 == 0:
            raise ValueError(i)
        return i

    def worker() -> None:
        for i in range(1, calls_n + 1):
            if fast_path:
                with contextlib.suppress(ValueError):
                    work(i)
            else:
                permit = breaker.acquire()
                if i % 7 == 0:
                    permit.record_failure()
                else:
                    permit.record_success()

    threads = [threading.Thread(target=worker) for _ in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    failures = threads_n * (calls_n // 7)
    calls = breaker.metrics().calls
    assert calls["failure"] == failures
    assert calls["success"] == threads_n * calls_n - failures
    assert breaker.state is State.CLOSED
    assert breaker.metrics().window_calls == 100


def test_trip_under_concurrent_failures_happens_once() -> None:
    """Many threads failing at once open the breaker exactly once."""
    breaker = CircuitBreaker("trip", consecutive_failures=5, failure_rate_threshold=None)
    barrier = threading.Barrier(16, timeout=30)

    def worker() -> None:
        barrier.wait()
        for _ in range(50):
            with contextlib.suppress(CircuitOpenError):
                breaker.acquire().record_failure()

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert breaker.state is State.OPEN
    assert breaker.metrics().transitions == {(State.CLOSED, State.OPEN): 1}
