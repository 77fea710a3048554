from __future__ import annotations

import asyncio
import functools
import inspect
import itertools
import threading
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar

import anyio
import anyio.lowlevel
import pytest

from resilience import Pipeline, Policy, compose
from resilience._compose import Guard, is_async_callable

P = ParamSpec("P")
R = TypeVar("R")


class Rejected(Exception):
    pass


class RecordingGuard(Guard[int]):
    """Admits calls with numbered tokens and records how each one was settled."""

    def __init__(self, *, reject: bool = False) -> None:
        self.reject = reject
        self.log: list[tuple[Any, ...]] = []
        self._numbers = itertools.count(1)
        self._lock = threading.Lock()

    def _enter(self) -> int:
        if self.reject:
            raise Rejected
        with self._lock:
            token = next(self._numbers)
            self.log.append(("enter", token))
        return token

    def _on_error(self, token: int, exc: BaseException) -> None:
        with self._lock:
            self.log.append(("error", token, type(exc)))

    def _on_return(self, token: int, result: object) -> None:
        with self._lock:
            self.log.append(("return", token, result))

    def _on_exit(self, token: int) -> None:
        with self._lock:
            self.log.append(("exit", token))

    def settled(self) -> dict[int, list[tuple[Any, ...]]]:
        """Map each token to its settle records (entries excluded)."""
        result: dict[int, list[tuple[Any, ...]]] = {}
        for record in self.log:
            if record[0] in ("error", "return", "exit", "misuse"):
                result.setdefault(record[1], []).append(record)
        return result


