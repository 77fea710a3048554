"""Nothing is lost: every attempt's breaker permit is settled exactly once.

Under concurrent calls from threads and tasks, and for streams that the
caller abandons or cancels (their permits settle when grpcio reports the end).
"""

from __future__ import annotations

import asyncio
import threading
import time

import grpc
import grpc.aio
import pytest

import resilience
from resilience.grpc import (
    AsyncResilientClientInterceptor,
    ResilientClientInterceptor,
    channel_options,
)
from resilience.testing import FakeClock

from .conftest import (
    STREAM,
    UNARY,
    Script,
    Step,
    SyncServer,
    aio_methods,
    settled,
    start_aio_server,
    wait_until,
)


def test_concurrent_sync_calls_settle_every_permit_once(server: SyncServer) -> None:
    """8 threads x 10 calls with transient failures: one permit per attempt the server saw."""
    breaker = resilience.CircuitBreaker("echo")
    breaker.metrics_only()  # records every outcome, never trips
    interceptor = ResilientClientInterceptor(
        target=server.target,
        breaker=breaker,
        # More attempts than scripted failures: one thread may draw them all in a row.
        retry=resilience.Retry(on=grpc.RpcError, attempts=21, wait=0.0),
        clock=FakeClock(),
    )
    channel = grpc.intercept_channel(
        grpc.insecure_channel(server.target, options=channel_options()), interceptor
    )
    unary = channel.unary_unary(UNARY)
    server.script.add(*[Step(grpc.StatusCode.UNAVAILABLE) for _ in range(20)])
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            for _ in range(10):
                assert unary(b"x", timeout=10) == b"x"
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    assert server.script.count() == 100  # 80 calls + 20 retried failures
    calls = breaker.metrics().calls
    assert (calls["success"], calls["failure"], calls["ignored"]) == (80, 20, 0)


def test_an_abandoned_sync_stream_hands_its_permit_back(server: SyncServer) -> None:
    """A server stream cancelled by its caller settles its permit as IGNORED, once."""
    breaker = resilience.CircuitBreaker("echo")
    interceptor = ResilientClientInterceptor(target=server.target, breaker=breaker)
    channel = grpc.intercept_channel(grpc.insecure_channel(server.target), interceptor)
    server.script.add(Step(messages=1000))
    call = channel.unary_stream(STREAM)(b"m")
    assert next(call) == b"m"
    call.cancel()
    wait_until(lambda: settled(breaker) == 1)
    assert breaker.metrics().calls["ignored"] == 1
    with pytest.raises(grpc.RpcError):
        list(call)
    time.sleep(0.05)
    assert settled(breaker) == 1


@pytest.mark.anyio
async def test_concurrent_aio_calls_and_an_abandoned_stream() -> None:
    """20 concurrent aio calls and a stream left after one message: every permit settled once."""
    script = Script()
    grpc_server, port = await start_aio_server(script)
    target = f"127.0.0.1:{port}"
    breaker = resilience.CircuitBreaker("echo")
    breaker.metrics_only()
    channel = grpc.aio.insecure_channel(
        target,
        options=channel_options(),
        interceptors=AsyncResilientClientInterceptor(
            target=target,
            breaker=breaker,
            retry=resilience.Retry(on=grpc.RpcError, attempts=6, wait=0.0),  # > 5 failures
        ),
    )
    try:
        methods = aio_methods(channel)
        script.add(*[Step(grpc.StatusCode.UNAVAILABLE) for _ in range(5)])
        replies = await asyncio.gather(*(methods["unary"](b"x") for _ in range(20)))
        assert replies == [b"x"] * 20
        calls = breaker.metrics().calls
        assert (calls["success"], calls["failure"]) == (20, 5)

        script.add(Step(messages=1000))
        call = methods["stream"](b"m")
        assert await call.read() == b"m"
        call.cancel()
        for _ in range(300):
            if settled(breaker) == 26:
                break
            await asyncio.sleep(0.01)
        assert breaker.metrics().calls["ignored"] == 1
    finally:
        await channel.close()
        await grpc_server.stop(None)
