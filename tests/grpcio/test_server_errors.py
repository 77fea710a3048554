"""resilience's errors escaping a gRPC handler become their status (real servers on 127.0.0.1).

docs/guide/grpc.md ("Errors raised in handlers") promises these: as the HTTP
middleware answers 504 or 503 with Retry-After, the deadline server
interceptors answer DEADLINE_EXCEEDED, or UNAVAILABLE with
`grpc-retry-pushback-ms`, instead of grpcio's UNKNOWN.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from concurrent import futures
from typing import Any

import grpc
import grpc.aio
import pytest

import resilience
from resilience.grpc import (
    AsyncDeadlineServerInterceptor,
    AsyncResilientClientInterceptor,
    DeadlineServerInterceptor,
    ResilientClientInterceptor,
    channel_options,
    pushback_of,
)
from resilience.testing import FakeClock

UNARY = "/test.Refuse/Unary"
STREAM = "/test.Refuse/Stream"


def open_breaker(open_duration: float) -> resilience.CircuitBreaker:
    """A downstream's breaker, open for `open_duration` seconds from now."""
    breaker = resilience.CircuitBreaker(
        "downstream", consecutive_failures=1, open_duration=open_duration
    )
    with contextlib.suppress(ConnectionError):
        breaker.call(_fail)
    assert breaker.state is resilience.State.OPEN
    return breaker


def _fail() -> None:
    raise ConnectionError("down")


def _refusal(mode: str) -> Exception:
    """What a handler's downstream call raises in each mode."""
    if mode == "open":  # the downstream's breaker is open (for a minute)
        try:
            open_breaker(60.0).call(lambda: None)
        except resilience.CircuitOpenError as error:
            return error
    if mode == "open-2s":  # open for 2 s more: within the caller's 5 s
        try:
            open_breaker(2.0).call(lambda: None)
        except resilience.CircuitOpenError as error:
            return error
    if mode == "full":  # a bulkhead refused: no retry-after is known
        return resilience.BulkheadFullError("db", 4)
    if mode == "deadline":
        return resilience.DeadlineExceededError()
    return ValueError("a bug")


def sync_handler() -> grpc.GenericRpcHandler:
    def unary(request: bytes, context: Any) -> bytes:
        mode = request.decode()
        if mode == "deadline":  # deadline-aware code stops once the handler's deadline is spent
            time.sleep(resilience.remaining() or 0.0)
            assert resilience.remaining() == 0.0
        raise _refusal(mode)

    def stream(request: bytes, context: Any) -> Iterator[bytes]:
        yield b"first"
        raise _refusal(request.decode())

    return grpc.method_handlers_generic_handler(
        "test.Refuse",
        {
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "Stream": grpc.unary_stream_rpc_method_handler(stream),
        },
    )


def aio_handler() -> grpc.GenericRpcHandler:
    async def unary(request: bytes, context: Any) -> bytes:
        mode = request.decode()
        if mode == "deadline":  # a resilience.Timeout stops at the handler's deadline
            await resilience.Timeout(10.0).acall(asyncio.sleep, 5)
        raise _refusal(mode)

    async def stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
        yield b"first"
        raise _refusal(request.decode())

    return grpc.method_handlers_generic_handler(
        "test.Refuse",
        {
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "Stream": grpc.unary_stream_rpc_method_handler(stream),
        },
    )