class Tracing(Policy):
    """Appends its name to a shared trace before and after the call."""

    def __init__(self, name: str, trace: list[str]) -> None:
        self.name = name
        self.trace = trace

    def call(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        self.trace.append(f"{self.name}>")
        try:
            return fn(*args, **kwargs)
        finally:
            self.trace.append(f"<{self.name}")

    async def acall(self, fn: Callable[P, Awaitable[R]], /, *args: P.args, **kwargs: P.kwargs) -> R:
        self.trace.append(f"{self.name}>")
        try:
            return await fn(*args, **kwargs)
        finally:
            self.trace.append(f"<{self.name}")

    def __repr__(self) -> str:
        return f"Tracing({self.name!r})"


# -- decorating ---------------------------------------------------------------


def test_sync_decorator_keeps_name_doc_and_signature() -> None:
    """The wrapper looks like the function: name, docstring, signature, __wrapped__."""
    guard = RecordingGuard()

    def charge(order_id: str, *, amount: int = 1) -> str:
        """Charge an order."""
        return f"{order_id}:{amount}"

    wrapped = guard(charge)
    assert wrapped("o1", amount=3) == "o1:3"
    assert wrapped.__name__ == "charge"
    assert wrapped.__doc__ == "Charge an order."
    assert wrapped.__wrapped__ is charge  # type: ignore[attr-defined]
    assert inspect.signature(wrapped) == inspect.signature(charge)
    assert not inspect.iscoroutinefunction(wrapped)
    assert guard.log == [("enter", 1), ("return", 1, "o1:3")]


@pytest.mark.anyio
async def test_async_decorator_returns_a_coroutine_function() -> None:
    """An async function stays async, on asyncio and trio alike."""
    guard = RecordingGuard()

    @guard
    async def fetch(url: str) -> bytes:
        await anyio.lowlevel.checkpoint()
        return url.encode()

    assert inspect.iscoroutinefunction(fetch)
    assert await fetch("u") == b"u"
    assert guard.log == [("enter", 1), ("return", 1, b"u")]


def test_methods_classmethods_and_staticmethods() -> None:
    """Decorating inside a class body keeps binding, in either decorator order."""
    guard = RecordingGuard()

    class Client:
        def __init__(self, base: str) -> None:
            self.base = base

        @guard
        def get(self, path: str) -> str:
            return self.base + path

        @guard
        @classmethod
        def make(cls, base: str) -> Client:
            return cls(base)

        @classmethod
        @guard
        def make2(cls, base: str) -> Client:
            return cls(base)

        @guard
        @staticmethod
        def join(a: str, b: str) -> str:
            return a + b

    client = Client.make("http://a")
    assert isinstance(client, Client)
    assert Client.make2("x").base == "x"
    assert client.get("/p") == "http://a/p"
    assert Client.join("a", "b") == "ab"
    assert client.join("a", "b") == "ab"
    assert len(guard.settled()) == 5


@pytest.mark.anyio
async def test_async_methods() -> None:
    """Async methods are wrapped as coroutine functions and bind self."""
    guard = RecordingGuard()

    class Service:
        factor = 3

        @guard
        async def triple(self, x: int) -> int:
            return self.factor * x

    assert await Service().triple(2) == 6


def test_async_detection_sees_through_partials_and_callable_objects() -> None:
    """partial(async fn) and objects with async __call__ get the async wrapper."""

    async def coro(x: int) -> int:
        return x

    class AsyncCallable:
        async def __call__(self) -> int:
            return 1

    class SyncCallable:
        def __call__(self) -> int:
            return 1

    assert is_async_callable(functools.partial(coro, 1))
    assert is_async_callable(AsyncCallable())
    assert not is_async_callable(SyncCallable())
    assert not is_async_callable(functools.partial(len, "ab"))
    guard = RecordingGuard()
    assert inspect.iscoroutinefunction(guard(functools.partial(coro, 1)))
    assert asyncio.run(guard(AsyncCallable())()) == 1
    assert guard(SyncCallable())() == 1


def test_generator_functions_are_refused() -> None:
    """A policy would only see a generator being created, so it refuses to wrap one."""
    guard = RecordingGuard()

    def numbers() -> Any:
        yield 1

    async def stream() -> Any:
        yield 1

    for fn in (numbers, stream, functools.partial(numbers)):
        with pytest.raises(TypeError, match="generator function"):
            guard(fn)
        with pytest.raises(TypeError, match="generator function"):
            compose(guard)(fn)


# -- settling exactly once ----------------------------------------------------


def test_exception_is_settled_and_reraised_untouched() -> None:
    """The caller gets the very exception object; the guard saw it once."""
    guard = RecordingGuard()
    error = ValueError("boom")

    @guard
    def fail() -> None:
        raise error

    with pytest.raises(ValueError, match="boom") as caught:
        fail()
    assert caught.value is error
    assert guard.settled() == {1: [("error", 1, ValueError)]}


def test_keyboard_interrupt_is_settled_and_reraised() -> None:
    """A BaseException still settles the token, then propagates."""
    guard = RecordingGuard()

    def interrupted() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        guard.call(interrupted)
    assert guard.settled() == {1: [("error", 1, KeyboardInterrupt)]}


def test_rejection_runs_nothing_and_settles_nothing() -> None:
    """When _enter raises, the function does not run and no token exists."""
    guard = RecordingGuard(reject=True)
    ran: list[int] = []
    with pytest.raises(Rejected):
        guard.call(ran.append, 1)
    with pytest.raises(Rejected), guard:
        ran.append(2)
    assert ran == []
    assert guard.log == []


def test_cancelled_asyncio_call_is_settled_once() -> None:
    """Cancelling a task mid-call settles its token with CancelledError."""
    guard = RecordingGuard()
    started = asyncio.Event()

    @guard
    async def hang() -> None:
        started.set()
        await asyncio.sleep(3600)

    async def main() -> None:
        task = asyncio.create_task(hang())
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert guard.settled() == {1: [("error", 1, asyncio.CancelledError)]}


def test_cancelled_trio_call_is_settled_once() -> None:
    """Trio's Cancelled (a BaseException) settles the token too."""
    import trio

    guard = RecordingGuard()

    @guard
    async def hang() -> None:
        await trio.sleep(3600)

    async def main() -> None:
        with trio.move_on_after(0.01):
            await hang()

    trio.run(main)
    assert guard.settled() == {1: [("error", 1, trio.Cancelled)]}


# -- with / async with --------------------------------------------------------


def test_with_block_yields_the_token_and_settles() -> None:
    """`with guard as token` gives the token; normal exit and errors settle it."""
    guard = RecordingGuard()
    with guard as token:
        assert token == 1
    with pytest.raises(ValueError, match="inside"), guard:
        raise ValueError("inside")
    assert guard.settled() == {1: [("exit", 1)], 2: [("error", 2, ValueError)]}


@pytest.mark.anyio
async def test_async_with_block() -> None:
    """`async with guard` settles like `with`."""
    guard = RecordingGuard()
    async with guard as token:
        await anyio.lowlevel.checkpoint()
    with pytest.raises(KeyError):
        async with guard:
            raise KeyError("x")
    assert guard.settled() == {token: [("exit", token)], 2: [("error", 2, KeyError)]}


def test_nested_blocks_of_one_guard_settle_their_own_tokens() -> None:
    """Re-entering the same guard nests: the inner token exits first."""
    guard = RecordingGuard()
    with guard as outer:
        with guard as inner:
            pass
        assert guard.settled() == {inner: [("exit", inner)]}
    assert guard.settled() == {inner: [("exit", inner)], outer: [("exit", outer)]}


def test_interleaved_blocks_from_generators_find_their_tokens() -> None:
    """Blocks left out of order (generators) still settle the right tokens."""
    guard = RecordingGuard()

    def holder() -> Any:
        with guard as token:
            yield token

    first, second = holder(), holder()
    token1, token2 = next(first), next(second)
    first.close()  # exits token1 while token2 is the innermost block
    assert guard.settled() == {token1: [("error", token1, GeneratorExit)]}
    with pytest.raises(StopIteration):
        next(second)
    assert guard.settled() == {
        token1: [("error", token1, GeneratorExit)],
        token2: [("exit", token2)],
    }


def test_exit_without_enter_is_an_error() -> None:
    """Calling __exit__ on a guard never entered here is a clear RuntimeError."""
    with pytest.raises(RuntimeError, match="without a matching __enter__"):
        RecordingGuard().__exit__(None, None, None)


def test_one_guard_shared_by_threads_keeps_tokens_apart() -> None:
    """32 threads inside `with guard` at once each settle their own token."""
    guard = RecordingGuard()
    barrier = threading.Barrier(32, timeout=30)
    seen: dict[int, int] = {}

    def worker(index: int) -> None:
        with guard as token:
            seen[index] = token
            barrier.wait()  # every thread is inside the block at once

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(seen.values()) == list(range(1, 33))
    assert guard.settled() == {token: [("exit", token)] for token in seen.values()}


@pytest.mark.anyio
async def test_one_guard_shared_by_tasks_keeps_tokens_apart() -> None:
    """500 tasks inside `async with guard` at once each settle their own token."""
    guard = RecordingGuard()
    inside = 0
    all_inside = anyio.Event()
    seen: list[int] = []

    async def worker() -> None:
        nonlocal inside
        async with guard as token:
            seen.append(token)
            inside += 1
            if inside == 500:
                all_inside.set()
            await all_inside.wait()

    with anyio.fail_after(30):
        async with anyio.create_task_group() as group:
            for _ in range(500):
                group.start_soon(worker)
    assert sorted(seen) == list(range(1, 501))
    assert guard.settled() == {token: [("exit", token)] for token in seen}


# -- compose ------------------------------------------------------------------


def test_compose_applies_the_first_policy_outermost() -> None:
    """compose(a, b, c)(f) behaves as a(b(c(f)))."""
    trace: list[str] = []
    a, b, c = (Tracing(name, trace) for name in "abc")

    @compose(a, b, c)
    def f() -> str:
        trace.append("f")
        return "done"

    assert f() == "done"
    assert trace == ["a>", "b>", "c>", "f", "<c", "<b", "<a"]


@pytest.mark.anyio
async def test_compose_async_and_call_forms() -> None:
    """Pipelines decorate coroutine functions and offer call()/acall()."""
    trace: list[str] = []
    pipeline = compose(Tracing("a", trace), Tracing("b", trace))

    async def f(x: int) -> int:
        return x + 1

    assert await pipeline(f)(1) == 2
    assert await pipeline.acall(f, 2) == 3
    assert pipeline.call(lambda x: x * 2, 4) == 8
    assert trace == ["a>", "b>", "<b", "<a"] * 3


def test_compose_flattens_and_validates() -> None:
    """Nested pipelines flatten; non-policies are a TypeError naming the position."""
    trace: list[str] = []
    a, b, c = (Tracing(name, trace) for name in "abc")
    assert compose(a, compose(b, c)).policies == (a, b, c)
    assert repr(compose(a, b)) == "compose(Tracing('a'), Tracing('b'))"
    with pytest.raises(TypeError, match="argument 1"):
        compose(a, lambda fn: fn)  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_empty_pipeline_runs_the_call_unchanged() -> None:
    """compose() with no policies is a pass-through, sync and async."""
    empty = compose()
    assert isinstance(empty, Pipeline)

    def add(a: int, b: int) -> int:
        return a + b

    async def aadd(a: int, b: int) -> int:
        return a + b

    wrapped = empty(add)
    assert wrapped(1, 2) == 3
    assert wrapped is not add
    assert wrapped.__wrapped__ is add  # type: ignore[attr-defined]
    assert empty.call(add, 2, 3) == 5
    assert await empty(aadd)(1, 1) == 2
    assert await empty.acall(aadd, 2, 2) == 4


def test_guard_inside_compose_settles_each_call() -> None:
    """A guard in a pipeline sees every call and its outcome."""
    guard = RecordingGuard()
    trace: list[str] = []
    wrapped = compose(Tracing("outer", trace), guard)(lambda x: x)
    assert [wrapped(i) for i in range(3)] == [0, 1, 2]
    assert guard.settled() == {1: [("return", 1, 0)], 2: [("return", 2, 1)], 3: [("return", 3, 2)]}


def test_policy_is_abstract() -> None:
    """A Policy must implement call and acall."""
    with pytest.raises(TypeError, match="abstract"):
        Policy()  # type: ignore[abstract]


def test_exit_stack_blocks_settle_in_reverse_order() -> None:
    """contextlib.ExitStack enters and exits from other frames; LIFO still holds."""
    import contextlib

    guard = RecordingGuard()
    with contextlib.ExitStack() as stack:
        first = stack.enter_context(guard)
        second = stack.enter_context(guard)
        assert (first, second) == (1, 2)
    assert [record[:2] for record in guard.log] == [
        ("enter", 1),
        ("enter", 2),
        ("exit", 2),
        ("exit", 1),
    ]


class WaitingGuard(RecordingGuard):
    """A guard whose async admission awaits (like a bulkhead waiting for a slot)."""

    async def _aenter(self) -> int:
        await anyio.lowlevel.checkpoint()
        self.log.append(("waited",))
        return self._enter()


@pytest.mark.anyio
async def test_async_admission_that_waits_is_awaited() -> None:
    """An overridden _aenter is used by decorators, acall and `async with`."""
    guard = WaitingGuard()

    async def work() -> str:
        return "ok"

    assert await guard(work)() == "ok"
    assert await guard.acall(work) == "ok"
    async with guard:
        pass
    assert guard.log.count(("waited",)) == 3
    assert len(guard.settled()) == 3


def test_a_block_closed_in_another_thread_still_settles_its_token() -> None:
    """A generator holding `with guard:` closed from another thread settles its token there."""
    guard = RecordingGuard()

    def holder() -> Any:
        with guard as token:
            yield token

    generator = holder()
    token = next(generator)
    closer = threading.Thread(target=generator.close)
    closer.start()
    closer.join(timeout=10)
    assert guard.settled() == {token: [("error", token, GeneratorExit)]}


def test_no_bookkeeping_is_left_after_blocks_end() -> None:
    """Thousands of blocks, nested and sequential, leave nothing behind."""
    from resilience._compose import _open_by_frame

    guard = RecordingGuard()
    for _ in range(1000):
        with guard, guard:
            pass
    assert not any(key[0] == id(guard) for key in _open_by_frame)


# -- misuse: the wrong entry point for the callable ---------------------------


class MisuseRecordingGuard(RecordingGuard):
    """Also records a token settled as "nothing learnt" (an API misuse)."""

    def _on_misuse(self, token: int) -> None:
        with self._lock:
            self.log.append(("misuse", token))


async def _coroutine_function() -> int:
    return 1


def test_sync_entry_points_refuse_an_awaitable_and_learn_nothing() -> None:
    """call(), the sync decorator and a sync pipeline: TypeError, token settled as misuse."""
    guard = MisuseRecordingGuard()
    with pytest.raises(TypeError, match="returned an awaitable"):
        guard.call(_coroutine_function)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="acall"):
        guard(lambda: _coroutine_function())()
    with pytest.raises(TypeError, match="returned an awaitable"):
        compose(guard).call(_coroutine_function)  # type: ignore[arg-type]
    assert guard.settled() == {1: [("misuse", 1)], 2: [("misuse", 2)], 3: [("misuse", 3)]}


