"""Deadlines on both sides of a gRPC call (docs/guide/grpc.md, "Deadlines").

Client: the call's timeout is clamped to the remaining `resilience.deadline`
(never extended; no timeout becomes the time left); a spent deadline sends
nothing. Server: `DeadlineServerInterceptor` turns the caller's deadline into
a `resilience.deadline` around the handler. A chain HTTP -> gRPC -> gRPC
shares one budget.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from contextlib import ExitStack
from typing import Any

import grpc
import grpc.aio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import resilience
from resilience.grpc import (
    AsyncDeadlineServerInterceptor,
    AsyncResilientClientInterceptor,
    DeadlineServerInterceptor,
    GrpcDeadlineExceededError,
    ResilientClientInterceptor,
    channel_options,
)
from resilience.middleware import ASGIDeadlineMiddleware
from tests.servers import serve_in_thread

from .conftest import (
    UNARY,
    Script,
    Step,
    SyncServer,
    aio_methods,
    start_aio_server,
    sync_methods,
)

#: grpc-timeout is rounded up on the wire (and read on another clock): a little more can arrive.
ROUNDING = 0.05


def methods_for(target: str, **options: Any) -> dict[str, Any]:
    interceptor = ResilientClientInterceptor(target=target, **options)
    channel = grpc.intercept_channel(
        grpc.insecure_channel(target, options=channel_options()), interceptor
    )
    return sync_methods(channel)


def test_timeout_is_clamped_to_the_deadline_never_extended(server: SyncServer) -> None:
    """docs/guide/grpc.md: timeout = min(the call's timeout, the time left)."""
    unary = methods_for(server.target)["unary"]
    with resilience.deadline(1.0):
        unary(b"x", timeout=30)  # longer than the deadline: clamped
        unary(b"x")  # none: the time left becomes the timeout
    unary(b"x", timeout=0.5)  # shorter than nothing: kept
    seen = [call.time_remaining for call in server.script.calls]
    assert all(left is not None for left in seen)
    assert 0 < seen[0] <= 1.0 + ROUNDING
    assert 0 < seen[1] <= 1.0 + ROUNDING
    assert 0 < seen[2] <= 0.5 + ROUNDING


def test_no_deadline_and_no_timeout_sends_none(server: SyncServer) -> None:
    """docs/guide/grpc.md: without a deadline, total_timeout or timeout: none (grpcio's default)."""
    methods_for(server.target)["unary"](b"x")
    left = server.script.calls[0].time_remaining
    assert left is None or left > 1e9  # sync grpcio's "infinite future"


def test_total_timeout_is_the_default_timeout(server: SyncServer) -> None:
    """docs/guide/grpc.md: total_timeout bounds a call that passes no timeout=."""
    methods_for(server.target, total_timeout=2.0)["unary"](b"x")
    left = server.script.calls[0].time_remaining
    assert left is not None
    assert 0 < left <= 2.0 + ROUNDING


def test_spent_deadline_raises_before_sending(server: SyncServer) -> None:
    """docs/guide/grpc.md: a spent deadline raises GrpcDeadlineExceededError, nothing sent."""
    unary = methods_for(server.target)["unary"]
    with resilience.deadline(0.0), pytest.raises(GrpcDeadlineExceededError) as raised:
        unary(b"x")
    assert raised.value.before_call
    assert raised.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert isinstance(raised.value, grpc.RpcError)
    assert server.script.calls == []


def test_deadline_running_out_during_the_call(server: SyncServer) -> None:
    """docs/guide/grpc.md: DEADLINE_EXCEEDED as the deadline ran out: DeadlineExceededError."""
    unary = methods_for(server.target, retry=False)["unary"]
    server.script.add(Step(sleep=1.0))
    with resilience.deadline(0.2), pytest.raises(resilience.DeadlineExceededError) as raised:
        unary(b"x")
    assert not raised.value.before_call
    assert isinstance(raised.value.__cause__, grpc.RpcError)


@pytest.mark.anyio
async def test_aio_timeout_clamped_and_spent_deadline() -> None:
    """docs/guide/grpc.md: the same clamp and early refusal for grpc.aio."""
    script = Script()
    grpc_server, port = await start_aio_server(script)
    target = f"127.0.0.1:{port}"
    channel = grpc.aio.insecure_channel(
        target,
        options=channel_options(),
        interceptors=AsyncResilientClientInterceptor(target=target),
    )
    try:
        unary = aio_methods(channel)["unary"]
        async with resilience.deadline(1.0):
            await unary(b"x", timeout=30)
        left = script.calls[0].time_remaining
        assert left is not None
        assert 0 < left <= 1.0 + ROUNDING
        async with resilience.deadline(0.0):
            with pytest.raises(GrpcDeadlineExceededError):
                await unary(b"x")
        assert len(script.calls) == 1
    finally:
        await channel.close()
        await grpc_server.stop(None)


# -- server side ----------------------------------------------------------------------


def test_sync_server_interceptor_opens_the_callers_deadline() -> None:
    """docs/guide/grpc.md: the handler runs inside a resilience.deadline of the time left."""
    seen: list[float | None] = []

    def handler(request: bytes, context: grpc.ServicerContext) -> bytes:
        seen.append(resilience.remaining())
        return request

    def stream(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        seen.append(resilience.remaining())
        yield request

    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=2),
        interceptors=[DeadlineServerInterceptor(safety_margin=0.1)],
    )
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "test.Echo",
                {
                    "Unary": grpc.unary_unary_rpc_method_handler(handler),
                    "Stream": grpc.unary_stream_rpc_method_handler(stream),
                },
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        channel.unary_unary(UNARY)(b"x", timeout=2.0)
        list(channel.unary_stream("/test.Echo/Stream")(b"x", timeout=2.0))
        channel.unary_unary(UNARY)(b"x")  # no deadline: none opened
        channel.close()
    finally:
        server.stop(None)
    assert seen[0] is not None
    assert 1.0 < seen[0] <= 1.9 + ROUNDING
    assert seen[1] is not None
    assert 1.0 < seen[1] <= 1.9 + ROUNDING
    assert seen[2] is None


