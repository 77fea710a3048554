from __future__ import annotations

import asyncio
import time

import anyio
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
    ("seconds", "error"), [(0, ValueError), (-1, ValueError), ("1", TypeError)]
)
def test_bad_timeouts(seconds, error) -> None:
    """seconds= must be a positive number."""
    with pytest.raises(error, match="seconds="):
        Timeout(seconds)
