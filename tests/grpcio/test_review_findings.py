"""What an outside review of resilience.grpc broke, each pinned by a test.

Real grpcio servers on 127.0.0.1. Each test failed on the code before its fix.
"""

from __future__ import annotations

import asyncio
import contextlib
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

from .conftest import (
    STREAM,
    UNARY,
    UPLOAD,
    Script,
    Step,
    SyncServer,
    aio_methods,
    free_port,
    settled,
    start_aio_server,
    start_sync_server,
    sync_methods,
    wait_until,
)


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


def test_a_client_stream_the_server_fails_unknown_is_a_failure(server: SyncServer) -> None:
    """The request iterator's wrapper does not hide a server's own UNKNOWN (a failure)."""
    methods, breaker, _ = limited_channel(server)
    server.script.add(Step(grpc.StatusCode.UNKNOWN))
    with pytest.raises(grpc.RpcError) as raised:
        methods["upload"](iter([b"a", b"b"]), timeout=5)
    assert raised.value.code() is grpc.StatusCode.UNKNOWN
    assert server.script.count(UPLOAD) == 1
    wait_until(lambda: settled(breaker) == 1)
    assert breaker.metrics().calls["failure"] == 1


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


# -- the status rules, end to end -------------------------------------------------------

#: docs/guide/grpc.md's status table: code -> (attempts of 2, breaker outcome, limit outcome).
STATUS_TABLE = {
    grpc.StatusCode.OK: (1, "success", "succeeded"),
    grpc.StatusCode.UNAVAILABLE: (2, "failure", "dropped"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (1, "failure", "dropped"),  # no pushback: no retry
    grpc.StatusCode.DEADLINE_EXCEEDED: (1, "failure", "dropped"),
    grpc.StatusCode.INTERNAL: (1, "failure", "succeeded"),
    grpc.StatusCode.UNKNOWN: (1, "failure", "succeeded"),
    grpc.StatusCode.CANCELLED: (1, "ignored", "ignored"),
    **dict.fromkeys(
        (
            grpc.StatusCode.INVALID_ARGUMENT,
            grpc.StatusCode.NOT_FOUND,
            grpc.StatusCode.ALREADY_EXISTS,
            grpc.StatusCode.PERMISSION_DENIED,
            grpc.StatusCode.FAILED_PRECONDITION,
            grpc.StatusCode.ABORTED,
            grpc.StatusCode.OUT_OF_RANGE,
            grpc.StatusCode.UNIMPLEMENTED,
            grpc.StatusCode.DATA_LOSS,
            grpc.StatusCode.UNAUTHENTICATED,
        ),
        (1, "success", "succeeded"),
    ),
}


def test_the_status_table_covers_every_code() -> None:
    assert set(STATUS_TABLE) == set(grpc.StatusCode)


@pytest.mark.parametrize("code", list(STATUS_TABLE), ids=lambda code: code.name)
def test_every_status_code_is_classified_as_the_guide_says(
    server: SyncServer, code: grpc.StatusCode
) -> None:
    """docs/guide/grpc.md, "Status rules": retried, breaker and limit outcome of each code."""
    attempts, breaker_outcome, limit_outcome = STATUS_TABLE[code]
    methods, breaker, limit = limited_channel(
        server, retry=resilience.Retry(on=grpc.RpcError, attempts=2, wait=0.0)
    )
    server.script.add(Step(code), Step(code))
    if code is grpc.StatusCode.OK:
        assert methods["unary"](b"x", timeout=5) == b"x"
    else:
        with pytest.raises(grpc.RpcError) as raised:
            methods["unary"](b"x", timeout=5)
        assert raised.value.code() is code
    assert server.script.count() == attempts
    assert breaker.metrics().calls[breaker_outcome] == attempts
    assert settled(breaker) == attempts
    assert limit.metrics()[limit_outcome] == attempts
    assert limit.metrics()["in_flight"] == 0


# -- a server back on the same port -----------------------------------------------------


@pytest.mark.parametrize("bound", [None, 0.1], ids=["default", "max_reconnect_backoff"])
def test_a_restarted_server_is_reached_once_grpcio_reconnects(bound: float | None) -> None:
    """docs/guide/grpc.md: `channel_options()` bounds a restarted server's wait (4 s default).

    A half-open probe fails at once while grpcio's channel waits out its
    reconnect backoff; with the backoff bounded, a probe gets through and
    closes the breaker: with the default `channel_options()` (within about
    1 s here: the outage was short), and with `max_reconnect_backoff=0.1`.
    """
    port = free_port()
    target = f"127.0.0.1:{port}"
    breaker = resilience.CircuitBreaker(
        "restarted", consecutive_failures=2, open_duration=0.05, half_open_max_calls=1
    )
    interceptor = ResilientClientInterceptor(target=target, breaker=breaker, retry=False)
    options = channel_options() if bound is None else channel_options(max_reconnect_backoff=bound)
    unary = grpc.intercept_channel(grpc.insecure_channel(target, options=options), interceptor)
    methods = sync_methods(unary)
    for _ in range(2):
        with pytest.raises(grpc.RpcError):
            methods["unary"](b"x", timeout=2)
    assert breaker.state is resilience.State.OPEN
    script = Script()
    grpc_server, _ = start_sync_server(script, port=port)
    try:
        give_up = time.monotonic() + 8.0
        while script.count() == 0:  # probes until one gets through (the backoff's wait)
            assert time.monotonic() < give_up, "the channel never reconnected"
            time.sleep(0.06)
            with contextlib.suppress(grpc.RpcError):
                methods["unary"](b"x", timeout=2)
        assert breaker.state is resilience.State.CLOSED
    finally:
        grpc_server.stop(None)


# -- options the guide promises ---------------------------------------------------------


def test_retry_codes_and_failure_codes_replace_the_defaults(server: SyncServer) -> None:
    """docs/guide/grpc.md: `retry_codes=` and `failure_codes=` take any collections of codes."""
    methods, breaker, _ = limited_channel(
        server,
        retry=resilience.Retry(on=grpc.RpcError, attempts=2, wait=0.0),
        retry_codes={grpc.StatusCode.ABORTED},
        failure_codes=[grpc.StatusCode.NOT_FOUND],
    )
    server.script.add(Step(grpc.StatusCode.ABORTED), Step(grpc.StatusCode.UNAVAILABLE))
    with pytest.raises(grpc.RpcError) as raised:
        methods["unary"](b"x", timeout=5)  # ABORTED retried, UNAVAILABLE not
    assert raised.value.code() is grpc.StatusCode.UNAVAILABLE
    assert server.script.count() == 2
    server.script.add(Step(grpc.StatusCode.NOT_FOUND))
    with pytest.raises(grpc.RpcError):
        methods["unary"](b"x", timeout=5)
    calls = breaker.metrics().calls
    assert (calls["success"], calls["failure"]) == (2, 1)  # ABORTED, UNAVAILABLE; NOT_FOUND


@pytest.mark.parametrize("pushback", ["60000", "9" * 400])
def test_pushback_above_max_retry_after_gives_up_at_once(server: SyncServer, pushback: str) -> None:
    """docs/guide/grpc.md: above the Retry's `max_retry_after` the call gives up at once."""
    methods, _, _ = limited_channel(server, clock=FakeClock())  # the default retry: 30 s
    server.script.add(
        Step(grpc.StatusCode.UNAVAILABLE, trailing=(("grpc-retry-pushback-ms", pushback),))
    )
    with pytest.raises(grpc.RpcError) as raised:
        methods["unary"](b"x", timeout=500)
    assert raised.value.code() is grpc.StatusCode.UNAVAILABLE
    assert server.script.count() == 1


def test_the_default_half_open_wait_follows_the_timeouts() -> None:
    """docs/guide/grpc.md, "Defaults": the half-open wait is the call's longest time.

    A half-open probe not back after `total_timeout` (else `attempt_timeout`,
    else 30 s) reopens.
    """
    for options, wait in (
        ({"total_timeout": 4.0, "attempt_timeout": 2.0}, 4.0),
        ({"attempt_timeout": 2.0}, 2.0),
        ({}, 30.0),
    ):
        interceptor = ResilientClientInterceptor(target="t", **options)
        registry = interceptor.breakers
        assert isinstance(registry, resilience.BreakerRegistry)
        assert registry.get("t").half_open_max_wait == wait


# -- misuse: the aio sequence passed the wrong way --------------------------------------


def test_the_aio_sequence_inside_a_list_is_refused_not_silently_dropped() -> None:
    """docs/guide/grpc.md, "grpc.aio": the sequence inside a list is refused, not dropped.

    `interceptors=[resilient]` is refused by grpc.aio when the channel is
    built; pass it as is, or unpack it.
    """

    async def build() -> None:
        resilient = resilience.grpc.AsyncResilientClientInterceptor(target="127.0.0.1:1")
        with pytest.raises(ValueError, match=r"pass it as interceptors= or unpack it"):
            grpc.aio.insecure_channel("127.0.0.1:1", interceptors=[resilient])  # type: ignore[list-item]
        channel = grpc.aio.insecure_channel("127.0.0.1:1", interceptors=[*resilient])
        await channel.close()

    asyncio.run(build())


@pytest.mark.anyio
async def test_part_of_the_aio_sequence_protects_only_those_kinds() -> None:
    """docs/guide/grpc.md, "grpc.aio": `resilient[:1]` protects unary-unary calls only."""
    script = Script()
    grpc_server, port = await start_aio_server(script)
    target = f"127.0.0.1:{port}"
    resilient = resilience.grpc.AsyncResilientClientInterceptor(
        target=target, retry=resilience.Retry(on=grpc.RpcError, attempts=2, wait=0.0)
    )
    channel = grpc.aio.insecure_channel(
        target, options=channel_options(), interceptors=resilient[:1]
    )
    try:
        methods = aio_methods(channel)
        script.add(Step(grpc.StatusCode.UNAVAILABLE))
        assert await methods["unary"](b"x", timeout=5) == b"x"  # retried
        script.add(Step(grpc.StatusCode.UNAVAILABLE, messages=0))
        with pytest.raises(grpc.RpcError):
            [m async for m in methods["stream"](b"s", timeout=5)]  # not retried
        assert (script.count(), script.count(STREAM)) == (2, 1)
    finally:
        await channel.close()
        await grpc_server.stop(None)


def test_intercept_channel_does_not_work_on_an_aio_channel() -> None:
    """docs/guide/grpc.md, "grpc.aio": grpc.intercept_channel over grpc.aio fails its calls."""

    async def call() -> None:
        channel = grpc.aio.insecure_channel("127.0.0.1:1")
        intercepted = grpc.intercept_channel(
            channel,  # type: ignore[arg-type]
            ResilientClientInterceptor(target="127.0.0.1:1", breaker=False, retry=False),
        )
        with pytest.raises(AttributeError):
            intercepted.unary_unary(UNARY)(b"x")
        await channel.close()

    asyncio.run(call())


def test_a_failed_future_is_not_counted_as_a_retry_success(server: SyncServer) -> None:
    """docs/guide/grpc.md, "Streaming": `.future()` calls skip the retry and its metrics.

    They went through it, and a future that failed later was counted as a
    `success_first_try` (the retry saw the future, not its outcome).
    """
    breaker = resilience.CircuitBreaker("echo")
    interceptor = ResilientClientInterceptor(target=server.target, breaker=breaker)
    channel = grpc.intercept_channel(
        grpc.insecure_channel(server.target, options=channel_options()), interceptor
    )
    server.script.add(Step(grpc.StatusCode.UNAVAILABLE))
    future = channel.unary_unary(UNARY).future(b"x", timeout=5)
    with pytest.raises(grpc.RpcError):
        future.result()
    assert interceptor.retry is not None
    metrics = interceptor.retry.metrics()
    assert metrics["success_first_try"] == 0
    assert metrics["retries"] == 0
    wait_until(lambda: breaker.metrics().calls["failure"] == 1)


# -- a refused call's status, read from the call object ---------------------------------


@pytest.mark.anyio
async def test_aio_call_objects_answer_the_status_of_a_refused_call() -> None:
    """docs/guide/grpc.md, "Errors": in grpc.aio, `await call.code()` answers after a refusal.

    grpc.aio raises again, from `code()`, `details()` and the metadata, any
    interceptor error that is not a `grpc.aio.AioRpcError`: ours are one there.
    """
    breaker = resilience.CircuitBreaker("open")
    breaker.force_open()
    limit = resilience.ConcurrencyLimit(resilience.AIMDLimit(initial_limit=1, max_limit=1))
    channel = grpc.aio.insecure_channel(
        "127.0.0.1:1",
        interceptors=resilience.grpc.AsyncResilientClientInterceptor(
            target="127.0.0.1:1", breaker=breaker
        ),
    )
    limited = grpc.aio.insecure_channel(
        "127.0.0.1:1",
        interceptors=resilience.grpc.AsyncResilientClientInterceptor(
            target="127.0.0.1:1", breaker=False, concurrency_limit=limit
        ),
    )
    try:
        for start, code in (
            (lambda: channel.unary_unary(UNARY)(b"x"), grpc.StatusCode.UNAVAILABLE),
            (lambda: channel.unary_stream(STREAM)(b"x"), grpc.StatusCode.UNAVAILABLE),
            (lambda: channel.stream_unary(UPLOAD)(iter([b"x"])), grpc.StatusCode.UNAVAILABLE),
            (
                lambda: limited.unary_unary(UNARY)(b"x", timeout=5),
                grpc.StatusCode.RESOURCE_EXHAUSTED,
            ),
            (
                lambda: limited.unary_unary(UNARY)(b"x", timeout=0),
                grpc.StatusCode.DEADLINE_EXCEEDED,
            ),
        ):
            taken = limit.acquire() if code is grpc.StatusCode.RESOURCE_EXHAUSTED else None
            call: Any = start()
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await (call.read() if hasattr(call, "read") else call)
            if taken is not None:
                taken.release()
            assert isinstance(raised.value, resilience.ResilienceError)
            assert raised.value.code() is code
            assert await call.code() is code
            assert await call.details() == str(raised.value)
            assert await call.trailing_metadata() == ()
            assert call.done()
    finally:
        await channel.close()
        await limited.close()


def test_sync_futures_and_streams_answer_the_status_of_a_refused_call() -> None:
    """docs/guide/grpc.md, "Errors": a refused `.future()` or server stream answers `code()`.

    grpcio wraps an interceptor's exception there in an outcome whose code()
    is INTERNAL: the refusal is returned as the call instead.
    """
    breaker = resilience.CircuitBreaker("open")
    breaker.force_open()
    interceptor = ResilientClientInterceptor(target="127.0.0.1:1", breaker=breaker)
    methods = sync_methods(
        grpc.intercept_channel(grpc.insecure_channel("127.0.0.1:1"), interceptor)
    )
    future = methods["unary"].future(b"x")
    assert future.code() is grpc.StatusCode.UNAVAILABLE
    assert future.done()
    assert isinstance(future.exception(), resilience.CircuitOpenError)
    with pytest.raises(resilience.CircuitOpenError):
        future.result()
    stream = methods["stream"](b"x")
    assert stream.code() is grpc.StatusCode.UNAVAILABLE
    with pytest.raises(resilience.CircuitOpenError):
        next(stream)
    with resilience.deadline(0):
        spent = methods["stream"](b"x")
    assert spent.code() is grpc.StatusCode.DEADLINE_EXCEEDED


def test_the_default_budget_and_limit_are_the_guides(server: SyncServer) -> None:
    """docs/guide/grpc.md, "Defaults": a budget of 20% of calls + 10/s; an AIMDLimit."""
    interceptor = ResilientClientInterceptor(target="t", concurrency_limit=True)
    assert interceptor.retry is not None
    budget = interceptor.retry.budget
    assert budget is not None
    assert (budget.ratio, budget.min_per_second) == (0.2, 10.0)
    assert interceptor.concurrency_limit is not None
    assert isinstance(interceptor.concurrency_limit.algorithm, resilience.AIMDLimit)


def test_a_retry_of_yours_keeps_its_attempts_budget_and_metrics(server: SyncServer) -> None:
    """docs/guide/grpc.md, "Defaults": a `Retry` of yours keeps its attempts, budget, metrics.

    gRPC errors are then retried by `retry_codes`, whatever its `on=` says.
    """
    budget = resilience.RetryBudget("mine")
    mine = resilience.Retry(on=grpc.RpcError, attempts=3, wait=0.0, budget=budget, name="mine")
    interceptor = ResilientClientInterceptor(target=server.target, retry=mine)
    channel = grpc.intercept_channel(
        grpc.insecure_channel(server.target, options=channel_options()), interceptor
    )
    server.script.add(Step(grpc.StatusCode.UNAVAILABLE), Step(grpc.StatusCode.NOT_FOUND))
    with pytest.raises(grpc.RpcError) as raised:
        channel.unary_unary(UNARY)(b"x", timeout=5)
    assert raised.value.code() is grpc.StatusCode.NOT_FOUND  # an RpcError, not retried
    assert server.script.count() == 2
    assert interceptor.retry is not None
    assert interceptor.retry.attempts == 3
    assert interceptor.retry.budget is budget
    assert mine.metrics()["retries"] == 1  # your Retry's own counters
    assert mine.metrics()["failed_after_retry"] + mine.metrics()["failed_not_retryable"] == 1


def test_a_call_collected_before_its_callbacks_ran_settles_by_its_code() -> None:
    """A call that ended, then was dropped before grpcio ran its callbacks: settled by its code.

    grpcio runs the callbacks after waking the waiting caller, who may drop
    the call first; the permit is settled from grpcio's call state then, not
    as a cancellation.
    """
    from resilience.grpc import _watch_sync

    class State:
        code = grpc.StatusCode.UNAVAILABLE

    class EndedCall:  # grpcio's call object, its callbacks not run yet
        _state = State()

        def add_callback(self, callback: Any) -> bool:
            self.pending = callback
            return True

    breaker = resilience.CircuitBreaker("b")
    client = ResilientClientInterceptor(target="t", breaker=breaker, retry=False)._client
    call = EndedCall()
    _watch_sync(client, call, breaker.acquire(), None)
    pending = call.pending
    del call
    gc.collect()
    assert breaker.metrics().calls["failure"] == 1
    pending()  # grpcio runs it late: already settled, nothing more
    assert settled(breaker) == 1


# -- aio cancellation at each await -----------------------------------------------------


@pytest.mark.anyio
async def test_aio_cancellation_in_the_backoff_and_in_the_limit_queue() -> None:
    """A call cancelled while it waits (a backoff, a limit slot): its permits settle once.

    It leaves the limit's queue, and no task of ours is left behind.
    """
    from resilience.grpc import _aio_settling

    script = Script()
    grpc_server, port = await start_aio_server(script)
    target = f"127.0.0.1:{port}"
    breaker = resilience.CircuitBreaker("echo")
    breaker.metrics_only()
    limit = resilience.ConcurrencyLimit(
        resilience.AIMDLimit(initial_limit=1, min_limit=1, max_limit=1), max_wait=30.0
    )
    channel = grpc.aio.insecure_channel(
        target,
        options=channel_options(),
        interceptors=resilience.grpc.AsyncResilientClientInterceptor(
            target=target,
            breaker=breaker,
            concurrency_limit=limit,
            retry=resilience.Retry(on=grpc.RpcError, attempts=3, wait=30.0),
        ),
    )

    async def until(condition: Any) -> None:
        for _ in range(300):
            if condition():
                return
            await asyncio.sleep(0.01)
        raise AssertionError("never happened")

    try:
        unary = channel.unary_unary(UNARY)
        script.add(Step(grpc.StatusCode.UNAVAILABLE))
        in_backoff = asyncio.ensure_future(unary(b"x", timeout=60))
        await until(lambda: settled(breaker) == 1)  # the first attempt failed: now it sleeps
        in_backoff.cancel()
        with pytest.raises(asyncio.CancelledError):
            await in_backoff
        assert breaker.metrics().calls["failure"] == 1
        assert limit.metrics()["in_flight"] == 0

        taken = limit.acquire()
        queued = asyncio.ensure_future(unary(b"y", timeout=60))
        await until(lambda: limit.metrics()["waiting"] == 1)
        queued.cancel()
        with pytest.raises(asyncio.CancelledError):
            await queued
        taken.release()
        assert limit.metrics()["waiting"] == 0
        assert limit.metrics()["in_flight"] == 0
        assert breaker.metrics().calls["ignored"] == 1  # its breaker permit handed back
        assert settled(breaker) == 2
        assert script.count() == 1
        await until(lambda: not _aio_settling)
    finally:
        await channel.close()
        await grpc_server.stop(None)


# -- the server interceptors' options ---------------------------------------------------


def test_a_call_without_a_deadline_gets_the_default() -> None:
    """docs/guide/grpc.md: a call without a deadline gets `default`; a huge one `max_seconds`."""
    seen: list[float | None] = []

    def handler(request: bytes, context: Any) -> bytes:
        seen.append(resilience.remaining())
        return request

    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=2),
        interceptors=[resilience.grpc.DeadlineServerInterceptor(max_seconds=5.0, default=3.0)],
    )
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "test.Echo", {"Unary": grpc.unary_unary_rpc_method_handler(handler)}
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        channel.unary_unary(UNARY)(b"x")
        channel.unary_unary(UNARY)(b"x", timeout=1e8)
        channel.close()
    finally:
        server.stop(None)
    assert seen[0] is not None
    assert 2.0 < seen[0] <= 3.0
    assert seen[1] is not None
    assert 4.0 < seen[1] <= 5.0


