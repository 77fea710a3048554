"""What an outside review of resilience.grpc broke, each pinned by a test.

Real grpcio servers on 127.0.0.1. Each test failed on the code before its fix.
"""

from __future__ import annotations

import asyncio
import gc
import math
import time
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import grpc.aio
import pytest

import resilience
from resilience.grpc import (
    AsyncDeadlineServerInterceptor,
    ResilientClientInterceptor,
    channel_options,
)
from resilience.testing import FakeClock

from .conftest import STREAM, UPLOAD, Step, SyncServer, sync_methods


def settled(breaker: resilience.CircuitBreaker) -> int:
    calls = breaker.metrics().calls
    return calls["success"] + calls["failure"] + calls["ignored"]


def wait_until(condition: Any, seconds: float = 3.0) -> None:
    give_up = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < give_up, "not settled in time"
        gc.collect()
        time.sleep(0.005)


def limited_channel(
    server: SyncServer, **options: Any
) -> tuple[dict[str, Any], resilience.CircuitBreaker, resilience.ConcurrencyLimit]:
    breaker = resilience.CircuitBreaker("echo")
    breaker.metrics_only()
    limit = resilience.ConcurrencyLimit(
        resilience.AIMDLimit(initial_limit=5, max_limit=5), name="echo"
    )
    interceptor = ResilientClientInterceptor(
        target=server.target, breaker=breaker, concurrency_limit=limit, **options
    )
    channel = grpc.intercept_channel(
        grpc.insecure_channel(server.target, options=channel_options()), interceptor
    )
    return sync_methods(channel), breaker, limit


# -- sync calls the caller drops --------------------------------------------------------


def test_a_dropped_sync_stream_hands_its_permits_back(server: SyncServer) -> None:
    """A dropped server stream's breaker permit and limit slot come back, once.

    grpcio cancels a stream collected midway (or never read) without running
    its callbacks.
    """
    methods, breaker, limit = limited_channel(server)
    server.script.add(Step(messages=10_000))
    stream = methods["stream"](b"m")
    assert next(stream) == b"m"
    del stream  # abandoned midway
    never_read = methods["stream"](b"n")
    del never_read  # never iterated
    wait_until(lambda: limit.metrics()["in_flight"] == 0 and settled(breaker) == 2)
    assert breaker.metrics().calls["ignored"] == 2
    assert limit.metrics()["ignored"] == 2
    time.sleep(0.05)
    gc.collect()
    assert settled(breaker) == 2  # once


def test_a_dropped_future_hands_its_permits_back(server: SyncServer) -> None:
    """A `.future()` dropped before it ended: the permits come back when grpcio collects it."""
    methods, breaker, limit = limited_channel(server)
    server.script.add(Step(sleep=1.0))
    future = methods["unary"].future(b"f", timeout=5)
    wait_until(lambda: server.script.count() == 1)
    del future
    wait_until(lambda: limit.metrics()["in_flight"] == 0 and settled(breaker) == 1)
    assert breaker.metrics().calls["ignored"] == 1


def test_a_request_iterator_that_raises_is_not_a_server_failure(server: SyncServer) -> None:
    """A request iterator that raises is the caller's bug: permits released, no failure.

    grpcio ends such a call UNKNOWN; it is not counted as a breaker failure
    or a limit drop.
    """
    methods, breaker, limit = limited_channel(server)

    def requests() -> Iterator[bytes]:
        yield b"a"
        raise ValueError("the caller's bug")

    with pytest.raises(grpc.RpcError) as raised:
        methods["upload"](requests(), timeout=5)
    assert raised.value.code() is grpc.StatusCode.UNKNOWN
    wait_until(lambda: settled(breaker) == 1)
    assert breaker.metrics().calls["failure"] == 0
    assert limit.metrics()["dropped"] == 0
    # A server that really answers UNKNOWN still counts as a failure.
    server.script.add(Step(grpc.StatusCode.UNKNOWN))
    with pytest.raises(grpc.RpcError):
        methods["upload"](iter([b"a"]), timeout=5)
    wait_until(lambda: settled(breaker) == 2)
    assert breaker.metrics().calls["failure"] == 1
    assert server.script.count(UPLOAD) == 2


# -- a call's own timeout ---------------------------------------------------------------


