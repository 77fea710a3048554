"""Every entry point's deadline outcome is a `resilience.DeadlineExceededError`.

`except resilience.DeadlineExceededError` catches the deadline running out in
the transport (sync and async, before and during an attempt), in `Timeout`
(decorated, `call`, `async with`) and in a composed pipeline; an httpx
attempt timeout with time left stays httpx's own.
"""

from __future__ import annotations

import anyio
import httpx
import pytest

import resilience
from resilience import (
    AsyncResilientTransport,
    DeadlineExceededError,
    HTTPDeadlineExceededError,
    ResilientTransport,
    Timeout,
)


def _slow_sync(request: httpx.Request) -> httpx.Response:
    raise httpx.ReadTimeout("the attempt's clamped read timeout fired", request=request)


async def _slow_async(request: httpx.Request) -> httpx.Response:
    await anyio.sleep(0.05)
    raise httpx.ReadTimeout("the attempt's clamped read timeout fired", request=request)


def test_transport_deadline_spent_before_the_attempt() -> None:
    """Nothing is sent: HTTPDeadlineExceededError(before_call=True)."""
    transport = ResilientTransport(httpx.MockTransport(lambda r: httpx.Response(200)))
    with resilience.deadline(0), pytest.raises(DeadlineExceededError) as caught:
        httpx.Client(transport=transport).get("http://api.test/")
    assert isinstance(caught.value, HTTPDeadlineExceededError)
    assert caught.value.before_call


def test_transport_deadline_running_out_during_the_attempt() -> None:
    """An httpx timeout that fires as the deadline ends is the deadline's."""

    def handler(request: httpx.Request) -> httpx.Response:
        import time

        time.sleep(0.06)  # the deadline (50 ms) ends while the attempt waits
        return _slow_sync(request)

    transport = ResilientTransport(httpx.MockTransport(handler), retry=False)
    with resilience.deadline(0.05), pytest.raises(DeadlineExceededError) as caught:
        httpx.Client(transport=transport).get("http://api.test/")
    assert isinstance(caught.value, httpx.TimeoutException)
    assert not caught.value.before_call


def test_transport_attempt_timeout_with_time_left_stays_httpx() -> None:
    """A timeout while the deadline has time left is httpx's own, not the deadline's."""
    transport = ResilientTransport(httpx.MockTransport(_slow_sync), retry=False)
    with resilience.deadline(30), pytest.raises(httpx.ReadTimeout) as caught:
        httpx.Client(transport=transport).get("http://api.test/")
    assert not isinstance(caught.value, DeadlineExceededError)


@pytest.mark.anyio
async def test_async_transport_deadline_running_out_during_the_attempt() -> None:
    """The async twin: the deadline ends during the attempt."""
    transport = AsyncResilientTransport(httpx.MockTransport(_slow_async), retry=False)
    async with httpx.AsyncClient(transport=transport) as client:
        with resilience.deadline(0.02), pytest.raises(DeadlineExceededError):
            await client.get("http://api.test/")


@pytest.mark.anyio
async def test_timeout_every_async_entry_point() -> None:
    """Decorated, acall and `async with`: all DeadlineExceededError."""
    timeout = Timeout(0.01)

    async def slow() -> None:
        await anyio.sleep(1)

    with pytest.raises(DeadlineExceededError):
        await timeout(slow)()
    with pytest.raises(DeadlineExceededError):
        await timeout.acall(slow)
    with pytest.raises(DeadlineExceededError):
        async with timeout:
            await anyio.sleep(1)


def test_timeout_sync_with_the_deadline_spent() -> None:
    """Sync code cannot be pre-empted, but a spent deadline is refused up front."""
    called: list[int] = []
    with resilience.deadline(0), pytest.raises(DeadlineExceededError) as caught:
        Timeout(1.0).call(lambda: called.append(1))
    assert caught.value.before_call
    assert called == []


@pytest.mark.anyio
async def test_a_composed_pipeline_raises_the_deadline_error() -> None:
    """compose(Timeout, Retry, breaker): the outer Timeout's error reaches the caller."""
    pipeline = resilience.compose(
        Timeout(0.05),
        resilience.Retry(on=(ConnectionError,), attempts=3, wait=0),
        resilience.CircuitBreaker("deadline-outcomes", consecutive_failures=5),
    )

    @pipeline
    async def slow() -> None:
        await anyio.sleep(1)

    with pytest.raises(DeadlineExceededError):
        await slow()