def sync_server(**options: Any) -> tuple[grpc.Server, str]:
    interceptor = DeadlineServerInterceptor(max_seconds=0.05, **options)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), interceptors=[interceptor])
    server.add_generic_rpc_handlers((sync_handler(),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, f"127.0.0.1:{port}"


def sync_call(target: str, method: str, mode: str, **options: Any) -> grpc.RpcError:
    """The error of one call through a `ResilientClientInterceptor` (retry=False unless given)."""
    interceptor = ResilientClientInterceptor(target=target, **{"retry": False, **options})
    with grpc.intercept_channel(
        grpc.insecure_channel(target, options=channel_options()), interceptor
    ) as channel:
        if method == UNARY:
            with pytest.raises(grpc.RpcError) as raised:
                channel.unary_unary(method)(mode.encode(), timeout=5)
            return raised.value
        stream = channel.unary_stream(method)(mode.encode(), timeout=5)
        assert next(stream) == b"first"  # the error comes while streaming
        with pytest.raises(grpc.RpcError) as raised:
            next(stream)
        return raised.value


@pytest.mark.parametrize("method", [UNARY, STREAM], ids=["unary", "stream"])
def test_sync_open_breaker_is_unavailable_with_pushback(method: str) -> None:
    """An open downstream breaker: UNAVAILABLE, the breaker's remaining open time as pushback.

    The caller's ResilientClientInterceptor counts UNAVAILABLE as a failure.
    """
    server, target = sync_server()
    try:
        caller = resilience.CircuitBreaker("caller", consecutive_failures=5)
        error = sync_call(target, method, "open", breaker=caller)
        assert error.code() is grpc.StatusCode.UNAVAILABLE
        pushback = pushback_of(error)
        assert pushback is not None
        assert 50.0 < pushback <= 60.0
        assert caller.metrics().calls["failure"] == 1
    finally:
        server.stop(None)


@pytest.mark.parametrize("method", [UNARY, STREAM], ids=["unary", "stream"])
def test_sync_spent_deadline_is_deadline_exceeded(method: str) -> None:
    """A DeadlineExceededError escaping the handler: DEADLINE_EXCEEDED."""
    server, target = sync_server()
    try:
        error = sync_call(target, method, "deadline")
        assert error.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    finally:
        server.stop(None)


def test_sync_full_bulkhead_is_unavailable_without_pushback_and_others_unknown() -> None:
    """A full bulkhead: UNAVAILABLE, no pushback (none is known); other errors stay UNKNOWN."""
    server, target = sync_server()
    try:
        error = sync_call(target, UNARY, "full")
        assert error.code() is grpc.StatusCode.UNAVAILABLE
        assert pushback_of(error) is None
        assert sync_call(target, UNARY, "bug").code() is grpc.StatusCode.UNKNOWN
    finally:
        server.stop(None)


def test_sync_map_errors_false_leaves_unknown() -> None:
    """`map_errors=False`: grpcio answers UNKNOWN, as without the interceptor."""
    server, target = sync_server(map_errors=False)
    try:
        assert sync_call(target, UNARY, "open").code() is grpc.StatusCode.UNKNOWN
        assert sync_call(target, UNARY, "deadline").code() is grpc.StatusCode.UNKNOWN
    finally:
        server.stop(None)


# -- aio ----------------------------------------------------------------------------


async def aio_call(
    mode: str, method: str = UNARY, map_errors: bool = True, **options: Any
) -> tuple[grpc.RpcError, Any]:
    server = grpc.aio.server(
        interceptors=[AsyncDeadlineServerInterceptor(max_seconds=0.05, map_errors=map_errors)]
    )
    server.add_generic_rpc_handlers((aio_handler(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    target = f"127.0.0.1:{port}"
    interceptor = AsyncResilientClientInterceptor(target=target, **{"retry": False, **options})
    channel = grpc.aio.insecure_channel(target, options=channel_options(), interceptors=interceptor)
    try:
        if method == UNARY:
            with pytest.raises(grpc.RpcError) as raised:
                await channel.unary_unary(method)(mode.encode(), timeout=5)
            return raised.value, interceptor
        call = channel.unary_stream(method)(mode.encode(), timeout=5)
        assert await call.read() == b"first"  # the error comes while streaming
        with pytest.raises(grpc.RpcError) as raised:
            await call.read()
        return raised.value, interceptor
    finally:
        await channel.close()
        await server.stop(None)


def _code(error: Any) -> grpc.StatusCode:
    return error.code()  # type: ignore[no-any-return]


@pytest.mark.anyio
@pytest.mark.parametrize("method", [UNARY, STREAM], ids=["unary", "stream"])
async def test_aio_open_breaker_is_unavailable_with_pushback(method: str) -> None:
    """The same for grpc.aio handlers: UNAVAILABLE with the breaker's pushback."""
    caller = resilience.CircuitBreaker("caller", consecutive_failures=5)
    error, _ = await aio_call("open", method, breaker=caller)
    assert _code(error) is grpc.StatusCode.UNAVAILABLE
    pushback = pushback_of(error)
    assert pushback is not None
    assert 50.0 < pushback <= 60.0
    assert caller.metrics().calls["failure"] == 1


@pytest.mark.anyio
async def test_aio_pushback_is_honoured_by_the_callers_retry() -> None:
    """The caller's retry waits the pushback (here on a FakeClock) before its next attempt."""
    clock = FakeClock()
    retry = resilience.Retry(
        on=grpc.RpcError, attempts=2, wait=0.0, max_retry_after=120, clock=clock
    )
    error, interceptor = await aio_call("open-2s", retry=retry, clock=clock)
    assert _code(error) is grpc.StatusCode.UNAVAILABLE
    assert interceptor.retry.metrics()["retries"] == 1
    assert clock.monotonic() > 1.5  # the pushback (~2 s): the backoff is 0


@pytest.mark.anyio
async def test_aio_pushback_above_max_retry_after_is_not_retried() -> None:
    """The default retry (max_retry_after 30 s) gives up at once on a minute of pushback."""
    error, interceptor = await aio_call("open", retry=True, clock=FakeClock())
    assert _code(error) is grpc.StatusCode.UNAVAILABLE
    assert interceptor.retry.metrics()["retries"] == 0


@pytest.mark.anyio
@pytest.mark.parametrize("method", [UNARY, STREAM], ids=["unary", "stream"])
async def test_aio_spent_deadline_is_deadline_exceeded(method: str) -> None:
    """A handler's `resilience.Timeout` stopped by its spent deadline: DEADLINE_EXCEEDED."""
    error, _ = await aio_call("deadline", method)
    assert _code(error) is grpc.StatusCode.DEADLINE_EXCEEDED


@pytest.mark.anyio
async def test_aio_map_errors_false_and_other_errors_leave_unknown() -> None:
    """`map_errors=False`, or an error that is not resilience's: UNKNOWN."""
    error, _ = await aio_call("open", map_errors=False)
    assert _code(error) is grpc.StatusCode.UNKNOWN
    error, _ = await aio_call("bug")
    assert _code(error) is grpc.StatusCode.UNKNOWN


def test_refusal_statuses_never_send_a_negative_or_unbounded_pushback() -> None:
    """The pushback is the breaker's retry-after in whole ms, within [0, a day]."""
    from resilience._refusals import Refusal
    from resilience.grpc import _status_of

    assert _status_of(Refusal("shed", 0.0))[2] == (("grpc-retry-pushback-ms", "0"),)
    assert _status_of(Refusal("shed", 0.0004))[2] == (("grpc-retry-pushback-ms", "1"),)
    assert _status_of(Refusal("shed"))[2] == ()
    assert _status_of(Refusal("deadline_exceeded"))[0] is grpc.StatusCode.DEADLINE_EXCEEDED
    from resilience._refusals import refusal_of

    forever = resilience.CircuitOpenError("x", resilience.State.OPEN, float("inf"))
    past = resilience.CircuitOpenError("x", resilience.State.OPEN, -3.0)
    assert refusal_of(forever) == Refusal("shed", 86_400.0)
    assert refusal_of(past) == Refusal("shed", 0.0)
