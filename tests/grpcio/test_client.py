"""The client interceptors against a real grpcio server: retries, status rules, breakers.

Each behaviour is checked for the sync interceptor and the `grpc.aio` one
(asyncio only: grpc.aio has no trio support). docs/guide/grpc.md promises them.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import grpc.aio
import pytest

import resilience
from resilience.grpc import (
    AsyncResilientClientInterceptor,
    GrpcCircuitOpenError,
    ResilientClientInterceptor,
    channel_options,
)
from resilience.testing import FakeClock

from .conftest import (
    UNARY,
    Script,
    Step,
    SyncServer,
    aio_methods,
    aio_setup,
    free_port,
    start_sync_server,
    sync_methods,
)

UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


def sync_channel(target: str, **options: Any) -> tuple[dict[str, Any], Any]:
    interceptor = ResilientClientInterceptor(target=target, **options)
    channel = grpc.intercept_channel(
        grpc.insecure_channel(target, options=channel_options()), interceptor
    )
    return sync_methods(channel), interceptor


# -- sync -----------------------------------------------------------------------------


def test_transient_unavailable_is_retried_then_ok(server: SyncServer) -> None:
    """docs/guide/grpc.md: UNAVAILABLE is retried; the attempt count is sent (A6)."""
    clock = FakeClock()
    methods, interceptor = sync_channel(server.target, clock=clock)
    server.script.add(Step(UNAVAILABLE), Step(UNAVAILABLE))
    assert methods["unary"](b"hi", timeout=5) == b"hi"
    assert server.script.count() == 3
    sent = [call.metadata.get("grpc-previous-rpc-attempts") for call in server.script.calls]
    assert sent == [None, "1", "2"]
    assert interceptor.retry.metrics()["success_after_retry"] == 1
    assert clock.monotonic() > 0  # the backoff slept on the clock


def test_invalid_argument_is_not_retried_and_is_a_breaker_success(server: SyncServer) -> None:
    """docs/guide/grpc.md: client errors are neither retried nor breaker failures."""
    breaker = resilience.CircuitBreaker("echo", consecutive_failures=1)
    methods, _ = sync_channel(server.target, breaker=breaker, clock=FakeClock())
    server.script.add(Step(grpc.StatusCode.INVALID_ARGUMENT))
    with pytest.raises(grpc.RpcError) as raised:
        methods["unary"](b"x")
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert server.script.count() == 1
    assert breaker.state is resilience.State.CLOSED
    assert breaker.metrics().calls["success"] == 1


def test_pushback_delays_the_retry_by_its_value(server: SyncServer) -> None:
    """docs/guide/grpc.md: grpc-retry-pushback-ms sets the wait before the next attempt."""
    clock = FakeClock()
    retry = resilience.Retry(on=grpc.RpcError, wait=0.0, clock=clock)
    methods, _ = sync_channel(server.target, clock=clock, retry=retry)
    server.script.add(Step(UNAVAILABLE, trailing=(("grpc-retry-pushback-ms", "750"),)))
    assert methods["unary"](b"hi") == b"hi"
    assert server.script.count() == 2
    assert clock.monotonic() == pytest.approx(0.75)


def test_negative_pushback_stops_retrying(server: SyncServer) -> None:
    """docs/guide/grpc.md: a negative pushback means do not retry."""
    methods, _ = sync_channel(server.target, clock=FakeClock())
    server.script.add(Step(UNAVAILABLE, trailing=(("grpc-retry-pushback-ms", "-1"),)))
    with pytest.raises(grpc.RpcError):
        methods["unary"](b"hi")
    assert server.script.count() == 1


def test_resource_exhausted_is_retried_only_with_pushback(server: SyncServer) -> None:
    """docs/guide/grpc.md: RESOURCE_EXHAUSTED is retried only when the server pushed back."""
    methods, _ = sync_channel(server.target, clock=FakeClock())
    exhausted = grpc.StatusCode.RESOURCE_EXHAUSTED
    server.script.add(Step(exhausted))
    with pytest.raises(grpc.RpcError):
        methods["unary"](b"hi")
    assert server.script.count() == 1
    server.script.add(Step(exhausted, trailing=(("grpc-retry-pushback-ms", "10"),)))
    assert methods["unary"](b"hi") == b"hi"
    assert server.script.count() == 3


def test_empty_retry_codes_retry_nothing_not_even_pushback(server: SyncServer) -> None:
    """docs/guide/grpc.md: `retry_codes=set()` retries no gRPC error, pushback included."""
    methods, interceptor = sync_channel(server.target, retry_codes=set(), clock=FakeClock())
    pushback = (("grpc-retry-pushback-ms", "10"),)
    server.script.add(Step(grpc.StatusCode.RESOURCE_EXHAUSTED, trailing=pushback))
    with pytest.raises(grpc.RpcError) as raised:
        methods["unary"](b"hi")
    assert raised.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    server.script.add(Step(UNAVAILABLE, trailing=pushback))
    with pytest.raises(grpc.RpcError):
        methods["unary"](b"hi")
    assert server.script.count() == 2
    assert interceptor.retry.metrics()["retries"] == 0


def test_breaker_trips_on_a_dead_server_and_recovers() -> None:
    """docs/guide/grpc.md: UNAVAILABLE counts as a failure; an open breaker sends nothing."""
    port = free_port()
    target = f"127.0.0.1:{port}"
    clock = FakeClock()
    breaker = resilience.CircuitBreaker(
        "dead", consecutive_failures=2, open_duration=10.0, clock=clock
    )
    methods, _ = sync_channel(target, breaker=breaker, retry=False, clock=clock)
    for _ in range(2):
        with pytest.raises(grpc.RpcError) as raised:
            methods["unary"](b"x", timeout=2)
        assert raised.value.code() is UNAVAILABLE
    assert breaker.state is resilience.State.OPEN
    with pytest.raises(GrpcCircuitOpenError):
        methods["unary"](b"x", timeout=2)
    script = Script()
    grpc_server, _ = start_sync_server(script, port=port)
    try:
        clock.advance(10.0)
        deadline_for_reconnect = 50
        for _ in range(deadline_for_reconnect):  # the channel reconnects with its own backoff
            try:
                assert methods["unary"](b"back", timeout=2, wait_for_ready=True) == b"back"
                break
            except grpc.RpcError:
                clock.advance(10.0)
        assert breaker.state is resilience.State.CLOSED
        assert script.count() == 1
    finally:
        grpc_server.stop(None)


def test_open_breaker_error_is_both_circuit_open_and_rpc_error(server: SyncServer) -> None:
    """docs/guide/grpc.md: an open breaker raises a CircuitOpenError that is a grpc.RpcError."""
    breaker = resilience.CircuitBreaker("echo")
    breaker.force_open()
    methods, _ = sync_channel(server.target, breaker=breaker)
    with pytest.raises(grpc.RpcError) as raised:
        methods["unary"](b"x")
    error = raised.value
    assert isinstance(error, resilience.CircuitOpenError)
    assert error.code() is UNAVAILABLE
    assert "echo" in error.details()
    with pytest.raises(resilience.CircuitOpenError):
        methods["unary"](b"x")
    assert server.script.count() == 0


def test_breaker_scope_method_gives_each_method_its_breaker(server: SyncServer) -> None:
    """docs/guide/grpc.md: breaker_scope="method" names breakers target + method."""
    registry = resilience.BreakerRegistry()
    methods, _ = sync_channel(server.target, breaker=registry, breaker_scope="method")
    methods["unary"](b"x")
    assert [breaker.name for breaker in registry] == [f"{server.target}{UNARY}"]


# -- aio ------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_aio_transient_unavailable_is_retried_then_ok() -> None:
    """docs/guide/grpc.md: the same for grpc.aio."""
    script = Script()
    grpc_server, channel, interceptor, _ = await aio_setup(script, clock=FakeClock())
    try:
        script.add(Step(UNAVAILABLE), Step(UNAVAILABLE))
        call = aio_methods(channel)["unary"](b"hi", timeout=5)
        assert await call == b"hi"
        assert await call.code() is grpc.StatusCode.OK
        assert script.previous_attempts() == [
            None,
            "1",
            "2",
        ]
        assert interceptor.retry.metrics()["success_after_retry"] == 1
    finally:
        await channel.close()
        await grpc_server.stop(None)


@pytest.mark.anyio
async def test_aio_invalid_argument_not_retried_nor_a_failure() -> None:
    """docs/guide/grpc.md: client errors are neither retried nor breaker failures (aio)."""
    script = Script()
    breaker = resilience.CircuitBreaker("echo", consecutive_failures=1)
    grpc_server, channel, _, _ = await aio_setup(script, breaker=breaker, clock=FakeClock())
    try:
        script.add(Step(grpc.StatusCode.INVALID_ARGUMENT))
        with pytest.raises(grpc.RpcError) as raised:
            await aio_methods(channel)["unary"](b"x")
        assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert script.count() == 1
        assert breaker.state is resilience.State.CLOSED
    finally:
        await channel.close()
        await grpc_server.stop(None)


@pytest.mark.anyio
async def test_aio_pushback_honoured() -> None:
    """docs/guide/grpc.md: pushback sets the wait (aio); negative stops retrying."""
    script = Script()
    clock = FakeClock()
    retry = resilience.Retry(on=grpc.RpcError, wait=0.0, clock=clock)
    grpc_server, channel, _, _ = await aio_setup(script, retry=retry, clock=clock)
    try:
        unary = aio_methods(channel)["unary"]
        script.add(Step(UNAVAILABLE, trailing=(("grpc-retry-pushback-ms", "250"),)))
        assert await unary(b"hi") == b"hi"
        assert clock.monotonic() == pytest.approx(0.25)
        script.add(Step(UNAVAILABLE, trailing=(("grpc-retry-pushback-ms", "-5"),)))
        with pytest.raises(grpc.RpcError):
            await unary(b"hi")
        assert script.count() == 3
    finally:
        await channel.close()
        await grpc_server.stop(None)


@pytest.mark.anyio
async def test_aio_breaker_trips_on_dead_server_and_error_types() -> None:
    """docs/guide/grpc.md: the aio breaker trips; RpcError and CircuitOpenError catch it."""
    target = f"127.0.0.1:{free_port()}"
    clock = FakeClock()
    breaker = resilience.CircuitBreaker("dead", consecutive_failures=2, clock=clock)
    interceptor = AsyncResilientClientInterceptor(
        target=target, breaker=breaker, retry=False, clock=clock
    )
    channel = grpc.aio.insecure_channel(target, options=channel_options(), interceptors=interceptor)
    try:
        unary = aio_methods(channel)["unary"]
        for _ in range(2):
            with pytest.raises(grpc.RpcError):
                await unary(b"x", timeout=2)
        assert breaker.state is resilience.State.OPEN
        with pytest.raises(grpc.RpcError) as raised:
            await unary(b"x")
        assert isinstance(raised.value, resilience.CircuitOpenError)
        assert raised.value.code() is UNAVAILABLE
        with pytest.raises(resilience.CircuitOpenError):
            await unary(b"x")
    finally:
        await channel.close()


@pytest.mark.anyio
async def test_aio_cancellation_settles_the_permit_once() -> None:
    """docs/guide/grpc.md: a cancelled aio call cancels its RPC, hands its permit back once."""
    script = Script()
    breaker = resilience.CircuitBreaker("echo", half_open_max_calls=1)
    grpc_server, channel, _, _ = await aio_setup(script, breaker=breaker, retry=False)
    try:
        script.add(Step(sleep=5.0))
        task = asyncio.ensure_future(aio_methods(channel)["unary"](b"slow"))
        for _ in range(200):
            if script.calls:
                break
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        calls = breaker.metrics().calls
        assert calls == {"success": 0, "failure": 0, "ignored": 1, "rejected": 0}
        for _ in range(200):  # the RPC was cancelled too: the server's handler sees it
            if script.cancelled:
                break
            await asyncio.sleep(0.01)
        assert script.cancelled == 1
    finally:
        await channel.close()
        await grpc_server.stop(None)


def test_future_calls_get_the_breaker_not_retries(server: SyncServer) -> None:
    """docs/guide/grpc.md: `.future()` calls are not retried; the breaker counts them."""
    breaker = resilience.CircuitBreaker("echo")
    methods, _ = sync_channel(server.target, breaker=breaker, clock=FakeClock())
    server.script.add(Step(UNAVAILABLE))
    future = methods["unary"].future(b"x")
    with pytest.raises(grpc.RpcError):
        future.result(timeout=5)
    assert server.script.count() == 1
    assert methods["unary"].future(b"y").result(timeout=5) == b"y"
    for _ in range(500):  # settled from grpcio's callback thread
        if breaker.metrics().calls["success"] == 1:
            break
        import time

        time.sleep(0.005)
    calls = breaker.metrics().calls
    assert (calls["failure"], calls["success"]) == (1, 1)


def test_an_inner_open_breaker_is_ignored_by_the_outer_one(server: SyncServer) -> None:
    """DESIGN 15: resilience's own rejections are not evidence about the server (IGNORED)."""
    inner_breaker = resilience.CircuitBreaker("inner")
    inner_breaker.force_open()
    outer_breaker = resilience.CircuitBreaker("outer", consecutive_failures=1)
    channel = grpc.intercept_channel(
        grpc.insecure_channel(server.target),
        ResilientClientInterceptor(target="outer", breaker=outer_breaker),
        ResilientClientInterceptor(target="inner", breaker=inner_breaker),
    )
    with pytest.raises(GrpcCircuitOpenError) as raised:
        channel.unary_unary(UNARY)(b"x")
    assert raised.value.name == "inner"
    assert outer_breaker.state is resilience.State.CLOSED
    assert outer_breaker.metrics().calls["ignored"] == 1
    assert server.script.count() == 0
