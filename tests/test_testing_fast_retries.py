"""resilience.testing.fast_retries: no waits and at most N attempts, for the code under test."""

from __future__ import annotations

import asyncio
import contextvars
import sys
import threading
from collections.abc import Iterator

import anyio
import httpx
import pytest
import respx

import resilience
import resilience._retry as retry_module
import resilience.events
from resilience import CircuitBreaker, CircuitOpenError, Retry, RetryBudget
from resilience.events import Event, RetryScheduled
from resilience.testing import FakeClock, fast_retries


class Transient(Exception):
    pass


class Flaky:
    """Raises Transient `failures` times, then returns "ok"; counts calls."""

    def __init__(self, failures: int, retry_after: float | None = None) -> None:
        self.failures = failures
        self.retry_after = retry_after
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            error = Transient()
            if self.retry_after is not None:
                error.retry_after = self.retry_after  # type: ignore[attr-defined]
            raise error
        return "ok"

    async def acall(self) -> str:
        await anyio.lowlevel.checkpoint()
        return self()


def slow_retry(clock: FakeClock, attempts: int = 3) -> Retry:
    """A policy that waits 5 s between attempts (on a fake clock, so the waits are visible)."""
    return Retry(on=Transient, attempts=attempts, wait=5, clock=clock)


def test_every_wait_is_zero_and_no_sleep_is_made() -> None:
    """Inside the switch a retry happens at once: no sleep call, delay 0 in the events."""
    clock = FakeClock()
    retry = slow_retry(clock)
    events: list[Event] = []
    retry.events.subscribe(events.append)
    flaky = Flaky(2)
    with fast_retries():
        assert retry.call(flaky) == "ok"
    assert flaky.calls == 3  # the policy's own attempts, unchanged
    assert clock.sleeps == []
    assert [e.delay for e in events if isinstance(e, RetryScheduled)] == [0.0, 0.0]
    retry.call(Flaky(1))  # outside the block: the policy waits again
    assert clock.sleeps == [5.0]


def test_server_and_breaker_waits_are_zero_too() -> None:
    """Retry-After and a breaker's retry_after are not waited for; max_retry_after still holds."""
    clock = FakeClock()
    retry = Retry(on=Transient, attempts=3, wait=0, clock=clock, max_retry_after=60)
    with fast_retries():
        assert retry.call(Flaky(2, retry_after=30)) == "ok"
        with pytest.raises(Transient) as caught:
            retry.call(Flaky(1, retry_after=3600))
    assert clock.sleeps == []
    assert "max_retry_after" in caught.value.__notes__[-1]

    breaker = CircuitBreaker("fast", consecutive_failures=1, open_duration=30)
    breaker.force_open()
    through = Retry(on=CircuitOpenError, attempts=3, retry_circuit_open=True, clock=clock)
    with fast_retries(), pytest.raises(CircuitOpenError):
        through.call(breaker(Flaky(0)))
    assert clock.sleeps == []
    assert through.metrics()["retries"] == 2


def test_attempts_caps_every_policy() -> None:
    """attempts=N: at most N calls per logical call; a lower policy limit still wins."""
    clock = FakeClock()
    many = slow_retry(clock, attempts=5)
    few = slow_retry(clock, attempts=2)
    with fast_retries(attempts=3):
        with pytest.raises(Transient) as caught:
            many.call(flaky := Flaky(10))
        assert flaky.calls == 3
        assert "gave up after 3 attempts" in caught.value.__notes__[-1]
        with pytest.raises(Transient):
            few.call(flaky := Flaky(10))
        assert flaky.calls == 2
    with fast_retries(attempts=1), pytest.raises(Transient):
        many.call(flaky := Flaky(10))  # attempts=1: retries off
    assert flaky.calls == 1
    assert clock.sleeps == []


def test_blocks_nest_and_restore_what_was_in_force() -> None:
    """The innermost block wins; leaving it restores the outer one, then nothing."""
    clock = FakeClock()
    retry = slow_retry(clock, attempts=5)
    with fast_retries(attempts=4):
        with fast_retries(attempts=2):
            with pytest.raises(Transient):
                retry.call(flaky := Flaky(10))
            assert flaky.calls == 2
        with pytest.raises(Transient):
            retry.call(flaky := Flaky(10))
        assert flaky.calls == 4
    assert retry.call(Flaky(1)) == "ok"
    assert clock.sleeps == [5.0]