@pytest.mark.anyio
async def test_aio_server_stream_handlers_that_write_run_in_the_deadline() -> None:
    """A grpc.aio stream handler that writes with `context.write()` runs in the deadline."""
    seen: list[float | None] = []

    async def stream(request: bytes, context: Any) -> None:
        seen.append(resilience.remaining())
        await context.write(request)
        await context.write(request)

    server = grpc.aio.server(interceptors=[AsyncDeadlineServerInterceptor()])
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "test.Echo", {"Stream": grpc.unary_stream_rpc_method_handler(stream)}
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            replies = [m async for m in channel.unary_stream(STREAM)(b"w", timeout=2.0)]
    finally:
        await server.stop(None)
    assert replies == [b"w", b"w"]
    assert seen[0] is not None
    assert 1.0 < seen[0] <= 2.1


def test_breaker_scope_method_with_one_breaker_is_refused() -> None:
    """breaker_scope="method" with one CircuitBreaker was silently one breaker for all."""
    with pytest.raises(ValueError, match='breaker_scope="method" needs a BreakerRegistry'):
        ResilientClientInterceptor(
            target="t", breaker=resilience.CircuitBreaker("one"), breaker_scope="method"
        )
    registry = resilience.BreakerRegistry()
    interceptor = ResilientClientInterceptor(target="t", breaker=registry, breaker_scope="method")
    assert interceptor.breakers is registry


