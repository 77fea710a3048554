"""resilience.grpc's public names, its error types, and misuse that fails loudly."""

from __future__ import annotations

import asyncio

import grpc
import grpc.aio
import pytest

import resilience
import resilience.grpc
from resilience.grpc import (
    AsyncResilientClientInterceptor,
    DeadlineServerInterceptor,
    GrpcCircuitOpenError,
    GrpcConcurrencyLimitExceededError,
    GrpcDeadlineExceededError,
    ResilientClientInterceptor,
)

from .conftest import UNARY, SyncServer


def test_public_names() -> None:
    """The module's public API (docs/guide/grpc.md lists it)."""
    assert set(resilience.grpc.__all__) == {
        "FAILURE_CODES",
        "PREVIOUS_ATTEMPTS_KEY",
        "PUSHBACK_KEY",
        "RETRY_CODES",
        "AsyncDeadlineServerInterceptor",
        "AsyncResilientClientInterceptor",
        "DeadlineServerInterceptor",
        "GrpcCircuitOpenError",
        "GrpcConcurrencyLimitExceededError",
        "GrpcDeadlineExceededError",
        "ResilientClientInterceptor",
        "channel_options",
        "pushback_of",
    }


def test_default_status_rules() -> None:
    """docs/guide/grpc.md: the status rules table (gRPC A6)."""
    codes = grpc.StatusCode
    assert {codes.UNAVAILABLE} == resilience.grpc.RETRY_CODES
    assert {
        codes.UNAVAILABLE,
        codes.DEADLINE_EXCEEDED,
        codes.RESOURCE_EXHAUSTED,
        codes.INTERNAL,
        codes.UNKNOWN,
    } == resilience.grpc.FAILURE_CODES


@pytest.mark.parametrize(
    ("error", "base", "code"),
    [
        (
            GrpcCircuitOpenError("t", resilience.State.OPEN, 1.0),
            resilience.CircuitOpenError,
            grpc.StatusCode.UNAVAILABLE,
        ),
        (
            GrpcConcurrencyLimitExceededError("t", 3),
            resilience.ConcurrencyLimitExceededError,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
        ),
        (
            GrpcDeadlineExceededError("t", 1.0, before_call=True),
            resilience.DeadlineExceededError,
            grpc.StatusCode.DEADLINE_EXCEEDED,
        ),
    ],
)
def test_errors_are_resilience_and_grpc_errors(
    error: grpc.RpcError, base: type[Exception], code: grpc.StatusCode
) -> None:
    """docs/guide/grpc.md: each error is both; code(), details() and metadata answer."""
    assert isinstance(error, base)
    assert isinstance(error, grpc.RpcError)
    assert error.code() is code
    assert error.details() == str(error)
    assert error.trailing_metadata() == ()
    assert error.initial_metadata() == ()  # type: ignore[attr-defined]


def test_concurrency_limit_rejection_is_an_rpc_error(server: SyncServer) -> None:
    """docs/guide/grpc.md: a full concurrency limit raises GrpcConcurrencyLimitExceededError."""
    limit = resilience.ConcurrencyLimit(resilience.AIMDLimit(initial_limit=1, min_limit=1))
    interceptor = ResilientClientInterceptor(target=server.target, concurrency_limit=limit)
    channel = grpc.intercept_channel(grpc.insecure_channel(server.target), interceptor)
    unary = channel.unary_unary(UNARY)
    with limit, pytest.raises(grpc.RpcError) as raised:  # the one slot is taken
        unary(b"x")
    assert isinstance(raised.value, GrpcConcurrencyLimitExceededError)
    assert unary(b"x") == b"x"
    assert limit.in_flight == 0


def test_async_interceptor_on_a_sync_channel_is_refused() -> None:
    """Misuse: the aio interceptor is not a sync interceptor; grpcio refuses it at once."""
    interceptor = AsyncResilientClientInterceptor(target="127.0.0.1:1")
    with pytest.raises(TypeError):
        grpc.intercept_channel(grpc.insecure_channel("127.0.0.1:1"), interceptor)  # type: ignore[arg-type]