@pytest.mark.anyio
async def test_aio_server_interceptor_opens_the_callers_deadline() -> None:
    """docs/guide/grpc.md: the same for grpc.aio servers."""
    seen: list[float | None] = []

    async def handler(request: bytes, context: Any) -> bytes:
        seen.append(resilience.remaining())
        return request

    server = grpc.aio.server(interceptors=[AsyncDeadlineServerInterceptor(max_seconds=1.0)])
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "test.Echo", {"Unary": grpc.unary_unary_rpc_method_handler(handler)}
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await channel.unary_unary(UNARY)(b"x", timeout=5.0)  # clamped to max_seconds
    finally:
        await server.stop(None)
    assert seen[0] is not None
    assert 0.5 < seen[0] <= 1.0


# -- the chain: HTTP -> gRPC -> gRPC ---------------------------------------------------------


def test_one_budget_through_http_then_two_grpc_hops() -> None:
    """docs/guide/grpc.md: HTTP -> gRPC -> gRPC shares one deadline; the leaf sees what is left.

    gateway (uvicorn + ASGIDeadlineMiddleware) calls orders over grpc.aio;
    orders (sync grpcio + DeadlineServerInterceptor) calls payments through
    the sync interceptor; payments records `context.time_remaining()`.
    """
    budget = 1.5
    leaf = Script()
    seen: dict[str, float | None] = {}
    with ExitStack() as stack:
        payments = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        from .conftest import sync_handler

        payments.add_generic_rpc_handlers((sync_handler(leaf),))
        payments_port = payments.add_insecure_port("127.0.0.1:0")
        payments.start()
        stack.callback(payments.stop, None)
        payments_target = f"127.0.0.1:{payments_port}"
        to_payments = methods_for(payments_target)["unary"]

        def orders_handler(request: bytes, context: grpc.ServicerContext) -> bytes:
            seen["orders"] = resilience.remaining()
            time.sleep(0.1)  # work before the next hop
            return to_payments(request)

        orders = grpc.server(
            futures.ThreadPoolExecutor(max_workers=2),
            interceptors=[DeadlineServerInterceptor()],
        )
        orders.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    "test.Echo", {"Unary": grpc.unary_unary_rpc_method_handler(orders_handler)}
                ),
            )
        )
        orders_port = orders.add_insecure_port("127.0.0.1:0")
        orders.start()
        stack.callback(orders.stop, None)
        orders_target = f"127.0.0.1:{orders_port}"

        async def gateway(request: Request) -> JSONResponse:
            seen["gateway"] = resilience.remaining()
            await asyncio.sleep(0.1)  # work before the next hop (more than grpc-timeout rounds)
            async with grpc.aio.insecure_channel(
                orders_target,
                options=channel_options(),
                interceptors=AsyncResilientClientInterceptor(target=orders_target),
            ) as channel:
                reply = await channel.unary_unary(UNARY)(b"order")
            return JSONResponse({"reply": reply.decode()})

        app = ASGIDeadlineMiddleware(Starlette(routes=[Route("/order", gateway)]))
        url = stack.enter_context(serve_in_thread(app))
        client = stack.enter_context(
            httpx.Client(transport=resilience.ResilientTransport(retry=False))
        )
        with resilience.deadline(budget):
            reply = client.get(f"{url}/order")
    assert reply.status_code == 200, reply.text
    assert reply.json() == {"reply": "order"}
    gateway_left, orders_left = seen["gateway"], seen["orders"]
    leaf_left = leaf.calls[0].time_remaining
    assert gateway_left is not None
    assert orders_left is not None
    assert leaf_left is not None
    assert 0 < leaf_left < orders_left < gateway_left < budget
    # Each hop's own work came off the next hop's budget.
    assert gateway_left - orders_left >= 0.09
    assert orders_left - leaf_left >= 0.09
    assert threading.active_count() < 100
