"""Every breaker permit is settled and every pooled connection comes back, however a call ends.

A response dropped unclosed, an error between send and close, retries that run
out with `raise_on_result=True`, a user `discard_result` that fails, a
cancellation at each await, a client closed with responses still open: each
against the real loopback server with a pool of one connection where a leak
would show as `httpx.PoolTimeout`.
"""

from __future__ import annotations

import contextlib
import gc
import subprocess
import sys
import threading
import uuid
import weakref
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

import resilience
from resilience import (
    AsyncResilientTransport,
    CircuitBreaker,
    ResilientTransport,
    Retry,
    RetryExhaustedError,
    State,
)
from resilience.testing import FakeClock

from .conftest import LiveServer

ONE_CONNECTION = httpx.Limits(max_connections=1, max_keepalive_connections=1)
#: A leaked connection shows up as a PoolTimeout after half a second, not a hang.
POOL_WAIT = httpx.Timeout(5.0, pool=0.5)


def key() -> str:
    return uuid.uuid4().hex


def retry(clock: FakeClock | None = None, **config: Any) -> Retry:
    config.setdefault("attempts", 2)
    return Retry(
        on=(httpx.TransportError,),
        retry_if_result=lambda r: r.status_code in resilience.transport.RETRY_STATUSES,
        clock=clock or FakeClock(),
        **config,
    )


def half_open(name: str) -> CircuitBreaker:
    """A breaker waiting for its one probe: a held permit would block it for good."""
    clock = FakeClock()
    breaker = CircuitBreaker(name, consecutive_failures=1, open_duration=1.0, clock=clock)
    breaker.acquire().record_failure()
    clock.advance(2.0)
    assert breaker.state is State.HALF_OPEN
    return breaker


def settled(breaker: CircuitBreaker) -> int:
    calls = breaker.metrics().calls
    return calls["success"] + calls["failure"] + calls["ignored"]