@pytest.mark.parametrize("timeout", [math.inf, 1e300, 1e12])
def test_a_huge_timeout_is_no_deadline_not_a_failure(server: SyncServer, timeout: float) -> None:
    """A timeout too far off for grpcio is sent as none (not a breaker failure).

    grpcio fails a timeout past ~1e10 s at once with DEADLINE_EXCEEDED.
    """
    methods, breaker, _ = limited_channel(server)
    assert methods["unary"](b"x", timeout=timeout) == b"x"
    assert next(methods["stream"](b"s", timeout=timeout)) == b"s"
    assert breaker.metrics().calls["failure"] == 0


def test_a_bad_call_timeout_is_a_clear_error(server: SyncServer) -> None:
    """NaN or a non-number as a call's `timeout=`: an error naming it, nothing sent."""
    methods, breaker, _ = limited_channel(server, clock=FakeClock())
    with pytest.raises(ValueError, match="timeout= of a gRPC call cannot be NaN"):
        methods["unary"](b"x", timeout=math.nan)
    with pytest.raises(TypeError, match="timeout= of a gRPC call takes seconds"):
        methods["unary"](b"x", timeout="5")
    with pytest.raises(TypeError, match="timeout= of a gRPC call takes seconds"):
        next(methods["stream"](b"x", timeout=True))  # grpcio raises a stream's error on reading
    assert server.script.count() == 0
    assert settled(breaker) == 0


# -- the aio deadline server interceptor and sync handlers ------------------------------


@pytest.mark.anyio
async def test_aio_server_interceptor_runs_sync_handlers_in_the_deadline() -> None:
    """Sync handlers on a grpc.aio server keep working, inside the caller's deadline.

    grpc.aio runs plain handlers in its migration thread pool: the deadline is
    opened in that thread.
    """
    seen: list[float | None] = []

    def unary(request: bytes, context: Any) -> bytes:
        seen.append(resilience.remaining())
        return request

    def stream(request: bytes, context: Any) -> Iterator[bytes]:
        for _ in range(2):
            seen.append(resilience.remaining())
            yield request

    pool = futures.ThreadPoolExecutor(max_workers=2)
    server = grpc.aio.server(
        interceptors=[AsyncDeadlineServerInterceptor()], migration_thread_pool=pool
    )
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "test.Sync",
                {
                    "Unary": grpc.unary_unary_rpc_method_handler(unary),
                    "Stream": grpc.unary_stream_rpc_method_handler(stream),
                },
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        assert await channel.unary_unary("/test.Sync/Unary")(b"u", timeout=5) == b"u"
        replies = [m async for m in channel.unary_stream("/test.Sync/Stream")(b"s", timeout=5)]
        assert replies == [b"s", b"s"]
        assert len(seen) == 3
        assert all(left is not None and 0 < left <= 5.1 for left in seen), seen
    finally:
        await channel.close()
        await server.stop(None)
        pool.shutdown(wait=False)


def test_sync_server_interceptor_refuses_async_generator_handlers() -> None:
    """An async generator handler on a sync server: a MisuseError, as for a coroutine one."""

    async def stream(request: bytes, context: Any) -> Any:
        yield request

    handler = grpc.unary_stream_rpc_method_handler(stream)

    class Details(grpc.HandlerCallDetails):
        method = STREAM
        invocation_metadata = ()

    with pytest.raises(resilience.MisuseError, match="AsyncDeadlineServerInterceptor"):
        resilience.grpc.DeadlineServerInterceptor().intercept_service(lambda _: handler, Details())


def test_aio_server_interceptor_keeps_a_sync_handler_sync() -> None:
    """grpc.aio tells a sync handler from an async one by its kind: the wrapper keeps it."""

    def unary(request: bytes, context: Any) -> bytes:
        return request

    async def aunary(request: bytes, context: Any) -> bytes:
        return request

    interceptor = AsyncDeadlineServerInterceptor()
    for behaviour, is_async in ((unary, False), (aunary, True)):
        handler = grpc.unary_unary_rpc_method_handler(behaviour)

        async def continuation(_: Any, handler: Any = handler) -> Any:
            return handler

        wrapped = asyncio.run(interceptor.intercept_service(continuation, None))  # type: ignore[arg-type]
        assert asyncio.iscoroutinefunction(wrapped.unary_unary) is is_async
