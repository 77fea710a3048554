"""Every way the deadline runs out is a `DeadlineExceededError`; an attempt timeout is not.

The fake clock stands for the deadline's time: a handler that moves it to the
deadline and raises an httpx timeout is what a real attempt whose timeouts
were clamped to the time left looks like (tests/transport/test_transport.py
and test_async_transport.py check it on a real server).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

import resilience
from resilience import (
    AsyncResilientTransport,
    BreakerRegistry,
    CircuitBreaker,
    HTTPDeadlineExceededError,
    ResilientTransport,
)
from resilience.testing import FakeClock

pytestmark = pytest.mark.anyio


def calls(transport: ResilientTransport | AsyncResilientTransport, origin: str) -> dict[str, int]:
    registry = transport.breakers
    assert isinstance(registry, BreakerRegistry)
    return registry.get(origin).metrics().calls


async def send(
    transport: ResilientTransport | AsyncResilientTransport, request: httpx.Request
) -> httpx.Response:
    """One request through a client of the transport's kind; the body is read."""
    if isinstance(transport, ResilientTransport):
        with httpx.Client(transport=transport) as http:
            return http.send(request)  # noqa: ASYNC212  (a MockTransport: nothing blocks)
    async with httpx.AsyncClient(transport=transport) as http:
        return await http.send(request)


def build(mode: str, handler: Any, **options: Any) -> ResilientTransport | AsyncResilientTransport:
    cls = ResilientTransport if mode == "sync" else AsyncResilientTransport
    return cls(httpx.MockTransport(handler), **options)


MODES = pytest.mark.parametrize("mode", ["sync", "async"])


