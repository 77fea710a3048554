"""Streaming rules and no double retries (docs/guide/grpc.md, "Streaming" and "No double retries").

- a server-streaming call is retried only while no message was received;
- client-streaming and bidirectional calls are never retried (their requests
  are an iterator that cannot be replayed), but go through the breaker;
- with `channel_options()`, a service config's retry policy does not multiply
  the attempts: the server counts exactly ours.
"""

from __future__ import annotations

import json
import math
from typing import Any

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
    CHAT,
    STREAM,
    UNARY,
    UPLOAD,
    Script,
    Step,
    SyncServer,
    aio_methods,
    start_aio_server,
    sync_methods,
)

UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


def sync_setup(target: str, channel_opts: Any = None, **options: Any) -> dict[str, Any]:
    interceptor = ResilientClientInterceptor(target=target, clock=FakeClock(), **options)
    opts = channel_options() if channel_opts is None else channel_opts
    return sync_methods(
        grpc.intercept_channel(grpc.insecure_channel(target, options=opts), interceptor)
    )


def test_stream_retried_before_the_first_message(server: SyncServer) -> None:
    """docs/guide/grpc.md: a server stream that fails before any message is retried."""
    stream = sync_setup(server.target)["stream"]
    server.script.add(Step(UNAVAILABLE, messages=0), Step(messages=3))
    call = stream(b"m")
    assert list(call) == [b"m", b"m", b"m"]
    assert call.code() is grpc.StatusCode.OK
    assert server.script.count(STREAM) == 2
    assert server.script.calls[1].metadata.get("grpc-previous-rpc-attempts") == "1"


def test_stream_not_retried_after_the_first_message(server: SyncServer) -> None:
    """docs/guide/grpc.md: once a message was received, a failing stream is not retried."""
    breaker = resilience.CircuitBreaker("echo")
    stream = sync_setup(server.target, breaker=breaker)["stream"]
    server.script.add(Step(UNAVAILABLE, messages=2))
    received = []
    with pytest.raises(grpc.RpcError) as raised:
        received.extend(stream(b"m"))
    assert received == [b"m", b"m"]
    assert raised.value.code() is UNAVAILABLE
    assert server.script.count(STREAM) == 1
    _wait_for(lambda: breaker.metrics().calls["failure"] == 1)


def test_client_streaming_is_never_retried(server: SyncServer) -> None:
    """docs/guide/grpc.md: client-streaming and bidirectional calls are not retried."""
    breaker = resilience.CircuitBreaker("echo")
    methods = sync_setup(server.target, breaker=breaker)
    server.script.add(Step(UNAVAILABLE))
    with pytest.raises(grpc.RpcError):
        methods["upload"](iter([b"a", b"b"]))
    assert server.script.count(UPLOAD) == 1
    server.script.add(Step(UNAVAILABLE))
    with pytest.raises(grpc.RpcError):
        list(methods["chat"](iter([b"a"])))
    assert server.script.count(CHAT) == 1
    assert methods["upload"](iter([b"a", b"b"])) == b"ab"
    _wait_for(lambda: breaker.metrics().calls == {**breaker.metrics().calls, "failure": 2})
    _wait_for(lambda: breaker.metrics().calls["success"] == 1)


def _wait_for(condition: Any, seconds: float = 3.0) -> None:
    """Streams settle their permit when grpcio reports the end (on its thread): bounded wait."""
    import time

    give_up = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < give_up, "condition not met in time"
        time.sleep(0.005)


# -- no double retries -------------------------------------------------------------------

