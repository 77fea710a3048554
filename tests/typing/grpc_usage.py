"""Type-checked, never executed: resilience.grpc as users' type checkers see it.

`make test` runs `mypy --strict` on this file (grpcio typed by types-grpcio).
A line marked `# type: ignore[...]` must stay an error.
"""

from __future__ import annotations

from concurrent import futures
from typing import Any, assert_type

import grpc
import grpc.aio

import resilience
import resilience.grpc
from resilience.grpc import (
    AsyncDeadlineServerInterceptor,
    AsyncResilientClientInterceptor,
    DeadlineServerInterceptor,
    ResilientClientInterceptor,
    channel_options,
)

target = "payments:50051"
interceptor = ResilientClientInterceptor(
    target=target,
    breaker=resilience.BreakerRegistry(),
    breaker_scope="method",
    retry=resilience.Retry(on=grpc.RpcError, attempts=3),
    retry_codes={grpc.StatusCode.UNAVAILABLE},
    failure_codes=resilience.grpc.FAILURE_CODES,
    total_timeout=2.0,
    attempt_timeout=1.0,
    concurrency_limit=True,
)
channel = grpc.intercept_channel(
    grpc.insecure_channel(target, options=channel_options()), interceptor
)
assert_type(interceptor.retry, resilience.Retry | None)
assert_type(channel_options([("grpc.service_config", "{}")]), list[tuple[str, Any]])

aio_channel = grpc.aio.insecure_channel(
    target,
    options=channel_options(),
    interceptors=AsyncResilientClientInterceptor(target=target),
)
mixed = [*AsyncResilientClientInterceptor(target=target)]

server = grpc.server(
    futures.ThreadPoolExecutor(max_workers=4),
    interceptors=[DeadlineServerInterceptor(max_seconds=10, safety_margin=0.05)],
)
aio_server = grpc.aio.server(interceptors=[AsyncDeadlineServerInterceptor(max_seconds=10)])

ResilientClientInterceptor(target=target, breaker_scope="origin")  # type: ignore[arg-type]
ResilientClientInterceptor(target=target, timeout=1.0)  # type: ignore[call-arg]
ResilientClientInterceptor("payments:50051")  # type: ignore[call-arg]

try:
    charge: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
        "/shop.Payments/Charge"
    )
    charge(b"x")
except resilience.grpc.GrpcCircuitOpenError as error:
    assert_type(error.code(), grpc.StatusCode)
    assert_type(error.retry_after, float | None)