def test_budget_and_deadline_still_decide() -> None:
    """Only waits and attempts change: a spent budget still stops the retry."""
    clock = FakeClock()
    budget = RetryBudget("tight", ratio=0, min_per_second=0.1, window=10, clock=clock)
    retry = Retry(on=Transient, attempts=5, wait=5, budget=budget, clock=clock)
    with fast_retries(), pytest.raises(Transient) as caught:
        retry.call(flaky := Flaky(10))
    assert flaky.calls == 2  # one retry allowed by the budget, then refused
    assert "(budget)" in caught.value.__notes__[-1]


def test_the_deadline_still_decides() -> None:
    """Inside a deadline, a retry that cannot finish in time is still not started."""
    clock = FakeClock()
    retry = slow_retry(clock, attempts=5)

    def slow_failure() -> None:
        clock.advance(0.4)  # each attempt takes 0.4 fake seconds
        raise Transient

    with fast_retries(), resilience.deadline(1.0, clock=clock), pytest.raises(Transient) as caught:
        retry.call(slow_failure)
    assert clock.monotonic() == 0.8  # two attempts; a third would end past the deadline
    assert "(deadline)" in caught.value.__notes__[-1]


@pytest.mark.anyio
async def test_async_retries_are_fast_too() -> None:
    """Async retries under the switch: no waits (asyncio and trio)."""
    clock = FakeClock()
    retry = slow_retry(clock)
    flaky = Flaky(2)
    with fast_retries():
        assert await retry.acall(flaky.acall) == "ok"
    assert (flaky.calls, clock.sleeps) == (3, [])


@pytest.mark.anyio
async def test_the_switch_is_local_to_its_task() -> None:
    """A task inside the switch and one outside it, at the same time: only the first is fast."""
    fast_clock, slow_clock = FakeClock(), FakeClock()

    async def inside() -> None:
        with fast_retries():
            await anyio.lowlevel.checkpoint()  # let the other task run in between
            await slow_retry(fast_clock).acall(Flaky(2).acall)

    async def outside() -> None:
        await anyio.lowlevel.checkpoint()
        await slow_retry(slow_clock).acall(Flaky(2).acall)

    async with anyio.create_task_group() as group:
        group.start_soon(inside)
        group.start_soon(outside)
    assert fast_clock.sleeps == []
    assert slow_clock.sleeps == [5.0, 5.0]


@pytest.mark.anyio
async def test_tasks_started_inside_the_switch_inherit_it() -> None:
    """A task spawned inside the block copies the context, the switch included."""
    clock = FakeClock()
    with fast_retries():
        async with anyio.create_task_group() as group:
            group.start_soon(slow_retry(clock).acall, Flaky(2).acall)
    assert clock.sleeps == []


@pytest.mark.skipif(
    bool(getattr(sys.flags, "thread_inherit_context", 0)),
    reason="this build starts threads in a copy of the caller's context",
)
def test_a_plain_thread_started_inside_does_not_see_the_switch() -> None:
    """threading.Thread starts in a fresh context: the code it runs waits as configured."""
    clock = FakeClock()
    with fast_retries():
        thread = threading.Thread(target=slow_retry(clock).call, args=(Flaky(2),))
        thread.start()
        thread.join(timeout=10)
    assert clock.sleeps == [5.0, 5.0]


def test_work_run_in_a_copied_context_sees_the_switch() -> None:
    """copy_context().run in a thread, and asyncio.to_thread, carry the switch along."""
    clock = FakeClock()
    with fast_retries():
        context = contextvars.copy_context()
        thread = threading.Thread(target=context.run, args=(slow_retry(clock).call, Flaky(2)))
        thread.start()
        thread.join(timeout=10)

        async def main() -> str:
            return await asyncio.to_thread(slow_retry(clock).call, Flaky(2))

        assert asyncio.run(main()) == "ok"
    assert clock.sleeps == []


def test_as_a_decorator_sync_and_async() -> None:
    """@fast_retries(...) runs each call of a def or async def inside the switch."""
    clock = FakeClock()
    retry = slow_retry(clock, attempts=5)

    @fast_retries(attempts=2)
    def sync_call() -> int:
        flaky = Flaky(10)
        with pytest.raises(Transient):
            retry.call(flaky)
        return flaky.calls

    @fast_retries(attempts=2)
    async def async_call() -> int:
        flaky = Flaky(10)
        with pytest.raises(Transient):
            await retry.acall(flaky.acall)
        return flaky.calls

    assert sync_call.__name__ == "sync_call"
    assert sync_call() == 2
    assert asyncio.run(async_call()) == 2
    assert clock.sleeps == []
    assert retry_module._fast_retries.get() is None  # nothing left switched on


