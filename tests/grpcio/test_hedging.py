"""Hedged unary calls through `AsyncResilientClientInterceptor(hedge=)`, on real grpc.aio servers.

docs/guide/grpc.md ("Hedging") promises these; asyncio only (grpc.aio).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
import grpc.aio
import pytest

import resilience
from resilience._tracking import live
from resilience.events import HedgeSent, HedgeWon
from resilience.grpc import (
    AsyncResilientClientInterceptor,
    ResilientClientInterceptor,
)

from .conftest import STREAM, Script, Step, aio_methods, aio_setup

UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


async def wait_for(condition: Any, seconds: float = 2.0) -> float:
    """Poll `condition()` until true (bounded); the seconds it took."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < seconds, "condition never became true"
        await asyncio.sleep(0.002)
    return time.monotonic() - started


@pytest.mark.anyio
async def test_a_slow_attempt_is_hedged_and_the_loser_rpc_is_cancelled_on_the_server() -> None:
    """docs/guide/grpc.md: the fast answer wins; the loser's RPC is cancelled server-side.

    Also: the hedge carries `grpc-previous-rpc-attempts: 1`, the hedge is a
    copy named after the target (its events and metrics), and each attempt's
    breaker permit is settled once (the loser's is ignored, not a failure).
    """
    script = Script()
    breaker = resilience.CircuitBreaker("echo", consecutive_failures=1)
    seen: list[Any] = []
    template = resilience.Hedge(delay=0.05)
    template.events.subscribe(seen.append)
    grpc_server, channel, interceptor, _ = await aio_setup(
        script, hedge=template, breaker=breaker, retry=False
    )
    try:
        script.add(Step(sleep=5.0))  # the first attempt is slow; the hedge echoes at once
        started = time.monotonic()
        assert await aio_methods(channel)["unary"](b"hi", timeout=10) == b"hi"
        answered = time.monotonic() - started
        assert answered < 2.0
        cancelled_after = await wait_for(lambda: script.cancelled == 1)
        assert cancelled_after < 0.5  # measured: a few milliseconds on loopback
        assert script.previous_attempts() == [None, "1"]
        hedge = interceptor.hedge
        assert hedge is not template
        assert hedge.name == interceptor.target
        assert hedge.metrics()["sent"] == 1
        assert hedge.metrics()["won"] == 1
        assert template.metrics()["sent"] == 0  # the template counts nothing
        assert hedge in live("hedge")  # exported (Prometheus) under the target's name
        assert [type(e) for e in seen] == [HedgeSent, HedgeWon]
        assert {e.name for e in seen} == {interceptor.target}
        calls = breaker.metrics().calls
        assert (calls["success"], calls["failure"], calls["ignored"]) == (1, 0, 1)
    finally:
        await channel.close()
        await grpc_server.stop(None)


@pytest.mark.anyio
async def test_unavailable_is_non_fatal_and_sends_the_next_hedge_at_once() -> None:
    """docs/guide/grpc.md: a retry code (UNAVAILABLE) sends the next hedge at once."""
    script = Script()
    hedge = resilience.Hedge(delay=30.0)  # the delay never passes in this test
    grpc_server, channel, interceptor, _ = await aio_setup(script, hedge=hedge, retry=False)
    try:
        script.add(Step(UNAVAILABLE))
        started = time.monotonic()
        assert await aio_methods(channel)["unary"](b"hi", timeout=10) == b"hi"
        assert time.monotonic() - started < 5.0  # not after the 30 s delay
        assert script.count() == 2
        assert interceptor.hedge.metrics()["sent"] == 1
    finally:
        await channel.close()
        await grpc_server.stop(None)


@pytest.mark.anyio
async def test_invalid_argument_is_fatal_no_more_hedges_and_raised() -> None:
    """docs/guide/grpc.md: any other status is fatal: raised, no hedge sent, the rest cancelled."""
    script = Script()
    hedge = resilience.Hedge(delay=0.05, max_hedged_attempts=3)
    grpc_server, channel, interceptor, _ = await aio_setup(script, hedge=hedge, retry=False)
    try:
        script.add(Step(sleep=5.0), Step(grpc.StatusCode.INVALID_ARGUMENT))
        with pytest.raises(grpc.RpcError) as raised:
            await aio_methods(channel)["unary"](b"hi", timeout=10)
        assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        await wait_for(lambda: script.cancelled == 1)  # the slow first attempt went too
        assert script.count() == 2
        assert interceptor.hedge.metrics()["sent"] == 1
    finally:
        await channel.close()
        await grpc_server.stop(None)