SERVICE_CONFIG = json.dumps(
    {
        "methodConfig": [
            {
                "name": [{"service": "test.Echo"}],
                "retryPolicy": {
                    "maxAttempts": 4,
                    "initialBackoff": "0.01s",
                    "maxBackoff": "0.01s",
                    "backoffMultiplier": 1,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }
)


def _always_unavailable(script: Script, times: int) -> None:
    script.add(*[Step(UNAVAILABLE) for _ in range(times)])


def test_no_double_retries_with_channel_options(server: SyncServer) -> None:
    """docs/guide/grpc.md: channel_options() switches grpcio's retries off: attempts are ours."""
    retry = resilience.Retry(on=grpc.RpcError, attempts=3, wait=0.0)
    options = channel_options([("grpc.service_config", SERVICE_CONFIG)])
    unary = sync_setup(server.target, channel_opts=options, retry=retry)["unary"]
    _always_unavailable(server.script, 20)
    with pytest.raises(grpc.RpcError) as raised:
        unary(b"x")
    assert server.script.count(UNARY) == 3
    assert raised.value.code() is UNAVAILABLE  # grpcio's own error, raised as itself
    assert "gave up after 3 attempts" in raised.value.__notes__[0]


def test_without_channel_options_grpcio_retries_multiply(server: SyncServer) -> None:
    """docs/guide/grpc.md: why channel_options() matters: both layers retry otherwise."""
    retry = resilience.Retry(on=grpc.RpcError, attempts=3, wait=0.0)
    options = [("grpc.service_config", SERVICE_CONFIG)]
    unary = sync_setup(server.target, channel_opts=options, retry=retry)["unary"]
    _always_unavailable(server.script, 20)
    with pytest.raises(grpc.RpcError):
        unary(b"x")
    assert server.script.count(UNARY) == 12  # 3 of ours x 4 of grpcio's


def test_channel_options_replaces_enable_retries() -> None:
    """docs/guide/grpc.md: channel_options keeps your options and sets grpc.enable_retries=0."""
    assert channel_options(
        [("grpc.enable_retries", 1), ("grpc.primary_user_agent", "x")],
        max_reconnect_backoff=None,
    ) == [
        ("grpc.primary_user_agent", "x"),
        ("grpc.enable_retries", 0),
    ]


def test_channel_options_bound_the_reconnect_backoff() -> None:
    """docs/guide/grpc.md: 4 s by default, `max_reconnect_backoff=` to change; yours are kept."""
    assert channel_options() == [
        ("grpc.enable_retries", 0),
        ("grpc.max_reconnect_backoff_ms", 4000),
    ]
    assert channel_options(max_reconnect_backoff=0.25) == [
        ("grpc.enable_retries", 0),
        ("grpc.max_reconnect_backoff_ms", 250),
        ("grpc.initial_reconnect_backoff_ms", 250),  # never above the bound
    ]
    mine = [("grpc.max_reconnect_backoff_ms", 100), ("grpc.initial_reconnect_backoff_ms", 50)]
    assert channel_options(mine, max_reconnect_backoff=0.01) == [*mine, ("grpc.enable_retries", 0)]
    for bad in (0.0001, 2**31, -1, math.nan, "4", True):
        with pytest.raises((TypeError, ValueError), match="max_reconnect_backoff"):
            channel_options(max_reconnect_backoff=bad)  # type: ignore[arg-type]


# -- aio ----------------------------------------------------------------------------


async def aio_setup(script: Script, **options: Any) -> tuple[Any, Any, dict[str, Any]]:
    grpc_server, port = await start_aio_server(script)
    target = f"127.0.0.1:{port}"
    interceptor = AsyncResilientClientInterceptor(target=target, clock=FakeClock(), **options)
    channel = grpc.aio.insecure_channel(
        target,
        options=channel_options([("grpc.service_config", SERVICE_CONFIG)]),
        interceptors=interceptor,
    )
    return grpc_server, channel, aio_methods(channel)


@pytest.mark.anyio
async def test_aio_streams_and_no_double_retries() -> None:
    """docs/guide/grpc.md: the streaming rules and the attempt count, for grpc.aio."""
    script = Script()
    breaker = resilience.CircuitBreaker("echo")
    grpc_server, channel, methods = await aio_setup(script, breaker=breaker)
    try:
        script.add(Step(UNAVAILABLE, messages=0), Step(messages=2))
        call = methods["stream"](b"m")
        assert [m async for m in call] == [b"m", b"m"]
        assert await call.code() is grpc.StatusCode.OK  # the attempt that answered
        assert script.count(STREAM) == 2

        script.add(Step(UNAVAILABLE, messages=1))
        received = []
        call = methods["stream"](b"m")
        with pytest.raises(grpc.RpcError):  # noqa: PT012  (the error comes mid-stream)
            async for message in call:
                received.append(message)
        assert received == [b"m"]
        assert await call.code() is UNAVAILABLE
        assert script.count(STREAM) == 3

        async def requests() -> Any:
            yield b"a"
            yield b"b"

        script.add(Step(UNAVAILABLE))
        with pytest.raises(grpc.RpcError):
            await methods["upload"](requests())
        assert script.count(UPLOAD) == 1
        assert [m async for m in methods["chat"](requests())] == [b"a", b"b"]

        _always_unavailable(script, 20)
        with pytest.raises(grpc.RpcError):
            await methods["unary"](b"x")
        assert script.count(UNARY) == 4  # the default retry's 4 attempts, no more
    finally:
        await channel.close()
        await grpc_server.stop(None)