def test_a_refused_coroutine_is_closed_without_a_never_awaited_warning() -> None:
    """The coroutine a sync entry point refuses is closed: no RuntimeWarning follows."""
    import gc
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(TypeError):
            MisuseRecordingGuard().call(_coroutine_function)  # type: ignore[arg-type]
        gc.collect()
    assert [w for w in caught if "never awaited" in str(w.message)] == []


def test_pipelines_refuse_an_awaitable_even_from_their_own_policies() -> None:
    """Pipeline.call checks what comes back, also through a policy that does not (and empty)."""
    trace: list[str] = []
    for pipeline in (compose(), compose(Tracing("a", trace))):
        with pytest.raises(TypeError, match="returned an awaitable"):
            pipeline.call(_coroutine_function)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="returned an awaitable"):
            pipeline.call(lambda: _coroutine_function())


@pytest.mark.anyio
async def test_async_entry_points_refuse_a_plain_value_and_learn_nothing() -> None:
    """acall() and the async wrapper given a sync function: TypeError pointing at call()."""
    guard = MisuseRecordingGuard()
    with pytest.raises(TypeError, match=r"not an awaitable.*call\(") as caught:
        await guard.acall(lambda: 3)  # type: ignore[arg-type,return-value]
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__
    with pytest.raises(TypeError, match=r"not an awaitable.*call\("):
        await compose(guard).acall(lambda: 3)  # type: ignore[arg-type,return-value]
    with pytest.raises(TypeError, match=r"not an awaitable.*call\("):
        await compose().acall(lambda: None)  # type: ignore[arg-type,return-value]
    waiting = WaitingGuard()
    with pytest.raises(TypeError, match="not an awaitable"):
        await waiting.acall(lambda: 3)  # type: ignore[arg-type,return-value]
    assert guard.settled() == {1: [("misuse", 1)], 2: [("misuse", 2)]}
    assert [record[0] for record in waiting.log] == ["waited", "enter", "exit"]