@pytest.mark.anyio
async def test_hedges_spend_the_targets_retry_budget() -> None:
    """docs/guide/grpc.md: hedges and retries share the target's retry budget.

    With the budget empty, no hedge is sent, and the retry is refused too.
    """
    script = Script()
    budget = resilience.RetryBudget("echo", ratio=0.1, min_per_second=0.0)
    retry = resilience.Retry(on=grpc.RpcError, wait=0.0, budget=budget)
    hedge = resilience.Hedge(delay=0.02)
    grpc_server, channel, interceptor, _ = await aio_setup(script, hedge=hedge, retry=retry)
    try:
        assert interceptor.hedge.budget is budget
        script.add(Step(sleep=0.3))  # slow: wants a hedge, the budget has none
        assert await aio_methods(channel)["unary"](b"hi", timeout=10) == b"hi"
        assert script.count() == 1
        assert interceptor.hedge.metrics()["refused"] == 1
        script.add(Step(UNAVAILABLE))  # a non-fatal failure: no hedge, no retry either
        with pytest.raises(grpc.RpcError):
            await aio_methods(channel)["unary"](b"hi", timeout=10)
        assert script.count() == 2
    finally:
        await channel.close()
        await grpc_server.stop(None)


@pytest.mark.anyio
async def test_a_failed_hedged_call_is_retried_as_a_whole() -> None:
    """docs/guide/grpc.md: with a retry too, the retry is outside the hedge."""
    script = Script()
    retry = resilience.Retry(on=grpc.RpcError, wait=0.0, attempts=2)
    hedge = resilience.Hedge(delay=30.0, ratio=1.0)
    grpc_server, channel, interceptor, _ = await aio_setup(script, hedge=hedge, retry=retry)
    try:
        # Attempt 1 fails, its hedge fails: the hedged call fails; the retry sends it again.
        script.add(Step(UNAVAILABLE), Step(UNAVAILABLE))
        assert await aio_methods(channel)["unary"](b"hi", timeout=10) == b"hi"
        assert script.count() == 3
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
async def test_streams_are_never_hedged() -> None:
    """docs/guide/grpc.md: streaming calls are never hedged."""
    script = Script()
    hedge = resilience.Hedge(delay=0.0, ratio=1.0)
    grpc_server, channel, interceptor, _ = await aio_setup(script, hedge=hedge)
    try:
        messages = [m async for m in aio_methods(channel)["stream"](b"hi", timeout=10)]
        assert messages == [b"hi"]
        assert script.count(STREAM) == 1
        assert interceptor.hedge.metrics()["calls"] == 0
    finally:
        await channel.close()
        await grpc_server.stop(None)


def test_sync_interceptor_refuses_hedge() -> None:
    """docs/guide/grpc.md: the sync interceptor raises MisuseError for hedge=."""
    with pytest.raises(resilience.MisuseError, match="AsyncResilientClientInterceptor"):
        ResilientClientInterceptor(target="x:1", hedge=resilience.Hedge())


def test_the_hedge_budget_without_retry_is_its_own_and_a_given_one_is_kept() -> None:
    """docs/guide/grpc.md: retry=False: the hedge's own budget; a Hedge's budget= is kept."""
    alone = AsyncResilientClientInterceptor(target="x:1", hedge=resilience.Hedge(), retry=False)
    assert alone.hedge.budget.name == "x:1"
    mine = resilience.RetryBudget("mine")
    kept = AsyncResilientClientInterceptor(target="x:1", hedge=resilience.Hedge(budget=mine))
    assert kept.hedge.budget is mine
    shared = AsyncResilientClientInterceptor(target="x:1", hedge=resilience.Hedge())
    assert shared.hedge.budget is shared.retry.budget
