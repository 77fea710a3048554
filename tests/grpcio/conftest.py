"""Real grpcio servers on 127.0.0.1 (a free port), their behaviour scripted per test.

The service is hand-written (generic handlers, bytes in and out: no protoc):

- `/test.Echo/Unary` (unary-unary) echoes the request,
- `/test.Echo/Stream` (unary-stream) sends the request back `messages` times,
- `/test.Echo/Upload` (stream-unary) joins the requests,
- `/test.Echo/Chat` (stream-stream) echoes each request.

Each call takes the next `Step` of the script (then echoes once the script is
empty) and is recorded (its metadata and `context.time_remaining()`).
"""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
import grpc.aio
import pytest

import resilience
from resilience.grpc import AsyncResilientClientInterceptor, channel_options

SERVICE = "test.Echo"
UNARY = f"/{SERVICE}/Unary"
STREAM = f"/{SERVICE}/Stream"
UPLOAD = f"/{SERVICE}/Upload"
CHAT = f"/{SERVICE}/Chat"


@dataclass
class Step:
    """What the server does for one call."""

    code: grpc.StatusCode = grpc.StatusCode.OK
    details: str = ""
    trailing: tuple[tuple[str, str], ...] = ()
    messages: int = 1  # unary-stream: messages sent before the status
    sleep: float = 0.0


@dataclass
class Seen:
    method: str
    metadata: dict[str, str]
    time_remaining: float | None


@dataclass
class Script:
    steps: deque[Step] = field(default_factory=deque)
    calls: list[Seen] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    cancelled: int = 0

    def add(self, *steps: Step) -> None:
        self.steps.extend(steps)

    def take(self, method: str, context: Any) -> Step:
        with self.lock:
            self.calls.append(
                Seen(
                    method,
                    dict(context.invocation_metadata()),
                    context.time_remaining(),
                )
            )
            return self.steps.popleft() if self.steps else Step()

    def count(self, method: str = UNARY) -> int:
        return sum(1 for call in self.calls if call.method == method)

    def previous_attempts(self) -> list[str | None]:
        """The `grpc-previous-rpc-attempts` each call the server saw carried (None: absent)."""
        return [call.metadata.get("grpc-previous-rpc-attempts") for call in self.calls]


def _finish(step: Step, context: Any) -> None:
    if step.trailing:
        context.set_trailing_metadata(step.trailing)
    if step.code is not grpc.StatusCode.OK:
        context.abort(step.code, step.details or step.code.name)


def sync_handler(script: Script) -> grpc.GenericRpcHandler:
    import time

    def unary(request: bytes, context: grpc.ServicerContext) -> bytes:
        step = script.take(UNARY, context)
        if step.sleep:
            time.sleep(step.sleep)
        _finish(step, context)
        return request

    def stream(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        step = script.take(STREAM, context)
        for _ in range(step.messages):
            yield request
        _finish(step, context)

    def upload(requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        step = script.take(UPLOAD, context)
        joined = b"".join(requests)
        _finish(step, context)
        return joined

    def chat(requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        step = script.take(CHAT, context)
        yield from requests
        _finish(step, context)

    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "Stream": grpc.unary_stream_rpc_method_handler(stream),
            "Upload": grpc.stream_unary_rpc_method_handler(upload),
            "Chat": grpc.stream_stream_rpc_method_handler(chat),
        },
    )


async def _afinish(step: Step, context: Any) -> None:
    if step.trailing:
        context.set_trailing_metadata(step.trailing)
    if step.code is not grpc.StatusCode.OK:
        await context.abort(step.code, step.details or step.code.name)


def aio_handler(script: Script) -> grpc.GenericRpcHandler:
    async def unary(request: bytes, context: Any) -> bytes:
        step = script.take(UNARY, context)
        if step.sleep:
            try:
                await asyncio.sleep(step.sleep)
            except asyncio.CancelledError:
                script.cancelled += 1  # the client cancelled the RPC
                raise
        await _afinish(step, context)
        return request

    async def stream(request: bytes, context: Any) -> Any:
        step = script.take(STREAM, context)
        for _ in range(step.messages):
            yield request
        await _afinish(step, context)

    async def upload(requests: Any, context: Any) -> bytes:
        step = script.take(UPLOAD, context)
        joined = b"".join([item async for item in requests])
        await _afinish(step, context)
        return joined

    async def chat(requests: Any, context: Any) -> Any:
        step = script.take(CHAT, context)
        async for item in requests:
            yield item
        await _afinish(step, context)

    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "Stream": grpc.unary_stream_rpc_method_handler(stream),
            "Upload": grpc.stream_unary_rpc_method_handler(upload),
            "Chat": grpc.stream_stream_rpc_method_handler(chat),
        },
    )


@dataclass
class SyncServer:
    script: Script
    target: str
    server: grpc.Server


def start_sync_server(
    script: Script, interceptors: tuple[grpc.ServerInterceptor, ...] = (), port: int = 0
) -> tuple[grpc.Server, int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), interceptors=interceptors)
    server.add_generic_rpc_handlers((sync_handler(script),))
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    return server, bound


@pytest.fixture
def server() -> Iterator[SyncServer]:
    """A sync grpcio server with a fresh script."""
    script = Script()
    grpc_server, port = start_sync_server(script)
    try:
        yield SyncServer(script, f"127.0.0.1:{port}", grpc_server)
    finally:
        grpc_server.stop(None)


async def start_aio_server(
    script: Script, interceptors: tuple[Any, ...] = ()
) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server(interceptors=interceptors)
    server.add_generic_rpc_handlers((aio_handler(script),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


def free_port() -> int:
    """A loopback port with nothing listening (the socket is closed again)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def sync_methods(channel: grpc.Channel) -> dict[str, Any]:
    return {
        "unary": channel.unary_unary(UNARY),
        "stream": channel.unary_stream(STREAM),
        "upload": channel.stream_unary(UPLOAD),
        "chat": channel.stream_stream(CHAT),
    }


def aio_methods(channel: grpc.aio.Channel) -> dict[str, Any]:
    return {
        "unary": channel.unary_unary(UNARY),
        "stream": channel.unary_stream(STREAM),
        "upload": channel.stream_unary(UPLOAD),
        "chat": channel.stream_stream(CHAT),
    }


async def aio_setup(script: Script, **options: Any) -> tuple[Any, Any, Any, str]:
    """A grpc.aio server run by `script`; a channel to it through an interceptor of `options`."""
    grpc_server, port = await start_aio_server(script)
    target = f"127.0.0.1:{port}"
    interceptor = AsyncResilientClientInterceptor(target=target, **options)
    channel = grpc.aio.insecure_channel(target, options=channel_options(), interceptors=interceptor)
    return grpc_server, channel, interceptor, target


def settled(breaker: resilience.CircuitBreaker) -> int:
    """How many of the breaker's permits were settled (success, failure or ignored)."""
    calls = breaker.metrics().calls
    return calls["success"] + calls["failure"] + calls["ignored"]


def wait_until(condition: Any, seconds: float = 3.0) -> None:
    """Poll `condition` (collecting garbage: dropped calls settle in finalizers)."""
    give_up = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < give_up, "not settled in time"
        gc.collect()
        time.sleep(0.005)


@pytest.fixture
def anyio_backend() -> str:
    """grpc.aio runs on asyncio only (it has no trio support): aio tests run there."""
    return "asyncio"