@pytest.mark.parametrize(("retry_deadline", "attempts"), [(False, 1), (True, 2)])
def test_an_attempt_cut_by_attempt_timeout_is_retried_only_if_asked(
    server: SyncServer, retry_deadline: bool, attempts: int
) -> None:
    """docs/guide/grpc.md, "Deadlines": an attempt's DEADLINE_EXCEEDED is retried if listed."""
    codes = set(resilience.grpc.RETRY_CODES)
    if retry_deadline:
        codes.add(grpc.StatusCode.DEADLINE_EXCEEDED)
    methods, _, _ = limited_channel(
        server,
        attempt_timeout=0.1,
        retry=resilience.Retry(on=grpc.RpcError, attempts=2, wait=0.0),
        retry_codes=codes,
    )
    server.script.add(Step(sleep=0.3), Step(sleep=0.3))
    with pytest.raises(grpc.RpcError) as raised:
        methods["unary"](b"x", timeout=5)
    assert raised.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert not isinstance(raised.value, resilience.DeadlineExceededError)  # the attempt's
    assert server.script.count() == attempts


def test_a_stream_failing_after_its_first_message_is_a_retry_success(
    server: SyncServer,
) -> None:
    """docs/guide/grpc.md, "Streaming": the retry counts the first message; the breaker the end."""
    breaker = resilience.CircuitBreaker("echo")
    interceptor = ResilientClientInterceptor(target=server.target, breaker=breaker)
    channel = grpc.intercept_channel(
        grpc.insecure_channel(server.target, options=channel_options()), interceptor
    )
    server.script.add(Step(grpc.StatusCode.UNAVAILABLE, messages=1))
    received: list[bytes] = []
    with pytest.raises(grpc.RpcError):
        received.extend(channel.unary_stream(STREAM)(b"s", timeout=5))
    assert received == [b"s"]
    assert interceptor.retry is not None
    assert interceptor.retry.metrics()["success_first_try"] == 1
    wait_until(lambda: breaker.metrics().calls["failure"] == 1)
    assert server.script.count(STREAM) == 1