def test_sync_interceptor_on_an_aio_channel_is_refused() -> None:
    """Misuse: grpc.aio refuses a sync interceptor when the channel is built."""

    async def build() -> None:
        interceptor = ResilientClientInterceptor(target="127.0.0.1:1")
        with pytest.raises(ValueError, match="Interceptor"):
            grpc.aio.insecure_channel("127.0.0.1:1", interceptors=[interceptor])  # type: ignore[list-item]

    asyncio.run(build())


def test_sync_server_interceptor_refuses_async_handlers() -> None:
    """Misuse: DeadlineServerInterceptor on async handlers raises MisuseError naming the aio one."""

    async def handler(request: bytes, context: object) -> bytes:
        return request

    handlers = grpc.method_handlers_generic_handler(
        "test.Echo", {"Unary": grpc.unary_unary_rpc_method_handler(handler)}
    )

    class Details:
        method = UNARY
        invocation_metadata = ()

    with pytest.raises(resilience.MisuseError, match="AsyncDeadlineServerInterceptor"):
        DeadlineServerInterceptor().intercept_service(handlers.service, Details())  # type: ignore[arg-type]


def test_aio_server_refuses_the_sync_server_interceptor() -> None:
    """Misuse: grpc.aio.server takes only the aio deadline interceptor."""

    async def build() -> None:
        with pytest.raises(ValueError, match="ServerInterceptor"):
            grpc.aio.server(interceptors=[DeadlineServerInterceptor()])

    asyncio.run(build())


def test_defaults() -> None:
    """docs/guide/grpc.md, "Defaults": breakers per target, retry and budget named after it."""
    interceptor = ResilientClientInterceptor(target="payments:50051")
    registry = interceptor.breakers
    assert isinstance(registry, resilience.BreakerRegistry)
    breaker = registry.get("payments:50051")
    assert breaker.failure_rate_threshold == 0.1
    assert breaker.minimum_calls == 100
    assert breaker.window.seconds == 30.0  # type: ignore[union-attr]
    assert breaker.half_open_max_wait == 30.0
    retry = interceptor.retry
    assert retry is not None
    assert retry.attempts == 4
    assert retry.name == "payments:50051"
    assert retry.budget is not None
    assert retry.budget.name == "payments:50051"
    assert retry.max_retry_after == 30.0
    assert interceptor.concurrency_limit is None
    limited = ResilientClientInterceptor(target="payments:50051", concurrency_limit=True)
    assert limited.concurrency_limit is not None
    assert limited.concurrency_limit.name == "payments:50051"


class Trailing(grpc.RpcError):
    def __init__(self, *metadata: tuple[str, str | bytes]) -> None:
        self.metadata = metadata

    def trailing_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return self.metadata


@pytest.mark.parametrize(
    ("metadata", "seconds"),
    [
        ((), None),
        ((("grpc-retry-pushback-ms", "250"),), 0.25),
        ((("grpc-retry-pushback-ms", b"0"),), 0.0),
        ((("grpc-retry-pushback-ms", "-1"),), -1.0),
        ((("grpc-retry-pushback-ms", "soon"),), -1.0),
        ((("other", "1"),), None),
        # Malformed: undecodable bytes, non-ASCII digits, a sign, a fraction.
        ((("grpc-retry-pushback-ms", b"\xff"),), -1.0),
        ((("grpc-retry-pushback-ms", "\u0661\u0662"),), -1.0),
        ((("grpc-retry-pushback-ms", "+5"),), -1.0),
        ((("grpc-retry-pushback-ms", "1.5"),), -1.0),
        # Too large for a float (or for int()'s digit limit): wait forever, i.e. give up.
        ((("grpc-retry-pushback-ms", "9" * 400),), float("inf")),
        ((("grpc-retry-pushback-ms", "9" * 5000),), float("inf")),
    ],
)
def test_pushback_of(metadata: tuple[tuple[str, str], ...], seconds: float | None) -> None:
    """docs/guide/grpc.md: >= 0 is the wait; negative or malformed means do not retry (-1)."""
    assert resilience.grpc.pushback_of(Trailing(*metadata)) == seconds


def test_attempt_timeout_cannot_exceed_total_timeout() -> None:
    """An attempt could never use its full time: a ValueError naming both."""
    with pytest.raises(ValueError, match=r"attempt_timeout=5\.0 exceeds total_timeout=1\.0"):
        ResilientClientInterceptor(target="t", total_timeout=1.0, attempt_timeout=5.0)
