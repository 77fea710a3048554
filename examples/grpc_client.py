"""A resilient gRPC client against a flaky local service, sync and grpc.aio.

Starts a grpcio server on 127.0.0.1 (a free port) whose `Orders/Get` fails the
first call of every order with UNAVAILABLE and answers with the time it was
given (its handler runs inside the caller's deadline, through
DeadlineServerInterceptor). The clients call it through resilience.grpc's
interceptors: the failure is retried, the deadline travels with the call, an
INVALID_ARGUMENT is not retried, and an open breaker refuses calls with an
error that gRPC code and resilience code both catch.
No protoc needed: requests and replies are bytes.
Run: python examples/grpc_client.py
"""

from __future__ import annotations

import asyncio
from collections import Counter
from concurrent import futures

import grpc
import grpc.aio

import resilience
import resilience.grpc

seen: Counter[bytes] = Counter()


def get_order(order_id: bytes, context: grpc.ServicerContext) -> bytes:
    if not order_id:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "order id missing")
    seen[order_id] += 1
    if seen[order_id] == 1:
        context.abort(grpc.StatusCode.UNAVAILABLE, "busy")
    left = resilience.remaining()  # the caller's deadline, opened by the interceptor
    # grpcio rounds grpc-timeout up on the wire: a few ms more than the caller's 2 s can arrive.
    within = left is not None and 0 < left <= 2.0 + 0.05
    return b"order %s, deadline ok: %s" % (order_id, str(within).encode())


def serve() -> tuple[grpc.Server, str]:
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4),
        interceptors=[resilience.grpc.DeadlineServerInterceptor(max_seconds=10)],
    )
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "shop.Orders", {"Get": grpc.unary_unary_rpc_method_handler(get_order)}
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, f"127.0.0.1:{port}"


def sync_client(target: str) -> None:
    interceptor = resilience.grpc.ResilientClientInterceptor(
        target=target,
        retry=resilience.Retry(on=grpc.RpcError, attempts=3, wait=0.01),
    )
    channel = grpc.intercept_channel(
        # channel_options(): grpcio's own retries off, so attempts never multiply
        grpc.insecure_channel(target, options=resilience.grpc.channel_options()),
        interceptor,
    )
    get = channel.unary_unary("/shop.Orders/Get")
    with resilience.deadline(2.0):
        print("sync:", get(b"1").decode())
    try:
        get(b"")
    except grpc.RpcError as error:
        print("sync: not retried:", error.code().name, "-", error.details())
    print("sync: retry metrics:", interceptor.retry.metrics() if interceptor.retry else None)
    channel.close()


async def aio_client(target: str) -> None:
    breaker = resilience.CircuitBreaker("orders", consecutive_failures=3)
    interceptors = resilience.grpc.AsyncResilientClientInterceptor(
        target=target,
        breaker=breaker,
        retry=resilience.Retry(on=grpc.RpcError, attempts=3, wait=0.01),
    )
    async with grpc.aio.insecure_channel(
        target, options=resilience.grpc.channel_options(), interceptors=interceptors
    ) as channel:
        get = channel.unary_unary("/shop.Orders/Get")
        async with resilience.deadline(2.0):
            print("aio:", (await get(b"2")).decode())
        breaker.force_open()  # as if the service had been failing
        try:
            await get(b"3")
        except grpc.RpcError as error:
            print("aio: refused:", error.code().name, "-", error.details())
            caught = isinstance(error, resilience.CircuitOpenError)
            print("aio: also a resilience.CircuitOpenError:", caught)


def main() -> None:
    server, target = serve()
    try:
        sync_client(target)
        asyncio.run(aio_client(target))
    finally:
        server.stop(None)


if __name__ == "__main__":
    main()