@pytest.mark.anyio
async def test_aio_a_cancelled_read_ends_the_stream_with_code_cancelled() -> None:
    """docs/guide/grpc.md, "Streaming": after a cancelled `read()`, EOF and code() CANCELLED.

    grpc.aio's interceptor machinery ends the stream; the permit is handed back.
    """

    async def slow(request: bytes, context: Any) -> Any:
        for _ in range(3):
            yield request
            await asyncio.sleep(0.3)

    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "test.Echo", {"Stream": grpc.unary_stream_rpc_method_handler(slow)}
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    target = f"127.0.0.1:{port}"
    breaker = resilience.CircuitBreaker("echo")
    channel = grpc.aio.insecure_channel(
        target,
        interceptors=resilience.grpc.AsyncResilientClientInterceptor(
            target=target, breaker=breaker
        ),
    )
    try:
        call = channel.unary_stream(STREAM)(b"x", timeout=5)
        assert await call.read() == b"x"
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(call.read(), 0.05)
        assert await call.read() is grpc.aio.EOF
        assert await call.code() is grpc.StatusCode.CANCELLED
        for _ in range(300):
            if breaker.metrics().calls["ignored"] == 1:
                break
            await asyncio.sleep(0.01)
        assert breaker.metrics().calls["ignored"] == 1
    finally:
        await channel.close()
        await server.stop(None)