@pytest.fixture
def no_retry_waits() -> Iterator[None]:
    """The fixture pattern the testing guide shows."""
    with fast_retries(attempts=2):
        yield


def test_as_a_fixture(no_retry_waits: None) -> None:
    """A generator fixture holding the switch covers a sync test."""
    clock = FakeClock()
    with pytest.raises(Transient):
        slow_retry(clock, attempts=5).call(flaky := Flaky(10))
    assert (flaky.calls, clock.sleeps) == (2, [])


@pytest.mark.anyio
async def test_as_a_fixture_of_an_async_test(no_retry_waits: None) -> None:
    """The same fixture covers an async test run by the anyio plugin (asyncio and trio)."""
    clock = FakeClock()
    with pytest.raises(Transient):
        await slow_retry(clock, attempts=5).acall((flaky := Flaky(10)).acall)
    assert (flaky.calls, clock.sleeps) == (2, [])


def test_a_first_try_success_never_reads_the_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    """The ContextVar is read only when a retry is being planned, never on the success path."""
    reads: list[int] = []

    class Spy:
        def get(self) -> None:
            reads.append(1)

    monkeypatch.setattr(retry_module, "_fast_retries", Spy())
    retry = slow_retry(FakeClock())

    async def succeed() -> str:
        return "ok"

    assert retry.call(lambda: "ok") == "ok"
    assert asyncio.run(retry.acall(succeed)) == "ok"
    assert reads == []
    retry.call(Flaky(1))
    assert reads == [1]


@pytest.mark.parametrize(
    ("attempts", "error"), [(0, ValueError), (-1, ValueError), (True, TypeError), ("2", TypeError)]
)
def test_bad_attempts(attempts: object, error: type[Exception]) -> None:
    """attempts= is an int >= 1 or None, checked when the switch is made."""
    with pytest.raises(error, match="attempts="):
        fast_retries(attempts=attempts)  # type: ignore[arg-type]


def test_a_block_must_end_where_it_began() -> None:
    """Exiting a switch that is not the innermost one here is a RuntimeError."""
    switch = fast_retries()
    with pytest.raises(RuntimeError, match="end where it began"):
        switch.__exit__(None, None, None)
    assert repr(fast_retries(attempts=2)) == "fast_retries(attempts=2)"
    assert fast_retries(attempts=2).attempts == 2


# -- the httpx transports' retries ---------------------------------------------------


@pytest.fixture
def scheduled() -> Iterator[list[RetryScheduled]]:
    """Every RetryScheduled published during the test, by any policy (the transports' own)."""
    events: list[RetryScheduled] = []
    unsubscribe = resilience.events.subscribe(
        lambda event: events.append(event) if isinstance(event, RetryScheduled) else None
    )
    yield events
    unsubscribe()


def test_the_sync_transports_default_retry_is_fast(scheduled: list[RetryScheduled]) -> None:
    """ResilientTransport's own Retry (real backoff, Retry-After honoured) waits nothing inside."""
    hits: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        hits.append(1)
        return httpx.Response(503, headers={"Retry-After": "20"})

    transport = resilience.ResilientTransport(httpx.MockTransport(handler))
    with httpx.Client(transport=transport) as client, fast_retries():
        assert client.get("http://payments.test/charge").status_code == 503
    assert len(hits) > 1  # retried, at once (a 20 s Retry-After each time otherwise)
    assert [(e.delay, e.status) for e in scheduled] == [(0.0, 503)] * (len(hits) - 1)
    hits.clear()
    with httpx.Client(transport=transport) as client, fast_retries(attempts=2):
        client.get("http://payments.test/charge")
    assert len(hits) == 2


@pytest.mark.anyio
async def test_the_async_transports_retry_is_fast_under_respx(
    scheduled: list[RetryScheduled],
) -> None:
    """AsyncResilientTransport over a respx-mocked network: no waits, attempts capped."""
    with respx.mock(assert_all_called=True) as router:
        route = router.get("http://orders.test/items").mock(
            return_value=httpx.Response(503, headers={"Retry-After": "20"})
        )
        transport = resilience.AsyncResilientTransport()
        async with httpx.AsyncClient(transport=transport) as client:
            with fast_retries(attempts=3):
                response = await client.get("http://orders.test/items")
        assert response.status_code == 503
        assert route.call_count == 3
        assert [(e.delay, e.status) for e in scheduled] == [(0.0, 503)] * 2
