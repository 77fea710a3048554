"""Misuse fails loudly: sync entry point given async code, and the reverse."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import pytest

from resilience import Retry
from resilience.testing import FakeClock


class Transient(Exception):
    pass


NO_CALLS = {
    "success_first_try": 0,
    "success_after_retry": 0,
    "failed_after_retry": 0,
    "failed_not_retryable": 0,
    "retries": 0,
    "budget_exhausted": 0,
    "cancelled": 0,
}


def make(**config: Any) -> Retry:
    config.setdefault("on", Exception)  # would retry the TypeError, if it were retryable
    config.setdefault("wait", 0)
    config.setdefault("clock", FakeClock())
    return Retry(**config)


def test_call_refuses_a_coroutine_function() -> None:
    """retry.call(async_fn): a TypeError, one call, no retry, nothing counted as a success."""
    calls = 0
    ran = False

    async def fetch() -> str:
        nonlocal ran
        ran = True
        raise Transient

    def counted() -> Any:
        nonlocal calls
        calls += 1
        return fetch()

    retry = make()
    with pytest.raises(TypeError, match=r"returned an awaitable \(coroutine\)"):
        retry.call(counted)
    gc.collect()  # the coroutine was closed: no "never awaited" warning (warnings are errors)
    assert (calls, ran) == (1, False)
    assert retry.metrics() == NO_CALLS
    with pytest.raises(TypeError, match="acall"):
        retry.call(fetch)


def test_call_refuses_any_awaitable_result() -> None:
    """Not only coroutines: a Future (anything with __await__) too."""
    loop = asyncio.new_event_loop()
    try:
        future = loop.create_future()
        with pytest.raises(TypeError, match="awaitable"):
            make().call(lambda: future)
    finally:
        loop.close()


def test_call_refuses_an_awaitable_on_a_later_attempt() -> None:
    """An awaitable returned after a retry is refused the same way, and not retried."""
    calls = 0

    async def later() -> str:
        return "never run"

    def flaky() -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise Transient
        return later()

    retry = make(attempts=5)
    with pytest.raises(TypeError, match="awaitable"):
        retry.call(flaky)
    gc.collect()
    assert calls == 2
    metrics = retry.metrics()
    assert metrics["retries"] == 1
    assert metrics["success_after_retry"] == metrics["success_first_try"] == 0


def test_a_decorated_sync_function_returning_a_coroutine_is_refused() -> None:
    """The decorator picks the sync wrapper for a def; the coroutine it returns is refused."""

    async def work() -> str:
        return "never run"

    @make()
    def sync_front() -> Any:
        return work()

    with pytest.raises(TypeError, match="awaitable"):
        sync_front()
    gc.collect()


def test_acall_refuses_a_sync_function() -> None:
    """retry.acall(sync_fn): a TypeError that says to use call(), made once, never retried."""
    calls = 0

    def sync() -> int:
        nonlocal calls
        calls += 1
        return 5

    retry = make(attempts=5)
    with pytest.raises(TypeError, match=r"sync returned int, not an awaitable.*\.call\(fn") as c:
        asyncio.run(retry.acall(sync))  # type: ignore[arg-type]
    assert calls == 1
    assert c.value.__suppress_context__  # not "int can't be used in 'await' expression"
    assert retry.metrics() == NO_CALLS


def test_acall_refuses_a_non_awaitable_on_a_later_attempt() -> None:
    calls = 0

    async def first() -> str:
        raise Transient

    def flaky() -> Any:
        nonlocal calls
        calls += 1
        return first() if calls == 1 else "plain"

    retry = make(attempts=5)
    with pytest.raises(TypeError, match="call"):
        asyncio.run(retry.acall(flaky))
    assert calls == 2
    assert retry.metrics()["retries"] == 1


def test_acall_accepts_a_sync_function_returning_an_awaitable() -> None:
    """A plain def that returns a coroutine is fine for acall: the result is awaited."""

    async def work() -> str:
        return "ok"

    def front() -> Any:
        return work()

    assert asyncio.run(make().acall(front)) == "ok"


def test_misuse_inside_a_nested_policy_is_not_retried_nor_counted() -> None:
    """The misuse TypeError of an inner policy passes an outer on=Exception untouched."""

    async def fetch() -> str:
        return "never run"

    inner, outer = make(), make(attempts=5)
    with pytest.raises(TypeError, match="awaitable") as caught:
        outer.call(inner.call, fetch)
    gc.collect()
    assert not getattr(caught.value, "__notes__", [])
    assert outer.metrics() == NO_CALLS
    assert inner.metrics() == NO_CALLS

    def plain() -> int:
        return 1

    with pytest.raises(TypeError, match="not an awaitable"):
        asyncio.run(outer.acall(inner.acall, plain))  # type: ignore[arg-type]
    assert outer.metrics() == NO_CALLS


def test_an_async_functions_own_type_error_is_an_ordinary_error() -> None:
    """Only a plain value is misuse: a TypeError raised by the coroutine is retried per on=."""
    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise TypeError("bad payload")
        return "ok"

    retry = make(on=TypeError)
    assert asyncio.run(retry.acall(flaky)) == "ok"
    assert calls == 2
    assert retry.metrics()["success_after_retry"] == 1