@pytest.mark.anyio
async def test_a_type_error_raised_by_the_call_is_a_failure_not_misuse() -> None:
    """Only a value that cannot be awaited is misuse; a call's own TypeError is an error."""
    guard = MisuseRecordingGuard()

    async def raises() -> None:
        raise TypeError("from the coroutine")

    with pytest.raises(TypeError, match="from the coroutine"):
        await guard.acall(raises)
    with pytest.raises(TypeError, match="len"):
        await guard.acall(len, 3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="from the coroutine"):
        await guard(raises)()
    assert guard.settled() == {
        1: [("error", 1, TypeError)],
        2: [("error", 2, TypeError)],
        3: [("error", 3, TypeError)],
    }


def test_misuse_inside_an_outer_guard_is_not_a_failure_there_either() -> None:
    """An inner guard's misuse error passes through outer guards as "nothing learnt"."""
    outer, inner = MisuseRecordingGuard(), MisuseRecordingGuard()
    with pytest.raises(TypeError, match="returned an awaitable"):
        compose(outer, inner).call(_coroutine_function)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="returned an awaitable"), outer:
        inner.call(_coroutine_function)  # type: ignore[arg-type]
    assert outer.settled() == {1: [("misuse", 1)], 2: [("misuse", 2)]}
    assert inner.settled() == {1: [("misuse", 1)], 2: [("misuse", 2)]}


def test_async_misuse_check_costs_nothing_measurable_on_the_success_path() -> None:
    """The plain-value check of the async wrapper runs only when the await fails."""
    guard = RecordingGuard()
    wrapped = guard(_coroutine_function)
    code = wrapped.__code__
    # No hasattr/type call on the success path: only the except clause looks.
    assert "hasattr" not in code.co_names


@pytest.mark.anyio
async def test_a_generator_based_coroutine_failing_is_a_failure_not_misuse() -> None:
    """A @types.coroutine generator is awaitable without __await__: its TypeError is its own."""
    import types

    @types.coroutine
    def legacy() -> Any:
        yield from ()
        raise TypeError("from the legacy coroutine")

    guard = MisuseRecordingGuard()
    with pytest.raises(TypeError, match="from the legacy coroutine"):
        await guard.acall(legacy)
    assert guard.settled() == {1: [("error", 1, TypeError)]}