class Chunks(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A streamed body (not in memory), sync and async, that may fail after its first chunk."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error

    def __iter__(self) -> Iterator[bytes]:
        yield b"first;"
        if self.error is not None:
            raise self.error
        yield b"last"

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield b"first;"
        if self.error is not None:
            raise self.error
        yield b"last"


def streamed(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, stream=Chunks())


@pytest.fixture
def unraisable(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Errors raised where nobody can catch them (in __del__, in finalizers)."""
    seen: list[object] = []
    monkeypatch.setattr("sys.unraisablehook", seen.append)
    return seen


# -- a response dropped unclosed ---------------------------------------------------------------


def test_a_dropped_streamed_response_releases_its_probe_permit(
    server: LiveServer, unraisable: list[object]
) -> None:
    """GC of an unclosed response queues its permit; the next request settles it.

    As IGNORED, before asking the breaker: that request is the new probe.
    """
    breaker = half_open("dropped-sync")
    transport = ResilientTransport(breaker=breaker, retry=False)
    with httpx.Client(transport=transport) as http:
        request = http.build_request("GET", f"{server.url}/flaky/{key()}?fails=0")
        response = http.send(request, stream=True)
        assert response.status_code == 200
        assert settled(breaker) == 1  # only the failure that tripped it
        gone = weakref.ref(response)
        del response
        gc.collect()
        assert gone() is None  # nothing the transport keeps holds the response
        assert breaker.metrics().calls["ignored"] == 0  # queued, not settled in the collector
        assert breaker.state is State.HALF_OPEN
        assert http.get(f"{server.url}/flaky/{key()}?fails=0").status_code == 200
        assert breaker.metrics().calls["ignored"] == 1
    assert breaker.state is State.CLOSED  # the new probe was admitted and succeeded
    assert unraisable == []


@pytest.mark.anyio
async def test_a_dropped_async_streamed_response_releases_its_probe_permit(
    server: LiveServer, unraisable: list[object]
) -> None:
    """The async twin: drop, collect, and the half-open breaker admits a new probe."""
    breaker = half_open("dropped-async")
    transport = AsyncResilientTransport(breaker=breaker, retry=False)
    async with httpx.AsyncClient(transport=transport) as http:
        request = http.build_request("GET", f"{server.url}/flaky/{key()}?fails=0")
        response = await http.send(request, stream=True)
        gone = weakref.ref(response)
        del response
        gc.collect()
        assert gone() is None
        assert (await http.get(f"{server.url}/flaky/{key()}?fails=0")).status_code == 200
        assert breaker.metrics().calls["ignored"] == 1
    assert breaker.state is State.CLOSED
    assert unraisable == []


def test_an_error_between_send_and_close_releases_the_permit(server: LiveServer) -> None:
    """A bug in the caller's code after send(stream=True) does not hold the probe slot."""
    breaker = half_open("error-before-close")
    with httpx.Client(transport=ResilientTransport(breaker=breaker, retry=False)) as http:

        def handle() -> None:
            http.send(http.build_request("GET", f"{server.url}/flaky/{key()}?fails=0"), stream=True)
            raise LookupError("the caller's bug, before close()")

        with contextlib.suppress(LookupError):
            handle()
        gc.collect()
        assert http.get(f"{server.url}/flaky/{key()}?fails=0").status_code == 200
        assert breaker.metrics().calls["ignored"] == 1
    assert breaker.state is State.CLOSED


@pytest.mark.anyio
async def test_an_error_between_async_send_and_close_releases_the_permit(
    server: LiveServer,
) -> None:
    """The async twin of the caller's bug between send and close."""
    breaker = half_open("async-error-before-close")
    async with httpx.AsyncClient(
        transport=AsyncResilientTransport(breaker=breaker, retry=False)
    ) as http:

        async def handle() -> None:
            request = http.build_request("GET", f"{server.url}/flaky/{key()}?fails=0")
            await http.send(request, stream=True)
            raise LookupError("the caller's bug, before aclose()")

        with contextlib.suppress(LookupError):
            await handle()
        gc.collect()
        assert (await http.get(f"{server.url}/flaky/{key()}?fails=0")).status_code == 200
        assert breaker.metrics().calls["ignored"] == 1
    assert breaker.state is State.CLOSED


def test_a_closed_response_is_settled_once_even_when_collected(unraisable: list[object]) -> None:
    """Read and closed: one success; collecting it afterwards settles nothing more."""
    breaker = CircuitBreaker("once", consecutive_failures=100)
    transport = ResilientTransport(httpx.MockTransport(streamed), breaker=breaker, retry=False)
    response = transport.handle_request(httpx.Request("GET", "http://api.test/"))
    assert response.read() == b"first;last"
    response.close()
    del response
    gc.collect()
    calls = breaker.metrics().calls
    assert (calls["success"], calls["failure"], calls["ignored"]) == (1, 0, 0)
    assert unraisable == []


def test_a_response_collected_while_its_breaker_is_locked_does_not_deadlock(
    unraisable: list[object],
) -> None:
    """The collector may run inside the breaker's own locked section: the release waits.

    The permit is then released by the next request through a resilient
    transport, never by waiting for a lock the collecting thread holds.
    """
    breaker = CircuitBreaker("gc-under-lock", consecutive_failures=100)
    transport = ResilientTransport(httpx.MockTransport(streamed), breaker=breaker, retry=False)
    held = [transport.handle_request(httpx.Request("GET", "http://api.test/"))]
    finished = threading.Event()

    def collect_inside_the_lock() -> None:
        with breaker._lock:  # as if a collection ran while this thread records an outcome
            held.clear()
            gc.collect()
        finished.set()

    worker = threading.Thread(target=collect_inside_the_lock, daemon=True)
    worker.start()
    worker.join(timeout=5)
    assert finished.is_set(), "the finalizer deadlocked on the breaker's lock"
    assert settled(breaker) == 0  # not settled under the lock...
    transport.handle_request(httpx.Request("GET", "http://api.test/")).close()
    calls = breaker.metrics().calls
    assert (calls["ignored"], calls["success"]) == (1, 1)  # ...but by the next request
    assert unraisable == []


def test_a_response_collected_while_an_observer_holds_its_lock_does_not_deadlock(
    unraisable: list[object],
) -> None:
    """The collector never settles, so an observer's lock it holds cannot deadlock it.

    Settling publishes events to observers, whose locks the collecting thread may hold.
    """
    clock = FakeClock()
    breaker = CircuitBreaker(
        "gc-observer", consecutive_failures=1, open_duration=1, half_open_max_wait=1, clock=clock
    )
    observer_lock = threading.Lock()
    seen: list[object] = []

    def observer(event: object) -> None:
        with observer_lock:
            seen.append(event)

    breaker.events.subscribe(observer)
    transport = ResilientTransport(httpx.MockTransport(streamed), breaker=breaker, retry=False)
    breaker.acquire().record_failure()
    clock.advance(1)
    held = [transport.handle_request(httpx.Request("GET", "http://api.test/"))]  # the probe
    clock.advance(2)  # its wait has run out: settling it would reopen and publish
    finished = threading.Event()

    def collect_inside_the_observer() -> None:
        with observer_lock:
            held.clear()
            gc.collect()
        finished.set()

    worker = threading.Thread(target=collect_inside_the_observer, daemon=True)
    worker.start()
    worker.join(timeout=5)
    assert finished.is_set(), "the finalizer deadlocked on an observer's lock"
    assert breaker.state is State.OPEN  # reopened by the wait, outside the collector
    assert unraisable == []


@pytest.mark.slow
def test_responses_alive_at_interpreter_exit_are_left_alone(tmp_path: Path) -> None:
    """A response still open when the interpreter exits settles nothing and prints nothing."""
    script = tmp_path / "kept.py"
    script.write_text(
        "import httpx, resilience, resilience.transport\n"
        "def spy(permit, write=print):\n"
        "    write('settled at exit')\n"
        "resilience.transport._release_collected = spy\n"
        "class Chunks(httpx.SyncByteStream):\n"
        "    def __iter__(self):\n"
        "        yield b'x'\n"
        "breaker = resilience.CircuitBreaker('exit', consecutive_failures=1)\n"
        "transport = resilience.ResilientTransport(\n"
        "    httpx.MockTransport(lambda request: httpx.Response(200, stream=Chunks())),\n"
        "    breaker=breaker, retry=False)\n"
        "KEPT = transport.handle_request(httpx.Request('GET', 'http://api.test/'))\n"
        "CYCLE = [KEPT]\n"
        "CYCLE.append(CYCLE)\n"
    )
    result = subprocess.run(
        [sys.executable, "-X", "dev", str(script)], capture_output=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert (result.stdout, result.stderr) == (b"", b"")


# -- retries that run out: RetryExhaustedError -------------------------------------------------


def test_retry_exhausted_error_carries_a_read_and_closed_response(server: LiveServer) -> None:
    """raise_on_result=True: the last 408 is read (content works) and its connection is back."""
    breaker = CircuitBreaker("exhausted-sync", consecutive_failures=100)
    transport = ResilientTransport(
        limits=ONE_CONNECTION, breaker=breaker, retry=retry(raise_on_result=True)
    )
    with httpx.Client(transport=transport, timeout=POOL_WAIT) as http:
        with pytest.raises(RetryExhaustedError) as caught:
            http.get(f"{server.url}/flaky/{key()}?fails=10&code=408&size=20")
        response = caught.value.last_result
        assert isinstance(response, httpx.Response)
        assert response.status_code == 408
        assert response.is_closed
        assert response.content == b"x" * 20
        assert response.extensions["resilience"]["attempts"] == 2
        assert settled(breaker) == 2  # both 408s (successes for the breaker)
        # The pool's only connection was given back: these would be PoolTimeouts.
        for _ in range(3):
            assert http.get(f"{server.url}/flaky/{key()}?fails=0").status_code == 200
    assert settled(breaker) == 5


def _endless_503(clock: FakeClock | None = None, chunk: int = 40_000) -> Any:
    """A handler answering 503 with a chunked body of 3 chunks (each moves `clock` by 1 s)."""

    def body() -> Iterator[bytes]:
        for _ in range(3):
            if clock is not None:
                clock.advance(1)
            yield b"x" * chunk

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, content=body())

    return handler


def test_a_long_exhausted_response_is_closed_unread(unraisable: list[object]) -> None:
    """The body read for RetryExhaustedError stops at max_drain_bytes: closed, not read."""
    breaker = CircuitBreaker("exhausted-long", consecutive_failures=100)
    transport = ResilientTransport(
        httpx.MockTransport(_endless_503()),
        breaker=breaker,
        retry=retry(raise_on_result=True),
        max_drain_bytes=64_000,
    )
    with pytest.raises(RetryExhaustedError) as caught:
        transport.handle_request(httpx.Request("GET", "http://api.test/"))
    response = caught.value.last_result
    assert isinstance(response, httpx.Response)
    assert response.is_closed
    with pytest.raises(httpx.ResponseNotRead):
        _ = response.content
    assert any("longer than max_drain_bytes (64000 bytes)" in n for n in caught.value.__notes__)
    assert settled(breaker) == 2


def test_an_exhausted_response_is_read_only_within_the_deadline() -> None:
    """A body that drips past the total deadline is not waited for."""
    clock = FakeClock()
    breaker = CircuitBreaker("exhausted-slow", consecutive_failures=100, clock=clock)
    transport = ResilientTransport(
        httpx.MockTransport(_endless_503(clock, chunk=10)),
        breaker=breaker,
        retry=retry(clock, raise_on_result=True, attempts=1),
        total_timeout=2.0,
    )
    with pytest.raises(RetryExhaustedError) as caught:
        transport.handle_request(httpx.Request("GET", "http://api.test/"))
    assert clock.monotonic() == 2.0  # stopped at the deadline, not after the third chunk
    assert any("deadline ran out" in n for n in caught.value.__notes__)
    assert caught.value.last_result.is_closed


@pytest.mark.anyio
async def test_a_long_async_exhausted_response_is_closed_unread() -> None:
    """The async twin of the max_drain_bytes bound."""

    async def body() -> AsyncIterator[bytes]:
        for _ in range(3):
            yield b"x" * 40_000

    transport = AsyncResilientTransport(
        httpx.MockTransport(lambda request: httpx.Response(503, content=body())),
        breaker=CircuitBreaker("exhausted-long-async", consecutive_failures=100),
        retry=retry(raise_on_result=True),
        max_drain_bytes=64_000,
    )
    with pytest.raises(RetryExhaustedError) as caught:
        await transport.handle_async_request(httpx.Request("GET", "http://api.test/"))
    assert caught.value.last_result.is_closed
    assert any("max_drain_bytes" in n for n in caught.value.__notes__)


@pytest.mark.anyio
async def test_async_retry_exhausted_error_carries_a_read_and_closed_response(
    server: LiveServer,
) -> None:
    """The async twin, with 503s (failures) and a pool of one connection."""
    breaker = CircuitBreaker("exhausted-async", consecutive_failures=100)
    transport = AsyncResilientTransport(
        limits=ONE_CONNECTION, breaker=breaker, retry=retry(attempts=3, raise_on_result=True)
    )
    async with httpx.AsyncClient(transport=transport, timeout=POOL_WAIT) as http:
        for code in (408, 503):
            with pytest.raises(RetryExhaustedError) as caught:
                await http.get(f"{server.url}/flaky/{key()}?fails=10&code={code}")
            response = caught.value.last_result
            assert isinstance(response, httpx.Response)
            assert response.is_closed
            assert response.content == b"x" * 10
        assert (await http.get(f"{server.url}/flaky/{key()}?fails=0")).status_code == 200
    calls = breaker.metrics().calls
    assert (calls["success"], calls["failure"], calls["ignored"]) == (4, 3, 0)


# -- a user's discard_result, cancellation, body errors, client.close() ------------------------


def test_a_discard_result_that_raises_still_gives_the_connection_back(server: LiveServer) -> None:
    """The user's hook fails: its error propagates, the failed response is closed anyway."""

    def broken(response: httpx.Response) -> None:
        raise RuntimeError("discard hook bug")

    breaker = CircuitBreaker("discard-raises", consecutive_failures=100)
    transport = ResilientTransport(
        limits=ONE_CONNECTION, breaker=breaker, retry=retry(discard_result=broken)
    )
    with httpx.Client(transport=transport, timeout=POOL_WAIT) as http:
        with pytest.raises(RuntimeError, match="discard hook bug"):
            http.get(f"{server.url}/flaky/{key()}?fails=1&code=408")
        assert http.get(f"{server.url}/flaky/{key()}?fails=0").status_code == 200
    assert settled(breaker) == 2


def test_a_discard_result_that_does_not_close_is_backed_up(server: LiveServer) -> None:
    """A hook that only looks at the failed response: the transport still closes it.

    Right after the hook, before the wait.
    """
    looked: list[int] = []
    closed_before_the_wait: list[bool] = []
    responses: list[httpx.Response] = []

    def look(response: httpx.Response) -> None:
        looked.append(response.status_code)
        responses.append(response)

    class Watching(FakeClock):
        def sleep(self, seconds: float) -> None:
            closed_before_the_wait.append(responses[-1].is_closed)

    transport = ResilientTransport(
        limits=ONE_CONNECTION,
        breaker=False,
        retry=retry(Watching(), discard_result=look, wait=0.1),
    )
    with httpx.Client(transport=transport, timeout=POOL_WAIT) as http:
        for _ in range(3):
            assert http.get(f"{server.url}/flaky/{key()}?fails=1").status_code == 200
    assert looked == [503] * 3
    assert closed_before_the_wait == [True] * 3


@pytest.mark.anyio
async def test_cancelled_while_waiting_to_retry(server: LiveServer) -> None:
    """Cancelled in the backoff: the failed response is closed and its permit settled."""
    scope = anyio.CancelScope()

    class CancelledInTheWait(FakeClock):
        async def asleep(self, seconds: float) -> None:
            scope.cancel()
            await anyio.sleep_forever()

    breaker = CircuitBreaker("cancelled-wait", consecutive_failures=100)
    transport = AsyncResilientTransport(
        limits=ONE_CONNECTION,
        breaker=breaker,
        retry=retry(CancelledInTheWait(), wait=1.0, discard_result=lambda response: None),
    )
    async with httpx.AsyncClient(transport=transport, timeout=POOL_WAIT) as http:
        with scope:
            await http.get(f"{server.url}/flaky/{key()}?fails=1&code=408")
        assert scope.cancelled_caught
        assert settled(breaker) == 1
        assert (await http.get(f"{server.url}/flaky/{key()}?fails=0")).status_code == 200


@pytest.mark.anyio
async def test_cancelled_while_the_body_streams(server: LiveServer) -> None:
    """A cancellation mid-body is IGNORED (the server did nothing wrong), exactly once."""
    breaker = CircuitBreaker("cancelled-body", consecutive_failures=100)
    transport = AsyncResilientTransport(limits=ONE_CONNECTION, breaker=breaker, retry=False)
    async with httpx.AsyncClient(transport=transport, timeout=POOL_WAIT) as http:
        with anyio.CancelScope() as scope:
            async with http.stream("GET", f"{server.url}/stall?seconds=2") as response:
                async for _ in response.aiter_raw():
                    scope.cancel()  # after the first chunk, while the rest is awaited
        assert scope.cancelled_caught
        calls = breaker.metrics().calls
        assert (calls["ignored"], calls["failure"], calls["success"]) == (1, 0, 0)
        assert (await http.get(f"{server.url}/flaky/{key()}?fails=0")).status_code == 200


@pytest.mark.parametrize(
    ("error", "outcome"),
    [(httpx.ReadError("reset mid-body"), "failure"), (KeyboardInterrupt(), "ignored")],
    ids=["ReadError", "KeyboardInterrupt"],
)
@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.anyio
async def test_an_error_raised_by_the_body_stream_settles_once(
    mode: str, error: BaseException, outcome: str, unraisable: list[object]
) -> None:
    """A body that raises mid-iteration: a failure (an interrupt: IGNORED); close adds nothing."""
    breaker = CircuitBreaker(f"body-error-{mode}", consecutive_failures=100)

    def failing(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=Chunks(error))

    request = httpx.Request("GET", "http://api.test/")
    if mode == "sync":
        response = ResilientTransport(
            httpx.MockTransport(failing), breaker=breaker, retry=False
        ).handle_request(request)
        with pytest.raises(type(error)):
            response.read()
        response.close()
    else:
        response = await AsyncResilientTransport(
            httpx.MockTransport(failing), breaker=breaker, retry=False
        ).handle_async_request(request)
        with pytest.raises(type(error)):
            await response.aread()
        await response.aclose()
    del response
    gc.collect()
    calls = breaker.metrics().calls
    assert (calls[outcome], settled(breaker)) == (1, 1)
    assert unraisable == []


def test_a_retry_if_result_that_raises_still_gives_the_connection_back(
    server: LiveServer,
) -> None:
    """The user's predicate fails on a response: the response is closed, its permit settled."""
    breaker = CircuitBreaker("predicate-raises", consecutive_failures=100)
    predicate = Retry(on=(), retry_if_result=lambda r: {200: False}[r.status_code])
    transport = ResilientTransport(limits=ONE_CONNECTION, breaker=breaker, retry=predicate)
    with httpx.Client(transport=transport, timeout=POOL_WAIT) as http:
        with pytest.raises(KeyError):
            http.get(f"{server.url}/flaky/{key()}?fails=1&code=408")
        assert http.get(f"{server.url}/flaky/{key()}?fails=0").status_code == 200
    assert settled(breaker) == 2


@pytest.mark.anyio
async def test_a_failure_status_that_raises_releases_the_permit_and_the_connection(
    server: LiveServer,
) -> None:
    """failure_status= raising: its error propagates, the permit is IGNORED, the response closed."""
    breaker = CircuitBreaker("failure-status-raises", consecutive_failures=100)
    transport = AsyncResilientTransport(
        limits=ONE_CONNECTION,
        breaker=breaker,
        retry=False,
        failure_status=lambda status: {200: False}[status],
    )
    async with httpx.AsyncClient(transport=transport, timeout=POOL_WAIT) as http:
        with pytest.raises(KeyError):
            await http.get(f"{server.url}/flaky/{key()}?fails=1")
        assert (await http.get(f"{server.url}/flaky/{key()}?fails=0")).status_code == 200
    calls = breaker.metrics().calls
    assert (calls["ignored"], calls["success"], calls["failure"]) == (1, 1, 0)


@pytest.mark.parametrize("how", ["close", "with"])
def test_closing_the_client_releases_the_permits_of_open_responses(
    server: LiveServer, how: str
) -> None:
    """client.close() with a streamed response open: its permit is IGNORED, not a failure later."""
    breaker = half_open(f"client-closed-{how}")
    http = httpx.Client(transport=ResilientTransport(breaker=breaker, retry=False))
    request = http.build_request("GET", f"{server.url}/stall?seconds=1")
    if how == "close":
        response = http.send(request, stream=True)
        http.close()
    else:
        with http:
            response = http.send(request, stream=True)
    assert breaker.metrics().calls["ignored"] == 1
    assert breaker.state is State.HALF_OPEN
    with contextlib.suppress(httpx.HTTPError):
        response.read()  # the pool under it is closed: httpx fails or returns what it had
    response.close()
    calls = breaker.metrics().calls
    assert (calls["failure"], calls["success"], calls["ignored"]) == (1, 0, 1)  # 1: the trip
    breaker.acquire().record_success()  # the probe slot is free again
    assert breaker.state is State.CLOSED


@pytest.mark.anyio
async def test_closing_the_async_client_releases_the_permits_of_open_responses(
    server: LiveServer,
) -> None:
    """The async twin of client.close() with open responses."""
    breaker = CircuitBreaker("async-client-closed", consecutive_failures=100)
    http = httpx.AsyncClient(transport=AsyncResilientTransport(breaker=breaker, retry=False))
    request = http.build_request("GET", f"{server.url}/stall?seconds=1")
    response = await http.send(request, stream=True)
    await http.aclose()
    assert breaker.metrics().calls["ignored"] == 1
    with contextlib.suppress(httpx.HTTPError):
        await response.aread()
    await response.aclose()
    calls = breaker.metrics().calls
    assert (calls["failure"], calls["success"], calls["ignored"]) == (0, 0, 1)