@MODES
@pytest.mark.parametrize("kind", [httpx.ConnectTimeout, httpx.WriteTimeout, httpx.ReadTimeout])
async def test_a_deadline_cut_during_the_attempt_is_a_typed_error(
    mode: str, kind: type[httpx.TimeoutException]
) -> None:
    """Raised from the httpx timeout; not retried; a failure for the breaker."""
    clock = FakeClock()
    sent: list[httpx.Request] = []

    def slow(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        clock.advance(2.0)  # the httpx timeout, clamped to the time left, fires
        raise kind("timed out", request=request)

    transport = build(mode, slow, clock=clock, total_timeout=2.0)
    request = httpx.Request("GET", "http://api.test/")
    with pytest.raises(resilience.DeadlineExceededError) as caught:
        await send(transport, request)
    error = caught.value
    assert type(error) is HTTPDeadlineExceededError
    assert isinstance(error, httpx.TimeoutException)
    assert isinstance(error, TimeoutError)
    assert error.before_call is False
    assert type(error.__cause__) is kind
    assert (error.name, error.budget) == ("http://api.test:80", 2.0)
    assert error.request is request
    assert len(sent) == 1
    assert any(
        "retry 'http://api.test:80' gave up after 1 attempt" in note for note in error.__notes__
    )
    assert calls(transport, "http://api.test:80")["failure"] == 1


@MODES
async def test_an_attempt_timeout_with_time_left_stays_httpxs_own(mode: str) -> None:
    """The deadline still has time: the attempt's own timeout, a failure, as httpx raised it."""
    clock = FakeClock()

    def slow(request: httpx.Request) -> httpx.Response:
        clock.advance(1.0)  # attempt_timeout=1 fired; 29 s of the deadline are left
        raise httpx.ReadTimeout("timed out", request=request)

    transport = build(mode, slow, clock=clock, attempt_timeout=1.0, retry=False)
    with pytest.raises(httpx.ReadTimeout) as caught:
        await send(transport, httpx.Request("GET", "http://api.test/"))
    assert not isinstance(caught.value, resilience.DeadlineExceededError)
    assert calls(transport, "http://api.test:80")["failure"] == 1


class Stalls(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A body whose second chunk comes when the deadline has run out: a read timeout."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock

    def fail(self) -> httpx.ReadTimeout:
        self.clock.advance(3.0)
        return httpx.ReadTimeout("body too slow")

    def __iter__(self) -> Iterator[bytes]:
        yield b"first;"
        raise self.fail()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield b"first;"
        raise self.fail()


@MODES
@pytest.mark.parametrize("breaker", [True, False], ids=["breaker", "no-breaker"])
async def test_a_deadline_cut_while_the_body_streams_is_a_typed_error(
    mode: str, breaker: bool
) -> None:
    """The body is read after the transport returned: its deadline cut is typed too."""
    clock = FakeClock()
    transport = build(
        mode,
        lambda request: httpx.Response(200, stream=Stalls(clock)),
        clock=clock,
        total_timeout=3.0,
        breaker=breaker,
    )
    with pytest.raises(HTTPDeadlineExceededError) as caught:
        await send(transport, httpx.Request("GET", "http://api.test/"))
    assert caught.value.before_call is False
    assert isinstance(caught.value.__cause__, httpx.ReadTimeout)
    if breaker:
        assert calls(transport, "http://api.test:80")["failure"] == 1


@MODES
async def test_a_body_timeout_with_time_left_stays_httpxs_own(mode: str) -> None:
    """A body read timing out before the deadline is httpx's ReadTimeout."""
    clock = FakeClock()
    transport = build(mode, lambda request: httpx.Response(200, stream=Stalls(clock)), clock=clock)
    with pytest.raises(httpx.ReadTimeout) as caught:
        await send(transport, httpx.Request("GET", "http://api.test/"))
    assert not isinstance(caught.value, resilience.DeadlineExceededError)


@MODES
async def test_a_deadline_spent_before_the_call_sends_nothing_and_counts_nothing(
    mode: str,
) -> None:
    """before_call=True: no permit was taken, so the breaker records nothing."""
    sent: list[httpx.Request] = []
    transport = build(mode, lambda request: sent.append(request) or httpx.Response(200))
    with resilience.deadline(0), pytest.raises(HTTPDeadlineExceededError) as caught:
        await send(transport, httpx.Request("GET", "http://api.test/"))
    assert caught.value.before_call is True
    assert caught.value.__cause__ is None
    assert sent == []
    assert sum(calls(transport, "http://api.test:80").values()) == 0


@MODES
async def test_a_pool_timeout_at_the_deadline_is_the_deadlines_and_ignored(mode: str) -> None:
    """No connection came free before the deadline: typed, and not the server's failure."""
    clock = FakeClock()

    def no_connection(request: httpx.Request) -> httpx.Response:
        clock.advance(1.0)
        raise httpx.PoolTimeout("no connection free", request=request)

    transport = build(mode, no_connection, clock=clock, total_timeout=1.0)
    with pytest.raises(HTTPDeadlineExceededError) as caught:
        await send(transport, httpx.Request("GET", "http://api.test/"))
    assert isinstance(caught.value.__cause__, httpx.PoolTimeout)
    counted = calls(transport, "http://api.test:80")
    assert (counted["ignored"], counted["failure"]) == (1, 0)


def test_a_nested_transports_deadline_error_is_not_wrapped_again() -> None:
    """An inner resilient transport's HTTPDeadlineExceededError passes through the outer one."""
    clock = FakeClock()

    def slow(request: httpx.Request) -> httpx.Response:
        clock.advance(2.0)
        raise httpx.ReadTimeout("timed out", request=request)

    inner = ResilientTransport(httpx.MockTransport(slow), clock=clock, total_timeout=2.0)
    outer = ResilientTransport(
        inner, clock=clock, total_timeout=2.0, breaker=CircuitBreaker("outer"), retry=False
    )
    with pytest.raises(HTTPDeadlineExceededError) as caught:
        outer.handle_request(httpx.Request("GET", "http://api.test/"))
    assert isinstance(caught.value.__cause__, httpx.ReadTimeout)
